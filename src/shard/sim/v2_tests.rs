//! Version 2 on simulated time: joins across shards, offsets, history and
//! its limits, resume with publishes interleaved at every point of the
//! owner round trip, numbered errors.

use super::{Got, Peer, Sim};
use crate::api::{Meta, Target};
use crate::proto::binary::{self, op};
use crate::proto::close::CloseReason;
use crate::proto::v2::{self, decode_push, fmt_epoch};
use crate::shard::mesh::owner_of_str;
use serde_json::{json, Value};

const V2: u16 = binary::VERSION_NATIVE;

fn json_of(g: &Got) -> Value {
    serde_json::from_slice(&g.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", g.text()))
}

/// (offset, payload) of every push in `got`, asserting each is a room push.
fn pushes(got: &[Got], room: &str) -> Vec<(u64, String)> {
    got.iter()
        .filter(|g| g.op == v2::op::PUSH)
        .map(|g| {
            assert_eq!(g.ver, V2);
            let e = decode_push(&g.body).expect("a valid envelope");
            assert_eq!((e.kind, e.room), (v2::Kind::Room, room));
            (e.offset, String::from_utf8_lossy(e.payload).into_owned())
        })
        .collect()
}

fn join_body(room: &str, resume: Option<(u64, u64)>) -> Vec<u8> {
    match resume {
        None => json!({ "room": room }),
        Some((o, e)) => json!({"room": room, "offset": o, "epoch": fmt_epoch(e)}),
    }
    .to_string()
    .into_bytes()
}

/// Joins `room`; returns the reply's (epoch, offset) and everything else
/// that arrived with it.
fn join(sim: &mut Sim, p: Peer, room: &str, seq: u32, resume: Option<(u64, u64)>) -> (Value, Vec<Got>) {
    sim.send(p, V2, v2::op::JOIN, seq, &join_body(room, resume));
    let mut got = sim.frames(p);
    assert!(!got.is_empty(), "no join reply");
    let reply = got.remove(0);
    assert_eq!(
        (reply.ver, reply.op, reply.seq),
        (V2, v2::op::JOIN_REPLY, seq),
        "{}",
        reply.text()
    );
    (json_of(&reply), got)
}

fn epoch_of(v: &Value) -> u64 {
    v2::parse_epoch(v["epoch"].as_str().unwrap()).unwrap()
}

fn say(sim: &mut Sim, at: usize, room: &str, text: &str) {
    sim.publish(at, Target::Room(room.into()), 1000, text.as_bytes(), Meta::default());
}

/// A room owned by shard `owner` of `n`.
fn room_owned_by(owner: usize, n: usize) -> String {
    (0..)
        .map(|i| format!("live://{i}"))
        .find(|r| owner_of_str(r, n) == owner)
        .unwrap()
}

#[test]
fn auth_names_the_key_and_pushes_carry_room_offset_epoch_op_and_id() {
    let mut sim = Sim::new(2, |_| {});
    let (_, assigned) = sim.authed_v2(0, "{}");
    assert_eq!(
        assigned.len(),
        crate::shard::addr::ASSIGNED_KEY_LEN,
        "a server-assigned key: {assigned}"
    );
    let (p, key) = sim.authed_v2(1, r#"{"key":"k-1","mid":7}"#);
    assert_eq!(key, "k-1");
    let old = sim.authed(1, r#"{"room_id":"live://1"}"#);
    let (reply, rest) = join(&mut sim, p, "live://1", 2, None);
    assert_eq!(
        (reply["room"].as_str(), reply["offset"].as_u64()),
        (Some("live://1"), Some(0))
    );
    assert!(rest.is_empty() && reply.get("recovered").is_none());
    let meta = Meta {
        id: Some("msg-1".into()),
        ttl: None,
    };
    sim.publish(0, Target::Room("live://1".into()), 1001, b"hi", meta);
    let got = sim.frames(p);
    let e = decode_push(&got[0].body).unwrap();
    assert_eq!(
        (e.op, e.offset, e.epoch, e.id, e.payload),
        (1001, 1, epoch_of(&reply), "msg-1", &b"hi"[..])
    );
    // The version-1 member of the same room gets goim's frame, never v2's.
    let v1 = sim.frames(old);
    assert_eq!((v1[0].ver, v1[0].op, v1[0].body.as_slice()), (1, 1001, &b"hi"[..]));
    // Key, user and global pushes reach a v2 connection without accepts.
    sim.publish(0, Target::Mids(vec![7]), 5, b"u", Meta::default());
    sim.publish(1, Target::All, 6, b"a", Meta::default());
    let got = sim.frames(p);
    let kinds: Vec<(v2::Kind, u32)> = got
        .iter()
        .map(|g| decode_push(&g.body).map(|e| (e.kind, e.op)).unwrap())
        .collect();
    assert_eq!(kinds, vec![(v2::Kind::User, 5), (v2::Kind::Direct, 6)]);
    assert!(
        sim.frames(old).is_empty(),
        "accepts nothing: no user or global pushes (goim)"
    );
}

#[test]
fn a_resume_is_gapless_whatever_the_publishes_interleave_with() {
    // The owner is shard 0, the resuming client on shard 1: every step of the
    // round trip crosses the mesh.
    let mut sim = Sim::new(2, |_| {});
    let room = room_owned_by(0, 2);
    let (a, _) = sim.authed_v2(1, "{}");
    let (reply, _) = join(&mut sim, a, &room, 2, None);
    let epoch = epoch_of(&reply);
    for i in 1..=3 {
        say(&mut sim, 0, &room, &format!("m{i}"));
    }
    assert_eq!(pushes(&sim.frames(a), &room).last().map(|p| p.0), Some(3));
    sim.send(a, V2, op::DISCONNECT, 3, b"");
    for i in 4..=6 {
        say(&mut sim, 1, &room, &format!("m{i}"));
    }
    // B resumes from 3. Publish 7 reaches the owner before the join does,
    // publish 8 after the owner answered but before B's shard reads the reply.
    let (b, _) = sim.authed_v2(1, "{}");
    sim.send_unsettled(b, V2, v2::op::JOIN, 4, &join_body(&room, Some((3, epoch))));
    sim.publish_unsettled(0, Target::Room(room.clone()), 1000, b"m7", Meta::default());
    assert!(sim.step(0), "the owner answers the join");
    sim.publish_unsettled(0, Target::Room(room.clone()), 1000, b"m8", Meta::default());
    sim.pump();
    say(&mut sim, 1, &room, "m9");
    let got = sim.frames(b);
    let reply = json_of(&got[0]);
    assert_eq!(got[0].op, v2::op::JOIN_REPLY);
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(true), Some(7))
    );
    let seen = pushes(&got, &room);
    let want: Vec<(u64, String)> = (4..=9).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(seen, want, "replay 4..=7, then live 8 and 9: each once, in order");
    assert_eq!(sim.stats().replayed, 4);
}

#[test]
fn a_resume_that_cannot_be_served_says_why_and_replays_nothing() {
    let mut sim = Sim::new(2, |c| c.history.messages = 3);
    let (p, _) = sim.authed_v2(0, "{}");
    let (reply, _) = join(&mut sim, p, "live://g", 2, None);
    let epoch = epoch_of(&reply);
    for i in 1..=10 {
        say(&mut sim, 1, "live://g", &format!("m{i}"));
    }
    sim.frames(p);
    let (q, _) = sim.authed_v2(1, "{}");
    for (seq, resume, reason) in [
        (3, (2, epoch), "history_gone"),
        (5, (2, epoch ^ 1), "epoch_changed"),
        (7, (11, epoch), "offset_ahead"),
    ] {
        let (reply, rest) = join(&mut sim, q, "live://g", seq, Some(resume));
        assert_eq!(
            (
                reply["recovered"].as_bool(),
                reply["reason"].as_str(),
                reply["offset"].as_u64()
            ),
            (Some(false), Some(reason), Some(10))
        );
        assert!(rest.is_empty(), "nothing replayed");
        sim.send(q, V2, v2::op::LEAVE, seq + 1, br#"{"room":"live://g"}"#);
        assert_eq!(sim.frames(q)[0].op, v2::op::LEAVE_REPLY);
    }
    // Offset 7 is still covered (8, 9, 10 are kept).
    let (reply, rest) = join(&mut sim, q, "live://g", 9, Some((7, epoch)));
    assert_eq!(reply["recovered"], json!(true));
    assert_eq!(
        pushes(&rest, "live://g").iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!((sim.stats().resumes, sim.stats().resumes_failed), (4, 3));
}

#[test]
fn history_ages_out_on_ticks_and_a_ttl_skips_without_a_gap() {
    let mut sim = Sim::new(1, |c| c.history.max_age_secs = 5);
    let (p, _) = sim.authed_v2(0, "{}");
    let (reply, _) = join(&mut sim, p, "r", 2, None);
    let epoch = epoch_of(&reply);
    let ttl = |t| Meta { id: None, ttl: Some(t) };
    sim.publish(0, Target::Room("r".into()), 1, b"short", ttl(2));
    sim.publish(0, Target::Room("r".into()), 1, b"long", Meta::default());
    // Published during tick 0 with a TTL of 2 s: kept through tick 2
    // (which may begin less than 2 s later), gone at tick 3.
    sim.tick(2);
    assert_eq!(sim.stats().history_expired, 0, "never before its TTL");
    sim.tick(1);
    assert_eq!(sim.stats().history_expired, 1);
    let (q, _) = sim.authed_v2(0, "{}");
    let (reply, rest) = join(&mut sim, q, "r", 2, Some((0, epoch)));
    assert_eq!(reply["recovered"], json!(true), "an expired message is not a gap");
    assert_eq!(pushes(&rest, "r"), vec![(2, "long".to_string())]);
    sim.tick(2);
    assert_eq!(
        (sim.stats().history_evicted_limit, sim.stats().history_messages),
        (1, 0)
    );
    let (z, _) = sim.authed_v2(0, "{}");
    let (reply, rest) = join(&mut sim, z, "r", 2, Some((1, epoch)));
    assert_eq!(
        (reply["recovered"].as_bool(), reply["reason"].as_str()),
        (Some(false), Some("history_gone"))
    );
    assert!(rest.is_empty());
}

#[test]
fn refused_requests_are_numbered_errors_and_the_connection_goes_on() {
    let mut sim = Sim::new(2, |c| c.client.max_rooms = 2);
    let room = room_owned_by(1, 2);
    let (p, _) = sim.authed_v2(0, "{}");
    let err = |sim: &mut Sim, op: u32, seq: u32, body: &[u8]| {
        sim.send(p, V2, op, seq, body);
        let got = sim.frames(p);
        assert_eq!((got[0].op, got[0].seq), (v2::op::ERROR, seq), "{}", got[0].text());
        json_of(&got[0])["code"].as_u64().unwrap()
    };
    assert_eq!(err(&mut sim, v2::op::JOIN, 2, b"{"), 4000);
    assert_eq!(err(&mut sim, v2::op::JOIN, 3, br#"{"room":"r","offset":1}"#), 4000);
    assert_eq!(err(&mut sim, 999, 4, b""), 4001);
    assert_eq!(err(&mut sim, v2::op::LEAVE, 5, br#"{"room":"x"}"#), 4004);
    join(&mut sim, p, "a", 6, None);
    assert_eq!(err(&mut sim, v2::op::JOIN, 7, br#"{"room":"a"}"#), 4003);
    // A join still on its way to the owner: leaving it is refused, joining it
    // again too, and it counts against the limit.
    sim.send_unsettled(p, V2, v2::op::JOIN, 8, &join_body(&room, None));
    sim.send_unsettled(p, V2, v2::op::LEAVE, 9, json!({ "room": room }).to_string().as_bytes());
    sim.send_unsettled(p, V2, v2::op::JOIN, 10, br#"{"room":"c"}"#);
    sim.pump();
    let got = sim.frames(p);
    let ops: Vec<(u32, u32)> = got.iter().map(|g| (g.op, g.seq)).collect();
    assert_eq!(
        ops,
        vec![(v2::op::ERROR, 9), (v2::op::ERROR, 10), (v2::op::JOIN_REPLY, 8)]
    );
    assert_eq!(json_of(&got[0])["code"], json!(4005));
    assert_eq!(json_of(&got[1])["code"], json!(4002));
    assert!(sim.closed(p).is_none());
    // Framing errors and a second auth still close.
    sim.send(p, V2, op::AUTH, 11, b"{}");
    assert_eq!(sim.closed(p), Some(CloseReason::ProtocolError));
}

#[test]
fn a_slow_consumer_is_told_to_resume_and_misses_nothing_when_it_does() {
    let mut sim = Sim::new(2, |c| c.limits.outbound_limit = 70_000);
    let room = room_owned_by(0, 2);
    let (p, _) = sim.authed_v2(1, "{}");
    let (reply, _) = join(&mut sim, p, &room, 2, None);
    let epoch = epoch_of(&reply);
    let big = "x".repeat(1000);
    say(&mut sim, 0, &room, &big);
    let last = pushes(&sim.frames(p), &room).last().unwrap().0;
    sim.stall(p);
    for _ in 0..80 {
        say(&mut sim, 0, &room, &big);
    }
    assert_eq!(sim.closed(p), Some(CloseReason::SlowConsumer));
    let bye = sim.frames(p).into_iter().find(|g| g.op == op::DISCONNECT).unwrap();
    assert!(
        bye.text().contains("rejoin each room with its last offset to resume"),
        "{}",
        bye.text()
    );
    let (q, _) = sim.authed_v2(1, "{}");
    let (reply, rest) = join(&mut sim, q, &room, 2, Some((last, epoch)));
    assert_eq!(reply["recovered"], json!(true));
    let got: Vec<u64> = pushes(&rest, &room).iter().map(|p| p.0).collect();
    assert_eq!(got, (last + 1..=81).collect::<Vec<_>>());
}

#[test]
fn history_pages_and_the_memory_cap() {
    // Room for the four logs and some of their 40 messages: the oldest
    // messages are evicted, the newest room keeps its log.
    let mut sim = Sim::new(1, |c| c.history.memory = 4352);
    for i in 0..40 {
        say(&mut sim, 0, &format!("room{}", i % 4), "payload");
    }
    let st = sim.stats();
    assert!(st.history_bytes <= 4352, "{}", st.history_bytes);
    assert!(st.history_evicted_memory > 0);
    let page = sim.shards[0].history_page("room3", 0, 100).expect("room3 has a log");
    assert_eq!(page.last, 10);
    assert!(page.entries.iter().all(|e| e.offset > 10 - page.entries.len() as u64));
    assert!(sim.shards[0].history_page("nope", 0, 10).is_none());
}

#[test]
fn a_message_id_is_delivered_once_within_its_window_and_again_after_it() {
    let mut sim = Sim::new(2, |c| c.api.dedup_window_secs = 5);
    let p = sim.authed(1, r#"{"room_id":"live://dd"}"#);
    let meta = || Meta {
        id: Some("m".into()),
        ttl: None,
    };
    // From either shard: the room's owner is the one that remembers.
    sim.publish(0, Target::Room("live://dd".into()), 1000, b"1", meta());
    sim.publish(1, Target::Room("live://dd".into()), 1000, b"1", meta());
    assert_eq!(sim.frames(p).len(), 1, "the retry was not delivered");
    assert_eq!(sim.stats().publish_duplicates, 1);
    sim.tick(5);
    sim.publish(1, Target::Room("live://dd".into()), 1000, b"2", meta());
    let got = sim.frames(p);
    assert_eq!((got.len(), got[0].body.as_slice()), (1, &b"2"[..]), "a new window");
}
