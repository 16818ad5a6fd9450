#!/usr/bin/env bash
# A volley cluster against one node: N subscribers of one room spread
# round-robin over the nodes, a publisher on node 0's TCP publisher port,
# 64-byte messages at each rate for SECS seconds (volley-loadgen broadcast).
# Configurations (CONFIGS): `single` (one node, no Redis), `c1` (one node in
# cluster mode through Redis), `c3` (three nodes through one Redis). Every
# node runs SHARDS shards (1 by default: on this 2-core host the load
# generator and Redis need the rest). Besides the load generator's figures
# (deliveries/s, volley CPU per delivery summed over the nodes, latency,
# loss) it records Redis's CPU (from /proc) and the commands Redis ran
# (INFO commandstats) over the run (connects and drain included), per
# published message: EVALSHA (the publish script, plus each node's counts
# report once a second), PUBLISH (one per room message, from the script),
# and every command (scripts' own calls and the links' idle PINGs too). Loopback only;
# every process started here is stopped by PID. JSON per run in $OUT, a
# table at the end.
# Usage: scripts/bench_cluster.sh [N=19000] [RATES="5 50"] [SECS=10]
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
# The load generator opens thousands of connections per source address at
# thousands a second: lift the per-IP limits (the documented way off,
# docs/LIMITS.md).
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
N=${1:-19000}
RATES=${2:-"5 50"}
SECS=${3:-10}
CONFIGS=${CONFIGS:-"single c1 c3"}
SHARDS=${SHARDS:-1}
OUT=${OUT:-target/bench/cluster}
REDIS_PORT=6391
mkdir -p "$OUT"
command -v redis-server >/dev/null 2>&1 || { echo "redis-server missing (apt-get install redis-server)" >&2; exit 1; }
# NO_BUILD=1: use the binaries already in target/release (e.g. ones copied there).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace -q
PIDS=()
stop() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap stop EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Every command Redis has run, as JSON {name: calls} (commands a script
# calls count too).
calls() { redis-cli -p "$REDIS_PORT" INFO commandstats | python3 -c '
import sys, re, json
print(json.dumps({m.group(1): int(m.group(2)) for m in (re.match(r"cmdstat_(\S+?):calls=(\d+)", l) for l in sys.stdin) if m}))'; }
run() {
    local config=$1 rate=$2 nodes redis=() targets=() pids=()
    case $config in single) nodes=1 ;; c1) nodes=1; redis=(--redis-urls "redis://127.0.0.1:$REDIS_PORT") ;; c3) nodes=3; redis=(--redis-urls "redis://127.0.0.1:$REDIS_PORT") ;; esac
    local rpid=
    if [ ${#redis[@]} -gt 0 ]; then
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
        rpid=$!; PIDS+=("$rpid"); wait_port "$REDIS_PORT"
    fi
    for i in $(seq 0 $((nodes - 1))); do
        local b=$((5100 + 100 * i))
        ./target/release/volley serve --shards "$SHARDS" "${redis[@]}" --tcp-listen "127.0.0.1:$((b + 1))" \
            --ws-listen "127.0.0.1:$((b + 2))" --api-listen "127.0.0.1:$((b + 11))" \
            --api-publish-listen "127.0.0.1:$((b + 12))" --log-level warn &
        PIDS+=($!); pids+=($!); targets+=("127.0.0.1:$((b + 1))")
        wait_port $((b + 11))
    done
    sleep 1
    local t0 c0
    if [ -n "$rpid" ]; then t0=$(cpu_ticks "$rpid"); c0=$(calls); fi
    local start end
    start=$(date +%s.%N)
    ./target/release/volley-loadgen broadcast --conns "$N" --sources 16 --rate 10000 --size 64 \
        --target "$(IFS=,; echo "${targets[*]}")" --publish-tcp 127.0.0.1:5112 --room live://bench \
        --msg-rate "$rate" --duration "$SECS" --drain-secs 20 --json \
        --server-pid "$(IFS=,; echo "${pids[*]}")" > "$OUT/$config-$rate.json" || true
    end=$(date +%s.%N)
    if [ -n "$rpid" ]; then
        local t1 c1
        t1=$(cpu_ticks "$rpid"); c1=$(calls)
        python3 - "$OUT/$config-$rate.json" "$t0" "$t1" "$c0" "$c1" "$start" "$end" "$(getconf CLK_TCK)" <<'PY'
import json, sys
f, t0, t1, c0, c1, start, end, hz = sys.argv[1:]
d = json.load(open(f))
a, b = json.loads(c0), json.loads(c1)
diff = {k: v - a.get(k, 0) for k, v in b.items() if v - a.get(k, 0) > 0}
d["redis"] = {"cpu_secs": (int(t1) - int(t0)) / int(hz), "calls": diff, "wall_secs": float(end) - float(start)}
json.dump(d, open(f, "w"))
PY
    fi
    stop
}
for rate in $RATES; do
    for config in $CONFIGS; do
        run "$config" "$rate"
    done
done
python3 - "$OUT" $RATES -- $CONFIGS <<'PY'
import json, sys, os
out = sys.argv[1]
i = sys.argv.index("--")
rates, configs = sys.argv[2:i], sys.argv[i + 1:]
print(f"{'config':8} {'msg/s':>5} {'deliv/s':>10} {'volley µs/deliv':>15} {'p50 ms':>8} {'p99 ms':>8} {'lost':>6} {'redis cpu s':>11} {'redis µs/msg':>12} {'evalsha/msg':>11} {'publish/msg':>11} {'all/msg':>8}")
for rate in rates:
    for c in configs:
        p = os.path.join(out, f"{c}-{rate}.json")
        try:
            d = json.load(open(p))
        except Exception:
            print(f"{c:8} {rate:>5} (no result)")
            continue
        r = d.get("redis")
        pub = max(d["published"], 1)
        if r:
            n = r["calls"]
            ev = n.get("evalsha", 0) + n.get("eval", 0)
            redis = (f"{r['cpu_secs']:>11.2f} {r['cpu_secs'] * 1e6 / pub:>12.1f} {ev / pub:>11.2f} "
                     f"{n.get('publish', 0) / pub:>11.2f} {sum(n.values()) / pub:>8.2f}")
        else:
            redis = f"{'-':>11} {'-':>12} {'-':>11} {'-':>11} {'-':>8}"
        print(f"{c:8} {rate:>5} {d['deliveries_per_sec']:>10.0f} {d['server_cpu_us_per_delivery']:>15.3f} "
              f"{d['latency_us']['p50'] / 1000:>8.1f} {d['latency_us']['p99'] / 1000:>8.1f} {d['lost']:>6} {redis}")
PY
