//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the
//! same checks the cargo-fuzz targets run, on stable Rust, so every input
//! that once found a bug or new coverage keeps being checked by the
//! ordinary test suite.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails its check", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
}

#[test]
fn client_frames() {
    replay("client_frames", checks::client_frames);
}

#[test]
fn control_bodies() {
    replay("control_bodies", checks::control_bodies);
}

#[test]
fn publisher() {
    replay("publisher", checks::publisher);
}

#[test]
fn ws_reader() {
    replay("ws_reader", checks::ws_reader);
}

#[test]
fn ws_upgrade() {
    replay("ws_upgrade", checks::ws_upgrade);
}

#[test]
fn v2_bodies() {
    replay("v2_bodies", checks::v2_bodies);
}

#[test]
fn access() {
    replay("access", checks::access);
}

#[test]
fn redis_reply() {
    replay("redis_reply", checks::redis_reply);
}

#[test]
fn cluster_message() {
    replay("cluster_message", checks::cluster_message);
}

#[test]
fn token() {
    replay("token", checks::token);
}

#[test]
fn pattern() {
    replay("pattern", checks::pattern);
}

#[test]
fn disk_scan() {
    replay("disk_scan", checks::disk_scan);
}

#[test]
fn disk_recover() {
    replay("disk_recover", checks::disk_recover);
}

#[test]
fn handoff_records() {
    replay("handoff_records", checks::handoff_records);
}

#[test]
fn ws_deflate() {
    replay("ws_deflate", checks::ws_deflate);
}
