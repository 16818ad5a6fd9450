//! RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against the
//! real server's echo endpoint (2 shards, port 0). The fast subset runs here
//! (AUTOBAHN_SKIP_SLOW: no 9.* limits/performance, no 12.*/13.* compression),
//! then some permessage-deflate cases (small messages, several offers, an
//! 8-bit window), which must all be negotiated; BENCHMARKS.md records the
//! full runs. Every case must be OK, NON-STRICT, INFORMATIONAL or (outside
//! compression) UNIMPLEMENTED; the script exits non-zero otherwise.

mod common;

use std::process::Command;

#[test]
fn autobahn_fast_subset_passes_against_the_echo_endpoint() {
    let h = common::start_server(|c| {
        c.ws.echo = true;
        // The fuzzing client opens its cases back to back from one address,
        // hundreds a second: the per-IP defaults would refuse it.
        c.limits.conn_rate_per_ip = 0;
        c.limits.max_handshakes_per_ip = 0;
    });
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/autobahn.sh"))
        .arg(format!("ws://{}/echo", h.ws_addr))
        .arg(&out_dir)
        .env("AUTOBAHN_SKIP_SLOW", "1")
        .env("AUTOBAHN_AGENT", "volley")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().last().unwrap_or("");
    println!("{summary}");
    assert!(
        out.status.success(),
        "autobahn failed ({:?}): {summary}\n{}",
        out.status,
        stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(summary.contains("FAILED=0"), "{summary}");

    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("autobahn-deflate");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/autobahn.sh"))
        .arg(format!("ws://{}/echo", h.ws_addr))
        .arg(&out_dir)
        .env("AUTOBAHN_CASES", "12.1.*,13.1.*,13.3.1,13.3.2,13.5.1,13.7.1")
        .env("AUTOBAHN_AGENT", "volley")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or("");
    println!("{summary}");
    assert!(
        out.status.success(),
        "autobahn (deflate) failed ({:?}): {summary}",
        out.status
    );
    assert!(
        summary.contains("FAILED=0") && summary.contains("UNIMPLEMENTED=0"),
        "{summary}"
    );
}
