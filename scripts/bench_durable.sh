#!/usr/bin/env bash
# The durable store's cost, measured in one run: acknowledged publishes per
# second and answer latency (volley-loadgen durable publish: CONNS keep-alive
# HTTP connections, each waiting for its answer, to 1,000 rooms) for
# `memory` and `disk` with each `sync`, 64 B and 1 KiB, one shard and all
# shards; with the server's fsyncs per second, journal bytes per message and
# CPU per acknowledged publish. Then nats-server with JetStream (a file
# stream, each connection waiting for its ack) under the same load, and
# both from one connection. Then the pipelined shape: one TCP publisher
# connection keeping WINDOW pushes in flight (volley-loadgen durable
# pipeline) against one JetStream connection publishing asynchronously with
# the same window. JetStream runs once for each of NATS_SYNC: `default`
# (nats-server's own, a sync every two minutes) and `always` (an fsync after
# every message; nats-server 2.10 or newer). Loopback only; every process
# started here is stopped by PID.
#
# Usage: scripts/bench_durable.sh [SECS=8] [CONNS=32]
# Env: NO_BUILD=1, BASE_PORT (default 3501), OUT (results dir), SIZES ("64 1024"),
#      MODES ("memory batch interval none"), SHARDS ("1 2"), WINDOW (64),
#      PIPELINE=0 (skip the pipelined runs), HTTP=0 (skip the HTTP runs),
#      NATS_SERVER (the nats-server binary; default the one on PATH),
#      NATS_SYNC ("default always"; "default" alone when nats-server is older
#      than 2.10, which has no sync_interval).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
CONNS=${2:-32}
BASE=${BASE_PORT:-3501}
SIZES=${SIZES:-"64 1024"}
MODES=${MODES:-"memory batch interval none"}
SHARDS=${SHARDS:-"1 2"}
WINDOW=${WINDOW:-64}
OUT=${OUT:-$(mktemp -d /tmp/volley-bench-durable.XXXXXX)}
mkdir -p "$OUT"
[ "${NO_BUILD:-}" = 1 ] || cargo build --release -p volley -p volley-loadgen
NATS=${NATS_SERVER:-nats-server}
command -v "$NATS" >/dev/null 2>&1 || { echo "nats-server missing (apt-get install nats-server)" >&2; exit 1; }
NATS_VERSION=$("$NATS" --version | grep -o '[0-9][0-9.]*' | head -1)
if [ -z "${NATS_SYNC:-}" ]; then
    NATS_SYNC="default always"
    case $NATS_VERSION in 1.* | 2.[0-9] | 2.[0-9].*)
        NATS_SYNC=default
        echo "nats-server $NATS_VERSION has no sync_interval: JetStream runs with its default only (NATS_SERVER= a 2.10 or newer for \`always\`)" >&2 ;;
    esac
fi
echo "nats-server $NATS_VERSION, JetStream sync: $NATS_SYNC"
BIN=target/release/volley
LG=target/release/volley-loadgen
TCP=127.0.0.1:$BASE API=127.0.0.1:$((BASE + 10))
PID=""
trap '[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true' EXIT

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
stat_sum() { curl -s "http://$API/v1/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)['data']['total'].get('$1', 0))"; }

