//! `volley-loadgen ws` against volley, as docs/LOADGEN.md's worked example
//! runs it: WebSocket subscribers that authenticate with `--volley`,
//! published to through volley's TCP publisher port, which is the mode's
//! default publisher.

use std::process::Command;
use volley::{Config, Server};

#[test]
fn the_ws_mode_runs_against_volley_with_its_default_publisher() {
    // The default publisher is volley's default TCP publisher address.
    let help = Command::new(env!("CARGO_BIN_EXE_volley-loadgen"))
        .args(["ws", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let default = Config::default().api.publish_listen.to_string();
    assert!(help.contains(&format!("[default: {default}]")), "{help}");
    assert!(help.contains("[default: tcp]"), "{help}");

    // The same run on ephemeral ports (tests never take the fixed ones).
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut c = Config {
        shards: 2,
        shutdown_grace_secs: 1,
        ..Config::default()
    };
    c.tcp.listen = any;
    c.ws.listen = any;
    c.api.listen = any;
    c.api.publish_listen = any;
    c.storage.mode = volley::config::StorageMode::Memory;
    let h = Server::start(c).expect("server starts");
    let out = Command::new(env!("CARGO_BIN_EXE_volley-loadgen"))
        .args(["ws", "--target", &h.ws_addr.to_string(), "--ws", "/sub", "--volley"])
        .args(["--publish-tcp", &h.publish_addr.to_string()])
        .args([
            "--conns",
            "50",
            "--msg-rate",
            "20",
            "--duration",
            "2",
            "--drain-secs",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["published"], 40, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["received"], 50 * 40, "{report}");
}
