//! User inboxes and read marks on simulated time: what is kept and for whom,
//! redelivery before live pushes, acknowledgements, expiry and caps, and
//! unread counts shared by a user's devices.

use super::{Got, Peer, Sim};
use crate::api::{Meta, Target};
use crate::proto::binary::{self, op};
use crate::proto::v2::{self, decode_push, Kind};
use serde_json::{json, Value};

const V2: u16 = binary::VERSION_NATIVE;

fn user_push(sim: &mut Sim, at: usize, mid: i64, text: &str, ttl: Option<u32>) {
    let meta = Meta { id: None, ttl };
    sim.publish(at, Target::Mids(vec![mid]), 1000, text.as_bytes(), meta);
}

/// (push id, payload) of the user pushes in `got`.
fn user_pushes(got: &[Got]) -> Vec<(u64, String)> {
    got.iter()
        .filter(|g| g.op == v2::op::PUSH)
        .map(|g| {
            let e = decode_push(&g.body).unwrap();
            assert_eq!(e.kind, Kind::User);
            (e.offset, String::from_utf8_lossy(e.payload).into_owned())
        })
        .collect()
}

fn texts(v: &[(u64, String)]) -> Vec<&str> {
    v.iter().map(|p| p.1.as_str()).collect()
}

fn ack(sim: &mut Sim, p: Peer, seq: u32, ids: &[u64]) -> Got {
    sim.send(p, V2, v2::op::ACK, seq, json!({ "ids": ids }).to_string().as_bytes());
    sim.frames(p).remove(0)
}

fn json_of(g: &Got) -> Value {
    serde_json::from_slice(&g.body).unwrap()
}

