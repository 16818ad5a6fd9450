//! The shard's side of `volley upgrade` on simulated time: connections
//! exported from every shard, encoded, decoded and imported into the next
//! process's shards carry on as if nothing happened — rooms, patterns,
//! users, keys (client-chosen and server-assigned), presence watches,
//! frames not yet written, deadlines and tokens — and nobody is told of a
//! join or a leave.

use super::{Got, Peer, Sim};
use crate::api::{Meta, Target};
use crate::proto::binary::{self, op};
use crate::proto::close::CloseReason;
use crate::proto::v2::{self, decode_push};
use crate::shard::handoff::{decode, encode, HandoffError};
use serde_json::{json, Value};

const V2: u16 = binary::VERSION_NATIVE;

fn texts(got: &[Got], op: u32) -> Vec<String> {
    got.iter().filter(|g| g.op == op).map(Got::text).collect()
}

/// (offset, epoch, payload) of each version-2 push in `got`.
fn pushes(got: &[Got]) -> Vec<(u64, u64, String)> {
    got.iter()
        .filter(|g| g.op == v2::op::PUSH)
        .map(|g| {
            let e = decode_push(&g.body).expect("a valid envelope");
            (e.offset, e.epoch, String::from_utf8_lossy(e.payload).into_owned())
        })
        .collect()
}

fn join(sim: &mut Sim, p: Peer, seq: u32, body: Value) -> Value {
    sim.send(p, V2, v2::op::JOIN, seq, body.to_string().as_bytes());
    let got = sim.frames(p);
    let reply = got.iter().find(|g| g.op == v2::op::JOIN_REPLY).expect("a join reply");
    serde_json::from_slice(&reply.body).unwrap()
}

fn say(sim: &mut Sim, room: &str, text: &str) {
    sim.publish(1, Target::Room(room.into()), 1000, text.as_bytes(), Meta::default());
}

