#!/usr/bin/env bash
# Hostile clients, re-run: every `volley-loadgen attack` kind against one or
# more volley binaries in turn (e.g. the build before the limits and the one
# after), one server at a time on the same loopback ports, each attack on a
# fresh server with its defaults (and an API key where the attack is about
# unauthenticated input; a 1,024-descriptor limit where the issue measured
# one). Each report (attack, server RSS and CPU, counters, bystander delays)
# goes to $OUT/<label>-<kind>.json; a table follows. Loopback only, bounded.
# Usage: scripts/bench_hostile.sh LABEL=BINARY [LABEL=BINARY...]
#        KINDS="marks joins ..." SECS=30 picks attacks and their length.
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
cd "$(dirname "$0")/.."
LG=${LOADGEN:-target/release/volley-loadgen}
OUT=${OUT:-target/bench/hostile}
SECS=${SECS:-30}
KINDS=${KINDS:-"marks joins deep-patterns pattern-cpu publisher-preauth slow-headers bodies handshakes inbox-cap history-cap"}
KEY=hostile-bench-key-0123456789abcdef
mkdir -p "$OUT"
PID=
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap stop EXIT
start() { # BINARY KIND
    local args=() nofile=20000
    case $2 in
        publisher-preauth) args=(--api-key "$KEY") ;;
        slow-headers) args=(--api-key "$KEY"); nofile=1024 ;;
        handshakes) nofile=1024 ;;
    esac
    # The pre-sections flag names: an older binary takes them too.
    prlimit --nofile=$nofile:$nofile "$1" serve --shards 2 --tcp-listen 127.0.0.1:3201 --ws-listen 127.0.0.1:3202 \
        --http-listen 127.0.0.1:3211 --publish-listen 127.0.0.1:3212 --log warn "${args[@]}" 2>"$OUT/server.log" &
    PID=$!
    for _ in $(seq 100); do curl -sf -H "X-Api-Key: $KEY" http://127.0.0.1:3211/healthz >/dev/null 2>&1 && break; sleep 0.05; done
    sleep 1
}
for spec in "$@"; do
    label=${spec%%=*}
    bin=${spec#*=}
    for kind in $KINDS; do
        echo "== $label: $kind"
        start "$bin" "$kind"
        key=()
        case $kind in publisher-preauth | slow-headers) key=(--api-key "$KEY") ;; esac
        timeout $((SECS + 120)) "$LG" attack "$kind" --target 127.0.0.1:3201 --ws 127.0.0.1:3202 \
            --http 127.0.0.1:3211 --publish-tcp 127.0.0.1:3212 "${key[@]}" --secs "$SECS" \
            --server-pid "$PID" --json > "$OUT/$label-$kind.json" || true
        stop
    done
done
python3 - "$OUT" "$@" <<'PY'
import json, sys
out, specs = sys.argv[1], sys.argv[2:]
labels = [s.split('=')[0] for s in specs]
kinds = sorted({f.split('-', 1)[1][:-5] for f in __import__('os').listdir(out) if f.endswith('.json')})
print(f"{'attack':<18} {'build':<6} {'RSS peak MB':>11} {'CPU %':>6} {'bystander':>13} {'max delay ms':>12}  attack got")
for k in kinds:
    for l in labels:
        try:
            r = json.load(open(f"{out}/{l}-{k}.json"))
        except Exception:
            continue
        s, b = r.get('server') or {}, r.get('bystander') or {}
        got = f"{b.get('received', 0)}/{b.get('published', 0)}"
        print(f"{k:<18} {l:<6} {s.get('rss_peak_mb', 0):>11.0f} {s.get('cpu_pct', 0):>6.0f} {got:>13} "
              f"{b.get('delay_ms_max', 0):>12.0f}  {json.dumps(r.get('attack'))}")
PY
