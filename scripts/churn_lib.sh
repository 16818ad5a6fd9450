# Shared by the scripts that run `volley-loadgen churn` against a server
# and act on it meanwhile (bench_drain.sh, bench_upgrade.sh): source it.

# wait_joined API N: until the server at API counts N connections (at most
# two minutes); prints how many it counted last.
wait_joined() {
    local joined=0
    for _ in $(seq 1200); do
        joined=$(curl -s "http://$1/v1/online/total" |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["conn_count"])' 2>/dev/null || echo 0)
        [ "$joined" -ge "$2" ] && break
        sleep 0.1
    done
    echo "$joined"
}

# churn_report FILE: the churn report's counts that say whether anything
# was lost, doubled or reconnected, and its latency.
churn_report() {
    python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d[k] for k in ("subscribers", "published", "expected", "received", "lost", "subscribers_short", "dups", "gaps",
                         "unrecovered_resumes", "server_closes", "connect_failed", "latency_us") if k in d})
mixed = {k: d[k] for k in ("mix", "presence_events", "heartbeats_sent", "heartbeats_unanswered", "user_pushes_published",
                           "user_pushes_received", "user_pushes_lost", "user_push_dups", "acks_sent", "acks_answered",
                           "pause_ms") if k in d}
if mixed.get("heartbeats_sent") or mixed.get("user_pushes_published"):
    print(mixed)
PY
}