#[test]
fn every_connection_carries_on_in_the_next_process_as_if_nothing_happened() {
    let mut sim = Sim::new(2, |c| c.client.heartbeat_timeout_secs = 30);
    // Version 1 with a key and a user, on both shards, in one room.
    let a = sim.authed(0, r#"{"mid":7,"key":"k-a","room_id":"live://1","accepts":[1000]}"#);
    let b = sim.authed(1, r#"{"mid":8,"room_id":"live://1","accepts":[1000]}"#);
    // Version 2 with an assigned key, in two rooms, watching one's presence.
    let (c, c_key) = sim.authed_v2(0, r#"{"mid":9}"#);
    let j = join(&mut sim, c, 2, json!({"room": "live://1", "presence": true}));
    let epoch = v2::parse_epoch(j["epoch"].as_str().unwrap()).unwrap();
    join(&mut sim, c, 3, json!({"room": "live://2"}));
    // Version 2 holding a pattern.
    let (d, _) = sim.authed_v2(1, r#"{"mid":10}"#);
    join(&mut sim, d, 2, json!({"room": "live://*"}));
    // A WebSocket member.
    let w = sim.connect_ws(1);
    let auth = binary::encode_to_bytes(1, op::AUTH, 1, br#"{"room_id":"live://1","accepts":[1000]}"#);
    sim.send_message(w, &auth);
    assert_eq!(sim.take(w)[0], 0x82, "its auth reply, one binary message");
    // A member that stopped reading: frames wait in its queue.
    let e = sim.authed(1, r#"{"room_id":"live://1","accepts":[1000]}"#);
    sim.stall(e);
    say(&mut sim, "live://1", "before");
    for p in [a, b, c, d] {
        assert!(!sim.frames(p).is_empty());
    }
    assert!(!sim.take(w).is_empty());
    let queued = sim.queued(e);
    assert!(queued > 0);
    // 20 of the 30 heartbeat seconds pass in this process.
    sim.tick(20);
    let online = sim.stats().authed;

    let mut sim = sim.upgrade();

    assert_eq!(sim.stats().authed, online, "every connection is counted once");
    assert_eq!(sim.queued(e), queued, "the stalled member's frames came along");
    say(&mut sim, "live://1", "after");
    assert_eq!(texts(&sim.frames(a), 1000), ["after"]);
    assert_eq!(texts(&sim.frames(b), 1000), ["after"]);
    assert_eq!(
        pushes(&sim.frames(c)),
        [(2, epoch, "after".to_string())],
        "the offsets go on"
    );
    assert_eq!(pushes(&sim.frames(d)).len(), 1, "the pattern holds");
    let got = sim.take(w);
    assert_eq!(got[0], 0x82, "still WebSocket messages");
    assert!(got.windows(5).any(|x| x == b"after"));
    sim.unstall(e);
    assert_eq!(texts(&sim.frames(e), 1000), ["before", "after"]);
    say(&mut sim, "live://2", "second room");
    assert_eq!(pushes(&sim.frames(c)).len(), 1);

    // Users and keys, client-chosen and server-assigned.
    // (Operation 1000: the version-1 clients accept only that one.)
    sim.publish(0, Target::Mids(vec![7, 8]), 1000, b"to users", Meta::default());
    assert_eq!(texts(&sim.frames(a), 1000), ["to users"]);
    assert_eq!(texts(&sim.frames(b), 1000), ["to users"]);
    sim.publish(
        1,
        Target::Keys(vec!["k-a".into(), c_key.clone()]),
        1000,
        b"to keys",
        Meta::default(),
    );
    assert_eq!(texts(&sim.frames(a), 1000), ["to keys"]);
    assert!(
        pushes(&sim.frames(c)).iter().any(|p| p.2 == "to keys"),
        "its assigned key still names it"
    );

    // Presence: the watcher hears of a newcomer, and of nobody else.
    let (f, _) = sim.authed_v2(1, r#"{"mid":11}"#);
    join(&mut sim, f, 2, json!({"room": "live://1"}));
    // (A shard's changes reach the room's owner at one sweep, its event
    // goes out at the owner's next.)
    sim.tick(2);
    let events: Vec<Value> = sim
        .frames(c)
        .iter()
        .filter(|g| g.op == v2::op::PRESENCE)
        .map(|g| serde_json::from_slice(&g.body).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["joins"].as_array().unwrap().len(), 1, "{events:?}");
    assert_eq!(events[0]["joins"][0]["mid"], 11, "{events:?}");

    // Deadlines carried on (22 s gone): one that stays silent is closed
    // when its 30 s are up, not later and not sooner; one that beats lives.
    sim.send(a, binary::VERSION_GOIM, op::HEARTBEAT, 5, b"");
    sim.tick(8);
    assert_eq!(sim.closed(b), None, "30 s since its last sign of life");
    sim.tick(2);
    assert_eq!(sim.closed(b), Some(CloseReason::HeartbeatTimeout));
    assert_eq!(sim.closed(a), None, "it beat 10 s ago");
}

#[test]
fn a_join_waiting_for_its_owner_holds_the_export_back() {
    let mut sim = Sim::new(2, |_| {});
    let (c, _) = sim.authed_v2(0, "{}");
    let room = (0..)
        .map(|i| format!("live://{i}"))
        .find(|r| crate::shard::mesh::owner_of_str(r, 2) == 1)
        .unwrap();
    sim.send_unsettled(c, V2, v2::op::JOIN, 2, json!({ "room": room }).to_string().as_bytes());
    assert_eq!(
        sim.shards[0].export(|_| Default::default()).unwrap_err(),
        HandoffError::Joining(c.conn)
    );
    sim.pump();
    assert!(sim.shards[0].export(|_| Default::default()).is_ok());
}

#[test]
fn records_another_shard_would_misread_are_refused_before_anything_changes() {
    let mut sim = Sim::new(2, |_| {});
    sim.authed(0, r#"{"room_id":"live://1"}"#);
    let (mut state, fds) = sim.shards[0].export(|_| Default::default()).unwrap();
    assert_eq!(decode(&encode(&state)).as_ref(), Some(&state));
    assert!(decode(&encode(&state)[..10]).is_none(), "cut short");
    let mut next = Sim::new(2, |_| {});
    assert!(matches!(
        next.shards[1].import(decode(&encode(&state)).unwrap(), &fds),
        Err(HandoffError::WrongShard { .. })
    ));
    assert!(matches!(
        next.shards[0].import(decode(&encode(&state)).unwrap(), &[]),
        Err(HandoffError::Sockets { .. })
    ));
    state.conns[0].close = Some("no_such_reason".into());
    assert!(matches!(
        next.shards[0].import(state, &fds),
        Err(HandoffError::Reason(_))
    ));
    assert_eq!(next.shards[0].nr_conns(), 0);
}

#[test]
fn a_token_keeps_its_grant_and_its_timers_across_the_hand_off() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    const SECRET: &str = "sim-secret-0123456789abcdef0123456";
    let mut sim = Sim::new(2, |c| {
        c.auth.mode = crate::config::AuthMode::Jwt;
        c.auth.jwt_secret = vec![SECRET.into()];
        c.auth.leeway_secs = 0;
        c.auth.refresh_secs = 2;
        c.auth.grace_secs = 1;
    });
    let exp = sim.unix + 5;
    let claims = json!({"sub": "4", "exp": exp, "rooms": ["open://>"]});
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (p, _) = sim.authed_v2(0, &json!({ "token": token }).to_string());
    sim.tick(1);
    let mut sim = sim.upgrade();
    // The grant: rooms it allows and rooms it does not.
    assert!(join(&mut sim, p, 2, json!({"room": "open://1"}))["epoch"].is_string());
    sim.send(
        p,
        V2,
        v2::op::JOIN,
        3,
        json!({"room": "closed://1"}).to_string().as_bytes(),
    );
    let refused = sim.frames(p);
    assert!(refused.iter().any(|g| g.op == v2::op::ERROR), "{refused:?}");
    // The timers: asked for a new one 2 s before exp, closed after it.
    sim.tick(2);
    assert!(sim.frames(p).iter().any(|g| g.op == v2::op::REFRESH));
    sim.tick(3);
    assert_eq!(sim.closed(p), Some(CloseReason::TokenExpired));
}
