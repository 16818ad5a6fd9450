//! Cluster mode on simulated time, against the simulated Redis
//! (`sim::redis`): a room's subscription from subscribing through syncing
//! to live (and failed, and unsubscribed), a lost subscription filled from
//! the Stream, a gap past history, a node taken for dead, the node queue,
//! Redis unreachable, one of several instances unreachable (and presence
//! events meanwhile), Redis restarted without its data, presence questions
//! across nodes, pattern publishes, undecodable channel messages, and
//! failures counted by kind. No socket, no sleep: every step is the test's.
//! (The same paths against a real redis-server: tests/cluster/.)

use super::cluster::ClusterSim;
use super::{Got, Peer};
use crate::api::{Meta, PublishError, Target};
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::v2::{self, decode_push, ErrorCode};
use crate::redis::link::RedisError;
use crate::redis::push::{encode_push, Push};
use crate::shard::cluster::state::State;
use crate::shard::mesh::{owner_of_str, Reply, ReplyWait};
use serde_json::{json, Value};
use std::future::Future;

const V2: u16 = binary::VERSION_NATIVE;
const ROOM: &str = "live://a";

fn json_of(g: &Got) -> Value {
    serde_json::from_slice(&g.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", g.text()))
}

/// Offsets and payloads of the room pushes in `got` (version 2).
fn pushes(got: &[Got]) -> Vec<(u64, String)> {
    got.iter()
        .filter(|g| g.op == v2::op::PUSH)
        .map(|g| {
            let e = decode_push(&g.body).expect("a valid envelope");
            (e.offset, String::from_utf8_lossy(e.payload).into_owned())
        })
        .collect()
}

/// Payloads of the version-1 pushes with operation 1000 in `got`.
fn v1_pushes(got: &[Got]) -> Vec<String> {
    got.iter().filter(|g| g.op == 1000).map(Got::text).collect()
}

/// Sends a join of `room` from `p` on node `k`, settling the cluster.
fn send_join(cs: &mut ClusterSim, k: usize, p: Peer, seq: u32) {
    let body = json!({ "room": ROOM }).to_string();
    cs.nodes[k].send(p, V2, v2::op::JOIN, seq, body.as_bytes());
    cs.settle();
}

/// The join reply `p` got first, and whatever came after it.
fn join_reply(cs: &mut ClusterSim, k: usize, p: Peer, seq: u32) -> (Value, Vec<Got>) {
    let mut got = cs.nodes[k].frames(p);
    assert!(!got.is_empty(), "no join reply");
    let reply = got.remove(0);
    assert_eq!((reply.op, reply.seq), (v2::op::JOIN_REPLY, seq), "{}", reply.text());
    (json_of(&reply), got)
}

/// A version-1 client on node `k`, shard `shard`, authenticated with
/// `auth` (JSON), the cluster settled after.
fn v1(cs: &mut ClusterSim, k: usize, shard: usize, auth: Value) -> Peer {
    let p = cs.nodes[k].authed(shard, &auth.to_string());
    cs.settle();
    p
}

/// A version-2 member of ROOM on node `k`, shard `shard`, joined live.
fn member(cs: &mut ClusterSim, k: usize, shard: usize) -> Peer {
    let (p, _) = cs.nodes[k].authed_v2(shard, "{}");
    send_join(cs, k, p, 2);
    join_reply(cs, k, p, 2);
    p
}

/// An API room publish of `text` on node `k` (its shard 0).
fn say(cs: &mut ClusterSim, k: usize, text: &str) {
    let target = Target::Room(ROOM.into());
    cs.nodes[k].publish(0, target, 1000, text.as_bytes(), Meta::default());
    cs.settle();
}

/// The answer in `w`, if it came (`Some(None)`: dropped unanswered).
fn ready<T>(w: &mut ReplyWait<T>) -> Option<Option<T>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(w).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Where ROOM's subscription stands on node `k` (its owner shard).
fn state(cs: &ClusterSim, k: usize) -> Option<State> {
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
fn a_node_taken_for_dead_registers_its_users_again() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    for (shard, mid) in [(0, 5), (1, 6)] {
        cs.nodes[0].authed_v2(shard, &json!({ "mid": mid }).to_string());
    }
    cs.tick(2);
    let adds = cs.redis.count(0, "add");
    assert!(adds >= 1, "the users were registered");
    cs.tick(2);
    assert_eq!(cs.redis.count(0, "add"), adds, "and not again while the node lives");
    let me = cs.node_id(0);
    cs.redis.gone.insert(me);
    cs.tick(2);
    assert!(cs.redis.count(0, "add") > adds, "taken for dead: registered again");
    assert!(cs.redis.gone.is_empty());
}

#[test]
fn what_waited_in_the_node_queue_is_delivered_once_the_node_listens_again() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let c = v1(&mut cs, 0, 1, json!({"key": "k1", "accepts": [1000]}));
    cs.cut(0);
    let push = Push {
        target: Target::Keys(vec!["k1".into()]),
        op: 1000,
        ttl: 0,
        id: String::new(),
        payload: bytes::Bytes::from_static(b"queued"),
    };
    let me = cs.node_id(0);
    cs.redis
        .queues
        .entry(me)
        .or_default()
        .push(encode_push(&push).unwrap().into());
    cs.settle();
    assert!(v1_pushes(&cs.nodes[0].frames(c)).is_empty());
    cs.restore(0);
    assert_eq!(v1_pushes(&cs.nodes[0].frames(c)), ["queued"]);
    assert_eq!(cs.nodes[0].stats().cluster_queued, 1);
    assert!(cs.redis.queues.is_empty(), "taken once");
}

