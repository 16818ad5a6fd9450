#!/usr/bin/env bash
# Shutdown under load, repeated: starts P volley processes (one shard each),
# fills them with C connections each from one volley-loadgen, publishes to
# them over their TCP publisher ports, then sends SIGTERM to every server
# while the connections are open and the broadcast runs, and checks that each
# exits within shutdown_grace_secs + 20 s (closing thousands of sockets on
# 2 shared cores takes a few seconds past the grace). Repeats ROUNDS times; exit 1 if any
# server had to be killed. (After a 1M-connection run one of 53 processes
# once stayed parked in io_uring_enter after SIGTERM; this is the check.)
# Loopback only; bounded; every process started here is stopped by PID.
# Usage: scripts/stress_shutdown.sh [ROUNDS=5] [P=10] [C=5000]
set -euo pipefail
# The servers started here keep what they keep in memory, as when these
# figures were first taken (VOLLEY_STORAGE_MODE=disk measures the durable store).
export VOLLEY_STORAGE_MODE=${VOLLEY_STORAGE_MODE:-memory}
# The load generator opens thousands of connections per source address at
# thousands a second: lift the per-IP limits (the documented way off,
# docs/LIMITS.md).
export VOLLEY_LIMITS_MAX_CONNS_PER_IP=0 VOLLEY_LIMITS_CONN_RATE_PER_IP=0 VOLLEY_LIMITS_MAX_HANDSHAKES_PER_IP=0
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
P=${2:-10}
C=${3:-5000}
GRACE=2
# NO_BUILD=1: use the binaries already in target/release (e.g. ones copied there).
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace -q
join() { local IFS=,; echo "$*"; }
STUCK=0
for round in $(seq "$ROUNDS"); do
    PIDS=() ; TARGETS=() ; PUBS=()
    for i in $(seq 0 $((P - 1))); do
        ./target/release/volley serve --shards 1 --cpus $((i % 2)) --shutdown-grace-secs $GRACE \
            --tcp-listen 127.0.0.1:$((7000 + i)) --ws-listen 127.0.0.1:$((7600 + i)) --api-listen 127.0.0.1:$((7200 + i)) \
            --api-publish-listen 127.0.0.1:$((7400 + i)) --log-level error &
        PIDS+=($!)
        TARGETS+=(127.0.0.1:$((7000 + i)))
        PUBS+=(127.0.0.1:$((7400 + i)))
    done
    for i in $(seq 0 $((P - 1))); do
        for _ in $(seq 200); do curl -sf "http://127.0.0.1:$((7200 + i))/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
    done
    # A long broadcast; the servers are stopped in the middle of it.
    timeout 120 ./target/release/volley-loadgen broadcast --target "$(join "${TARGETS[@]}")" \
        --publish-tcp "$(join "${PUBS[@]}")" --conns $((P * C)) --workers $(((P * C + 18999) / 19000)) \
        --sources 16 --rate 20000 --msg-rate 20 --duration 60 --drain-secs 1 >/dev/null 2>&1 &
    LG=$!
    # Wait until every connection is up and the broadcast has started.
    want=$((P * C))
    for _ in $(seq 600); do
        have=0
        for i in $(seq 0 $((P - 1))); do
            n=$(curl -sf "http://127.0.0.1:$((7200 + i))/v1/online/total" | sed -n 's/.*"conn_count":\([0-9]*\).*/\1/p')
            have=$((have + ${n:-0}))
        done
        [ "$have" -ge "$want" ] && break
        sleep 0.1
    done
    sleep 2
    T0=$(date +%s.%N)
    kill -TERM "${PIDS[@]}"
    deadline=$(( $(date +%s) + GRACE + 20 ))
    for p in "${PIDS[@]}"; do
        while kill -0 "$p" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
        if kill -0 "$p" 2>/dev/null; then
            echo "round $round: server $p still running $((GRACE + 20)) s after SIGTERM; stacks:"
            cat /proc/"$p"/task/*/stack 2>/dev/null | sort | uniq -c | sort -rn | head -20 || true
            kill -KILL "$p" 2>/dev/null || true
            STUCK=$((STUCK + 1))
        fi
    done
    wait "${PIDS[@]}" 2>/dev/null || true
    T1=$(date +%s.%N)
    kill "$LG" 2>/dev/null || true
    wait "$LG" 2>/dev/null || true
    printf 'round %d: %d servers with %d connections each (%d up), all stopped in %.2f s\n' \
        "$round" "$P" "$C" "$have" "$(echo "$T1 - $T0" | bc)"
done
echo "stuck servers: $STUCK"
[ "$STUCK" -eq 0 ]
