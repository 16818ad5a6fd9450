//! Access control on simulated time: token refresh and expiry by the
//! wheel, presence events coalesced per second (a room's churn costs its
//! watchers one event a second, details only up to the limit), and pattern
//! subscribers getting each room message once.

use super::{Got, Sim};
use crate::config::AuthMode;
use crate::proto::binary::{self, op};
use crate::proto::close::CloseReason;
use crate::proto::v2::{self, decode_push};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const V2: u16 = binary::VERSION_NATIVE;
const SECRET: &str = "sim-secret-0123456789abcdef0123456";

fn token(mid: i64, exp: u64) -> String {
    let claims = json!({"sub": mid.to_string(), "exp": exp});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt_sim() -> Sim {
    Sim::new(2, |c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = vec![SECRET.into()];
        c.auth.leeway_secs = 0;
        c.auth.refresh_secs = 2;
        c.auth.grace_secs = 1;
    })
}

fn ops(got: &[Got]) -> Vec<u32> {
    got.iter().map(|g| g.op).collect()
}

#[test]
fn a_token_is_asked_for_before_exp_and_the_connection_closed_after_it() {
    let mut sim = jwt_sim();
    let exp = sim.unix + 5;
    let auth = |mid| json!({ "token": token(mid, exp) }).to_string();
    let (keeps, _) = sim.authed_v2(0, &auth(1));
    let (lapses, _) = sim.authed_v2(1, &auth(2));
    let v1 = sim.authed(0, &auth(3));
    sim.tick(2);
    assert!(sim.frames(keeps).is_empty(), "not yet: 3 s left, asked at 2");
    sim.tick(1);
    let asked = sim.frames(keeps);
    assert_eq!(ops(&asked), vec![v2::op::REFRESH]);
    assert_eq!(serde_json::from_slice::<Value>(&asked[0].body).unwrap()["exp"], exp);
    assert_eq!(ops(&sim.frames(lapses)), vec![v2::op::REFRESH]);
    assert!(sim.frames(v1).is_empty(), "version 1 is never asked");
    let fresh = json!({ "token": token(1, exp + 100) }).to_string();
    sim.send(keeps, V2, v2::op::TOKEN, 9, fresh.as_bytes());
    let got = sim.frames(keeps);
    assert_eq!((got[0].op, got[0].seq), (v2::op::TOKEN_REPLY, 9));
    sim.tick(2);
    assert_eq!(sim.closed(lapses), None, "exp + grace not passed yet");
    sim.tick(1);
    assert_eq!(sim.closed(lapses), Some(CloseReason::TokenExpired));
    assert_eq!(sim.closed(v1), Some(CloseReason::TokenExpired));
    sim.tick(10);
    assert_eq!(sim.closed(keeps), None, "the refreshed connection stays");
    sim.send(keeps, V2, op::HEARTBEAT, 10, b"");
    assert_eq!(ops(&sim.frames(keeps)), vec![op::HEARTBEAT_REPLY]);
}

#[test]
fn presence_events_are_one_a_second_and_only_counts_past_the_limit() {
    let mut sim = Sim::new(2, |c| c.client.presence_limit = 3);
    let (watcher, _) = sim.authed_v2(0, r#"{"mid":1}"#);
    sim.send(watcher, V2, v2::op::JOIN, 2, br#"{"room":"big","presence":true}"#);
    assert_eq!(ops(&sim.frames(watcher)), vec![v2::op::JOIN_REPLY]);
    // Ten members join, on both shards, within one second.
    let mut members = Vec::new();
    for i in 0..10 {
        let (p, _) = sim.authed_v2(i % 2, &json!({ "mid": 100 + i }).to_string());
        sim.send(p, V2, v2::op::JOIN, 2, br#"{"room":"big"}"#);
        members.push(p);
    }
    let mut events: Vec<Value> = Vec::new();
    for _ in 0..3 {
        sim.tick(1);
        let got = sim.frames(watcher);
        let here: Vec<Value> = got
            .iter()
            .filter(|g| g.op == v2::op::PRESENCE)
            .map(|g| serde_json::from_slice(&g.body).unwrap())
            .collect();
        assert!(here.len() <= 1, "at most one event a second: {here:?}");
        events.extend(here);
    }
    assert!(!events.is_empty());
    assert!(events.iter().any(|e| e["coalesced"] == true), "{events:?}");
    for e in &events {
        let detailed = e["joins"].as_array().map_or(0, Vec::len) + e["leaves"].as_array().map_or(0, Vec::len);
        assert!(detailed <= 3, "no more details than the limit: {e}");
    }
    assert_eq!(events.last().unwrap()["count"], 11);
    // Two leave: under the limit, named.
    for p in members.drain(..2) {
        sim.send(p, V2, op::DISCONNECT, 3, b"");
    }
    sim.tick(3);
    let got = sim.frames(watcher);
    let left: Vec<i64> = got
        .iter()
        .filter(|g| g.op == v2::op::PRESENCE)
        .flat_map(|g| {
            let v: Value = serde_json::from_slice(&g.body).unwrap();
            v["leaves"].as_array().cloned().unwrap_or_default()
        })
        .map(|m| m["mid"].as_i64().unwrap())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, vec![100, 101]);
}

#[test]
fn a_pattern_subscriber_gets_each_room_message_once() {
    let mut sim = Sim::new(2, |_| {});
    let (p, _) = sim.authed_v2(1, r#"{"mid":1}"#);
    for (seq, room) in [(2, "live://*"), (3, ">"), (4, "live://7")] {
        sim.send(p, V2, v2::op::JOIN, seq, json!({ "room": room }).to_string().as_bytes());
    }
    assert_eq!(ops(&sim.frames(p)), vec![v2::op::JOIN_REPLY; 3]);
    for room in ["live://7", "live://8", "chat/1", "live://8/x"] {
        sim.publish_room(0, room, 1000, room.as_bytes());
    }
    let rooms: Vec<String> = sim
        .frames(p)
        .iter()
        .filter(|g| g.op == v2::op::PUSH)
        .map(|g| decode_push(&g.body).unwrap().room.to_string())
        .collect();
    assert_eq!(rooms, vec!["live://7", "live://8", "chat/1", "live://8/x"]);
}
