//! web/volley.js under Node (the browser test runs it in Chromium): the
//! module joins a room, receives a push published through the HTTP API,
//! publishes one itself and receives it (web/test/node.test.mjs). Node
//! 22 has its own WebSocket, 20 has it behind `--experimental-websocket`;
//! older Node takes the ws package from web/node_modules (scripts/test.sh
//! installs Node, and the package where it is needed).

mod common;

use std::process::Command;

/// Node's major version, if Node is here.
fn node_major() -> Option<u32> {
    let out = Command::new("node").arg("--version").output().ok()?;
    let v = String::from_utf8_lossy(&out.stdout);
    v.trim().trim_start_matches('v').split('.').next()?.parse().ok()
}

#[test]
fn volley_js_runs_under_node() {
    let major = node_major().expect("node is missing (scripts/test.sh installs it)");
    let h = common::start_server(|_| {});
    let mut node = Command::new("node");
    if (20..22).contains(&major) {
        node.arg("--experimental-websocket");
    }
    let out = node
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/web/test/node.test.mjs"))
        .arg(format!("ws://{}/sub", h.ws_addr))
        .arg(h.http_addr.to_string())
        .output()
        .expect("node runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "node {major}:\n{stdout}\n{stderr}"
    );
}
