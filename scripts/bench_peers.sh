#!/usr/bin/env bash
# Side by side: volley, uWebSockets.js (peers/uws, its built-in topic
# publish), nats-server (WebSocket listener) and a plain tokio +
# tokio-tungstenite broadcast server (peers/tokio-broadcast), each driven by
# `volley-loadgen ws` (the generic WebSocket mode) with identical parameters:
# N subscribers, 64-byte time-stamped messages at each rate for SECS seconds.
# One server runs at a time, on the same 2 cores as the load generator.
# Each server's write syscalls (sendmsg, sendto, write, writev) and
# io_uring_enter calls are counted with perf's syscall tracepoints over the
# whole run (connects and handshakes included: N upgrade answers). volley
# submits most of its sends as io_uring SQEs (several per io_uring_enter),
# so for volley the column counts syscalls, not sends; its /v1/stats
# `writes` counts sends.
# Installs nats-server from apt and uWebSockets.js from npm when missing and
# in SERVERS. NO_BUILD=1 skips the release build.
# Loopback only; every process started here is stopped by PID. JSON per run
# in $OUT, a table at the end. SERVERS picks which servers run (volley1:
# volley with one shard). VOLLEY_ARGS adds flags to both volley runs (for
# example "--client-flush-delay-ms 100").
# Usage: scripts/bench_peers.sh [N=19000] [RATES="5 50 100 200"] [SECS=10]
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
RATES=${2:-"5 50 100 200"}
SERVERS=${SERVERS:-"volley uws nats tokio"}
SECS=${3:-10}
OUT=${OUT:-target/bench/peers}
mkdir -p "$OUT"
# Only the peers this run compares are installed.
runs() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if runs nats && ! command -v nats-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y -qq nats-server
fi
if runs uws && [ ! -d peers/uws/node_modules/uWebSockets.js ]; then
    (cd peers/uws && npm install --no-audit --no-fund --loglevel=error)
