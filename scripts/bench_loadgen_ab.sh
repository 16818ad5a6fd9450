#!/usr/bin/env bash
# The load generator's own cost, A/B: two volley-loadgen binaries (e.g. one
# built from an older commit) take turns against one volley server, 19,000
# subscribers, HTTP publisher; prints each run's CPU per delivery for the load
# generator, the server and the whole machine. Loopback only; bounded.
# Usage: scripts/bench_loadgen_ab.sh OLD_BINARY [NEW_BINARY=target/release/volley-loadgen] [RATES="5 50"] [ROUNDS=2]
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
# The load generator opens thousands of connections per source address at
# thousands a second: lift the per-IP limits (the documented way off,
# docs/LIMITS.md).
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
OLD=$1
NEW=${2:-target/release/volley-loadgen}
RATES=${3:-"5 50"}
ROUNDS=${4:-2}
OUT=${OUT:-target/bench/loadgen-ab}
mkdir -p "$OUT"
# NO_BUILD=1: use the binaries already in target/release (e.g. ones copied there).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace -q
./target/release/volley serve --tcp-listen 127.0.0.1:3201 --ws-listen 127.0.0.1:3202 --api-listen 127.0.0.1:3211 \
    --api-publish-listen 127.0.0.1:3212 --log-level warn &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf http://127.0.0.1:3211/healthz >/dev/null 2>&1 && break; sleep 0.05; done
sleep 1
for R in $RATES; do
    for round in $(seq "$ROUNDS"); do
        for which in old new; do
            BIN=$NEW; [ $which = old ] && BIN=$OLD
            timeout 120 "$BIN" broadcast --target 127.0.0.1:3201 --http 127.0.0.1:3211 --conns 19000 --sources 16 \
                --rate 5000 --msg-rate "$R" --size 64 --duration 10 --server-pid $PID --json \
                > "$OUT/$which-$R-$round.json" 2>/dev/null || true
            python3 -c "
import json; d=json.load(open('$OUT/$which-$R-$round.json'))
print(f\"$which {$R:>3} msg/s round $round: received {d['received']:,} lost {d['lost']}, \"
      f\"load generator {d['loadgen_cpu_us_per_delivery']:.2f} us, server {d['server_cpu_us_per_delivery']:.2f} us, \"
      f\"machine {d['machine_cpu_us_per_delivery']:.2f} us per delivery, p50 {d['latency_us']['p50']/1000:.0f} ms\")"
        done
    done
done
