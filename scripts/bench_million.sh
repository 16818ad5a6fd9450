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
# Loopback only; bounded; every process started here is stopped by PID.
# Usage: scripts/bench_million.sh [N=1000000] [MSG_RATE=1] [SECS=10] [PER=19000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RATE=${2:-1}
SECS=${3:-10}
PER=${4:-19000}
OUT=${OUT:-target/bench}
mkdir -p "$OUT"
cargo build --release --workspace -q
P=$(( (N + PER - 1) / PER ))
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
TARGETS=() ; APIS=() ; PUBS=()
for i in $(seq 0 $((P - 1))); do
    ./target/release/volley serve --shards 1 --cpus $((i % 2)) \
        --tcp-listen 127.0.0.1:$((4000 + i)) --ws-listen 127.0.0.1:$((8000 + i)) --api-listen 127.0.0.1:$((5000 + i)) \
        --api-publish-listen 127.0.0.1:$((6000 + i)) --log-level warn &
    PIDS+=($!)
    TARGETS+=(127.0.0.1:$((4000 + i)))
    APIS+=(127.0.0.1:$((5000 + i)))
    PUBS+=(127.0.0.1:$((6000 + i)))
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
echo "== $N connections over $P volley processes (pids $(join "${PIDS[@]}"))"
./target/release/volley-loadgen broadcast --target "$(join "${TARGETS[@]}")" "${VIA[@]}" \
    --conns "$N" --workers "$P" --sources 64 --rate 10000 \
    --msg-rate "$RATE" --size 64 --duration "$SECS" --drain-secs 300 \
    --server-pid "$(join "${PIDS[@]}")" --json | tee "$OUT/million-$N.json"
