#!/usr/bin/env bash
# Crash safety of the durable store, measured: ROUNDS rounds of a publish
# storm (volley-loadgen durable publish: ROOMS rooms, USERS users, a message
# id on every publish) cut by `kill -9` of the server at a random moment,
# then a restart and `volley-loadgen durable verify` (every acknowledged
# publish stored exactly once, offsets without gap or reuse, epochs kept);
# then one more round ended by SIGTERM. Meanwhile version-2 subscribers
# churn in one room (volley-loadgen churn, publishes retried across the
# restarts with ids) and must see nothing lost, duplicated or out of order.
# Loopback only; every process it starts is stopped by PID.
#
# Usage: scripts/crash_rounds.sh [ROUNDS=20] [SYNC=batch]
# Env: NO_BUILD=1 (use target/release as is), BASE_PORT (default 3301),
#      STORM_SECS (default 6), ROOMS (1000), USERS (10000), CONNS (16), OUT (dir).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
SYNC=${2:-batch}
BASE=${BASE_PORT:-3301}
STORM=${STORM_SECS:-6}
ROOMS=${ROOMS:-1000}
USERS=${USERS:-10000}
CONNS=${CONNS:-16}
OUT=${OUT:-$(mktemp -d /tmp/volley-crash.XXXXXX)}
mkdir -p "$OUT"
LOG=$OUT/acked.log
: >"$LOG"
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p volley -p volley-loadgen
BIN=target/release/volley
LG=target/release/volley-loadgen
TCP=127.0.0.1:$BASE WS=127.0.0.1:$((BASE + 1)) API=127.0.0.1:$((BASE + 10)) PUB=127.0.0.1:$((BASE + 11))
SERVER=""
CHURN=""
cleanup() {
    for p in $SERVER $CHURN; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start() {
    "$BIN" serve --tcp-listen "$TCP" --ws-listen "$WS" --api-listen "$API" --api-publish-listen "$PUB" \
        --storage-mode disk --storage-dir "$OUT/store" --storage-sync "$SYNC" \
        --history-messages 1000000 --history-max-age-secs 86400 --history-max-bytes 1073741824 \
        --history-memory 8589934592 --inbox-messages 1000000 --inbox-bytes 1073741824 \
        --inbox-memory 8589934592 --api-dedup-window-secs 3600 \
        --limits-conn-rate-per-ip 0 --limits-max-conns-per-ip 0 --limits-max-handshakes-per-ip 0 \
        >>"$OUT/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 600); do
        # Ours answering, not another process on the port.
        kill -0 "$SERVER" 2>/dev/null || { echo "the server exited; see $OUT/server.log" >&2; exit 1; }
        if curl -sf "http://$API/healthz" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "the server did not come up; see $OUT/server.log" >&2
    exit 1
}

verify() {
    if ! "$LG" durable verify --http "$API" --target "$TCP" --log "$LOG" >>"$OUT/verify.jsonl" 2>>"$OUT/verify.err"; then
        echo "round $1: verify FAILED: $(tail -1 "$OUT/verify.jsonl")" >&2
        exit 1
    fi
    echo "round $1 ($2): $(tail -1 "$OUT/verify.jsonl")"
}

# Starts a storm in the background; its PID in STORM_PID.
storm() {
    "$LG" durable publish --http "$API" --rooms "$ROOMS" --users "$USERS" --conns "$CONNS" \
        --secs "$STORM" --log "$LOG" --run "r$1" >>"$OUT/publish.jsonl" 2>>"$OUT/publish.err" &
    STORM_PID=$!
}

if curl -s "http://$API/healthz" >/dev/null 2>&1; then
    echo "something already answers on $API: stop it or set BASE_PORT" >&2
    exit 1
fi
start
# Subscribers across every round: 200 version-2 clients in one room, 10 %
# reconnecting every 2 s, 20 msg/s retried across the restarts.
"$LG" churn --target "$TCP" --http "$API" --room live://crash --conns 200 --rate 2000 \
    --churn-pct 10 --churn-period-secs 2 --retry-secs 60 --msg-rate 20 \
    --duration $(( (ROUNDS + 1) * (STORM + 4) )) --drain-secs 30 --json >"$OUT/churn.json" 2>"$OUT/churn.err" &
CHURN=$!
sleep 3
for r in $(seq 1 "$ROUNDS"); do
    storm "$r"
    # A random moment in the storm: 0.5 .. STORM-0.5 s.
    sleep "$(awk -v s="$STORM" -v r="$RANDOM" 'BEGIN { printf "%.2f", 0.5 + (s - 1) * r / 32767 }')"
    kill -9 "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    wait "$STORM_PID" || true
    start
    verify "$r" "kill -9"
done
storm term
sleep "$(awk -v s="$STORM" 'BEGIN { printf "%.2f", s / 2 }')"
kill -TERM "$SERVER"
wait "$SERVER" 2>/dev/null || true
wait "$STORM_PID" || true
start
verify term SIGTERM
if wait "$CHURN"; then
    echo "churn: $(cat "$OUT/churn.json")"
else
    echo "churn FAILED: $(cat "$OUT/churn.json") $(tail -3 "$OUT/churn.err")" >&2
    exit 1
fi
kill -TERM "$SERVER"
wait "$SERVER" 2>/dev/null || true
SERVER=""
echo "acknowledged publishes in all: $(wc -l <"$LOG"); results in $OUT"
