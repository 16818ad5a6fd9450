//! Cluster mode on simulated time, against the simulated Redis
//! (`sim::redis`) through the cluster harness (`sim::cluster`): a room's
//! subscription from subscribing through syncing to live (and failed, and
//! unsubscribed), held messages, a lost subscription filled from the
//! Stream, a gap past history, pattern publishes across nodes; the
//! helpers the failure tests (`cluster_failure_tests`) share. No socket,
//! no sleep: every step is the test's. (The same paths against a real
//! redis-server: tests/cluster/.)

use super::cluster::ClusterSim;
use super::{Got, Peer};
use crate::api::{Meta, Target};
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::v2::{self, decode_push, ErrorCode};
use crate::redis::link::RedisError;
use crate::shard::cluster::state::State;
use crate::shard::mesh::{owner_of_str, ReplyWait};
use serde_json::{json, Value};
use std::future::Future;

pub(super) const V2: u16 = binary::VERSION_NATIVE;
pub(super) const ROOM: &str = "live://a";

pub(super) fn json_of(g: &Got) -> Value {
    serde_json::from_slice(&g.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", g.text()))
}

/// Offsets and payloads of the room pushes in `got` (version 2).
pub(super) fn pushes(got: &[Got]) -> Vec<(u64, String)> {
    got.iter()
        .filter(|g| g.op == v2::op::PUSH)
        .map(|g| {
            let e = decode_push(&g.body).expect("a valid envelope");
            (e.offset, String::from_utf8_lossy(e.payload).into_owned())
        })
        .collect()
}

/// Payloads of the version-1 pushes with operation 1000 in `got`.
pub(super) fn v1_pushes(got: &[Got]) -> Vec<String> {
    got.iter().filter(|g| g.op == 1000).map(Got::text).collect()
}

/// Sends a join of `room` from `p` on node `k`, settling the cluster.
pub(super) fn send_join(cs: &mut ClusterSim, k: usize, p: Peer, seq: u32) {
    let body = json!({ "room": ROOM }).to_string();
    cs.nodes[k].send(p, V2, v2::op::JOIN, seq, body.as_bytes());
    cs.settle();
}

/// The join reply `p` got first, and whatever came after it.
pub(super) fn join_reply(cs: &mut ClusterSim, k: usize, p: Peer, seq: u32) -> (Value, Vec<Got>) {
    let mut got = cs.nodes[k].frames(p);
    assert!(!got.is_empty(), "no join reply");
    let reply = got.remove(0);
    assert_eq!((reply.op, reply.seq), (v2::op::JOIN_REPLY, seq), "{}", reply.text());
    (json_of(&reply), got)
}

/// A version-1 client on node `k`, shard `shard`, authenticated with
/// `auth` (JSON), the cluster settled after.
pub(super) fn v1(cs: &mut ClusterSim, k: usize, shard: usize, auth: Value) -> Peer {
    let p = cs.nodes[k].authed(shard, &auth.to_string());
    cs.settle();
    p
}

/// A version-2 member of ROOM on node `k`, shard `shard`, joined live.
pub(super) fn member(cs: &mut ClusterSim, k: usize, shard: usize) -> Peer {
    let (p, _) = cs.nodes[k].authed_v2(shard, "{}");
    send_join(cs, k, p, 2);
    join_reply(cs, k, p, 2);
    p
}

/// An API room publish of `text` on node `k` (its shard 0).
pub(super) fn say(cs: &mut ClusterSim, k: usize, text: &str) {
    let target = Target::Room(ROOM.into());
    cs.nodes[k].publish(0, target, 1000, text.as_bytes(), Meta::default());
    cs.settle();
}

/// The answer in `w`, if it came (`Some(None)`: dropped unanswered).
pub(super) fn ready<T>(w: &mut ReplyWait<T>) -> Option<Option<T>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(w).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Where ROOM's subscription stands on node `k` (its owner shard).
pub(super) fn state(cs: &ClusterSim, k: usize) -> Option<State> {
    let node = &cs.nodes[k];
    let owner = owner_of_str(ROOM, node.shards.len());
    let c = node.shards[owner].cluster.as_ref()?;
    c.rooms.get(ROOM).map(|s| s.state)
}

#[test]
fn a_join_waits_while_its_room_syncs_and_what_came_meanwhile_follows_in_order() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let v1 = v1(&mut cs, 0, 1, json!({ "room_id": ROOM }));
    assert_eq!(
        state(&cs, 0),
        Some(State::Live),
        "a version-1 member subscribes the node"
    );
    cs.nodes[0].frames(v1);
    // A second room's first member: subscribing, confirmed, its position
    // read (the answer slow to come back): syncing.
    let (p, _) = cs.nodes[0].authed_v2(0, "{}");
    cs.redis.hold = vec!["sync"];
    let body = json!({ "room": "live://b" }).to_string();
    cs.nodes[0].send(p, V2, v2::op::JOIN, 2, body.as_bytes());
    cs.settle();
    let owner = owner_of_str("live://b", 2);
    let syncing = cs.nodes[0].shards[owner].cluster.as_ref().unwrap().rooms["live://b"].state;
    assert_eq!(syncing, State::Syncing);
    assert!(cs.nodes[0].frames(p).is_empty(), "no reply before the room is live");
    // Two messages published after the position was read reach the
    // channel while the answer is on its way: held, then applied in order.
    for text in ["b1", "b2"] {
        let target = Target::Room("live://b".into());
        cs.nodes[1].publish(0, target, 1000, text.as_bytes(), Meta::default());
        cs.settle();
    }
    assert!(cs.nodes[0].frames(p).is_empty());
    cs.release();
    let (reply, after) = join_reply(&mut cs, 0, p, 2);
    assert_eq!(reply["offset"], 2, "the join comes after what was held: {reply}");
    assert!(pushes(&after).is_empty(), "a fresh join gets what follows it");
    let (_, epoch) = cs.redis.position("live://b").unwrap();
    assert_eq!(reply["epoch"], v2::fmt_epoch(epoch), "the epoch is Redis's");
    say(&mut cs, 1, "a1");
    assert_eq!(v1_pushes(&cs.nodes[0].frames(v1)), ["a1"]);
    let target = Target::Room("live://b".into());
    cs.nodes[1].publish(0, target, 1000, b"b3", Meta::default());
    cs.settle();
    assert_eq!(pushes(&cs.nodes[0].frames(p)), [(3, "b3".to_string())]);
}

