#!/usr/bin/env bash
# Server A/B in one run: two volley binaries (e.g. one built from an older
# commit) take turns under the same load generator, ROUNDS times, one
# server at a time on the same ports. Per round and binary:
#   tcp:  idle RSS per connection at N, then room broadcasts at each rate
#         (TCP subscribers, HTTP publisher), as scripts/bench_clients.sh;
#   ws:   the generic WebSocket mode at each rate (WebSocket subscribers,
#         TCP publisher), as volley's part of scripts/bench_peers.sh.
# Prints a table of medians over the rounds: server CPU per delivery, RSS per
# connection, deliveries/s, p50/p99, lost. Loopback only; bounded.
# Usage: scripts/bench_server_ab.sh OLD_VOLLEY NEW_VOLLEY [N=19000] [RATES="5 50 200"] [ROUNDS=3]
# LOADGEN=path picks the load generator (default target/release/volley-loadgen).
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
NEW=$2
N=${3:-19000}
RATES=${4:-"5 50 200"}
ROUNDS=${5:-3}
LG=${LOADGEN:-target/release/volley-loadgen}
OUT=${OUT:-target/bench/server-ab}
mkdir -p "$OUT"
PID=
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap stop EXIT
start() {
    # The pre-sections flag names: both an old and a new binary take them.
    "$1" serve --tcp-listen 127.0.0.1:3201 --ws-listen 127.0.0.1:3202 --http-listen 127.0.0.1:3211 \
        --publish-listen 127.0.0.1:3212 --log warn &
    PID=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:3211/healthz >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 1 # let start-up allocation settle before the "before" sample
}
AUTH=$(python3 -c 'import struct,sys; b=b"{\"room_id\":\"live://bench\",\"accepts\":[]}"; sys.stdout.write((struct.pack(">IHHII",16+len(b),16,1,7,1)+b).hex())')
for round in $(seq "$ROUNDS"); do
    for which in old new; do
        BIN=$NEW; [ $which = old ] && BIN=$OLD
        echo "== round $round: $which ($BIN)"
        start "$BIN"
        timeout 120 "$LG" idle --target 127.0.0.1:3201 --conns "$N" --rate 5000 --server-pid "$PID" --hold-secs 3 \
            --json > "$OUT/$which-idle-$round.json" || true
        for R in $RATES; do
            timeout 180 "$LG" broadcast --target 127.0.0.1:3201 --http 127.0.0.1:3211 --conns "$N" \
                --rate 5000 --msg-rate "$R" --size 64 --duration 10 --server-pid "$PID" --json \
                > "$OUT/$which-tcp-$R-$round.json" || true
            timeout 180 "$LG" ws --target 127.0.0.1:3202 --ws /sub --first-binary-hex "$AUTH" --publish tcp \
                --publish-tcp 127.0.0.1:3212 --room live://bench --conns "$N" --sources 16 --rate 10000 --size 64 \
                --duration 10 --drain-secs 20 --msg-rate "$R" --server-pid "$PID" --json \
                > "$OUT/$which-ws-$R-$round.json" || true
        done
        stop
    done
done
python3 - "$OUT" "$ROUNDS" $RATES <<'PY'
import json, statistics, sys
out, rounds, rates = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def load(name):
    runs = []
    for r in range(1, rounds + 1):
        try:
            runs.append(json.load(open(f"{out}/{name}-{r}.json")))
        except Exception:
            pass
    return runs
def med(runs, f):
    vals = [f(d) for d in runs if f(d) is not None]
    return statistics.median(vals) if vals else float("nan")
print(f"\nmedians of {rounds} rounds (old / new)")
i = {w: load(f"{w}-idle") for w in ("old", "new")}
rss = lambda d: d.get("server_rss_per_conn_bytes")
print(f"idle RSS per connection: {med(i['old'], rss):,.0f} B / {med(i['new'], rss):,.0f} B")
print("| transport | rate | server CPU/delivery | deliveries/s | p50 | p99 | lost (sum) |")
print("|---|---|---|---|---|---|---|")
for t in ("tcp", "ws"):
    for r in rates:
        cells = []
        for f, fmt in (
            (lambda d: d["server_cpu_us_per_delivery"], "{:.2f} µs"),
            (lambda d: d["deliveries_per_sec"], "{:,.0f}"),
            (lambda d: d["latency_us"]["p50"] / 1000, "{:.0f} ms"),
            (lambda d: d["latency_us"]["p99"] / 1000, "{:.0f} ms"),
        ):
            a, b = (med(load(f"{w}-{t}-{r}"), f) for w in ("old", "new"))
            cells.append(f"{fmt.format(a)} / {fmt.format(b)}")
        lost = [sum(d["lost"] for d in load(f"{w}-{t}-{r}")) for w in ("old", "new")]
        print(f"| {t} | {r} | " + " | ".join(cells) + f" | {lost[0]} / {lost[1]} |")
PY
