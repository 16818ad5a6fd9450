#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for SECS seconds each, two at a time,
# over its committed corpus, then minimises each corpus in place (cmin) and
# prints libFuzzer's final stats (executions, coverage) per target.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Crashes land in fuzz/artifacts/<target>/; the script exits 1 if any did.
# Usage: scripts/fuzz.sh [SECS=600] [TARGETS...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-600}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(client_frames control_bodies publisher ws_reader ws_upgrade v2_bodies access redis_reply cluster_message token pattern disk_scan disk_recover handoff_records ws_deflate)
fi
OUT=${OUT:-target/fuzz-logs}
mkdir -p "$OUT"
cargo +nightly fuzz build
run() {
    local t=$1 extra=()
    # The upgrade parser's size limit (8 KiB) must be reachable.
    [ "$t" = ws_upgrade ] && extra=(-max_len=9000)
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- -max_total_time="$SECS" \
        -print_final_stats=1 -rss_limit_mb=2048 "${extra[@]}" >"$OUT/$t.log" 2>&1 || true
}
i=0
for t in "${TARGETS[@]}"; do
    run "$t" &
    i=$((i + 1))
    if [ $((i % 2)) -eq 0 ]; then wait; fi
done
wait
failed=0
for t in "${TARGETS[@]}"; do
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$OUT/$t.log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$OUT/$t.log" | tail -1 || true)
    crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    echo "$t: $execs executions in ${SECS} s, $cov, $crashes artifacts"
    [ "$crashes" -eq 0 ] || failed=1
    # Keep only the inputs that add coverage (in place), and every seed
    # with a name (tests read some of them by name).
    seeds=$(mktemp -d)
    find "fuzz/corpus/$t" -maxdepth 1 -type f ! -regex '.*/[0-9a-f]\{40\}' -exec cp {} "$seeds/" \;
    cargo +nightly fuzz cmin "$t" "fuzz/corpus/$t" >"$OUT/$t.cmin.log" 2>&1 || true
    cp "$seeds"/* "fuzz/corpus/$t/" 2>/dev/null || true
    rm -rf "$seeds"
done
exit $failed
