#!/usr/bin/env bash
# Delivery guarantees under load, one release server at a time on loopback
# (bounded, stops by itself):
#   churn:   N version-2 subscribers, CHURN_PCT% reconnecting and resuming
#            every 2 s for DURATION s while a room broadcast runs at RATE msg/s;
#   inbox:   USERS offline users x MSGS pushes each, then connected (at most
#            15,000 at once), delivered and acknowledged;
#   history: ROOMS rooms x 100 messages of 64 B stored, memory per message.
# Usage: scripts/bench_delivery.sh [N=19000] [RATE=20] [DURATION=60] [USERS=100000] [MSGS=10] [ROOMS=10000]
# Results: target/bench/delivery/*.json
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
RATE=${2:-20}
DURATION=${3:-60}
USERS=${4:-100000}
MSGS=${5:-10}
ROOMS=${6:-10000}
CHURN_PCT=${CHURN_PCT:-10}
V=target/release/volley
LG=target/release/volley-loadgen
OUT=${OUT:-target/bench/delivery}
mkdir -p "$OUT"
PID=
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap stop EXIT
start() {
    "$V" serve --tcp-listen 127.0.0.1:3301 --ws-listen 127.0.0.1:3302 --api-listen 127.0.0.1:3311 \
        --api-publish-listen 127.0.0.1:3312 --log-level warn "$@" &
    PID=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:3311/healthz >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 1
}

echo "== churn: $N subscribers, $CHURN_PCT% every 2 s, $RATE msg/s for $DURATION s"
start
timeout $((DURATION + 180)) "$LG" churn --target 127.0.0.1:3301 --publish-tcp 127.0.0.1:3312 --conns "$N" \
    --rate 5000 --sources 8 --msg-rate "$RATE" --duration "$DURATION" --churn-pct "$CHURN_PCT" \
    --churn-period-secs 2 --drain-secs 30 --server-pid "$PID" --json > "$OUT/churn.json" || echo "churn exited $?"
stop
cat "$OUT/churn.json"

echo "== inbox: $USERS users x $MSGS pushes"
start --inbox-memory $((4 << 30))
timeout 600 "$LG" inbox --target 127.0.0.1:3301 --http 127.0.0.1:3311 --publish-tcp 127.0.0.1:3312 \
    --conns "$USERS" --messages "$MSGS" --concurrent 15000 --rate 10000 --sources 8 --workers 2 \
    --drain-secs 300 --server-pid "$PID" --json > "$OUT/inbox.json" || echo "inbox exited $?"
stop
cat "$OUT/inbox.json"

echo "== history: $ROOMS rooms x 100 messages of 64 B"
start --history-memory $((4 << 30))
python3 - "$PID" "$ROOMS" > "$OUT/history.json" <<'PY'
import json, sys, time, urllib.request
pid, rooms = int(sys.argv[1]), int(sys.argv[2])
api = "http://127.0.0.1:3311"
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
def stats():
    return json.load(urllib.request.urlopen(api + "/v1/stats"))["data"]["total"]
before = rss()
body = "x" * 64
for m in range(100):
    for r0 in range(0, rooms, 1000):
        msgs = [{"target": "room", "room": f"hist://{r}", "op": 1000, "body": body} for r in range(r0, min(rooms, r0 + 1000))]
        req = urllib.request.Request(api + "/v1/publish", data=json.dumps({"messages": msgs}).encode(), method="POST")
        urllib.request.urlopen(req).read()
time.sleep(2)
after, s = rss(), stats()
n = s["history_messages"]
print(json.dumps({"rooms": rooms, "messages": n, "payload_bytes": 64, "server_rss_before": before, "server_rss_after": after,
                  "server_rss_per_message_bytes": (after - before) / max(n, 1),
                  "history_bytes_per_message": s["history_bytes"] / max(n, 1),
                  "evicted": s["history_evicted_limit"] + s["history_evicted_memory"]}))
PY
stop
cat "$OUT/history.json"
