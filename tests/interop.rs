//! Interop: an independent Python goim client (tests/interop/goim_client.py)
//! authenticates, joins a room, heartbeats and receives every push kind.

mod common;
use common::*;

#[test]
fn independent_goim_client() {
    let h = start_server(|_| {});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/goim_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(h.tcp_addr.port().to_string())
        .arg(h.http_addr.port().to_string())
        .output()
        .expect("python3 runs (the test command installs it when missing)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "client failed:\n{text}");
    assert!(text.contains("goim interop ok"), "{text}");
}
