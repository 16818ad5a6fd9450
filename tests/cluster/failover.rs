//! What survives failures: Redis down and back, a node killed, Redis
//! restarted mid-broadcast, a node's subscription cut, a node taken for
//! dead, and members that missed what Redis no longer holds.

use super::*;

#[test]
fn publishes_fail_clearly_while_redis_is_down_and_flow_again_after() {
    let mut redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    let (mut member, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":1}"#);
    member.join(2, "live://f", None);
    let (_, v) = publish_room(&nodes[0], "live://f", "before");
    assert_eq!(v["data"]["offset"], 1, "{v}");
    assert_eq!(member.read_push2().unwrap().payload, b"before");

    redis.kill();
    wait_until("both nodes see redis gone", || nodes.iter().all(|h| health(h).0 == 503));
    // HTTP, with or without an answer awaited: 503 and why.
    let (status, v) = publish_room(&nodes[0], "live://f", "lost");
    assert_eq!(status, 503, "{v}");
    assert!(v["message"].as_str().unwrap().contains("unreachable"), "{v}");
    let (status, v) = http(
        nodes[0].http_addr,
        "POST",
        "/goim/push/room?operation=1000&type=live&room=f",
        &[],
        b"lost",
    );
    assert_eq!(status, 503, "{v}");
    let msg = serde_json::json!({"room": "live://*", "op": 1, "body": "x"}).to_string();
    let (status, _) = http(nodes[0].http_addr, "POST", "/v1/push/room", &[], msg.as_bytes());
    assert_eq!(status, 503);
    // A client's publish: op 50 `unavailable`, the connection stays.
    member.send_as(2, 52, 9, &client_publish(1000, "live://f", "", b"lost"));
    let r = member.read().unwrap();
    assert_eq!((r.op, r.seq), (50, 9), "{}", r.text());
    assert!(
        r.text().contains("unavailable") && r.text().contains("4012"),
        "{}",
        r.text()
    );
    // A join that needs Redis: op 50 too.
    member.send_as(2, 40, 10, br#"{"room":"live://g"}"#);
    let r = member.read().unwrap();
    assert_eq!((r.op, r.seq), (50, 10), "{}", r.text());
    assert!(r.text().contains("unavailable"), "{}", r.text());
    // A TCP publisher: op 6 `unavailable` and a close of that publisher.
    let mut p = Client::connect(nodes[0].publish_addr);
    p.send(op::AUTH, 1, b"");
    assert_eq!(p.read().unwrap().op, op::AUTH_REPLY);
    let mut body = 1000u32.to_be_bytes().to_vec();
    body.extend_from_slice(&8u16.to_be_bytes());
    body.extend_from_slice(b"live://f");
    body.extend_from_slice(b"lost");
    p.send(24, 0, &body);
    let why = p.expect_closed().unwrap_or_default();
    assert!(why.starts_with("unavailable"), "{why}");
    let stats = http(nodes[0].http_addr, "GET", "/v1/stats", &[], b"").1;
    assert!(
        stats["data"]["total"]["cluster_publish_failed"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // Back: the nodes subscribe again by themselves and publishes flow.
    redis.restart();
    wait_until("both nodes linked again", || nodes.iter().all(|h| health(h).0 == 200));
    wait_until("the member's node subscribed again", || {
        redis_cli(&redis, &["PUBSUB", "NUMSUB", "vly:{live://f}"]).ends_with("\n1")
    });
    let (status, v) = publish_room(&nodes[0], "live://f", "after");
    assert_eq!(status, 200, "{v}");
    let p = member.read_push2().unwrap();
    assert_eq!(p.payload, b"after", "nothing that failed was delivered");
}

#[test]
fn a_client_resumes_on_another_node_after_its_node_is_killed() {
    let redis = Redis::start(&[]);
    let mut a = Node::start(&redis);
    let b = cluster(&redis, 1).pop().unwrap();
    let (mut c, _) = Client::authed_v2(a.tcp, r#"{"mid":5}"#);
    let j = c.join(2, "live://r", None);
    let epoch = j["epoch"].as_str().unwrap().to_string();
    for k in 1..=10 {
        let via = if k % 2 == 0 { a.api } else { b.http_addr };
        let msg = serde_json::json!({"room": "live://r", "op": 1000, "body": format!("m{k}")}).to_string();
        let (status, v) = http(via, "POST", "/v1/push/room", &[], msg.as_bytes());
        assert_eq!(status, 200, "{v}");
    }
    // The client has read up to 7 when its node dies.
    for k in 1..=7 {
        assert_eq!(c.read_push2().unwrap().offset, k);
    }
    let _ = a.child.kill();
    let _ = a.child.wait();
    for k in 11..=13 {
        let (_, v) = publish_room(&b, "live://r", &format!("m{k}"));
        assert_eq!(v["data"]["offset"], k, "{v}");
    }
    // On the other node (which never had a member of the room), the
    // resume is served from the room's history in Redis: 8..13, in order,
    // then live messages.
    let (mut c, _) = Client::authed_v2(b.tcp_addr, r#"{"mid":5}"#);
    let j = c.join(2, "live://r", Some((7, &epoch)));
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(
        (j["offset"].as_u64(), j["epoch"].as_str()),
        (Some(13), Some(epoch.as_str()))
    );
    for k in 8..=13u64 {
        let p = c.read_push2().unwrap();
        assert_eq!((p.offset, p.payload), (k, format!("m{k}").into_bytes()));
    }
    let (_, v) = publish_room(&b, "live://r", "m14");
    assert_eq!(v["data"]["offset"], 14, "{v}");
    assert_eq!(c.read_push2().unwrap().offset, 14);
    // A resume from before what the Stream holds is refused, never gapped.
    let (mut d, _) = Client::authed_v2(b.tcp_addr, r#"{"mid":6}"#);
    redis_cli(&redis, &["XTRIM", "vly:{live://r}:h", "MINID", "5-0"]);
    let j = d.join(2, "live://r", Some((2, &epoch)));
    assert_eq!(
        (j["recovered"].as_bool(), j["reason"].as_str()),
        (Some(false), Some("history_gone")),
        "{j}"
    );
    drop(a);
}

#[test]
fn redis_restarted_mid_broadcast_loses_nothing_it_had_accepted() {
    // Redis keeps what it accepted across the restart (append-only file,
    // fsync per write), as a production deployment that cares would.
    let dir = std::env::temp_dir().join(format!("volley-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_arg = dir.to_str().unwrap().to_string();
    let mut redis = Redis::start(&["--appendonly", "yes", "--appendfsync", "always", "--dir", &dir_arg]);
    // History holds the whole broadcast: however long the nodes take to
    // come back (a loaded host), what they missed is still in the Stream.
    let nodes = cluster_with(&redis, 2, |c| c.history.messages = 1000);
    let (mut v2, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":1}"#);
    let j = v2.join(2, "live://m", None);
    assert_eq!(j["offset"], 0);
    let mut v1 = Client::authed(nodes[1].tcp_addr, r#"{"mid":2,"room_id":"live://m"}"#);
    // A publisher that retries every message (same id) until it is taken.
    let api = nodes[0].http_addr;
    let publisher = std::thread::spawn(move || {
        let mut retries = 0;
        for i in 0..200 {
            let msg =
                serde_json::json!({"room": "live://m", "op": 1000, "id": format!("m-{i}"), "body": format!("{i}")})
                    .to_string();
            loop {
                let (status, _) = http(api, "POST", "/v1/push/room", &[], msg.as_bytes());
                if status == 200 {
                    break;
                }
                assert_eq!(status, 503);
                retries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        retries
    });
    // Restart Redis once the broadcast is under way.
    let first = v2.read_push2().unwrap();
    assert_eq!(first.offset, 1);
    redis.restart();
    // Later, only the nodes' subscriptions are cut (Redis stays up and
    // takes publishes meanwhile).
    let mut got = vec![String::from_utf8(first.payload).unwrap()];
    let read = |v2: &mut Client, got: &mut Vec<String>, through: u64| {
        for k in got.len() as u64 + 1..=through {
            let p = v2.read_push2().expect("every message");
            assert_eq!(p.offset, k, "in order, no gap");
            got.push(String::from_utf8(p.payload).unwrap());
        }
    };
    read(&mut v2, &mut got, 100);
    redis_cli(&redis, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    let retries = publisher.join().unwrap();
    // Every message, once, in order, on both protocol versions: what the
    // node missed while its subscription was down was read back from the
    // room's Stream.
    read(&mut v2, &mut got, 200);
    assert_eq!(got, (0..200).map(|i| i.to_string()).collect::<Vec<_>>());
    for i in 0..200 {
        assert_eq!(v1.read_push().body, i.to_string().as_bytes());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let filled = http(nodes[1].http_addr, "GET", "/v1/stats", &[], b"").1["data"]["total"]["cluster_filled"]
        .as_u64()
        .unwrap();
    eprintln!("publishes refused while redis restarted: {retries}; read back from the Stream: {filled}");
    assert!(filled > 0, "the node read back what its cut subscription missed");
}

#[test]
fn pushes_sent_while_a_nodes_subscription_is_cut_arrive_when_it_is_back() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    let mut admin = Admin::open(&redis);
    // On node 1: a user, a keyed connection and a member of a room no
    // other node knows; pushes of each kind enter at node 0.
    let (mut u, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":7}"#);
    let mut k = Client::authed(nodes[1].tcp_addr, r#"{"mid":8,"key":"the-key","accepts":[1000]}"#);
    let (mut m, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":9}"#);
    m.join(2, "live://q", None);
    wait_until("the registry lists the user and the key", || {
        redis_cli(&redis, &["HLEN", "vly:u:7"]) == "1" && redis_cli(&redis, &["HLEN", "vly:k:the-key"]) == "1"
    });
    // Every pub/sub connection is cut, and no new connection is let in
    // (the nodes' command links stay): the nodes cannot subscribe again.
    assert_eq!(admin.cmd(&["CONFIG", "SET", "maxclients", "1"]), "OK");
    let killed: usize = admin.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).parse().unwrap();
    assert!(killed >= 2, "every shard of both nodes has one: {killed}");
    let push = |path: &str, body: &[u8]| {
        let (status, v) = http(nodes[0].http_addr, "POST", path, &[], body);
        assert_eq!(status, 200, "{path}: {v}");
    };
    push("/goim/push/mids?operation=1000&mids=7", b"to the user");
    push("/goim/push/keys?operation=1000&keys=the-key", b"to the key");
    push("/goim/push/all?operation=1000", b"to everyone");
    let pattern = serde_json::json!({"room": "live://*", "op": 9, "body": "to the pattern"}).to_string();
    push("/v1/push/room", pattern.as_bytes());
    // Redis counted no receiver on node 1's channel: all four wait in its
    // queue (node 0's holds the push to everyone and the pattern publish).
    let queued = |admin: &mut Admin| {
        let keys = admin.cmd(&["KEYS", "vly:q:*"]);
        let mut lens: Vec<u64> = keys.lines().map(|q| admin.cmd(&["LLEN", q]).parse().unwrap()).collect();
        lens.sort_unstable();
        lens
    };
    // (The goim routes answer once the push is handed to the link.)
    wait_until("the four pushes are queued", || queued(&mut admin) == [2, 4]);
    u.send_as(2, op::HEARTBEAT, 3, b"");
    assert_eq!(u.read().unwrap().op, op::HEARTBEAT_REPLY, "nothing arrived meanwhile");
    // Connections are let in again: node 1 subscribes again, takes its
    // queue and delivers each push once.
    assert_eq!(admin.cmd(&["CONFIG", "SET", "maxclients", "10000"]), "OK");
    let mut got: Vec<Vec<u8>> = [u.read_push2().unwrap(), u.read_push2().unwrap()]
        .map(|p| p.payload)
        .to_vec();
    got.sort();
    assert_eq!(got, [b"to everyone".to_vec(), b"to the user".to_vec()]);
    let mut got = [k.read_push().body, k.read_push().body].to_vec();
    got.sort();
    assert_eq!(got, [b"to everyone".to_vec(), b"to the key".to_vec()]);
    let mut pattern_seen = false;
    for _ in 0..2 {
        let p = m.read_push2().unwrap();
        if p.room == "live://q" {
            assert_eq!((p.offset, &p.payload[..]), (1, &b"to the pattern"[..]));
            pattern_seen = true;
        } else {
            assert_eq!(p.payload, b"to everyone");
        }
    }
    assert!(pattern_seen, "the pattern publish reached the room only node 1 knows");
    wait_until("both queues were taken", || queued(&mut admin).is_empty());
    for c in [&mut u, &mut m] {
        c.send_as(2, op::HEARTBEAT, 4, b"");
        assert_eq!(c.read().unwrap().op, op::HEARTBEAT_REPLY, "nothing twice");
    }
    k.send(op::HEARTBEAT, 4, b"");
    assert_eq!(k.read().unwrap().op, op::HEARTBEAT_REPLY, "nothing twice");
    let stats = http(nodes[1].http_addr, "GET", "/v1/stats", &[], b"").1;
    assert_eq!(stats["data"]["total"]["cluster_queued"], 4, "{stats}");
}

#[test]
fn a_node_taken_for_dead_registers_again_and_delivers_what_waited() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    let (mut u, key) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":7}"#);
    // A server-assigned key starts with the node's id.
    let node = format!("{}{}", &key[..8], &key[9..13]);
    wait_until("the registry lists the user's node", || {
        redis_cli(&redis, &["HGET", "vly:u:7", &node]) == "1"
    });
    // Node 1's mark expires (as for a node too slow to renew it): a push
    // to its user finds it dead, drops it from the user's entry and keeps
    // the push in the user's inbox. Should node 1 renew its mark before the
    // push runs, the push is delivered live and the test tries again.
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 5, "node 1 renewed its mark before every push");
        redis_cli(&redis, &["DEL", &format!("vly:alive:{node}")]);
        let (status, v) = http(
            nodes[0].http_addr,
            "POST",
            "/goim/push/mids?operation=1000&mids=7",
            &[],
            b"late",
        );
        assert_eq!(status, 200, "{v}");
        // The route answers once the push is handed to a link: what Redis
        // did with it shows within a moment (in the inbox, until the node's
        // next mark takes it).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut kept = false;
        while !kept && Instant::now() < deadline {
            kept = redis_cli(&redis, &["LLEN", "vly:i:7"]) == "1";
            std::thread::sleep(Duration::from_millis(10));
        }
        if kept {
            break;
        }
        assert_eq!(u.read_push2().unwrap().payload, b"late");
    }
    // With its next mark the node hears it was taken for dead, adds its
    // users again and delivers what waited for them.
    let p = u.read_push2().unwrap();
    assert_eq!((p.op, &p.payload[..]), (1000, &b"late"[..]));
    wait_until("the user's entry lists the node again", || {
        redis_cli(&redis, &["HGET", "vly:u:7", &node]) == "1"
    });
    assert_eq!(redis_cli(&redis, &["EXISTS", "vly:i:7"]), "0");
    let (status, v) = http(
        nodes[0].http_addr,
        "POST",
        "/goim/push/mids?operation=1000&mids=7",
        &[],
        b"live",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(u.read_push2().unwrap().payload, b"live");
}

#[test]
fn members_that_missed_what_redis_no_longer_holds_are_told_not_left_with_a_gap() {
    let redis = Redis::start(&[]);
    let nodes = cluster_with(&redis, 2, |c| c.history.messages = 5);
    let mut admin = Admin::open(&redis);
    let (mut v2, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":1}"#);
    let j = v2.join(2, "live://g", None);
    let epoch = j["epoch"].as_str().unwrap().to_string();
    let mut v1 = Client::authed(nodes[1].tcp_addr, r#"{"mid":2,"room_id":"live://g"}"#);
    let publish = |i: u64| {
        let (status, v) = publish_room(&nodes[0], "live://g", &i.to_string());
        assert_eq!((status, v["data"]["offset"].as_u64()), (200, Some(i)), "{v}");
    };
    publish(1);
    assert_eq!(v2.read_push2().unwrap().offset, 1);
    assert_eq!(v1.read_push().body, b"1");
    // Node 1's subscriptions are cut and cannot come back while ten
    // messages are published: twice what the room's history keeps.
    assert_eq!(admin.cmd(&["CONFIG", "SET", "maxclients", "1"]), "OK");
    admin.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for i in 2..=11 {
        publish(i);
    }
    assert_eq!(admin.cmd(&["CONFIG", "SET", "maxclients", "10000"]), "OK");
    // Back, node 1 can read only what the room's history keeps (7 to 11):
    // its version-2 member, who cannot have 2 to 6 that way, is closed as
    // lagged before anything past the gap reaches it.
    let (bye, got) = v2.goodbye_after();
    assert!(bye.starts_with("lagged") && bye.contains("live://g"), "{bye}");
    assert!(got.iter().all(|g| g.op != op2::PUSH), "nothing past the gap: {got:?}");
    wait_until("the close counted", || closes(&nodes[1], "lagged") == 1);
    // Version 1 has no resume: its member stays and misses 2 to 6.
    for i in 7..=11 {
        assert_eq!(v1.read_push().body, i.to_string().as_bytes());
    }
    // Its resume from its last offset says what is gone, or replays it
    // all: here the Stream, trimmed only approximately (`MAXLEN ~`), still
    // holds 2 to 6, and the resume reads them from it (the five the node's
    // history lacks, within the room's limit of five).
    let (mut again, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":1}"#);
    let j = again.join(2, "live://g", Some((1, &epoch)));
    assert_eq!(
        (j["recovered"].as_bool(), j["offset"].as_u64()),
        (Some(true), Some(11)),
        "{j}"
    );
    let replay: Vec<u64> = (2..=11).map(|_| again.read_push2().unwrap().offset).collect();
    assert_eq!(replay, (2..=11).collect::<Vec<u64>>());
    publish(12);
    assert_eq!(again.read_push2().unwrap().offset, 12);
    assert_eq!(v1.read_push().body, b"12");
}
