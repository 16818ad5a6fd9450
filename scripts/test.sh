#!/usr/bin/env bash
# Runs volley's whole test suite on a fresh Debian machine with only the Rust
# toolchain: installs what the tests need when missing, then checks formatting,
# lints, and runs every test (unit, property, integration, interop, and the
# fast subset of the Autobahn WebSocket conformance suite, a headless
# Chromium test of the demo page, web/volley.js under Node, and cluster tests
# against redis-server).
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
# web/volley.js is tested under Node too (tests/node_client.rs).
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ((${#need_apt[@]})); then
    echo "installing: ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# Node before 20 has no WebSocket of its own: that test then takes the ws
# package (web/package.json).
if [ "$(node -p 'parseInt(process.versions.node)')" -lt 20 ] && [ ! -d web/node_modules/ws ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "installing: npm"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq npm
    fi
    (cd web && npm install --no-audit --no-fund --loglevel=error)
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