#[test]
fn while_redis_is_unreachable_publishes_and_joins_are_refused_clearly() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let p = member(&mut cs, 0, 0);
    cs.redis_up(false);
    let target = Target::Room(ROOM.into());
    let refused = crate::api::publish(&mut cs.nodes[1].shards[0], target, 1000, b"x", Meta::default(), false);
    assert!(matches!(refused, Err(PublishError::Unavailable(_))));
    let (q, _) = cs.nodes[0].authed_v2(1, "{}");
    send_join(&mut cs, 0, q, 4);
    let got = cs.nodes[0].frames(q);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].op, got[0].seq), (v2::op::ERROR, 4));
    assert_eq!(json_of(&got[0])["code"], ErrorCode::Unavailable.code());
    assert_eq!(cs.nodes[0].closed(p), None, "members stay");
    // Refused before anything was sent: nothing is in flight to fail.
    let s = cs.nodes[1].stats();
    assert_eq!((s.cluster_publish_failed, s.cluster_redis_down), (1, 0));
    cs.redis_up(true);
    say(&mut cs, 1, "back");
    assert_eq!(pushes(&cs.nodes[0].frames(p)), [(1, "back".to_string())]);
    send_join(&mut cs, 0, q, 5);
    let (reply, _) = join_reply(&mut cs, 0, q, 5);
    assert_eq!(reply["offset"], 1);
    // An operation in flight when its instance goes away fails as down,
    // counted apart from error replies.
    let down = RedisError::Down("redis://127.0.0.1:1".into(), "connection reset".into());
    cs.redis.fail = vec![("mark", down)];
    let (u, _) = cs.nodes[0].authed_v2(0, r#"{"mid":9}"#);
    let mark = json!({"room": ROOM, "offset": 1}).to_string();
    cs.nodes[0].send(u, V2, v2::op::READ, 6, mark.as_bytes());
    cs.settle();
    let got = cs.nodes[0].frames(u);
    assert_eq!((got.len(), got[0].op, got[0].seq), (1, v2::op::ERROR, 6), "{got:?}");
    let s = cs.nodes[0].stats();
    assert_eq!((s.cluster_redis_down, s.cluster_redis_error_replies), (1, 0));
}

#[test]
fn a_presence_question_is_answered_by_every_node_with_members() {
    let mut cs = ClusterSim::new(3, 2, |_| {});
    for (k, shard, mid) in [(0, 0, 1), (1, 0, 2), (1, 1, 3), (2, 1, 4)] {
        v1(&mut cs, k, shard, json!({ "mid": mid, "room_id": ROOM }));
    }
    let (reply, mut wait) = Reply::pair();
    cs.nodes[0].shards[0].cluster_presence(ROOM.into(), 10, reply);
    cs.settle();
    let page = ready(&mut wait).expect("answered once every node that heard did");
    let page = page.flatten().expect("reachable");
    assert!(page.complete);
    assert_eq!(page.count, 4);
    let mut mids: Vec<i64> = page.members.iter().map(|m| m.mid).collect();
    mids.sort_unstable();
    assert_eq!(mids, [1, 2, 3, 4]);
    // A node that hears the question but whose answer is lost: the route
    // is answered after the 2 s wait, marked incomplete, with the others.
    cs.redis.mute.insert(2);
    let (reply, mut wait) = Reply::pair();
    cs.nodes[0].shards[0].cluster_presence(ROOM.into(), 10, reply);
    cs.settle();
    assert!(ready(&mut wait).is_none(), "node 2 has not answered");
    cs.tick(1);
    assert!(ready(&mut wait).is_none(), "1 s: still waiting");
    cs.tick(1);
    let page = ready(&mut wait).expect("answered at the 2 s wait");
    let page = page.flatten().expect("reachable");
    assert_eq!((page.complete, page.count), (false, 3));
}

