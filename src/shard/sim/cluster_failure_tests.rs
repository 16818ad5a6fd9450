//! Cluster mode's failures on simulated time (docs/CLUSTER.md, *When
//! something fails*, every row that needs no process to die; a lost
//! subscription and a gap past history are in `cluster_tests`): a node
//! taken for dead, the node queue, Redis unreachable, one of several instances
//! unreachable (and presence events meanwhile), Redis restarted without its
//! data, presence questions answered or timed out, undecodable channel
//! messages, failures counted by kind.

use super::cluster::ClusterSim;
use super::cluster_tests::*;
use super::Got;
use crate::api::{Meta, PublishError, Target};
use crate::proto::v2::{self, decode_push, ErrorCode};
use crate::redis::link::RedisError;
use crate::redis::push::{encode_push, Push};
use crate::shard::cluster::state::State;
use crate::shard::mesh::Reply;
use serde_json::json;

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
