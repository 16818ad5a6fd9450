//! Key, user and everyone pushes across nodes, key replacement, the node
//! list, and user inboxes that follow the user.

use super::*;

#[test]
fn key_user_and_everyone_pushes_reach_every_node() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 3);
    // A user with a connection on two nodes, a keyed connection on the
    // third, and a bystander: one push of each kind enters at node 0.
    let auth = |mid: i64, key: &str| format!(r#"{{"mid":{mid},"key":"{key}","accepts":[1000]}}"#);
    let mut u1 = Client::authed(nodes[1].tcp_addr, &auth(7, "u7-a"));
    let (mut u2, _) = Client::authed_v2(nodes[2].tcp_addr, r#"{"mid":7}"#);
    let mut k = Client::authed(nodes[2].tcp_addr, &auth(8, "the-key"));
    let mut other = Client::authed(nodes[1].tcp_addr, &auth(9, "k9"));
    // A server-assigned key names its node: no registry entry.
    let (mut assigned, key) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":10}"#);
    // The registry knows which nodes hold the user and the key, and that
    // every node is alive.
    wait_until("the registry lists the user's two nodes and the key's one", || {
        redis_cli(&redis, &["HLEN", "vly:u:7"]) == "2" && redis_cli(&redis, &["HLEN", "vly:k:the-key"]) == "1"
    });
    wait_until("every node is alive", || {
        redis_cli(&redis, &["KEYS", "vly:alive:*"]).lines().count() == 3
    });
    let push = |path: &str| {
        let (status, v) = http(nodes[0].http_addr, "POST", path, &[], b"p");
        assert_eq!(status, 200, "{path}: {v}");
    };
    let publishes = || {
        let stats = redis_cli(&redis, &["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
            .and_then(|r| r.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = publishes();
    push("/goim/push/mids?operation=1000&mids=7");
    push("/goim/push/keys?operation=1000&keys=the-key");
    push(&format!("/goim/push/keys?operation=1000&keys={key}"));
    push("/goim/push/all?operation=1000");
    assert_eq!(u1.read_push().body, b"p", "the user on node 1");
    // A user push and a push to everyone take different ways through a
    // node (the user's owner shard, or every shard at once), so either may
    // arrive first.
    let mut kinds = [u2.read_push2().unwrap(), u2.read_push2().unwrap()].map(|p| {
        assert_eq!(p.payload, b"p");
        p.kind
    });
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [2, 3],
        "the user on node 2: a user push, and the push to everyone"
    );
    assert_eq!(k.read_push().body, b"p", "the key on node 2");
    assert_eq!(
        assigned.read_push2().unwrap().payload,
        b"p",
        "the assigned key on node 1"
    );
    assert_eq!(assigned.read_push2().unwrap().payload, b"p", "everyone");
    // The user's push went to its two nodes' channels, each key's to one,
    // the push to everyone to each of the three nodes' channels.
    assert_eq!(publishes() - before, 2 + 1 + 1 + 3);
    for c in [&mut u1, &mut k, &mut other] {
        assert_eq!(c.read_push().body, b"p", "everyone");
    }
    // Nothing else arrived: the bystander got only the push to everyone.
    other.send(op::HEARTBEAT, 5, b"");
    let r = other.read().unwrap();
    assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 5));
    // A retried id is delivered once, on every node.
    push("/goim/push/keys?operation=1000&keys=the-key&id=r-1");
    push("/goim/push/keys?operation=1000&keys=the-key&id=r-1");
    assert_eq!(k.read_push().body, b"p");
    k.send(op::HEARTBEAT, 6, b"");
    assert_eq!(k.read().unwrap().op, op::HEARTBEAT_REPLY, "the retry was not delivered");
}

#[test]
fn a_client_chosen_key_on_another_node_replaces_the_older_connection() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    let auth = r#"{"mid":5,"key":"roaming","accepts":[1000]}"#;
    let mut first = Client::authed(nodes[0].tcp_addr, auth);
    wait_until("the registry lists the key's node", || {
        redis_cli(&redis, &["HLEN", "vly:k:roaming"]) == "1"
    });
    let holder = redis_cli(&redis, &["HKEYS", "vly:k:roaming"]);
    let mut second = Client::authed(nodes[1].tcp_addr, auth);
    let bye = first.expect_closed().expect("op 6 before close");
    assert!(bye.starts_with("replaced"), "{bye}");
    wait_until("replaced counted on the first node", || {
        closes(&nodes[0], "replaced") == 1
    });
    // The first node left the key's entry: a push to the key goes to the
    // second node's channel only, and reaches the new connection.
    wait_until("the key's entry lists the second node only", || {
        let now = redis_cli(&redis, &["HKEYS", "vly:k:roaming"]);
        now.lines().count() == 1 && now != holder
    });
    let (status, v) = http(
        nodes[0].http_addr,
        "POST",
        "/goim/push/keys?operation=1000&keys=roaming",
        &[],
        b"new",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(second.read_push().body, b"new");
    // The new connection was not replaced by its own claim.
    second.send(op::HEARTBEAT, 3, b"");
    assert_eq!(second.read().unwrap().op, op::HEARTBEAT_REPLY);
    assert_eq!(closes(&nodes[1], "replaced"), 0);
}

#[test]
fn every_node_is_in_vly_nodes_once_under_its_registry_id() {
    // Pushes to everyone read `vly:nodes` and drop an id that has neither
    // a subscriber nor a `vly:alive:` key; the counts report must add the
    // id the registry subscribes under, or a broadcast drops the node's
    // counts from the cluster's sums until its next report.
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    let mut clients = Vec::new();
    for (node, n) in [(0, 2), (1, 3)] {
        for i in 0..n {
            let auth = format!(
                r#"{{"mid":{},"room_id":"live://n","accepts":[1000]}}"#,
                100 * node + i + 1
            );
            clients.push(Client::authed(nodes[node].tcp_addr, &auth));
        }
    }
    let counted = || {
        nodes.iter().all(|h| {
            let (_, v) = http(h.http_addr, "GET", "/goim/online/room?type=live&rooms=n", &[], b"");
            v["data"]["n"] == 5
        })
    };
    wait_until("every node counts the cluster's members", counted);
    // Each node in the set once, under the id its registry entries and
    // channel use, with the counts it reported under that id.
    let registry_ids = || {
        let ids = redis_cli(&redis, &["SMEMBERS", "vly:nodes"]);
        let ids: Vec<String> = ids.lines().map(str::to_string).collect();
        ids.len() == 2
            && ids.iter().all(|id| {
                id.len() == 12
                    && id.bytes().all(|b| b.is_ascii_hexdigit())
                    && redis_cli(&redis, &["EXISTS", &format!("vly:t:{id}")]) == "1"
            })
    };
    wait_until("every node reports under its registry id", registry_ids);
    let (status, v) = http(nodes[0].http_addr, "POST", "/goim/push/all?operation=1000", &[], b"all");
    assert_eq!(status, 200, "{v}");
    for c in &mut clients {
        assert_eq!(c.read_push().body, b"all");
    }
    // The broadcast's script has run: no node left the set.
    assert!(registry_ids(), "{}", redis_cli(&redis, &["SMEMBERS", "vly:nodes"]));
    assert!(counted(), "the sums still hold every node's members");
}

#[test]
fn a_users_inbox_follows_the_user_to_any_node() {
    let redis = Redis::start(&[]);
    let nodes = cluster(&redis, 2);
    wait_until("both nodes alive", || {
        redis_cli(&redis, &["KEYS", "vly:alive:*"]).lines().count() == 2
    });
    let push = |body: &str, extra: &str| {
        let path = format!("/goim/push/mids?operation=1000&mids=77{extra}");
        let (status, v) = http(nodes[0].http_addr, "POST", &path, &[], body.as_bytes());
        assert_eq!(status, 200, "{v}");
    };
    // Connected nowhere: both pushes wait in Redis, not on a node. (The
    // route answers once the push is handed to a link, and two pushes may
    // take two shards' links: the second is sent once the first is in.)
    push("first", "");
    wait_until("the first push in the user's inbox", || {
        redis_cli(&redis, &["LLEN", "vly:i:77"]) == "1"
    });
    push("second", "&id=s-1");
    wait_until("two pushes in the user's inbox", || {
        redis_cli(&redis, &["LLEN", "vly:i:77"]) == "2"
    });
    // The user comes back on the other node and gets them, in order.
    let (mut c, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":77}"#);
    let a = c.read_push2().unwrap();
    let b = c.read_push2().unwrap();
    assert_eq!((a.kind, &a.payload[..]), (2, &b"first"[..]));
    assert_eq!((&b.payload[..], b.id.as_str()), (&b"second"[..], "s-1"));
    assert_eq!(redis_cli(&redis, &["EXISTS", "vly:i:77"]), "0", "taken");
    // Connected: a push goes to the node, not to Redis.
    wait_until("the user is registered", || {
        redis_cli(&redis, &["HLEN", "vly:u:77"]) == "1"
    });
    push("live", "");
    let live = c.read_push2().unwrap();
    assert_eq!(live.payload, b"live");
    assert_eq!(redis_cli(&redis, &["EXISTS", "vly:i:77"]), "0");
    // The user acknowledges the first two, not the live one, and leaves:
    // what it owes goes back to Redis, and comes on the other node.
    let ids = serde_json::json!({"ids": [a.offset, b.offset]}).to_string();
    c.send_as(2, op2::ACK, 5, ids.as_bytes());
    let r = c.read().unwrap();
    assert_eq!((r.op, r.seq), (op2::ACK_REPLY, 5), "{}", r.text());
    drop(c);
    wait_until("the unacknowledged push back in Redis", || {
        redis_cli(&redis, &["LLEN", "vly:i:77"]) == "1"
    });
    assert_eq!(redis_cli(&redis, &["HLEN", "vly:u:77"]), "0", "the node left the entry");
    let (mut d, _) = Client::authed_v2(nodes[0].tcp_addr, r#"{"mid":77}"#);
    let again = d.read_push2().unwrap();
    assert_eq!((again.kind, &again.payload[..]), (2, &b"live"[..]));
    // Held on two nodes, a user's leaving one keeps nothing in Redis: the
    // other node had the push live.
    let (mut e, _) = Client::authed_v2(nodes[1].tcp_addr, r#"{"mid":77}"#);
    wait_until("the user is on both nodes", || {
        redis_cli(&redis, &["HLEN", "vly:u:77"]) == "2"
    });
    push("both", "");
    assert_eq!(d.read_push2().unwrap().payload, b"both");
    assert_eq!(e.read_push2().unwrap().payload, b"both");
    drop(d);
    wait_until("node 0 left the entry", || {
        redis_cli(&redis, &["HLEN", "vly:u:77"]) == "1"
    });
    assert_eq!(redis_cli(&redis, &["EXISTS", "vly:i:77"]), "0");
}
