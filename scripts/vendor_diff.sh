#!/usr/bin/env bash
# Shows how vendor/glommio differs from glommio 0.9.0 as published on crates.io
# (vendor/README.md says why it is vendored): the scheduler fix, the trimmed
# Cargo.toml, and the list of files left out.
set -euo pipefail
cd "$(dirname "$0")/.."
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
curl -sfL https://static.crates.io/crates/glommio/glommio-0.9.0.crate -o "$TMP/glommio.crate"
tar -xzf "$TMP/glommio.crate" -C "$TMP"
diff -ru "$TMP/glommio-0.9.0" vendor/glommio || true
