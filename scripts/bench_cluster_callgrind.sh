#!/usr/bin/env bash
# Instructions per run of one cluster node, A/B: three nodes (one shard
# each) through one Redis, node 2 under valgrind's callgrind, N subscribers
# round-robin over the nodes, 50 msg/s for 10 s published on node 0. Each
# binary runs ROUNDS times (old then new in each round). Callgrind counts instructions
# repeatably (to well under 1% here), which wall-clock CPU on this shared
# host does not; use it when a CPU-per-delivery A/B differs by a few
# percent. Prints node 2's instruction total per run; the callgrind files
# stay in $OUT for callgrind_annotate (build with debug info, which the
# release profile has, to see functions). Loopback only; every process
# started here is stopped by PID.
# Usage: scripts/bench_cluster_callgrind.sh OLD_VOLLEY NEW_VOLLEY [N=1500] [ROUNDS=2]
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
OLD=$1
NEW=$2
N=${3:-1500}
ROUNDS=${4:-2}
LG=${LOADGEN:-target/release/volley-loadgen}
OUT=${OUT:-target/bench/cluster-callgrind}
REDIS_PORT=6391
mkdir -p "$OUT"
for tool in redis-server valgrind; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool missing (apt-get install $tool)" >&2; exit 1; }
done
PIDS=()
stop() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap stop EXIT
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
run() {
    local bin=$1 tag=$2
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
    PIDS+=($!)
    wait_port "$REDIS_PORT"
    for i in 0 1 2; do
        local b=$((5100 + 100 * i)) pre=()
        [ "$i" = 2 ] && pre=(valgrind --tool=callgrind "--callgrind-out-file=$OUT/$tag.out")
        "${pre[@]}" "$bin" serve --shards 1 --redis-urls "redis://127.0.0.1:$REDIS_PORT" \
            --tcp-listen "127.0.0.1:$((b + 1))" --ws-listen "127.0.0.1:$((b + 2))" \
            --api-listen "127.0.0.1:$((b + 11))" --api-publish-listen "127.0.0.1:$((b + 12))" \
            --log-level warn 2>"$OUT/$tag-$i.err" &
        PIDS+=($!)
        wait_port $((b + 11))
    done
    sleep 2
    "$LG" broadcast --conns "$N" --rate 2000 --size 64 \
        --target 127.0.0.1:5101,127.0.0.1:5201,127.0.0.1:5301 --publish-tcp 127.0.0.1:5112 \
        --room live://bench --msg-rate 50 --duration 10 --drain-secs 20 --json > "$OUT/$tag.json"
    sleep 1
    # The nodes first (callgrind writes its file as node 2 exits), Redis last.
    local redis=${PIDS[0]}
    PIDS=("${PIDS[@]:1}")
    stop
    PIDS=("$redis")
    stop
    python3 - "$OUT/$tag.json" "$OUT/$tag.out" "$tag" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
total = next(int(l.split()[1]) for l in open(sys.argv[2]) if l.startswith("totals:"))
print(f"{sys.argv[3]:>8} node 2 instructions {total:>14,}   published {d['published']}  lost {d['lost']}")
PY
}
for round in $(seq "$ROUNDS"); do
    run "$OLD" "old-$round"
    run "$NEW" "new-$round"
done