fi
# NO_BUILD=1: use the binaries already in target/release (e.g. ones copied there).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace -q
LG=(./target/release/volley-loadgen ws --conns "$N" --sources 16 --rate 10000 --size 64 --duration "$SECS" --drain-secs 20 --json)
PID=
PERF=
stop() {
    if [ -n "$PERF" ]; then kill -INT "$PERF" 2>/dev/null || true; wait "$PERF" 2>/dev/null || true; PERF=; fi
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi
}
# Counts the server's syscalls until stop (perf's tracepoints: no slowdown
# worth measuring); the counts land in $OUT/<name>.perf.
count() {
    perf stat -x, -e 'syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_io_uring_enter' \
        -p "$PID" -o "$OUT/$1.perf" 2>/dev/null &
    PERF=$!
}
trap stop EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# volley: subscribers authenticate into live://bench with a binary frame; the
# publisher sends room pushes over volley's TCP publisher connection (open
# loop, like the NATS and tokio publishers). VOLLEY_PUBLISH=http POSTs each
# message to the HTTP API instead (closed loop, the earlier runs).
AUTH=$(python3 -c 'import struct,sys; b=b"{\"room_id\":\"live://bench\",\"accepts\":[]}"; sys.stdout.write((struct.pack(">IHHII",16+len(b),16,1,7,1)+b).hex())')
run_volley() { volley_as volley 0 "$1"; }
# volley with one shard: on this 2-core host the load generator takes a core
# of its own, which a single-threaded peer leaves it and two shards do not.
run_volley1() { volley_as volley1 1 "$1"; }
volley_as() {
    # shellcheck disable=SC2086 # VOLLEY_ARGS is a list of flags
    ./target/release/volley serve --shards "$2" ${VOLLEY_ARGS:-} --tcp-listen 127.0.0.1:3201 --ws-listen 127.0.0.1:3202 \
        --api-listen 127.0.0.1:3211 --api-publish-listen 127.0.0.1:3212 --log-level warn &
    PID=$!; wait_port 3211; sleep 1
    if [ "${VOLLEY_PUBLISH:-tcp}" = http ]; then
        VIA=(--publish http --publish-http 127.0.0.1:3211 --publish-path "/goim/push/room?operation=1000&type=live&room=bench")
    else
        VIA=(--publish tcp --publish-tcp 127.0.0.1:3212 --room live://bench)
    fi
    count "$1-$3"
    "${LG[@]}" --target 127.0.0.1:3202 --ws /sub --first-binary-hex "$AUTH" "${VIA[@]}" \
        --msg-rate "$3" --server-pid "$PID" > "$OUT/$1-$3.json" || true
    stop
}

# NATS: subscribers CONNECT and SUB over the WebSocket listener; the publisher
# PUBs on its own WebSocket connection.
cat > "$OUT/nats.conf" <<CONF
listen: 127.0.0.1:4222
websocket { listen: "127.0.0.1:3302", no_tls: true }
max_connections: 1000000
CONF
run_nats() {
    nats-server -c "$OUT/nats.conf" > "$OUT/nats.log" 2>&1 &
    PID=$!; wait_port 3302; sleep 1
    count "nats-$1"
    "${LG[@]}" --target 127.0.0.1:3302 --ws / --publish ws \
        --first-message 'CONNECT {"verbose":false}\r\nSUB bench 1\r\n' \
        --publisher-first-message 'CONNECT {"verbose":false}\r\n' \
        --publish-template 'PUB bench {len}\r\n{payload}\r\n' \
        --msg-rate "$1" --server-pid "$PID" > "$OUT/nats-$1.json" || true
    stop
}

# tokio-tungstenite: every message from any client goes to all clients.
run_tokio() {
    ./target/release/tokio-broadcast 127.0.0.1:3303 2>/dev/null &
    PID=$!; wait_port 3303; sleep 1
    count "tokio-$1"
    "${LG[@]}" --target 127.0.0.1:3303 --ws / --publish ws --msg-rate "$1" --server-pid "$PID" > "$OUT/tokio-$1.json" || true
    stop
}

# uWebSockets.js: subscribers send "S bench"; the publisher sends
# "P bench <payload>" on its own WebSocket and the server publishes the
# payload to the topic (peers/uws/server.js).
run_uws() {
    node peers/uws/server.js 3304 > "$OUT/uws.log" 2>&1 &
    PID=$!; wait_port 3304; sleep 1
    count "uws-$1"
    "${LG[@]}" --target 127.0.0.1:3304 --ws / --publish ws --first-message 'S bench' \
        --publish-template 'P bench {payload}' --msg-rate "$1" --server-pid "$PID" > "$OUT/uws-$1.json" || true
    stop
}

for R in $RATES; do
    for S in $SERVERS; do
        echo "== $S: $N WebSocket subscribers, $R msg/s x ${SECS}s, 64 B"
        "run_$S" "$R"
    done
done
python3 - "$OUT" "$N" "$SERVERS" $RATES <<'PY'
import json, sys
out, n, servers, rates = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]

def syscalls(name):
    """(writes, io_uring_enter) counted by perf over the run, or None."""
    try:
        rows = [l.split(",") for l in open(f"{out}/{name}.perf") if l.count(",") >= 2 and not l.startswith("#")]
    except OSError:
        return None
    c = {r[2]: int(r[0]) for r in rows if r[0].isdigit()}
    writes = sum(v for k, v in c.items() if not k.endswith("io_uring_enter"))
    return writes, c.get("syscalls:sys_enter_io_uring_enter", 0)

print(f"\n{n} WebSocket subscribers, 64 B messages")
print("| rate | server | achieved msg/s | deliveries/s | lost | server CPU/delivery | machine CPU/delivery | p50 | p99 | server RSS/conn | deliveries per write | io_uring_enter |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rates:
    for s in servers:
        try:
            d = json.load(open(f"{out}/{s}-{r}.json"))
        except Exception:
            print(f"| {r} | {s} | (no result) |"); continue
        l = d["latency_us"]
        sc = syscalls(f"{s}-{r}")
        # The handshakes' N upgrade answers are writes too; leave them out.
        per_write = f"{d['received'] / max(sc[0] - int(n), 1):.2f}" if sc else "?"
        uring = f"{sc[1]:,}" if sc else "?"
        print(f"| {r} | {s} | {d['publish_rate']:.1f} | {d['deliveries_per_sec']:,.0f} | {d['lost']} | "
              f"{d['server_cpu_us_per_delivery'] or 0:.2f} µs | {d['machine_cpu_us_per_delivery']:.2f} µs | "
              f"{l['p50']/1000:.0f} ms | {l['p99']/1000:.0f} ms | {d['memory']['server_rss_per_conn_bytes'] or 0:,.0f} B | "
              f"{per_write} | {uring} |")
PY
