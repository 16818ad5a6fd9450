#!/usr/bin/env bash
# Starts a volley cluster on this machine: one redis-server (installed from
# apt when missing) and N volley nodes joined through it, on loopback ports.
# Node i (0-based) listens on 127.0.0.1:<base+100*i + 1> (client TCP),
# +2 (WebSocket), +11 (HTTP API), +12 (TCP publisher), base 4100 by default;
# Redis on REDIS_PORT (6390). Prints each node's addresses, then runs until
# Ctrl-C (or for SECS seconds when given), and stops every process it
# started, by PID. Extra flags for every node: NODE_ARGS (e.g.
# "--shards 1"). Builds the release binary first unless NO_BUILD=1.
# Usage: scripts/cluster.sh [N=3] [SECS]
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
# The load generator opens thousands of connections per source address at
# thousands a second: lift the per-IP limits (the documented way off,
# docs/LIMITS.md).
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
N=${1:-3}
SECS=${2:-}
BASE=${BASE:-4100}
REDIS_PORT=${REDIS_PORT:-6390}
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server
fi
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q --bin volley
PIDS=()
stop() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT INT TERM
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; return 1; }
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
PIDS+=($!)
echo "redis   pid $! redis://127.0.0.1:$REDIS_PORT"
wait_port "$REDIS_PORT"
for i in $(seq 0 $((N - 1))); do
    b=$((BASE + 100 * i))
    # shellcheck disable=SC2086 # NODE_ARGS is a list of flags
    ./target/release/volley serve --redis-urls "redis://127.0.0.1:$REDIS_PORT" ${NODE_ARGS:-} \
        --tcp-listen "127.0.0.1:$((b + 1))" --ws-listen "127.0.0.1:$((b + 2))" \
        --api-listen "127.0.0.1:$((b + 11))" --api-publish-listen "127.0.0.1:$((b + 12))" --log-level warn &
    PIDS+=($!)
    wait_port $((b + 11))
    echo "node $i pid $! tcp 127.0.0.1:$((b + 1)) ws 127.0.0.1:$((b + 2)) api 127.0.0.1:$((b + 11)) publish 127.0.0.1:$((b + 12))"
done
for i in $(seq 0 $((N - 1))); do
    api=$((BASE + 100 * i + 11))
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$api/healthz")" = 200 ] && break
        sleep 0.05
    done
done
echo "cluster of $N up"
if [ -n "$SECS" ]; then sleep "$SECS"; else wait; fi
