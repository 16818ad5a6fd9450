#!/usr/bin/env bash
# One volley-loadgen process holding N (default 1,000,000) connections against
# volley on this host, then a room broadcast to all of them.
#
# One volley process holds at most ~19,900 sockets here (20,000 open files per
# process, not raisable), so the script starts ceil(N / PER) volley processes
# (one shard each, pinned alternately to CPU 0 and 1) on ports 4000+i (clients),
# 5000+i (HTTP API) and 6000+i (TCP publisher), and one load generator whose
# workers each own a private fd table (unshare(CLONE_FILES)) and connect from 64
# loopback source addresses. Each message is published to every process (one
# room per process) over its TCP publisher connection, pipelined, so all
# processes get it at once; PUBLISH=http publishes over HTTP instead.
# CLUSTER=1 makes the processes one cluster instead: a redis-server of its
# own (port 6392) joins them (`--redis-urls`), each message is published once,
# to the first process only, and reaches every subscriber through Redis;
# Redis's CPU and the commands it ran land in $OUT/million-$N-redis.json.
# UPGRADE=1: once every connection is up and the broadcast runs, each
# volley process in turn is upgraded in place (`volley upgrade`); each
# upgrade's outcome and wall time land in $OUT/million-$N-upgrades.txt. Give
# SECS enough for all of them (about 2 s each here).
# Loopback only; bounded; every process started here is stopped by PID
# (after upgrades, the PIDs the servers report).
# Usage: scripts/bench_million.sh [N=1000000] [MSG_RATE=1] [SECS=10] [PER=19000]
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
# The load generator opens thousands of connections per source address at
# thousands a second: lift the per-IP limits (the documented way off,
# docs/LIMITS.md).
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
N=${1:-1000000}
RATE=${2:-1}
SECS=${3:-10}
PER=${4:-19000}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
# NO_BUILD=1: use the binaries already in target/release (e.g. ones copied there).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace -q
P=$(( (N + PER - 1) / PER ))
PIDS=()
APIS=()
# The pid serving at API $1 now (an upgrade replaces the process).
serving_pid() { curl -s "http://$1/v1/upgrade" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["pid"])' 2>/dev/null || true; }
cleanup() {
    for a in "${APIS[@]}"; do
        p=$(serving_pid "$a")
        [ -z "$p" ] || kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
TARGETS=() ; PUBS=() ; REDIS=() ; NODES=()
# Listeners' address. In a cluster the nodes' connections to Redis take
# ephemeral ports of 127.0.0.1 (the tuned range is 1024-65535), which may be
# a later node's listening port there: the nodes listen on 127.0.0.2.
IP=127.0.0.1
if [ "${CLUSTER:-0}" = 1 ]; then
    IP=127.0.0.2
    redis-server --port 6392 --bind 127.0.0.1 --save '' --appendonly no --maxclients 10000 >/dev/null &
    RPID=$!
    PIDS+=("$RPID")
    for _ in $(seq 200); do redis-cli -p 6392 ping >/dev/null 2>&1 && break; sleep 0.05; done
    REDIS=(--redis-urls redis://127.0.0.1:6392)
fi
for i in $(seq 0 $((P - 1))); do
    ./target/release/volley serve --shards 1 --cpus $((i % 2)) "${REDIS[@]}" \
        --tcp-listen $IP:$((4000 + i)) --ws-listen $IP:$((8000 + i)) --api-listen $IP:$((5000 + i)) \
        --api-publish-listen $IP:$((6000 + i)) --log-level warn &
    PIDS+=($!)
    NODES+=($!)
    TARGETS+=($IP:$((4000 + i)))
    APIS+=($IP:$((5000 + i)))
    PUBS+=($IP:$((6000 + i)))
done
for a in "${APIS[@]}"; do
    for _ in $(seq 200); do curl -sf "http://$a/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
done
sleep 2 # let start-up allocation settle before the "before" sample
join() { local IFS=,; echo "$*"; }
case "${PUBLISH:-tcp}" in
    tcp) VIA=(--publish-tcp "$(join "${PUBS[@]}")") ;;
    http) VIA=(--http "$(join "${APIS[@]}")") ;;
    *) echo "PUBLISH must be tcp or http" >&2; exit 2 ;;
esac
if [ "${CLUSTER:-0}" = 1 ]; then
    # One publish, to one node: the cluster carries it to every other.
    VIA=(--publish-tcp "${PUBS[0]}")
    R0=$(awk '{print $14 + $15}' "/proc/$RPID/stat")
    C0=$(redis-cli -p 6392 INFO commandstats | tr -d '\r')
fi
echo "== $N connections over $P volley processes (pids $(join "${NODES[@]}"))"
./target/release/volley-loadgen broadcast --target "$(join "${TARGETS[@]}")" "${VIA[@]}" \
    --conns "$N" --workers "$P" --sources 64 --rate 10000 \
    --msg-rate "$RATE" --size 64 --duration "$SECS" --drain-secs 300 \
    --server-pid "$(join "${NODES[@]}")" --json >"$OUT/million-$N.json" &
LG=$!
PIDS+=("$LG")
if [ "${UPGRADE:-0}" = 1 ]; then
    UP="$OUT/million-$N-upgrades.txt"
    : >"$UP"
    total() {
        local t=0 a c
        for a in "${APIS[@]}"; do
            c=$(curl -s "http://$a/goim/online/total" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["conn_count"])' 2>/dev/null || echo 0)
            t=$((t + c))
        done
        echo "$t"
    }
    until [ "$(total)" -ge "$N" ]; do
        kill -0 "$LG" 2>/dev/null || break
        sleep 2
    done
    sleep 3 # the broadcast has begun
    t0=$(date +%s.%N)
    for a in "${APIS[@]}"; do
        s=$(date +%s.%N)
        if ./target/release/volley upgrade --api-listen "$a" --timeout-secs 120 >>"$UP" 2>&1; then ok=ok; else ok=failed; fi
        echo "upgrade $a: $ok in $(python3 -c "print(f'{$(date +%s.%N) - $s:.3f}')") s" | tee -a "$UP"
    done
    echo "all $P upgraded in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s" | tee -a "$UP"
fi
wait "$LG" || echo "the load generator exited $?"
cat "$OUT/million-$N.json"
if [ "${CLUSTER:-0}" = 1 ]; then
    R1=$(awk '{print $14 + $15}' "/proc/$RPID/stat")
    C1=$(redis-cli -p 6392 INFO commandstats | tr -d '\r')
    python3 - "$R0" "$R1" "$(getconf CLK_TCK)" "$C0" "$C1" > "$OUT/million-$N-redis.json" <<'PY'
import json, re, sys
r0, r1, hz, c0, c1 = sys.argv[1:]
calls = lambda t: {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\S+?):calls=(\d+)", t)}
a, b = calls(c0), calls(c1)
print(json.dumps({"redis_cpu_secs": (int(r1) - int(r0)) / int(hz),
                  "calls": {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0) > 0}}))
PY
    cat "$OUT/million-$N-redis.json"
fi