run_volley() { # MODE SIZE SHARDS CONNS [pipeline]
    local mode=$1 size=$2 shards=$3 conns=$4 how=${5:-http} store="$OUT/store-$1-$2-$3-$4"
    local storage=(--storage-mode disk --storage-dir "$store" --storage-sync "$mode")
    [ "$mode" = memory ] && storage=(--storage-mode memory)
    "$BIN" serve --shards "$shards" --tcp-listen "$TCP" --ws-listen "127.0.0.1:$((BASE + 1))" --api-listen "$API" \
        --api-publish-listen "127.0.0.1:$((BASE + 11))" "${storage[@]}" --log-level warn >>"$OUT/server.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 300); do curl -sf "http://$API/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    kill -0 "$PID" 2>/dev/null || { echo "volley did not start (see $OUT/server.log)" >&2; exit 1; }
    local t0 s0 b0 r0
    t0=$(cpu_ticks "$PID"); s0=$(stat_sum storage_syncs); b0=$(stat_sum storage_written_bytes); r0=$(stat_sum storage_records)
    local json="$OUT/volley-$mode-$size-$shards-$conns.json"
    if [ "$how" = pipeline ]; then
        json="$OUT/pipeline-$mode-$size-$shards-w$WINDOW.json"
        "$LG" durable pipeline --publish-tcp "127.0.0.1:$((BASE + 11))" --rooms 1000 --conns "$conns" \
            --window "$WINDOW" --secs "$SECS" --size "$size" >"$json"
    else
        "$LG" durable publish --http "$API" --rooms 1000 --user-pct 0 --conns "$conns" --secs "$SECS" --size "$size" \
            --log "$OUT/acked-$mode-$size-$shards-$conns.log" >"$json"
    fi
    local t1 s1 b1 r1
    t1=$(cpu_ticks "$PID"); s1=$(stat_sum storage_syncs); b1=$(stat_sum storage_written_bytes); r1=$(stat_sum storage_records)
    python3 - "$json" "$((t1 - t0))" "$((s1 - s0))" "$((b1 - b0))" "$((r1 - r0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
path, ticks, syncs, written, records, hz = sys.argv[1], *map(int, sys.argv[2:])
d = json.load(open(path))
d.update(server_cpu_us_per_ack=ticks / hz * 1e6 / max(d["acknowledged"], 1),
         fsyncs_per_sec=syncs / d["secs"], journal_bytes_per_message=written / max(records, 1))
json.dump(d, open(path, "w"))
PY
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    rm -rf "$store"
}

run_nats() { # SIZE CONNS [WINDOW]
    local size=$1 conns=$2 window=${3:-1} sync
    for sync in $NATS_SYNC; do
        echo "   JetStream sync $sync"
        rm -rf "$OUT/js"
        mkdir -p "$OUT/js"
        # 2.9 knows no sync_interval: its default run gets no such line.
        { echo "jetstream { store_dir: \"$OUT/js\""
          [ "$sync" = default ] || echo "  sync_interval: $sync"
          echo "}"; } >"$OUT/js.conf"
        "$NATS" -c "$OUT/js.conf" -a 127.0.0.1 -p $((BASE + 20)) >>"$OUT/nats.log" 2>&1 &
        PID=$!
        sleep 1
        # Not another process's server on that port: this one is still up.
        kill -0 "$PID" 2>/dev/null || { echo "nats-server did not start (see $OUT/nats.log)" >&2; exit 1; }
        "$LG" durable jetstream --nats "127.0.0.1:$((BASE + 20))" --conns "$conns" --secs "$SECS" --size "$size" \
            --window "$window" >"$OUT/jetstream-$sync-$size-$conns-w$window.json"
        kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
        rm -rf "$OUT/js" # a run leaves a GB or more of stream behind
    done
}

if [ "${HTTP:-1}" = 1 ]; then
    for size in $SIZES; do
        for shards in $SHARDS; do
            for mode in $MODES; do
                echo "== volley $mode, $size B, $shards shard(s), $CONNS connections"
                run_volley "$mode" "$size" "$shards" "$CONNS"
            done
        done
        echo "== JetStream, $size B, $CONNS connections"
        run_nats "$size" "$CONNS"
    done
    for mode in memory batch; do
        echo "== volley $mode, 64 B, one connection"
        run_volley "$mode" 64 "$(nproc)" 1
    done
    echo "== JetStream, 64 B, one connection"
    run_nats 64 1
fi
if [ "${PIPELINE:-1}" = 1 ]; then
    for size in $SIZES; do
        for shards in $SHARDS; do
            for mode in $MODES; do
                echo "== volley $mode, $size B, $shards shard(s), one TCP publisher, $WINDOW in flight"
                run_volley "$mode" "$size" "$shards" 1 pipeline
            done
        done
        echo "== JetStream, $size B, one connection, $WINDOW in flight"
        run_nats "$size" 1 "$WINDOW"
    done
fi
python3 - "$OUT" <<'PY'
import glob, json, os, sys
print(f"{'run':34} {'acked/s':>9} {'p50 us':>7} {'p99 us':>7} {'fsync/s':>8} {'B/msg':>6} {'cpu us/ack':>10}")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f))
    l = d["latency_us"]
    print(f"{os.path.basename(f)[:-5]:34} {d['acknowledged_per_sec']:9.0f} {l['p50']:7} {l['p99']:7} "
          f"{d.get('fsyncs_per_sec', float('nan')):8.0f} {d.get('journal_bytes_per_message', float('nan')):6.0f} "
          f"{d.get('server_cpu_us_per_ack', float('nan')):10.1f}")
PY
echo "results in $OUT"