#[test]
fn a_room_subscribes_until_redis_confirms_and_a_failed_read_is_tried_again_at_the_sweep() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    cs.redis.unconfirmed = true;
    let (p, _) = cs.nodes[0].authed_v2(1, "{}");
    send_join(&mut cs, 0, p, 2);
    assert_eq!(state(&cs, 0), Some(State::Subscribing));
    assert!(cs.nodes[0].frames(p).is_empty(), "the join waits for the subscription");
    assert_eq!(
        cs.redis.count(0, "sync"),
        0,
        "no position read before the channel is confirmed"
    );
    // Confirmed, but reading the position fails: the join is told, the
    // room waits for the sweep, the failure is counted by its kind.
    cs.redis.unconfirmed = false;
    cs.redis.fail = vec![("sync", RedisError::Server("ERR simulated".into()))];
    cs.settle();
    let got = cs.nodes[0].frames(p);
    assert_eq!((got.len(), got[0].op, got[0].seq), (1, v2::op::ERROR, 2), "{got:?}");
    assert_eq!(json_of(&got[0])["code"], ErrorCode::Unavailable.code());
    assert!(matches!(state(&cs, 0), Some(State::Failed(_))));
    assert_eq!(cs.nodes[0].stats().cluster_redis_error_replies, 1);
    // A reply of another shape than the script gives: the same, counted
    // apart.
    cs.redis.fail = vec![("sync", RedisError::Unexpected("sync reply [1]".into()))];
    cs.tick(1);
    assert!(matches!(state(&cs, 0), Some(State::Failed(_))));
    assert_eq!(cs.nodes[0].stats().cluster_redis_unexpected, 1);
    cs.redis.fail.clear();
    cs.tick(1);
    assert_eq!(state(&cs, 0), Some(State::Live), "read again at the next sweep");
    send_join(&mut cs, 0, p, 3);
    let (reply, _) = join_reply(&mut cs, 0, p, 3);
    assert_eq!(reply["offset"], 0);
    say(&mut cs, 1, "m1");
    assert_eq!(pushes(&cs.nodes[0].frames(p)), [(1, "m1".to_string())]);
}

#[test]
fn a_lost_subscription_is_filled_from_the_stream_before_live_messages() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let p = member(&mut cs, 0, 1);
    say(&mut cs, 1, "m1");
    assert_eq!(pushes(&cs.nodes[0].frames(p)), [(1, "m1".to_string())]);
    cs.cut(0);
    assert_eq!(state(&cs, 0), Some(State::Subscribing));
    for text in ["m2", "m3", "m4"] {
        say(&mut cs, 1, text);
    }
    assert!(cs.nodes[0].frames(p).is_empty(), "missed while not subscribed");
    cs.restore(0);
    assert_eq!(state(&cs, 0), Some(State::Live));
    say(&mut cs, 1, "m5");
    let got: Vec<u64> = pushes(&cs.nodes[0].frames(p)).iter().map(|g| g.0).collect();
    assert_eq!(got, [2, 3, 4, 5], "the missed part first, in order, then live");
    assert_eq!(cs.nodes[0].stats().cluster_filled, 3);
    assert_eq!(cs.nodes[0].closed(p), None);
}

