//! Room messages across nodes: one sequence of offsets per room, message
//! ids, client and pattern publishes, rooms spread over instances, read
//! marks and history from Redis.

use super::*;

#[test]
fn two_nodes_publishing_to_one_room_get_one_sequence_of_offsets() {
    use volley::redis::room::{self, Message, RoomKeys};
    let redis = Redis::start(&[]);
    let url = redis.url();
    let keys = RoomKeys::of("live://c");
    let mut sub = Subscriber::new(redis.port, &keys.channel);
    // Two executors, each with its own link: two nodes as Redis sees them.
    let node = |name: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            on_executor(move || async move {
                let link = link_to(&url, Duration::from_secs(5)).await;
                let publishes: Vec<_> = (0..300)
                    .map(|i| {
                        let link = link.clone();
                        glommio::spawn_local(async move {
                            let m = Message {
                                offset: 0,
                                epoch: 0,
                                op: 1000,
                                ttl: 0,
                                id: String::new(),
                                payload: format!("{name}-{i}").into(),
                            };
                            room::publish(&link, "live://c", &m, 100, None).await.unwrap()
                        })
                    })
                    .collect();
                let mut got = Vec::new();
                for p in publishes {
                    got.push(p.await);
                }
                got
            })
        })
    };
    let (a, b) = (node("a"), node("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let epoch = a[0].epoch;
    let mut offsets: Vec<u64> = a.iter().chain(&b).map(|p| p.offset).collect();
    assert!(a.iter().chain(&b).all(|p| p.epoch == epoch && !p.duplicate));
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=600).collect::<Vec<u64>>(),
        "one offset each, no gap, no repeat"
    );
    // Every publish reached the channel once, in offset order, with the
    // offset and epoch its publisher was told.
    let told: std::collections::HashMap<u64, ()> = offsets.iter().map(|&o| (o, ())).collect();
    for want in 1..=600u64 {
        let m = sub.message();
        assert_eq!((m.offset, m.epoch, m.op), (want, epoch, 1000));
        assert!(told.contains_key(&m.offset));
        let p = String::from_utf8(m.payload.to_vec()).unwrap();
        assert!(p.starts_with("a-") || p.starts_with("b-"), "{p}");
    }
}

#[test]
fn a_retried_message_id_gets_its_first_offset_and_is_not_published_again() {
    use volley::redis::room::{self, Message, RoomKeys};
    let redis = Redis::start(&[]);
    let url = redis.url();
    let mut sub = Subscriber::new(redis.port, &RoomKeys::of("live://d").channel);
    let got = on_executor(move || async move {
        let link = link_to(&url, Duration::from_secs(5)).await;
        let m = |id: &str, p: &'static str| Message {
            offset: 0,
            epoch: 0,
            op: 7,
            ttl: 30,
            id: id.into(),
            payload: p.into(),
        };
        let d = |id: &str| room::Dedup {
            key: RoomKeys::of("live://d").dedup(id),
            secs: 60,
        };
        let first = room::publish(&link, "live://d", &m("order-1", "x"), 100, Some(&d("order-1")))
            .await
            .unwrap();
        let again = room::publish(&link, "live://d", &m("order-1", "x"), 100, Some(&d("order-1")))
            .await
            .unwrap();
        let other = room::publish(&link, "live://d", &m("order-2", "y"), 100, Some(&d("order-2")))
            .await
            .unwrap();
        // The history is bounded (about: MAXLEN ~), and holds the entries.
        for i in 0..2000 {
            room::publish(&link, "live://d", &m("", if i % 2 == 0 { "e" } else { "o" }), 100, None)
                .await
                .unwrap();
        }
        let len = link.call(&[b"XLEN", b"vly:{live://d}:h"]).await.unwrap();
        (first, again, other, len)
    });
    let (first, again, other, len) = got;
    assert_eq!((first.offset, first.duplicate), (1, false));
    assert_eq!((again.offset, again.epoch, again.duplicate), (1, first.epoch, true));
    assert_eq!((other.offset, other.duplicate), (2, false));
    let m1 = sub.message();
    assert_eq!(
        (m1.offset, m1.id.as_str(), m1.ttl, &m1.payload[..]),
        (1, "order-1", 30, &b"x"[..])
    );
    let m2 = sub.message();
    assert_eq!(
        (m2.offset, m2.id.as_str()),
        (2, "order-2"),
        "the retry was not published"
    );
    let volley::redis::link::Frame::Integer(len) = len else {
        panic!("{len:?}")
    };
    assert!((100..=300).contains(&len), "history trimmed to about 100: {len}");
}

