#!/usr/bin/env bash
# Presence in a big room, one release server at a time on loopback (bounded,
# stops by itself): N version-2 subscribers in one room, CHURN_PCT% of them
# leaving and rejoining every 2 s for DURATION s while RATE msg/s are
# published, run twice on the same binary — without presence watchers, then
# with WATCHERS per load generator thread asking for presence events — and,
# in the second run once everyone has joined, QUERIES timed GET
# /v1/presence queries on the room.
# Usage: scripts/bench_presence.sh [N=19000] [DURATION=30] [RATE=5] [WATCHERS=5] [QUERIES=50]
# Results: target/bench/presence/*.json, queries.txt
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
DURATION=${2:-30}
RATE=${3:-5}
WATCHERS=${4:-5}
QUERIES=${5:-50}
CHURN_PCT=${CHURN_PCT:-10}
V=target/release/volley
LG=target/release/volley-loadgen
OUT=${OUT:-target/bench/presence}
mkdir -p "$OUT"
PID=
LGPID=
stop() {
    for p in $LGPID $PID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PID=; LGPID=
}
trap stop EXIT
start() {
    "$V" serve --tcp-listen 127.0.0.1:3301 --ws-listen 127.0.0.1:3302 --api-listen 127.0.0.1:3311 \
        --api-publish-listen 127.0.0.1:3312 --log-level warn &
    PID=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:3311/healthz >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 1
}
run() {
    "$LG" churn --target 127.0.0.1:3301 --publish-tcp 127.0.0.1:3312 --conns "$N" --room presence://big \
        --rate 5000 --sources 8 --msg-rate "$RATE" --duration "$DURATION" --churn-pct "$CHURN_PCT" \
        --churn-period-secs 2 --drain-secs 30 --server-pid "$PID" --watchers "$1" --json
}
for w in 0 "$WATCHERS"; do
    echo "== churn: $N subscribers, $CHURN_PCT% every 2 s, watchers per thread: $w"
    start
    timeout $((DURATION + 180)) bash -c "$(declare -f run); LG=$LG N=$N RATE=$RATE DURATION=$DURATION CHURN_PCT=$CHURN_PCT PID=$PID run $w" \
        > "$OUT/churn-watchers-$w.json" &
    LGPID=$!
    if [ "$w" != 0 ]; then
        for _ in $(seq 600); do
            n=$(curl -s "http://127.0.0.1:3311/v1/presence?room=presence://big&limit=1" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
            [ "${n:-0}" -ge "$N" ] && break
            sleep 0.1
        done
        : > "$OUT/queries.txt"
        for _ in $(seq "$QUERIES"); do
            curl -s -o /dev/null -w '%{time_total} %{size_download}\n' \
                "http://127.0.0.1:3311/v1/presence?room=presence://big&limit=100" >> "$OUT/queries.txt"
        done
        curl -s "http://127.0.0.1:3311/v1/presence?room=presence://big&limit=2" > "$OUT/query-sample.json"
    fi
    wait "$LGPID" || echo "churn exited $?"
    LGPID=
    stop
done
for w in 0 "$WATCHERS"; do
    python3 - "$OUT/churn-watchers-$w.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[1], {k: r.get(k) for k in ["reconnects", "received", "lost", "presence_events", "server_cpu_us_per_delivery"]})
PY
done
sort -n "$OUT/queries.txt" | awk '{a[NR]=$1} END {print "presence query seconds: min", a[1], "median", a[int((NR+1)/2)], "p90", a[int(NR*0.9)], "max", a[NR]}'
