//! The durable store (`[storage] mode = "disk"`) across restarts of the
//! real server on the same folder: history, epochs and offsets, resumes,
//! read marks, inboxes and publisher ids come back; a second server on the
//! same folder is refused; `/healthz` says when the store is being read.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use volley::config::{StorageMode, SyncMode};

/// A fresh folder for one test's store.
fn store_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("volley-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start_on(dir: &Path, shards: usize, sync: SyncMode) -> volley::ServerHandle {
    let dir = dir.to_path_buf();
    start_server(move |c| {
        c.shards = shards;
        c.storage.mode = StorageMode::Disk;
        c.storage.dir = dir;
        c.storage.sync = sync;
        c.storage.segment_bytes = 1 << 20;
        c.storage.max_bytes = 0;
    })
}

fn stop(h: volley::ServerHandle) {
    h.shutdown();
    h.join();
}

/// Publishes `body` to `room` with message id `id`; returns (offset, epoch).
fn publish(h: &volley::ServerHandle, room: &str, body: &str, id: &str) -> (u64, String) {
    let v = post(
        h,
        "/v1/push/room",
        json!({"room": room, "op": 1000, "body": body, "id": id})
            .to_string()
            .as_bytes(),
    );
    let d = &v["data"];
    (
        d["offset"].as_u64().expect("an offset"),
        d["epoch"].as_str().expect("an epoch").to_string(),
    )
}

fn history(h: &volley::ServerHandle, room: &str) -> Value {
    let (s, v) = http(
        h.http_addr,
        "GET",
        &format!("/v1/history?room={room}&since=0&limit=100"),
        &[],
        b"",
    );
    assert_eq!(s, 200, "{v}");
    v["data"].clone()
}

fn bodies(d: &Value) -> Vec<String> {
    d["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD
                .decode(m["body_base64"].as_str().expect("a body"))
                .expect("base64");
            String::from_utf8(b).expect("UTF-8")
        })
        .collect()
}

#[test]
fn history_epochs_and_offsets_continue_across_a_restart() {
    let dir = store_dir("history");
    let h = start_on(&dir, 2, SyncMode::Batch);
    let mut epochs = Vec::new();
    for room in ["chat://a", "chat://b", "live://c"] {
        for i in 1..=5 {
            let (o, e) = publish(&h, room, &format!("{room} {i}"), &format!("{room}-{i}"));
            assert_eq!(o, i);
            if i == 1 {
                epochs.push(e);
            }
        }
    }
    let before = history(&h, "chat://a");
    assert_eq!(
        bodies(&before),
        (1..=5).map(|i| format!("chat://a {i}")).collect::<Vec<_>>(),
        "{before}"
    );
    let st: Vec<_> = h.stats();
    let synced: u64 = st.iter().map(|s| s.storage_syncs).sum();
    let records: u64 = st.iter().map(|s| s.storage_records).sum();
    assert_eq!(records, 15, "one record per publish");
    assert!((1..=15).contains(&synced), "{synced} syncs");
    stop(h);

    let h = start_on(&dir, 2, SyncMode::Batch);
    let after = history(&h, "chat://a");
    assert_eq!(after, before, "the same messages, offsets and epoch");
    for (room, epoch) in ["chat://a", "chat://b", "live://c"].iter().zip(&epochs) {
        let (o, e) = publish(&h, room, "after", &format!("{room}-after"));
        assert_eq!((o, &e), (6, epoch), "{room}: the next offset in the same epoch");
        // A retry of a message published before the restart is a duplicate.
        let v = post(
            &h,
            "/v1/push/room",
            json!({"room": room, "op": 1000, "body": "again", "id": format!("{room}-3")})
                .to_string()
                .as_bytes(),
        );
        assert_eq!(
            (v["data"]["offset"].as_u64(), v["data"]["duplicate"].as_bool()),
            (Some(3), Some(true)),
            "{v}"
        );
    }
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_resuming_across_a_restart_gets_exactly_what_it_missed() {
    let dir = store_dir("resume");
    let h = start_on(&dir, 2, SyncMode::Batch);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":7}"#);
    let j = c.join(2, "chat://r", None);
    let epoch = j["epoch"].as_str().expect("an epoch").to_string();
    publish(&h, "chat://r", "seen", "r-1");
    let seen = c.read_push2().expect("the live push");
    assert_eq!(seen.offset, 1);
    drop(c);
    publish(&h, "chat://r", "missed 2", "r-2");
    stop(h);

    let h = start_on(&dir, 2, SyncMode::Batch);
    publish(&h, "chat://r", "missed 3", "r-3");
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":7}"#);
    let j = c.join(2, "chat://r", Some((1, &epoch)));
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["epoch"].as_str(), Some(epoch.as_str()));
    let got: Vec<(u64, Vec<u8>)> = (0..2)
        .map(|_| {
            let p = c.read_push2().expect("a replayed push");
            (p.offset, p.payload)
        })
        .collect();
    assert_eq!(got, [(2, b"missed 2".to_vec()), (3, b"missed 3".to_vec())]);
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_server_on_the_same_folder_is_refused() {
    let dir = store_dir("lock");
    let h = start_on(&dir, 1, SyncMode::Batch);
    let mut c = volley::Config::default();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    (c.tcp.listen, c.ws.listen, c.api.listen, c.api.publish_listen) = (any, any, any, any);
    c.shards = 1;
    c.storage.mode = StorageMode::Disk;
    c.storage.dir = dir.clone();
    c.storage.max_bytes = 0;
    let err = volley::Server::start(c).err().expect("refused").to_string();
    assert!(err.contains("in use by another volley server"), "{err}");
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}