#[test]
fn room_publishes_on_any_node_reach_members_on_every_node_in_one_order() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 3);
    // A version-2 member on each node (its join is answered once the node
    // is subscribed), then a version-1 member on each.
    let mut v2: Vec<Client> = Vec::new();
    let mut epoch = None;
    for (i, h) in nodes.iter().enumerate() {
        let (mut c, _) = Client::authed_v2(h.tcp_addr, &format!(r#"{{"mid":{}}}"#, 10 + i));
        let j = c.join(2, "live://x", None);
        assert_eq!(j["offset"], 0, "{j}");
        let e = j["epoch"].as_str().unwrap().to_string();
        assert_eq!(epoch.get_or_insert(e.clone()), &e, "one epoch on every node");
        v2.push(c);
    }
    let mut v1: Vec<Client> = nodes
        .iter()
        .enumerate()
        .map(|(i, h)| Client::authed(h.tcp_addr, &format!(r#"{{"mid":{},"room_id":"live://x"}}"#, 20 + i)))
        .collect();
    // Each node publishes in turn: one sequence of offsets.
    for k in 1..=30u64 {
        let (status, v) = publish_room(&nodes[k as usize % 3], "live://x", &format!("m{k}"));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"]["offset"], k, "{v}");
        assert_eq!(v["data"]["epoch"].as_str(), epoch.as_deref());
    }
    for c in &mut v2 {
        for k in 1..=30u64 {
            let p = c.read_push2().expect("a push");
            assert_eq!((p.room.as_str(), p.offset), ("live://x", k));
            assert_eq!(format!("{:016x}", p.epoch), *epoch.as_ref().unwrap());
            assert_eq!(p.payload, format!("m{k}").as_bytes());
        }
    }
    for c in &mut v1 {
        for k in 1..=30u64 {
            assert_eq!(c.read_push().body, format!("m{k}").as_bytes());
        }
    }
    // Redis counted one subscription per node, not one per connection.
    let subs = redis_cli(&redis, &["PUBSUB", "NUMSUB", "vly:{live://x}"]);
    assert!(subs.ends_with("\n3"), "{subs}");
}

#[test]
fn a_client_publish_and_a_pattern_publish_cross_nodes() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 3);
    let (mut a, _) = Client::authed_v2(nodes[0].tcp_addr, r#"{"mid":1}"#);
    let (mut b, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":2}"#);
    let (mut c, _) = Client::authed_v2(nodes[2].tcp_addr, r#"{"mid":3}"#);
    b.join(2, "chat/1", None);
    c.join(2, "chat/2", None);
    // A client on a node with no member publishes; the member on another
    // node gets it, the publisher gets its offset.
    a.send_as(2, 52, 3, &client_publish(7, "chat/1", "c-1", b"hello"));
    let r = a.read().unwrap();
    assert_eq!((r.op, r.seq), (53, 3), "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((v["offset"].as_u64(), v["duplicate"].as_bool()), (Some(1), Some(false)));
    let p = b.read_push2().unwrap();
    assert_eq!(
        (p.op, p.offset, p.id.as_str(), &p.payload[..]),
        (7, 1, "c-1", &b"hello"[..])
    );
    // The same id again, from another node: a duplicate, not delivered.
    c.send_as(2, 52, 4, &client_publish(7, "chat/1", "c-1", b"hello"));
    let r = c.read().unwrap();
    assert_eq!((r.op, r.seq), (53, 4), "{}", r.text());
    assert!(r.text().contains(r#""duplicate":true"#), "{}", r.text());
    // A pattern publish on the first node reaches the rooms other nodes
    // have members of, each once with its own next offset.
    let msg = serde_json::json!({"room": "chat/*", "op": 9, "body": "all"}).to_string();
    let (status, v) = http(nodes[0].http_addr, "POST", "/v1/push/room", &[], msg.as_bytes());
    assert_eq!(status, 200, "{v}");
    let p = b.read_push2().unwrap();
    assert_eq!((p.room.as_str(), p.offset, &p.payload[..]), ("chat/1", 2, &b"all"[..]));
    let p = c.read_push2().unwrap();
    assert_eq!((p.room.as_str(), p.offset, &p.payload[..]), ("chat/2", 1, &b"all"[..]));
    // Once per room although every node published it there: the next
    // message of each room has the next offset.
    for (room, want) in [("chat/1", 3), ("chat/2", 2)] {
        let (_, v) = publish_room(&nodes[1], room, "next");
        assert_eq!(v["data"]["offset"], want, "{room}: {v}");
    }
    assert_eq!(b.read_push2().unwrap().offset, 3);
    assert_eq!(c.read_push2().unwrap().offset, 2);
}

/// Every push `c` gets until the reply to a heartbeat sent after `settle`:
/// (room, offset) in arrival order.
fn pushes_until_quiet(c: &mut Client, want: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < want {
        let p = c.read_push2().expect("a push");
        got.push((p.room, p.offset));
    }
    // Anything sent twice would be on its way by now. (A check that
    // something does not come has to wait: this is the one sleep of these
    // tests that stands for no event.)
    std::thread::sleep(Duration::from_millis(500));
    c.send_as(2, op::HEARTBEAT, 99, b"");
    loop {
        let g = c.read().expect("the heartbeat reply");
        match g.op {
            op::HEARTBEAT_REPLY => return got,
            op2::PUSH => {
                let p = Push2::parse(&g.body);
                got.push((p.room, p.offset));
            }
            other => panic!("unexpected op {other}"),
        }
    }
}

/// `got` in each room's order, rooms sorted.
fn by_room(got: &[(String, u64)]) -> Vec<(String, Vec<u64>)> {
    let mut rooms: Vec<(String, Vec<u64>)> = Vec::new();
    for (room, offset) in got {
        match rooms.iter_mut().find(|(r, _)| r == room) {
            Some((_, list)) => list.push(*offset),
            None => rooms.push((room.clone(), vec![*offset])),
        }
    }
    rooms.sort();
    rooms
}

#[test]
fn pattern_subscribers_get_matching_rooms_of_every_node_once() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 3);
    // On node 0: `p` holds live://*; `q` holds live://* and > (two globs
    // that both cover live://1); `r` is a member of live://2, so node 0
    // hears live://2 on its channel as well as through the globs. Node 1
    // has the only member of live://1; live://3/deep has none anywhere.
    let (mut p, _) = Client::authed_v2(nodes[0].tcp_addr, r#"{"mid":1}"#);
    p.join(2, "live://*", None);
    let (mut q, _) = Client::authed_v2(nodes[0].tcp_addr, r#"{"mid":2}"#);
    q.join(2, "live://*", None);
    q.join(3, ">", None);
    let (mut r, _) = Client::authed_v2(nodes[0].tcp_addr, r#"{"mid":3}"#);
    r.join(2, "live://2", None);
    let (mut m, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":4}"#);
    m.join(2, "live://1", None);
    // The node's glob subscriptions take one round trip to Redis.
    for room in [
        "live://1",
        "live://2",
        "live://1",
        "live://3/deep",
        "live://2",
        "live://1",
    ] {
        let (status, v) = publish_room(&nodes[2], room, "x");
        assert_eq!(status, 200, "{v}");
    }
    let want = vec![
        ("live://1".to_string(), vec![1, 2, 3]),
        ("live://2".to_string(), vec![1, 2]),
    ];
    assert_eq!(by_room(&pushes_until_quiet(&mut p, 5)), want, "each once, in order");
    let mut want_q = want.clone();
    want_q.push(("live://3/deep".to_string(), vec![1]));
    assert_eq!(
        by_room(&pushes_until_quiet(&mut q, 6)),
        want_q,
        "once although two patterns match"
    );
    assert_eq!(by_room(&pushes_until_quiet(&mut r, 2)), vec![want[1].clone()]);
    assert_eq!(by_room(&pushes_until_quiet(&mut m, 3)), vec![want[0].clone()]);
    // Leaving the patterns ends it.
    p.send_as(2, op2::LEAVE, 4, br#"{"room":"live://*"}"#);
    assert_eq!(p.read().unwrap().op, op2::LEAVE_REPLY);
    drop(q);
    publish_room(&nodes[2], "live://1", "after");
    assert_eq!(pushes_until_quiet(&mut p, 0), vec![], "no pattern, no message");
}

#[test]
fn rooms_spread_over_several_instances_and_one_down_fails_only_its_own() {
    let a = Redis::start(&[]);
    let mut b = Redis::start(&[]);
    let urls = vec![a.url(), b.url()];
    let nodes: Vec<volley::ServerHandle> = (0..2).map(|_| start_server(|c| c.redis.urls = urls.clone())).collect();
    for h in &nodes {
        wait_until("linked to both instances", || health(h).0 == 200);
    }
    // Eight rooms, a member of each on node 1, published through node 0.
    let rooms: Vec<String> = (0..8).map(|i| format!("live://spread-{i}")).collect();
    let (mut member, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":1}"#);
    for (i, room) in rooms.iter().enumerate() {
        member.join(2 + i as u32, room, None);
    }
    for room in &rooms {
        let (status, v) = publish_room(&nodes[0], room, room);
        assert_eq!(status, 200, "{v}");
        assert_eq!(member.read_push2().unwrap().payload, room.as_bytes());
    }
    // Both instances hold some of the rooms, each room one instance.
    let on = |r: &Redis, room: &str| redis_cli(r, &["EXISTS", &format!("vly:{{{room}}}:o")]) == "1";
    let on_b: Vec<&String> = rooms.iter().filter(|r| on(&b, r)).collect();
    assert!(!on_b.is_empty() && on_b.len() < rooms.len(), "spread: {on_b:?}");
    assert!(rooms.iter().all(|r| on(&a, r) != on(&b, r)));
    // The second instance goes: its rooms fail, the first's work on.
    b.kill();
    wait_until("the nodes see it gone", || nodes.iter().all(|h| health(h).0 == 503));
    for room in &rooms {
        let (status, v) = publish_room(&nodes[0], room, "again");
        if on_b.contains(&room) {
            assert_eq!(status, 503, "{room}: {v}");
        } else {
            assert_eq!(status, 200, "{room}: {v}");
            let p = member.read_push2().unwrap();
            assert_eq!((p.room.as_str(), &p.payload[..]), (room.as_str(), &b"again"[..]));
        }
    }
}

#[test]
fn read_marks_and_unread_counts_follow_the_user_to_any_node() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    for k in 1..=5 {
        let (_, v) = publish_room(&nodes[0], "chat/u", &format!("m{k}"));
        assert_eq!(v["data"]["offset"], k, "{v}");
    }
    // The user reads up to 3 on node 0 ...
    let (mut a, _) = Client::authed_v2(nodes[0].tcp_addr, r#"{"mid":42}"#);
    let j = a.join(2, "chat/u", None);
    assert_eq!((j["offset"].as_u64(), j["unread"].as_u64()), (Some(5), Some(5)), "{j}");
    a.send_as(2, 48, 3, br#"{"room":"chat/u","offset":3}"#);
    let r = a.read().unwrap();
    assert_eq!((r.op, r.seq), (49, 3), "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((v["offset"].as_u64(), v["unread"].as_u64()), (Some(3), Some(2)));
    // ... and finds it on node 1: in its join's unread count and the API's.
    let (mut b, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":42}"#);
    let j = b.join(2, "chat/u", None);
    assert_eq!(j["unread"], 2, "{j}");
    let (_, v) = http(
        nodes[1].http_addr,
        "GET",
        "/v1/unread?mid=42&rooms=chat/u,chat/none",
        &[],
        b"",
    );
    assert_eq!(
        v["data"]["rooms"]["chat/u"],
        serde_json::json!({"unread": 2, "offset": 5, "read": 3}),
        "{v}"
    );
    assert_eq!(v["data"]["rooms"]["chat/none"], serde_json::Value::Null);
    // A mark never moves back, from whichever node.
    b.send_as(2, 48, 4, br#"{"room":"chat/u","offset":1}"#);
    let r = b.read().unwrap();
    assert!(r.text().contains(r#""offset":3"#), "{}", r.text());
    // Redis loses the room's offset counter and keeps its marks (an
    // eviction, a partial restore): a mark is then above the newest
    // offset, and nothing is unread rather than an underflow.
    assert_eq!(redis_cli(&redis, &["DEL", "vly:{chat/u}:o"]), "1");
    let (status, v) = http(nodes[1].http_addr, "GET", "/v1/unread?mid=42&rooms=chat/u", &[], b"");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["rooms"]["chat/u"]["unread"], 0, "{v}");
    b.send_as(2, 48, 5, br#"{"room":"chat/u","offset":4}"#);
    let r = b.read().unwrap();
    assert_eq!((r.op, r.seq), (49, 5), "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["unread"], 0, "{v}");
}

#[test]
fn history_is_read_from_redis_on_any_node() {
    let mut redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    let mut epoch = String::new();
    for k in 1..=5 {
        let msg = serde_json::json!({"room": "live://h", "op": 7, "id": format!("h-{k}"), "body": format!("m{k}")});
        let (_, v) = http(
            nodes[0].http_addr,
            "POST",
            "/v1/push/room",
            &[],
            msg.to_string().as_bytes(),
        );
        epoch = v["data"]["epoch"].as_str().unwrap().to_string();
    }
    // Node 1 never had a member of the room: its page comes from the Stream.
    let (status, v) = http(
        nodes[1].http_addr,
        "GET",
        "/v1/history?room=live://h&since=2&limit=2",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{v}");
    let d = &v["data"];
    assert_eq!(
        (d["epoch"].as_str(), d["offset"].as_u64()),
        (Some(epoch.as_str()), Some(5)),
        "{v}"
    );
    let got: Vec<(u64, String)> = d["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["offset"].as_u64().unwrap(), m["id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, vec![(3, "h-3".to_string()), (4, "h-4".to_string())]);
    assert_eq!(d["messages"][0]["body_base64"], "bTM=");
    let (_, v) = http(nodes[1].http_addr, "GET", "/v1/history?room=live://none", &[], b"");
    assert_eq!(
        (v["data"]["epoch"].clone(), v["data"]["offset"].as_u64()),
        (serde_json::Value::Null, Some(0))
    );
    redis.kill();
    wait_until("redis gone", || health(&nodes[1]).0 == 503);
    let (status, _) = http(nodes[1].http_addr, "GET", "/v1/history?room=live://h", &[], b"");
    assert_eq!(status, 503);
}