#[test]
fn after_redis_restarts_without_its_data_rooms_go_on_in_a_new_epoch() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let p = member(&mut cs, 0, 1);
    say(&mut cs, 1, "old");
    let (_, first) = cs.redis.position(ROOM).unwrap();
    cs.nodes[0].frames(p);
    cs.restart_redis();
    assert_eq!(state(&cs, 0), Some(State::Live));
    say(&mut cs, 1, "new");
    let (_, second) = cs.redis.position(ROOM).unwrap();
    assert_ne!(first, second);
    let got = cs.nodes[0].frames(p);
    let e = decode_push(&got[0].body).unwrap();
    assert_eq!(
        (e.offset, e.epoch, e.payload),
        (1, second, &b"new"[..]),
        "the new epoch's first"
    );
    // A client resuming in the old epoch is told so.
    let (q, _) = cs.nodes[0].authed_v2(0, "{}");
    let body = json!({"room": ROOM, "offset": 1, "epoch": v2::fmt_epoch(first)}).to_string();
    cs.nodes[0].send(q, V2, v2::op::JOIN, 3, body.as_bytes());
    cs.settle();
    let (reply, _) = join_reply(&mut cs, 0, q, 3);
    assert_eq!(reply["reason"], "epoch_changed", "{reply}");
}