#[test]
fn an_offline_users_pushes_wait_come_first_and_stay_until_acknowledged() {
    let mut sim = Sim::new(2, |_| {});
    for t in ["a", "b", "c"] {
        user_push(&mut sim, 0, 7, t, None);
    }
    assert_eq!(sim.stats().inbox_messages, 3);
    let (p, _) = sim.authed_v2(1, r#"{"mid":7}"#);
    user_push(&mut sim, 1, 7, "live", None);
    let got = user_pushes(&sim.frames(p));
    assert_eq!(
        texts(&got),
        vec!["a", "b", "c", "live"],
        "what waited, then the live one"
    );
    assert_eq!(
        sim.stats().inbox_messages,
        4,
        "a user with a version-2 connection keeps its pushes"
    );
    let reply = ack(&mut sim, p, 2, &[got[0].0, got[2].0, 12345]);
    assert_eq!(
        (reply.op, json_of(&reply)["count"].as_u64()),
        (v2::op::ACK_REPLY, Some(3))
    );
    assert_eq!((sim.stats().inbox_messages, sim.stats().inbox_acked), (2, 2));
    // The user's next connection gets what is still unacknowledged.
    let (q, _) = sim.authed_v2(0, r#"{"mid":7}"#);
    assert_eq!(texts(&user_pushes(&sim.frames(q))), vec!["b", "live"]);
    assert!(sim.frames(p).is_empty(), "an earlier connection is not sent it again");
}

#[test]
fn version_1_users_get_at_most_once() {
    let mut sim = Sim::new(2, |_| {});
    let v1 = sim.authed(0, r#"{"mid":5,"accepts":[1000]}"#);
    user_push(&mut sim, 1, 5, "online", None);
    assert_eq!(sim.frames(v1)[0].body, b"online");
    assert_eq!(sim.stats().inbox_messages, 0, "only version-1 connections: not kept");
    sim.send(v1, binary::VERSION_GOIM, op::DISCONNECT, 2, b"");
    user_push(&mut sim, 1, 5, "offline", None);
    assert_eq!(sim.stats().inbox_messages, 1);
    let again = sim.authed(1, r#"{"mid":5,"accepts":[1000]}"#);
    let got = sim.frames(again);
    assert_eq!(
        (got[0].ver, got[0].op, got[0].body.as_slice()),
        (1, 1000, &b"offline"[..])
    );
    assert_eq!(
        sim.stats().inbox_messages,
        0,
        "handed to a version-1 connection: consumed"
    );
    // A user with both: the version-2 device keeps them for acknowledgement.
    let (v2c, _) = sim.authed_v2(0, r#"{"mid":5}"#);
    user_push(&mut sim, 0, 5, "both", None);
    assert_eq!(sim.frames(again)[0].body, b"both");
    assert_eq!(texts(&user_pushes(&sim.frames(v2c))), vec!["both"]);
    assert_eq!(sim.stats().inbox_messages, 1);
}

#[test]
fn inbox_ttl_caps_and_refusals() {
    let mut sim = Sim::new(1, |c| {
        c.inbox.messages = 2;
        c.inbox.ttl_secs = 10;
    });
    user_push(&mut sim, 0, 3, "short", Some(2));
    user_push(&mut sim, 0, 3, "x", None);
    user_push(&mut sim, 0, 3, "y", None);
    assert_eq!(
        sim.stats().inbox_evicted_limit,
        1,
        "a third push passes the per-user limit"
    );
    user_push(&mut sim, 0, 4, "z", None);
    // Pushed during tick 0 with a TTL of 10 s: tick 10 may begin less than
    // 10 s later, so they stay through it and leave at tick 11.
    sim.tick(10);
    assert_eq!(sim.stats().inbox_messages, 3, "never before the TTL");
    sim.tick(1);
    let st = sim.stats();
    assert_eq!((st.inbox_expired, st.inbox_messages, st.inbox_users), (3, 0, 0));
    user_push(&mut sim, 0, 3, "ttl", Some(2));
    sim.tick(2);
    let (p, _) = sim.authed_v2(0, r#"{"mid":3}"#);
    assert_eq!(texts(&user_pushes(&sim.frames(p))), vec!["ttl"]);
    sim.tick(1);
    let (q, _) = sim.authed_v2(0, r#"{"mid":3}"#);
    assert!(sim.frames(q).is_empty(), "its TTL ended");
    // Acknowledging needs a user and a list of 1 to 1000 ids.
    let (anon, _) = sim.authed_v2(0, "{}");
    assert_eq!(json_of(&ack(&mut sim, anon, 2, &[1]))["code"], 4006);
    sim.send(p, V2, v2::op::ACK, 3, br#"{"ids":[]}"#);
    assert_eq!(json_of(&sim.frames(p)[0])["code"], 4000);
}

#[test]
fn read_marks_are_per_user_and_shared_by_its_devices() {
    let mut sim = Sim::new(2, |_| {});
    let (phone, _) = sim.authed_v2(0, r#"{"mid":11}"#);
    let join = |sim: &mut Sim, p: Peer, seq: u32| {
        sim.send(p, V2, v2::op::JOIN, seq, br#"{"room":"chat://1"}"#);
        let got = sim.frames(p);
        assert_eq!(got[0].op, v2::op::JOIN_REPLY);
        json_of(&got[0])
    };
    assert_eq!(join(&mut sim, phone, 2)["unread"], 0);
    for i in 0..5 {
        sim.publish_room(1, "chat://1", 1, format!("{i}").as_bytes());
    }
    sim.frames(phone);
    sim.send(phone, V2, v2::op::READ, 3, br#"{"room":"chat://1","offset":3}"#);
    let r = sim.frames(phone).remove(0);
    assert_eq!(
        (r.op, json_of(&r)),
        (v2::op::READ_REPLY, json!({"room":"chat://1","offset":3,"unread":2}))
    );
    let (laptop, _) = sim.authed_v2(1, r#"{"mid":11}"#);
    assert_eq!(
        join(&mut sim, laptop, 2)["unread"],
        2,
        "the phone's mark counts on the laptop"
    );
    let (other, _) = sim.authed_v2(1, r#"{"mid":12}"#);
    assert_eq!(join(&mut sim, other, 2)["unread"], 5, "another user has read nothing");
    let (anon, _) = sim.authed_v2(1, "{}");
    assert!(
        join(&mut sim, anon, 2).get("unread").is_none(),
        "no user, no unread count"
    );
    sim.send(anon, V2, v2::op::READ, 3, br#"{"room":"chat://1","offset":3}"#);
    assert_eq!(json_of(&sim.frames(anon)[0])["code"], 4006);
}

#[test]
fn a_room_refuses_marks_past_its_limit() {
    let mut sim = Sim::new(1, |c| c.history.max_marks = 1);
    sim.publish_room(0, "r", 1, b"x");
    let (a, _) = sim.authed_v2(0, r#"{"mid":1}"#);
    let (b, _) = sim.authed_v2(0, r#"{"mid":2}"#);
    sim.send(a, V2, v2::op::READ, 2, br#"{"room":"r","offset":1}"#);
    assert_eq!(sim.frames(a)[0].op, v2::op::READ_REPLY);
    sim.send(b, V2, v2::op::READ, 2, br#"{"room":"r","offset":1}"#);
    let g = sim.frames(b).remove(0);
    assert_eq!(
        (g.op, json_of(&g)["reason"].as_str()),
        (v2::op::ERROR, Some("mark_limit"))
    );
}
