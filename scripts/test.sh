#!/usr/bin/env bash
# Runs volley's whole test suite on a fresh Debian machine with only the Rust
# toolchain: installs what the tests need when missing, then checks formatting,
# lints, and runs every test (unit, property, integration, interop, and the
# fast subset of the Autobahn WebSocket conformance suite, a headless
# Chromium test of the demo page, and cluster tests against redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# The Autobahn conformance test builds a Python venv (scripts/autobahn.sh).
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The browser test drives headless Chromium through chromedriver (tests/browser.rs).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# Cluster tests start redis-server processes of their own (tests/cluster/).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
