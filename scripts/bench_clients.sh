#!/usr/bin/env bash
# Reproduces the TCP figures in BENCHMARKS.md: server RSS per idle connection at
# N connections, then room broadcasts of 64-byte messages to N subscribers at
# several publish rates. Loopback only; every run is bounded and stops itself.
# Usage: scripts/bench_clients.sh [N=19000] [RATES="10 50 200"] [SECS=10]
# TRANSPORT=ws runs the same over WebSocket (volley's /sub endpoint).
# PUBLISH=tcp publishes over the TCP publisher connection instead of HTTP.
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
RATES=${2:-"10 50 200"}
SECS=${3:-10}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
# NO_BUILD=1: use the binaries already in target/release (e.g. ones copied there).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace -q
TCP=127.0.0.1:3201
WS=127.0.0.1:3202
HTTP=127.0.0.1:3211
PUB=127.0.0.1:3212
TRANSPORT=${TRANSPORT:-tcp}
case "${PUBLISH:-http}" in
    http) VIA=(--http $HTTP) ;;
    tcp) VIA=(--publish-tcp $PUB) ;;
    *) echo "PUBLISH must be http or tcp" >&2; exit 2 ;;
esac
case "$TRANSPORT" in
    tcp) TARGET=(--target $TCP) ;;
    ws) TARGET=(--target $WS --ws /sub) ;;
    *) echo "TRANSPORT must be tcp or ws" >&2; exit 2 ;;
esac
./target/release/volley serve --tcp-listen $TCP --ws-listen $WS --api-listen $HTTP --api-publish-listen $PUB --log-level warn &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf http://$HTTP/healthz >/dev/null 2>&1 && break; sleep 0.05; done
sleep 1 # let start-up allocation settle before the "before" sample
echo "== idle ($TRANSPORT): $N connections (server pid $PID)"
./target/release/volley-loadgen idle "${TARGET[@]}" --conns "$N" --rate 5000 --server-pid $PID --hold-secs 3 --json \
    | tee "$OUT/idle-$TRANSPORT-$N.json"
for R in $RATES; do
    echo "== broadcast ($TRANSPORT, publish ${PUBLISH:-http}): $N subscribers, $R msg/s x ${SECS}s, 64 B"
    ./target/release/volley-loadgen broadcast "${TARGET[@]}" "${VIA[@]}" --conns "$N" --rate 5000 \
        --msg-rate "$R" --size 64 --duration "$SECS" --server-pid $PID --json \
        | tee "$OUT/broadcast-$TRANSPORT-${PUBLISH:-http}-$N-$R.json" || true
done
