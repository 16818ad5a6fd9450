//! Every push mode over real sockets against a 2-shard server.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn room_push_reaches_every_member_and_nobody_else() {
    let h = start_server(|_| {});
    let a = spread(&h, |i| {
        Client::authed(h.tcp_addr, &format!(r#"{{"mid":{i},"room_id":"live://a"}}"#))
    });
    let mut b: Vec<Client> = (0..4)
        .map(|i| Client::authed(h.tcp_addr, &format!(r#"{{"mid":{},"room_id":"live://b"}}"#, 100 + i)))
        .collect();
    let mut a = a;
    post(&h, "/goim/push/room?operation=1000&type=live&room=a", b"to-a");
    for c in &mut a {
        let g = c.read_push();
        assert_eq!((g.ver, g.op, g.seq, g.body.as_slice()), (1, 1000, 0, &b"to-a"[..]));
    }
    // Every shard has now processed the room-a frame; had any b member been
    // given it, it would sit ahead of this one in that member's queue.
    post(&h, "/goim/push/room?operation=1001&type=live&room=b", b"to-b");
    for c in &mut b {
        assert_eq!(c.read_push().body, b"to-b");
    }
}

#[test]
fn user_push_reaches_every_connection_of_the_user_across_shards() {
    let h = start_server(|_| {});
    let mut mine = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"mid":42,"accepts":[1000]}"#));
    let mut other = Client::authed(h.tcp_addr, r#"{"mid":43,"accepts":[1000]}"#);
    post(&h, "/goim/push/mids?operation=1000&mids=42", b"for-42");
    for c in &mut mine {
        assert_eq!(c.read_push().body, b"for-42");
    }
    post(&h, "/goim/push/mids?operation=1000&mids=43", b"for-43");
    assert_eq!(other.read_push().body, b"for-43");
    // Native route, many users at once.
    post(&h, "/v1/push/mids", br#"{"mids":[42,43],"op":1000,"body":"both"}"#);
    for c in mine.iter_mut().chain(std::iter::once(&mut other)) {
        assert_eq!(c.read_push().body, b"both");
    }
}

#[test]
fn key_push_reaches_only_that_key() {
    let h = start_server(|_| {});
    let mut k1 = Client::authed(h.tcp_addr, r#"{"key":"k1","accepts":[1000]}"#);
    let mut k2 = Client::authed(h.tcp_addr, r#"{"key":"k2","accepts":[1000]}"#);
    post(&h, "/goim/push/keys?operation=1000&keys=k1", b"one");
    assert_eq!(k1.read_push().body, b"one");
    post(&h, "/goim/push/keys?operation=1000&keys=k2&keys=k1", b"two");
    assert_eq!(
        k2.read_push().body,
        b"two",
        "k2's first push is the one addressed to it"
    );
    assert_eq!(k1.read_push().body, b"two");
}

#[test]
fn push_all_honours_accepts() {
    let h = start_server(|_| {});
    let mut yes = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"accepts":[1000,1001]}"#));
    let mut no = Client::authed(h.tcp_addr, r#"{"accepts":[1001]}"#);
    post(&h, "/goim/push/all?operation=1000", b"everyone");
    for c in &mut yes {
        assert_eq!(c.read_push().body, b"everyone");
    }
    post(&h, "/goim/push/all?operation=1001", b"second");
    assert_eq!(
        no.read_push().body,
        b"second",
        "op 1000 was filtered out for this client"
    );
}

#[test]
fn accepts_can_change_with_op_14_and_16() {
    let h = start_server(|_| {});
    let mut c = Client::authed(h.tcp_addr, r#"{"key":"acc","accepts":[]}"#);
    c.send(op::SUB, 9, b"2000,2001");
    let r = c.read().unwrap();
    assert_eq!((r.op, r.seq, r.body.as_slice()), (op::SUB_REPLY, 9, &b"2000,2001"[..]));
    post(&h, "/goim/push/keys?operation=2000&keys=acc", b"after-sub");
    assert_eq!(c.read_push().body, b"after-sub");
    c.send(op::UNSUB, 10, b"2000");
    assert_eq!(c.read().unwrap().op, op::UNSUB_REPLY);
    post(&h, "/goim/push/keys?operation=2000&keys=acc", b"filtered");
    post(&h, "/goim/push/keys?operation=2001&keys=acc", b"still-accepted");
    assert_eq!(c.read_push().body, b"still-accepted");
}

#[test]
fn change_room_moves_the_connection() {
    let h = start_server(|_| {});
    let mut c = Client::authed(h.tcp_addr, r#"{"room_id":"live://1"}"#);
    c.send(op::CHANGE_ROOM, 3, b"live://2");
    let r = c.read().unwrap();
    assert_eq!(
        (r.op, r.seq, r.body.as_slice()),
        (op::CHANGE_ROOM_REPLY, 3, &b"live://2"[..])
    );
    post(&h, "/goim/push/room?operation=1000&type=live&room=1", b"old");
    post(&h, "/goim/push/room?operation=1000&type=live&room=2", b"new");
    assert_eq!(c.read_push().body, b"new");
}

#[test]
fn native_batch_publish_delivers_every_message() {
    let h = start_server(|_| {});
    let mut c = Client::authed(
        h.tcp_addr,
        r#"{"key":"bk","mid":7,"room_id":"live://x","accepts":[1,2,30]}"#,
    );
    let v = post(
        &h,
        "/v1/publish",
        br#"{"messages":[
            {"target":"room","room":"live://x","op":1,"body":"r"},
            {"target":"keys","keys":["bk"],"op":2,"body_base64":"AAE="},
            {"target":"mids","mids":[7],"op":30,"body":"m"},
            {"target":"all","op":1,"body":"a"}]}"#,
    );
    assert_eq!(v["data"]["accepted"], 4);
    let mut got: Vec<(u32, Vec<u8>)> = (0..4).map(|_| c.read_push()).map(|g| (g.op, g.body)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (1, b"a".to_vec()),
            (1, b"r".to_vec()),
            (2, vec![0, 1]),
            (30, b"m".to_vec())
        ]
    );
}

#[test]
fn heartbeat_reply_carries_the_room_count_across_shards() {
    let h = start_server(|_| {});
    let mut cs = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"room_id":"live://hb"}"#));
    let n = cs.len() as u64;
    wait_until("online count", || {
        let (_, v) = http(h.http_addr, "GET", "/goim/online/room?type=live&rooms=hb", &[], b"");
        v["data"]["hb"] == n
    });
    cs[0].send(op::HEARTBEAT, 77, b"");
    let r = cs[0].read().unwrap();
    assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 77));
    assert_eq!(u32::from_be_bytes(r.body.try_into().unwrap()) as u64, n);
}

#[test]
fn same_key_replaces_the_older_connection() {
    let h = start_server(|_| {});
    let mut first = Client::authed(h.tcp_addr, r#"{"key":"dup","accepts":[1000]}"#);
    // A key is registered on its owner shard after the op 8 reply; which of
    // two registrations in flight from different shards lands last is not
    // ordered, so the first is confirmed held before the second arrives.
    first.s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    wait_until("the first holds the key", || {
        post(&h, "/goim/push/keys?operation=1000&keys=dup", b"held");
        first.read().is_some_and(|g| g.body == b"held")
    });
    // Pushes sent before the key was held went nowhere, and none follows
    // the one that arrived.
    first.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut second = Client::authed(h.tcp_addr, r#"{"key":"dup","accepts":[1000]}"#);
    let bye = first.expect_closed().expect("op 6 before close");
    assert!(bye.starts_with("replaced"), "{bye}");
    post(&h, "/goim/push/keys?operation=1000&keys=dup", b"new-owner");
    assert_eq!(second.read_push().body, b"new-owner");
    wait_until("replaced counted", || closes(&h, "replaced") == 1);
}

#[test]
fn op_4_is_acknowledged_and_op_6_closes() {
    let h = start_server(|_| {});
    let mut c = Client::authed(h.tcp_addr, r#"{}"#);
    c.send(op::SEND_MSG, 11, b"hi");
    let r = c.read().unwrap();
    assert_eq!((r.op, r.seq, r.body.len()), (op::SEND_MSG_REPLY, 11, 0));
    // An op 9 batch is unpacked: two heartbeats, two replies.
    let mut batch = frame(1, op::HEARTBEAT, 1, b"");
    batch.extend(frame(1, op::HEARTBEAT, 2, b""));
    c.send(op::RAW, 0, &batch);
    assert_eq!((c.read().unwrap().seq, c.read().unwrap().seq), (1, 2));
    c.send(op::DISCONNECT, 0, b"");
    assert_eq!(c.expect_closed(), None);
    wait_until("disconnect counted", || closes(&h, "client_disconnect") == 1);
}

#[test]
fn shutdown_tells_clients_and_closes() {
    let h = start_server(|_| {});
    let mut cs = spread(&h, |_| Client::authed(h.tcp_addr, r#"{}"#));
    h.shutdown();
    for c in &mut cs {
        let bye = c.expect_closed().expect("op 6");
        assert!(bye.starts_with("shutdown"), "{bye}");
    }
    h.join();
}

#[test]
fn a_flush_delay_does_not_hold_paced_messages() {
    // `[client] flush_delay_ms` holds a round only after a busy one: a
    // message published after the last round was written goes at once.
    let h = start_server(|c| {
        c.shards = 1;
        c.client.flush_delay_ms = 1000;
    });
    let mut member = Client::authed(h.tcp_addr, r#"{"mid":1,"room_id":"live://d"}"#);
    for i in 0..3 {
        post(
            &h,
            "/goim/push/room?operation=1000&type=live&room=d",
            format!("m{i}").as_bytes(),
        );
        assert_eq!(member.read_push().body, format!("m{i}").as_bytes());
    }
    let holds: u64 = h.stats().iter().map(|s| s.flush_holds).sum();
    assert_eq!(holds, 0, "no round was held");
}

#[test]
fn a_burst_longer_than_a_round_loses_nothing_with_a_flush_delay() {
    // One request queues more than a round writes to a connection (16
    // writes of 64 frames): the rest goes in the next round, the member
    // gets every message in order. (No round is held: the frames came
    // before the round, not during it; when a hold pays is
    // `conn::flush::worth_holding`'s, tested there.)
    const N: usize = 1_100;
    let h = start_server(|c| {
        c.shards = 1;
        c.client.flush_delay_ms = 200;
    });
    let mut member = Client::authed(h.tcp_addr, r#"{"mid":1,"room_id":"live://d"}"#);
    let messages: Vec<_> = (0..N)
        .map(|i| serde_json::json!({"target": "room", "room": "live://d", "op": 1000, "body": format!("m{i}")}))
        .collect();
    let batch = serde_json::json!({ "messages": messages }).to_string();
    let (status, v) = http(h.http_addr, "POST", "/v1/publish", &[], batch.as_bytes());
    assert_eq!(status, 200, "{v}");
    for i in 0..N {
        assert_eq!(member.read_push().body, format!("m{i}").as_bytes());
    }
    let writes: u64 = h.stats().iter().map(|s| s.writes).sum();
    assert!(writes > 16, "the burst took more than one round: {writes} writes");
}
