#!/usr/bin/env bash
# `volley upgrade` under load: N subscribers of one room (volley-loadgen
# churn with no churn of its own: 30 % over WebSocket, 20 % version 1, 10 %
# on a pattern matching the room, the rest version-2 members, 50 per
# thread watching presence; each sends a heartbeat every 5 s, and 200
# pushes a second go to their users, acknowledged) while a room broadcast
# runs at RATE msg/s over HTTP (message ids, each publish retried while the
# server is away, so none is lost or doubled by the switch); once all are
# joined, UPGRADES upgrades in a row, one every GAP seconds, each timed
# from `volley upgrade` to its answer. Reports the load generator's
# reconnects (server closes), loss, duplicates, gaps, user pushes,
# heartbeats, pauses and latency; with NO_UPGRADE=1 the same run without
# upgrades, to compare with. BROKEN=exit puts a binary that exits 1 at the
# server's path before the upgrades; BROKEN=crash makes each new process
# die while taking over: every upgrade must then fail and nobody notice.
# The server keeps its store on disk (the default). Loopback only;
# bounded; stops what it started by PID (the last upgrade's process too).
# Usage: scripts/bench_upgrade.sh [N=19000] [UPGRADES=10] [RATE=50] [GAP=5]
# Env: NO_BUILD=1, NO_UPGRADE=1, BROKEN=exit|crash, MIX=0 (version-2 TCP
# members only), OUT (default target/bench/upgrade)
set -euo pipefail
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
. scripts/churn_lib.sh
N=${1:-19000}
UPGRADES=${2:-10}
RATE=${3:-50}
GAP=${4:-5}
DURATION=$((UPGRADES * GAP + 15))
OUT=${OUT:-target/bench/upgrade}
mkdir -p "$OUT"
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p volley -p volley-loadgen
V=$PWD/target/release/volley
LG=target/release/volley-loadgen
API=127.0.0.1:3511
STORE=$(mktemp -d /tmp/volley-bench-upgrade.XXXXXX)
PID= LPID= BIN=
SERVER_ENV=()
case "${BROKEN:-}" in
'') ;;
# The server runs from a copy, so the copy can be replaced as a deploy
# replaces the file at the path.
exit) BIN=$(mktemp -d /tmp/volley-bench-bin.XXXXXX) && cp "$V" "$BIN/volley" && V=$BIN/volley ;;
crash) SERVER_ENV=(VOLLEY_TEST_HANDOFF_ABORT=1) ;;
*) echo "BROKEN is exit or crash" >&2 && exit 2 ;;
esac
MIXED=()
[ "${MIX:-1}" = 0 ] || MIXED=(--ws-target 127.0.0.1:3502 --ws-pct 30 --v1-pct 20 --pattern-pct 10
    --watchers 50 --heartbeat-secs 5 --push-rate 200)
server_pid() { curl -s "http://$API/v1/upgrade" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["pid"])' 2>/dev/null || true; }
stop() {
    [ -z "$LPID" ] || { kill "$LPID" 2>/dev/null || true; wait "$LPID" 2>/dev/null || true; }
    local now
    now=$(server_pid)
    [ -z "$now" ] || kill "$now" 2>/dev/null || true
    [ -z "$PID" ] || { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    sleep 1
    rm -rf "$STORE" ${BIN:+"$BIN"}
}
CTL=$V
trap stop EXIT
env "${SERVER_ENV[@]}" "$V" serve --tcp-listen 127.0.0.1:3501 --ws-listen 127.0.0.1:3502 --api-listen "$API" \
    --api-publish-listen 127.0.0.1:3512 --storage-dir "$STORE" --log-level info 2>"$OUT/server.log" &
PID=$!
for _ in $(seq 100); do curl -sf "http://$API/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
timeout $((DURATION + 240)) "$LG" churn --target 127.0.0.1:3501 --http "$API" --retry-secs 10 --conns "$N" \
    --rate 5000 --sources 8 --msg-rate "$RATE" --duration "$DURATION" --churn-pct 0 \
    --drain-secs 30 "${MIXED[@]}" --json >"$OUT/churn.json" 2>"$OUT/churn.log" &
LPID=$!
joined=$(wait_joined "$API" "$N")
if [ "${BROKEN:-}" = exit ]; then
    CTL=$BIN/volley-ctl
    cp "$V" "$CTL"
    rm "$V" && printf '#!/bin/sh\nexit 1\n' >"$V" && chmod +x "$V"
fi
sleep "$GAP"
: >"$OUT/upgrades.txt"
: >"$OUT/upgrade-times.txt"
if [ "${NO_UPGRADE:-}" != 1 ]; then
    for i in $(seq 1 "$UPGRADES"); do
        t0=$(date +%s.%N)
        echo "$t0" >>"$OUT/upgrade-times.txt"
        if "$CTL" upgrade --api-listen "$API" >>"$OUT/upgrades.txt" 2>&1; then ok=ok; else ok=failed; fi
        t1=$(date +%s.%N)
        echo "upgrade $i: $ok in $(python3 -c "print(f'{$t1 - $t0:.3f}')") s" | tee -a "$OUT/upgrades.txt"
        [ "$i" -eq "$UPGRADES" ] || sleep "$GAP"
    done
fi
wait "$LPID" || echo "churn exited $?"
LPID=
churn_report "$OUT/churn.json"
# Delivery latency in the seconds of each switch (the second an upgrade
# began and the next) against the other seconds of the broadcast.
python3 - "$OUT/churn.json" "$OUT/upgrade-times.txt" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
starts = [float(t) for t in open(sys.argv[2]).read().split()]
p99 = {s: p for s, p, _, _ in d.get("latency_by_sec", [])}
switch = set()
for t in starts:
    s = int(t - d["started_unix"])
    switch |= {s, s + 1}
during = [p99[s] for s in sorted(switch) if s in p99]
# The broadcast's seconds: from the first upgrade's second minus the gap
# to the end (or all, without upgrades), leaving out the ramp.
first = min(switch) - 5 if switch else min(p99, default=0)
other = [p for s, p in p99.items() if s not in switch and s >= first]
f = lambda xs: f"median {statistics.median(xs):.1f} / max {max(xs):.1f} ms over {len(xs)} s" if xs else "none"
print("per-second p99 latency, switch seconds:", f(during))
print("per-second p99 latency, other seconds: ", f(other))
PY
# Each hand-off as the old process logged it: connections, and the
# milliseconds until hello, until quiet (records taken), until adopted.
grep 'handed over' "$OUT/server.log" | sed -E 's/.*connections=([0-9]+) hello_ms=([0-9]+) quiet_ms=([0-9]+) adopted_ms=([0-9]+).*/connections \1, hello \2 ms, quiet \3 ms, adopted \4 ms/' || true
echo "results in $OUT"
