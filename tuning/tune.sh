#!/usr/bin/env bash
# Applies, checks and restores the kernel settings in tuning/sysctl.d/99-volley.conf.
#   tuning/tune.sh check              what is not tuned (volley check-host), exit 1 if anything
#   tuning/tune.sh apply [--dry-run]  save current values, then set the file's values (root)
#   tuning/tune.sh restore            set the saved values back (root)
# Saved values live in ${VOLLEY_TUNE_STATE:-/var/lib/volley-tuning/saved.conf}.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CONF=$HERE/sysctl.d/99-volley.conf
STATE=${VOLLEY_TUNE_STATE:-/var/lib/volley-tuning/saved.conf}
CONNS=${CONNS:-1000000}

keys() { grep -E '^[a-z]' "$CONF" | cut -d= -f1 | tr -d ' '; }

case "${1:-check}" in
check)
    if command -v volley >/dev/null 2>&1; then exec volley check-host --conns "$CONNS"; fi
    exec "$HERE/../target/release/volley" check-host --conns "$CONNS"
    ;;
apply)
    DRY=${2:-}
    # A second apply must not overwrite the host's own values with tuned ones.
    KEEP=0
    if [ "$DRY" != "--dry-run" ]; then
        if [ -s "$STATE" ]; then
            KEEP=1
            echo "keeping the values an earlier apply saved in $STATE (restore first to save the current ones)"
        else
            mkdir -p "$(dirname "$STATE")"; : >"$STATE"
        fi
    fi
    for k in $(keys); do
        want=$(grep -E "^$k *=" "$CONF" | cut -d= -f2- | sed 's/^ *//')
        have=$(sysctl -n "$k" 2>/dev/null | tr '\t' ' ') || { echo "skip $k (not on this kernel)"; continue; }
        echo "$k: $have -> $want"
        if [ "$DRY" != "--dry-run" ]; then
            if [ "$KEEP" = 0 ]; then echo "$k = $have" >>"$STATE"; fi
            sysctl -q -w "$k=$want"
        fi
    done
    if [ "$DRY" = "--dry-run" ]; then echo "(dry run: nothing changed)"; fi
    ;;
restore)
    [ -f "$STATE" ] || { echo "nothing saved at $STATE" >&2; exit 1; }
    while IFS='=' read -r k v; do
        k=$(echo "$k" | tr -d ' '); v=$(echo "$v" | sed 's/^ *//')
        echo "$k -> $v"
        sysctl -q -w "$k=$v"
    done <"$STATE"
    rm -f "$STATE"
    ;;
*)
    echo "usage: $0 check|apply [--dry-run]|restore" >&2; exit 2 ;;
esac
