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

#[test]
fn inboxes_and_acknowledgements_survive_restarts_and_ids_are_never_reused() {
    let dir = store_dir("inbox");
    let h = start_on(&dir, 2, SyncMode::Batch);
    for t in ["one", "two", "three"] {
        post(&h, "/goim/push/mids?operation=1000&mids=77,78", t.as_bytes());
    }
    stop(h);

    let h = start_on(&dir, 2, SyncMode::Batch);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":77}"#);
    let got = read_user_pushes(&mut c, 3);
    let texts: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
    assert_eq!(texts, ["one", "two", "three"], "what waited, in order");
    let reply = request(&mut c, op2::ACK, 5, json!({"ids": [got[0].0, got[2].0]}));
    assert_eq!((reply["op"].as_u64(), reply["count"].as_u64()), (Some(47), Some(2)));
    drop(c);
    post(&h, "/goim/push/mids?operation=1000&mids=77", b"four");
    stop(h);

    let h = start_on(&dir, 2, SyncMode::Batch);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":77}"#);
    let again = read_user_pushes(&mut c, 2);
    assert_eq!(again[0], got[1], "the one not acknowledged, same id");
    assert_eq!(again[1].1, "four");
    assert!(
        got.iter().all(|g| g.0 != again[1].0),
        "a push after a restart gets a new id: {got:?} {again:?}"
    );
    let (mut d, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":78}"#);
    assert_eq!(read_user_pushes(&mut d, 3).len(), 3, "the other user's inbox is whole");
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn read_marks_survive_a_restart() {
    let dir = store_dir("marks");
    let h = start_on(&dir, 2, SyncMode::Batch);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":31}"#);
    c.join(2, "chat://m", None);
    for i in 1..=6 {
        publish(&h, "chat://m", &format!("{i}"), &format!("m-{i}"));
        c.read_push2().expect("live");
    }
    let r = request(&mut c, op2::READ, 3, json!({"room": "chat://m", "offset": 4}));
    assert_eq!((r["offset"].as_u64(), r["unread"].as_u64()), (Some(4), Some(2)), "{r}");
    drop(c);
    stop(h);

    let h = start_on(&dir, 2, SyncMode::Batch);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":31}"#);
    assert_eq!(c.join(2, "chat://m", None)["unread"], 2, "the mark came back");
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_changed_shard_count_loses_nothing() {
    let dir = store_dir("reshard");
    let h = start_on(&dir, 2, SyncMode::Batch);
    let rooms: Vec<String> = (0..12).map(|i| format!("chat://s{i}")).collect();
    let mut epochs = Vec::new();
    for r in &rooms {
        epochs.push(publish(&h, r, "first", &format!("{r}-1")).1);
        publish(&h, r, "second", &format!("{r}-2"));
    }
    post(&h, "/goim/push/mids?operation=1000&mids=1,2,3,4,5,6,7,8", b"kept");
    stop(h);

    for shards in [3, 1] {
        let h = start_on(&dir, shards, SyncMode::Batch);
        for (r, e) in rooms.iter().zip(&epochs) {
            let d = history(&h, r);
            assert_eq!(
                (bodies(&d), d["epoch"].as_str()),
                (vec!["first".to_string(), "second".to_string()], Some(e.as_str())),
                "{r} on {shards} shards"
            );
        }
        for mid in 1..=8 {
            let (mut c, _) = Client::authed_v2(h.tcp_addr, &format!(r#"{{"mid":{mid}}}"#));
            assert_eq!(
                read_user_pushes(&mut c, 1)[0].1,
                "kept",
                "user {mid} on {shards} shards"
            );
        }
        stop(h);
        let gens: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .collect();
        assert_eq!(gens.len(), 1, "one generation left");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_bound_the_journal_and_what_they_hold_comes_back() {
    let dir = store_dir("checkpoint");
    let h = start_on(&dir, 1, SyncMode::None);
    let payload = "x".repeat(500);
    // Room "chat://big" keeps its last 100; each publish alone is a 4 KiB
    // write, and 4 MiB of journal asks for a checkpoint.
    for i in 1..=1800u64 {
        publish(&h, "chat://big", &format!("{i} {payload}"), &format!("b-{i}"));
    }
    wait_until("a checkpoint", || h.stats()[0].storage_checkpoints >= 1);
    wait_until("older segments to go", || h.stats()[0].storage_bytes < 8 << 20);
    let before = history(&h, "chat://big");
    stop(h);
    let h = start_on(&dir, 1, SyncMode::None);
    let d = history(&h, "chat://big");
    assert_eq!(d, before);
    let b = bodies(&d);
    assert_eq!(b.len(), 100, "the room's history limit");
    assert_eq!(b.last().map(|s| s.split(' ').next().unwrap()), Some("1800"));
    assert_eq!(publish(&h, "chat://big", "next", "b-next").0, 1801);
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tmpfs of `mb` MiB mounted at a fresh folder (root only); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, mb: u32) -> Option<Tmpfs> {
        let d = store_dir(name);
        std::fs::create_dir_all(&d).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(&d)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: mounting a tmpfs must work"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        Some(Tmpfs(d))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a stopped server's executors leave their rings and a
        // segment file open in this process (glommio does not close them
        // when an executor ends), so a plain umount finds the mount busy.
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn try_publish(h: &volley::ServerHandle, room: &str, body: &str, id: &str) -> (u16, Value) {
    http(
        h.http_addr,
        "POST",
        "/v1/push/room",
        &[],
        json!({"room": room, "op": 1000, "body": body, "id": id})
            .to_string()
            .as_bytes(),
    )
}

#[test]
fn a_full_disk_refuses_publishes_by_name_keeps_serving_and_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount("enospc", 4) else { return };
    let store = fs.0.join("store");
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).unwrap();
    let h = std::sync::Arc::new(start_on(&store, 1, SyncMode::Batch));
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":5}"#);
    let epoch = c.join(2, "chat://full", None)["epoch"].as_str().unwrap().to_string();
    // Publish until the journal needs a segment the disk has no room for:
    // that publish is not answered while the write fails.
    let stop_writer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (h, stop) = (h.clone(), stop_writer.clone());
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            for i in 1..=2000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (s, v) = try_publish(&h, "chat://full", &format!("m{i}"), &format!("f-{i}"));
                if s != 200 {
                    return (answered, Some((s, v)));
                }
                answered.push(v["data"]["offset"].as_u64().unwrap());
            }
            (answered, None)
        })
    };
    wait_until("a journal write to fail", || h.stats()[0].storage_failures >= 1);
    let (s, v) = try_publish(&h, "chat://full", "refused", "f-refused");
    assert_eq!(s, 507, "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("storage failing: ") && msg.contains("No space left"),
        "{msg}"
    );
    assert!(h.stats()[0].storage_refused >= 1);
    // What is stored is still served: a resume replays it.
    let (mut r, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":6}"#);
    let last = r.join(2, "chat://full", None)["offset"].as_u64().unwrap();
    let (mut r, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":6}"#);
    let j = r.join(2, "chat://full", Some((last - 3, &epoch)));
    assert_eq!(j["recovered"], true, "{j}");
    let replayed: Vec<u64> = (0..3).map(|_| r.read_push2().expect("replayed").offset).collect();
    assert_eq!(replayed, [last - 2, last - 1, last]);
    // Space returns: the write that failed goes through, the publish that
    // waited is answered, and publishes flow again.
    stop_writer.store(true, std::sync::atomic::Ordering::Relaxed);
    std::fs::remove_file(&filler).unwrap();
    let (answered, refused) = writer.join().unwrap();
    assert!(
        refused.is_none(),
        "the waiting publish was answered once space returned: {refused:?}"
    );
    let n = answered.len() as u64;
    assert_eq!(answered, (1..=n).collect::<Vec<_>>());
    assert_eq!(try_publish(&h, "chat://full", "after", "f-after").0, 200);
    let live = (0..=n)
        .map(|_| c.read_push2().expect("live").offset)
        .collect::<Vec<_>>();
    assert_eq!(
        live,
        (1..=n + 1).collect::<Vec<_>>(),
        "every answered publish delivered once, in order"
    );
    let h = std::sync::Arc::into_inner(h).expect("one owner");
    stop(h);
    let h = start_on(&store, 1, SyncMode::Batch);
    let d = history(&h, "chat://full");
    assert_eq!(
        d["offset"].as_u64(),
        Some(n + 1),
        "nothing refused was stored, nothing answered was lost"
    );
    stop(h);
}

#[test]
fn max_bytes_is_kept_by_checkpoints() {
    let dir = store_dir("max-bytes");
    let dir2 = dir.clone();
    let h = start_server(move |c| {
        c.shards = 1;
        c.storage.mode = StorageMode::Disk;
        c.storage.dir = dir2;
        c.storage.segment_bytes = 1 << 20;
        c.storage.max_bytes = 4 << 20;
        c.storage.sync = SyncMode::None;
        c.history.messages = 10;
    });
    // ~8 MiB of 4 KiB writes through a 4 MiB bound: checkpoints free it.
    for i in 1..=2000u64 {
        let (s, v) = try_publish(&h, "chat://bounded", &format!("m{i}"), &format!("mb-{i}"));
        assert_eq!(s, 200, "publish {i}: {v}");
    }
    let st = &h.stats()[0];
    assert!(st.storage_checkpoints >= 2, "{} checkpoints", st.storage_checkpoints);
    assert!(st.storage_bytes <= 4 << 20, "{} bytes on disk", st.storage_bytes);
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every room's (offset, body) in history.
fn served(h: &volley::ServerHandle, rooms: &[&str]) -> Vec<(String, u64, String)> {
    let mut out = Vec::new();
    for r in rooms {
        let d = history(h, r);
        let offsets = d["messages"].as_array().map_or(Vec::new(), |m| {
            m.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
        });
        for (o, b) in offsets.into_iter().zip(bodies(&d)) {
            out.push((r.to_string(), o, b));
        }
    }
    out
}

#[test]
fn a_damaged_store_never_serves_wrong_bytes_and_names_what_it_drops() {
    use volley::disk::frame::{Item, Scan};
    let dir = store_dir("damage");
    let rooms = ["chat://d0", "chat://d1", "chat://d2"];
    let h = start_on(&dir, 1, SyncMode::Batch);
    for i in 1..=24u64 {
        let room = rooms[i as usize % 3];
        publish(&h, room, &format!("{room} #{i}"), &format!("d-{i}"));
        if i % 5 == 0 {
            post(
                &h,
                "/goim/push/mids?operation=1000&mids=9",
                format!("push {i}").as_bytes(),
            );
        }
    }
    let whole = served(&h, &rooms);
    assert_eq!(whole.len(), 24);
    stop(h);
    let shard = dir.join("1/shard-0");
    let segs: Vec<_> = std::fs::read_dir(&shard).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    let pristine = std::fs::read(&segs[0]).unwrap();
    // Where each record's bytes lie.
    let records: Vec<(usize, usize)> = Scan::new(&pristine)
        .filter_map(|i| match i {
            Item::Record { at, body, .. } => Some((at, at + 9 + body.len())),
            Item::Damaged { .. } => None,
        })
        .collect();
    assert!(records.len() >= 28, "{} records", records.len());
    let in_record = |p: usize| records.iter().any(|&(a, b)| a <= p && p < b);
    assert!(records.windows(2).all(|w| w[0].1 <= w[1].0));
    let len = pristine.len();
    let mut cases: Vec<(&str, usize)> = Vec::new();
    for p in (0..len).step_by(len / 50).chain([1, 5, 8, 9, 12, len - 1]) {
        cases.push(("flip", p));
    }
    for p in (1..len).step_by(len / 30).chain([9, 4096, 4097, len - 1]) {
        cases.push(("cut", p));
    }
    for (what, p) in cases {
        let work = store_dir("damage-work");
        let wshard = work.join("1/shard-0");
        std::fs::create_dir_all(&wshard).unwrap();
        std::fs::copy(dir.join("CURRENT"), work.join("CURRENT")).unwrap();
        let mut bytes = pristine.clone();
        match what {
            "flip" => bytes[p] ^= 0x5A,
            _ => bytes.truncate(p),
        }
        std::fs::write(wshard.join(segs[0].file_name().unwrap()), &bytes).unwrap();
        let h = start_on(&work, 1, SyncMode::Batch);
        let got = served(&h, &rooms);
        for g in &got {
            assert!(whole.contains(g), "{what} at {p}: served {g:?}, never written");
        }
        let lost = h.stats()[0].storage_lost;
        // A cut at a record's start leaves a shorter journal, which reads
        // as one: only a cut through a record can be told.
        let damaged = match what {
            "flip" => in_record(p),
            _ => records.iter().any(|&(a, b)| a < p && p < b),
        };
        if damaged {
            assert!(lost >= 1, "{what} at {p} inside a record: the loss is named");
        }
        if got.len() < whole.len() && what == "flip" {
            assert!(
                lost >= 1,
                "{what} at {p}: {} messages dropped without a word",
                whole.len() - got.len()
            );
        }
        // The store goes on: the next publish of a room continues it.
        let (s, v) = try_publish(&h, "chat://d0", "after", &format!("after-{what}-{p}"));
        assert_eq!(s, 200, "{v}");
        stop(h);
        let _ = std::fs::remove_dir_all(&work);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_go_in_pieces_while_publishes_go_on_and_an_unfinished_one_is_left_out() {
    use volley::disk::{frame, record::Record};
    let dir = store_dir("pieces");
    let h = start_on(&dir, 1, SyncMode::None);
    let rooms: Vec<String> = (0..30).map(|i| format!("chat://p{i}")).collect();
    let payload = "y".repeat(1000);
    // 30 rooms keeping their last 100 messages of 1 KB: a checkpoint of
    // about 3 MB, a dozen pieces, written while the publishes go on (4 MiB
    // of journal asks for one).
    for i in 0..7500u64 {
        let room = &rooms[(i % 30) as usize];
        publish(&h, room, &format!("{i} {payload}"), &format!("p-{i}"));
    }
    wait_until("a checkpoint", || h.stats()[0].storage_checkpoints >= 1);
    let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let before = served(&h, &refs);
    // The history's byte bound keeps 98 of these a room.
    assert!(before.len() > 2500, "{} kept", before.len());
    let epoch = u64::from_str_radix(history(&h, &rooms[0])["epoch"].as_str().expect("an epoch"), 16).expect("hex");
    stop(h);
    let h = start_on(&dir, 1, SyncMode::None);
    let got = served(&h, &refs);
    assert!(
        got == before,
        "every room as it was: {} of {} the same",
        same(&got, &before),
        before.len()
    );
    // The checkpoint read back counts: the next is not due at once (each
    // answered publish asks whether one is).
    publish(&h, &rooms[1], "one more", "p-more");
    let st = &h.stats()[0];
    assert!(
        st.storage_bytes > 4 << 20,
        "{} bytes: enough to ask for one",
        st.storage_bytes
    );
    assert_eq!(st.storage_checkpoints, 0);
    let before = served(&h, &refs);
    stop(h);

    // A checkpoint that did not finish (a crash while writing it): its
    // `Begin` and a message the rooms never had, no `End`.
    let shard = dir.join("1/shard-0");
    let newest = std::fs::read_dir(&shard)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .expect("segments");
    let last = before.iter().filter(|m| m.0 == rooms[0]).map(|m| m.1).max().unwrap();
    let mut seg = Vec::new();
    Record::Begin { checkpoint: 999 }.write(&mut seg);
    Record::Message {
        room: &rooms[0],
        epoch,
        offset: last + 1,
        at: 1_796_000_000,
        ttl_end: 0,
        op: 1000,
        id: "ghost",
        payload: b"ghost",
    }
    .write(&mut seg);
    frame::pad(&mut seg);
    let ghost = shard.join(format!("{:016}.seg", newest + 1));
    std::fs::write(&ghost, &seg).unwrap();
    let h = start_on(&dir, 1, SyncMode::None);
    let got = served(&h, &refs);
    assert!(
        got == before,
        "nothing of the unfinished checkpoint is served: {} messages, {} as before",
        got.len(),
        same(&got, &before)
    );
    assert!(!ghost.exists(), "and it is removed");
    assert_eq!(publish(&h, &rooms[0], "next", "p-next").0, last + 1);
    stop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How many of `got` are in `want` (for short messages about long lists).
fn same(got: &[(String, u64, String)], want: &[(String, u64, String)]) -> usize {
    got.iter().filter(|g| want.contains(g)).count()
}

#[test]
fn a_relative_folder_like_the_default_one_works_and_comes_back() {
    // As the README's first command runs: `volley-data` in the working
    // directory (here the package's), which glommio cannot open as it is.
    let rel = PathBuf::from(format!("target/volley-durable-relative-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&rel);
    let h = start_on(&rel, 2, SyncMode::Batch);
    for i in 1..=3u64 {
        assert_eq!(publish(&h, "chat://rel", &format!("m{i}"), &format!("rel-{i}")).0, i);
    }
    stop(h);
    let h = start_on(&rel, 2, SyncMode::Batch);
    assert_eq!(bodies(&history(&h, "chat://rel")), ["m1", "m2", "m3"]);
    stop(h);
    let _ = std::fs::remove_dir_all(&rel);
}