#[test]
fn a_channel_message_that_does_not_decode_is_counted_and_harms_no_one() {
    let mut cs = ClusterSim::new(2, 2, |_| {});
    let p = member(&mut cs, 0, 0);
    let channel = crate::redis::room::RoomKeys::of(ROOM).channel;
    for bad in [&b"1 2 3"[..], b"01 1 1000 0 0 x", b"", b"1 1 1000 0 200 short"] {
        cs.inject(&channel, bad);
    }
    let node = cs.node_id(0);
    cs.inject(&crate::redis::registry::channel(&node), b"z nonsense");
    assert_eq!(cs.nodes[0].stats().cluster_bad_messages, 5);
    assert!(cs.nodes[0].frames(p).is_empty());
    say(&mut cs, 1, "fine");
    assert_eq!(pushes(&cs.nodes[0].frames(p)), [(1, "fine".to_string())]);
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

/// The first room `live://<n>` whose keys are on instance `i` of `of`.
fn room_on(i: usize, of: usize) -> String {
    (0..)
        .map(|n| format!("live://{n}"))
        .find(|r| crate::redis::instance_of(r.as_bytes(), of) == i)
        .unwrap()
}

#[test]
fn one_of_several_instances_down_fails_only_what_lives_on_it() {
    let mut cs = ClusterSim::with_instances(2, 2, 2, |_| {});
    let (up, down) = (room_on(0, 2), room_on(1, 2));
    let mut members = Vec::new();
    for room in [&up, &down] {
        let (p, _) = cs.nodes[0].authed_v2(1, "{}");
        cs.nodes[0].send(p, V2, v2::op::JOIN, 2, json!({ "room": room }).to_string().as_bytes());
        cs.settle();
        join_reply(&mut cs, 0, p, 2);
        members.push(p);
    }
    cs.instance_up(1, false);
    let publish = |cs: &mut ClusterSim, room: &str, text: &str| {
        let target = Target::Room(room.into());
        let r = crate::api::publish(
            &mut cs.nodes[1].shards[0],
            target,
            1000,
            text.as_bytes(),
            Meta::default(),
            false,
        );
        cs.settle();
        r.is_ok()
    };
    assert!(
        !publish(&mut cs, &down, "refused"),
        "a room on the unreachable instance is refused"
    );
    assert!(
        publish(&mut cs, &up, "fine"),
        "the other instance's rooms work as usual"
    );
    assert_eq!(pushes(&cs.nodes[0].frames(members[0])), [(1, "fine".to_string())]);
    assert!(cs.nodes[0].frames(members[1]).is_empty());
    // A join of the unreachable instance's room is told why; the other's is served.
    let (q, _) = cs.nodes[0].authed_v2(0, "{}");
    cs.nodes[0].send(q, V2, v2::op::JOIN, 3, json!({ "room": &down }).to_string().as_bytes());
    cs.settle();
    let got = cs.nodes[0].frames(q);
    assert_eq!((got[0].op, got[0].seq), (v2::op::ERROR, 3), "{got:?}");
    cs.nodes[0].send(q, V2, v2::op::JOIN, 4, json!({ "room": &up }).to_string().as_bytes());
    cs.settle();
    let (reply, _) = join_reply(&mut cs, 0, q, 4);
    assert_eq!(reply["offset"], 1);
    // Presence of a room on the unreachable instance: no answer (503).
    let (reply, mut wait) = Reply::pair();
    cs.nodes[0].shards[0].cluster_presence(down.as_str().into(), 10, reply);
    cs.settle();
    assert!(matches!(ready(&mut wait), Some(Some(None))), "unreachable, said so");
    // Back: the room's member on node 0 hears again, nothing missing.
    cs.instance_up(1, true);
    assert!(publish(&mut cs, &down, "back"));
    assert_eq!(pushes(&cs.nodes[0].frames(members[1])), [(1, "back".to_string())]);
    assert_eq!(cs.nodes[0].closed(members[1]), None);
}

/// The user ids that joined in the op 58 events among `got`.
fn presence_joins(got: &[Got]) -> Vec<i64> {
    let mut mids: Vec<i64> = got
        .iter()
        .filter(|g| g.op == v2::op::PRESENCE)
        .flat_map(|g| json_of(g)["joins"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["mid"].as_i64())
        .collect();
    mids.sort_unstable();
    mids
}

#[test]
fn presence_events_carry_only_the_nodes_own_changes_while_the_rooms_instance_is_unreachable() {
    let mut cs = ClusterSim::with_instances(2, 2, 2, |_| {});
    let room = room_on(1, 2);
    let (watcher, _) = cs.nodes[0].authed_v2(0, r#"{"mid":1}"#);
    let body = json!({"room": &room, "presence": true}).to_string();
    cs.nodes[0].send(watcher, V2, v2::op::JOIN, 2, body.as_bytes());
    cs.settle();
    join_reply(&mut cs, 0, watcher, 2);
    // Version-2 members: a join is answered (and the member counted) once
    // the room is live on its node, so a node's first member is reported
    // too (a version-1 member joins at once, before its node has heard of
    // the watch: best-effort, as PROTOCOL.md says).
    let join = |cs: &mut ClusterSim, k: usize, mid: i64| {
        let (p, _) = cs.nodes[k].authed_v2(1, &json!({ "mid": mid }).to_string());
        cs.nodes[k].send(p, V2, v2::op::JOIN, 2, json!({ "room": &room }).to_string().as_bytes());
        cs.settle();
    };
    // Both nodes' joins reach the watcher's events.
    join(&mut cs, 1, 20);
    cs.tick(2);
    join(&mut cs, 0, 10);
    join(&mut cs, 1, 21);
    cs.tick(2);
    assert_eq!(presence_joins(&cs.nodes[0].frames(watcher)), [10, 20, 21]);
    // The room's instance away: the node's own changes only (version-1
    // members, whose joins need no answer from Redis).
    cs.instance_up(1, false);
    v1(&mut cs, 0, 1, json!({ "mid": 11, "room_id": &room }));
    v1(&mut cs, 1, 1, json!({ "mid": 22, "room_id": &room }));
    cs.tick(2);
    assert_eq!(presence_joins(&cs.nodes[0].frames(watcher)), [11]);
    // Back: the other node hears of the watch again when it subscribes
    // anew (from the watch key; else from the watcher's announcement, every
    // 5 s), and its changes come with the node's own.
    cs.instance_up(1, true);
    cs.tick(1);
    cs.nodes[0].frames(watcher);
    join(&mut cs, 1, 23);
    join(&mut cs, 0, 12);
    cs.tick(2);
    assert_eq!(presence_joins(&cs.nodes[0].frames(watcher)), [12, 23]);
}
