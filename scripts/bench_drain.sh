#!/usr/bin/env bash
# `volley drain` under load: N version-2 subscribers of one room (loadgen
# churn with no churn of its own) while a room broadcast runs at RATE msg/s;
# once all are joined and the broadcast has run 5 s, `volley drain --over
# OVER` tells each to reconnect. They reconnect to the same server at once
# (it keeps whoever comes back) and resume from their offsets. Reports the
# server's closes per second of the run as the clients saw them, and the
# load generator's loss, duplicate and gap counts. Loopback only; bounded;
# stops what it started, by PID.
# Usage: scripts/bench_drain.sh [N=19000] [OVER=30] [RATE=50]
# Env: NO_BUILD=1, OUT (default target/bench/drain), NO_DRAIN=1 (the same
#      run without the drain, to compare with)
set -euo pipefail
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
. scripts/churn_lib.sh
N=${1:-19000}
OVER=${2:-30}
RATE=${3:-50}
DURATION=$((OVER + 15))
OUT=${OUT:-target/bench/drain}
mkdir -p "$OUT"
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p volley -p volley-loadgen
V=target/release/volley
LG=target/release/volley-loadgen
API=127.0.0.1:3411
PID= LPID=
stop() {
    [ -z "$LPID" ] || { kill "$LPID" 2>/dev/null || true; wait "$LPID" 2>/dev/null || true; }
    [ -z "$PID" ] || { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
}
trap stop EXIT
"$V" serve --tcp-listen 127.0.0.1:3401 --ws-listen 127.0.0.1:3402 --api-listen "$API" \
    --api-publish-listen 127.0.0.1:3412 --storage-mode memory --log-level warn &
PID=$!
for _ in $(seq 100); do curl -sf "http://$API/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
timeout $((DURATION + 240)) "$LG" churn --target 127.0.0.1:3401 --publish-tcp 127.0.0.1:3412 --conns "$N" \
    --rate 5000 --sources 8 --msg-rate "$RATE" --duration "$DURATION" --churn-pct 0 \
    --drain-secs 30 --server-pid "$PID" --json >"$OUT/churn.json" 2>"$OUT/churn.log" &
LPID=$!
joined=$(wait_joined "$API" "$N")
sleep 5
if [ "${NO_DRAIN:-}" = 1 ]; then
    echo "== no drain ($joined connected)"
else
    echo "== volley drain --over $OVER ($joined connected)"
    "$V" drain --over "$OVER" --api-listen "$API" | tee "$OUT/drain.log"
fi
wait "$LPID" || echo "churn exited $?"
LPID=
churn_report "$OUT/churn.json"
python3 -c 'import json,sys; print("server closes per second of the run:", json.load(open(sys.argv[1]))["server_closes_per_sec"])' "$OUT/churn.json"
echo "results in $OUT"
