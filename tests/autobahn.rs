//! RFC 6455 conformance: the Autobahn|Testsuite fuzzing client against the
//! real server's echo endpoint (2 shards, port 0). The fast subset runs here
//! (AUTOBAHN_SKIP_SLOW: no 9.* limits/performance, no 12.*/13.* compression),
//! then some permessage-deflate cases (small messages, several offers, an
//! 8-bit window), which must all be negotiated; BENCHMARKS.md records the
//! full runs. Every case must be OK, NON-STRICT, INFORMATIONAL or (outside
//! compression) UNIMPLEMENTED; the script exits non-zero otherwise.

mod common;

use std::process::Command;

/// Runs scripts/autobahn.sh against `ws` with `env` into `name` under the
/// test's folder; returns the summary line after checking the script
/// passed and nothing FAILED.
fn autobahn(ws: std::net::SocketAddr, name: &str, env: &[(&str, &str)]) -> String {
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/autobahn.sh"))
        .arg(format!("ws://{ws}/echo"))
        .arg(&out_dir)
        .envs(env.iter().copied())
        .env("AUTOBAHN_AGENT", "volley")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().last().unwrap_or("").to_string();
    println!("{summary}");
    assert!(
        out.status.success(),
        "autobahn {name} failed ({:?}): {summary}\n{}",
        out.status,
        stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    assert!(summary.contains("FAILED=0"), "{summary}");
    summary
}

#[test]
fn autobahn_fast_subset_passes_against_the_echo_endpoint() {
    let h = common::start_server(|c| {
        c.ws.echo = true;
        // The fuzzing client opens its cases back to back from one address,
        // hundreds a second: the per-IP defaults would refuse it.
        c.limits.conn_rate_per_ip = 0;
        c.limits.max_handshakes_per_ip = 0;
    });
    autobahn(h.ws_addr, "autobahn", &[("AUTOBAHN_SKIP_SLOW", "1")]);
    let cases = ("AUTOBAHN_CASES", "12.1.*,13.1.*,13.3.1,13.3.2,13.5.1,13.7.1");
    let summary = autobahn(h.ws_addr, "autobahn-deflate", &[cases]);
    assert!(summary.contains("UNIMPLEMENTED=0"), "every case negotiated: {summary}");
}