#[test]
fn a_gap_past_history_closes_version_2_members_as_lagged_and_v1_gets_what_is_left() {
    let mut cs = ClusterSim::new(2, 2, |c| c.history.messages = 4);
    let p = member(&mut cs, 0, 0);
    let v1 = v1(&mut cs, 0, 1, json!({ "room_id": ROOM }));
    cs.nodes[0].frames(v1);
    cs.cut(0);
    for i in 1..=10 {
        say(&mut cs, 1, &format!("m{i}"));
    }
    cs.restore(0);
    assert_eq!(cs.nodes[0].closed(p), Some(CloseReason::Lagged), "never a silent gap");
    assert_eq!(v1_pushes(&cs.nodes[0].frames(v1)), ["m7", "m8", "m9", "m10"]);
    assert_eq!(state(&cs, 0), Some(State::Live));
    // Resuming from before the gap is refused, from after it served.
    let (q, _) = cs.nodes[0].authed_v2(0, "{}");
    let (_, epoch) = cs.redis.position(ROOM).unwrap();
    let body = json!({"room": ROOM, "offset": 2, "epoch": v2::fmt_epoch(epoch)}).to_string();
    cs.nodes[0].send(q, V2, v2::op::JOIN, 3, body.as_bytes());
    cs.settle();
    let (reply, _) = join_reply(&mut cs, 0, q, 3);
    assert_eq!(
        (reply["recovered"].as_bool(), reply["reason"].as_str()),
        (Some(false), Some("history_gone"))
    );
}

#[test]
fn a_room_is_unsubscribed_a_few_seconds_after_its_last_member_left() {
    let mut cs = ClusterSim::new(1, 2, |_| {});
    let p = member(&mut cs, 0, 1);
    let leave = json!({ "room": ROOM }).to_string();
    cs.nodes[0].send(p, V2, v2::op::LEAVE, 3, leave.as_bytes());
    cs.settle();
    let mut ticks = 0;
    while state(&cs, 0).is_some() && ticks < 20 {
        cs.tick(1);
        ticks += 1;
    }
    let linger = crate::shard::cluster::state::LINGER_SECS;
    assert!(
        (linger..=linger + 2).contains(&ticks),
        "unsubscribed after {ticks} ticks"
    );
    let owner = owner_of_str(ROOM, 2);
    let (wanted, _) = cs.nodes[0].shards[owner].cluster.as_ref().unwrap().subs[0].wanted();
    assert!(!wanted.contains(&crate::redis::room::RoomKeys::of(ROOM).channel));
    // A member coming back subscribes again and is served.
    let q = member(&mut cs, 0, 0);
    say(&mut cs, 0, "again");
    assert_eq!(pushes(&cs.nodes[0].frames(q)), [(1, "again".to_string())]);
}

#[test]
fn a_pattern_publish_reaches_each_matching_room_of_every_node_once() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let mut at = Vec::new();
    for (k, room) in [(0, "chat/1"), (1, "chat/2")] {
        let (p, _) = cs.nodes[k].authed_v2(1, "{}");
        let body = json!({ "room": room }).to_string();
        cs.nodes[k].send(p, V2, v2::op::JOIN, 2, body.as_bytes());
        cs.settle();
        join_reply(&mut cs, k, p, 2);
        at.push((k, p, room));
    }
    // Each node learns of its rooms from the shards' views, a tick late.
    cs.tick(1);
    let target = Target::Room("chat/*".into());
    cs.nodes[0].publish(0, target, 9, b"all", Meta::default());
    cs.settle();
    for &(k, p, room) in &at {
        let got = cs.nodes[k].frames(p);
        let e = decode_push(&got[0].body).unwrap();
        assert_eq!(
            (got.len(), e.room, e.offset, e.payload),
            (1, room, 1, &b"all"[..]),
            "{room}"
        );
    }
    // Every node published it to the rooms it knows; Redis took it once
    // per room, so the next message has the next offset.
    for &(_, _, room) in &at {
        assert_eq!(cs.redis.position(room).unwrap().0, 1, "{room}");
    }
}
