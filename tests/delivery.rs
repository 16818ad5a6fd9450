//! Version 2 over real sockets: room offsets and epochs, resume while
//! publishes go on, explicit answers when a resume cannot be served, a slow
//! consumer that resumes, history over HTTP, and numbered errors that leave
//! the connection (and every other) up.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn room_push(h: &volley::ServerHandle, room: &str, payload: &[u8], query: &str) {
    let (t, r) = room.split_once("://").unwrap();
    post(
        h,
        &format!("/goim/push/room?operation=1000&type={t}&room={r}{query}"),
        payload,
    );
}

#[test]
fn resume_while_publishes_continue_gets_exactly_the_missed_messages() {
    // History holds a whole round, so a reader slowed down by a loaded
    // host still finds its offset there (100, the default, did not always).
    let h = start_server(|c| c.history.messages = 1000);
    let room = "live://resume";
    // Clients on both shards, so some resumes cross shards and some do not.
    for round in 0..4u64 {
        let (mut a, _) = Client::authed_v2(h.tcp_addr, "{}");
        let reply = a.join(2, room, None);
        let epoch = reply["epoch"].as_str().unwrap().to_string();
        let start = reply["offset"].as_u64().unwrap();
        let addr = h.http_addr;
        let total = 200u64;
        let publisher = std::thread::spawn(move || {
            for i in 0..total {
                let (s, v) = http(
                    addr,
                    "POST",
                    "/goim/push/room?operation=1000&type=live&room=resume",
                    &[],
                    format!("{round}:{i}").as_bytes(),
                );
                assert_eq!((s, &v["code"]), (200, &Value::from(0)), "{v}");
            }
        });
        // A reads a while, then goes away mid-stream.
        let mut seen: Vec<(u64, String)> = Vec::new();
        while seen.len() < 40 {
            let p = a.read_push2().expect("a push");
            assert_eq!(
                (p.room.as_str(), p.epoch),
                (room, volley::proto::v2::parse_epoch(&epoch).unwrap())
            );
            seen.push((p.offset, String::from_utf8(p.payload).unwrap()));
        }
        drop(a);
        std::thread::sleep(Duration::from_millis(20));
        // B resumes from A's last offset while the publisher goes on.
        let (mut b, _) = Client::authed_v2(h.tcp_addr, "{}");
        let last = seen.last().unwrap().0;
        let reply = b.join(2, room, Some((last, &epoch)));
        assert_eq!(reply["recovered"], true, "{reply}");
        while seen.last().unwrap().1 != format!("{round}:{}", total - 1) {
            let p = b.read_push2().expect("a push");
            seen.push((p.offset, String::from_utf8(p.payload).unwrap()));
        }
        publisher.join().unwrap();
        let offsets: Vec<u64> = seen.iter().map(|s| s.0).collect();
        let want: Vec<u64> = (start + 1..=start + total).collect();
        assert_eq!(offsets, want, "round {round}: every offset once, in order");
        let texts: Vec<String> = seen.into_iter().map(|s| s.1).collect();
        let want: Vec<String> = (0..total).map(|i| format!("{round}:{i}")).collect();
        assert_eq!(texts, want);
    }
    assert!(h.stats().iter().map(|s| s.resumes).sum::<u64>() >= 4);
}

#[test]
fn a_gap_beyond_history_is_reported_with_the_current_position() {
    let h = start_server(|c| c.history.messages = 5);
    let (mut a, _) = Client::authed_v2(h.tcp_addr, "{}");
    let epoch = a.join(2, "live://g", None)["epoch"].as_str().unwrap().to_string();
    for i in 0..20 {
        room_push(&h, "live://g", format!("{i}").as_bytes(), "");
    }
    for i in 1..=20 {
        assert_eq!(a.read_push2().unwrap().offset, i);
    }
    let (mut b, _) = Client::authed_v2(h.tcp_addr, "{}");
    let reply = b.join(2, "live://g", Some((1, &epoch)));
    assert_eq!(
        (&reply["recovered"], &reply["reason"], &reply["offset"]),
        (&Value::from(false), &Value::from("history_gone"), &Value::from(20))
    );
    // Nothing replayed; the next live message is 21.
    room_push(&h, "live://g", b"live", "");
    let p = b.read_push2().unwrap();
    assert_eq!((p.offset, p.payload.as_slice()), (21, &b"live"[..]));
    // 15 is still covered.
    // History keeps 17..=21 now: 16 is covered, 15 is not.
    let (mut c, _) = Client::authed_v2(h.tcp_addr, "{}");
    assert_eq!(c.join(2, "live://g", Some((15, &epoch)))["reason"], "history_gone");
    let (mut c, _) = Client::authed_v2(h.tcp_addr, "{}");
    assert_eq!(c.join(2, "live://g", Some((16, &epoch)))["recovered"], true);
    let got: Vec<u64> = (0..5).map(|_| c.read_push2().unwrap().offset).collect();
    assert_eq!(got, (17..=21).collect::<Vec<_>>());
}

#[test]
fn a_restart_changes_the_epoch_and_the_resume_says_so() {
    let first = start_server(|_| {});
    let (mut a, _) = Client::authed_v2(first.tcp_addr, "{}");
    let epoch = a.join(2, "live://e", None)["epoch"].as_str().unwrap().to_string();
    room_push(&first, "live://e", b"x", "");
    assert_eq!(a.read_push2().unwrap().offset, 1);
    first.shutdown();
    let second = start_server(|_| {});
    let (mut b, _) = Client::authed_v2(second.tcp_addr, "{}");
    let reply = b.join(2, "live://e", Some((1, &epoch)));
    assert_eq!(
        (&reply["recovered"], &reply["reason"]),
        (&Value::from(false), &Value::from("epoch_changed"))
    );
    assert_ne!(reply["epoch"].as_str().unwrap(), epoch);
    assert_eq!(reply["offset"], 0);
}

#[test]
fn a_slow_consumer_that_is_closed_resumes_and_misses_nothing() {
    let h = start_server(|c| {
        c.limits.outbound_limit = 256 * 1024;
        c.api.max_push_body = 4096;
        c.history.messages = 2000;
        c.history.max_bytes = 64 << 20;
    });
    let (mut stalled, _) = Client::authed_v2(h.tcp_addr, "{}");
    let epoch = stalled.join(2, "live://slow", None)["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    // Publish until the server starts dropping what it cannot queue (the
    // close); the client then reads at once, within the seconds a closing
    // connection is given to take its goodbye.
    let dropped = |h: &volley::ServerHandle| h.stats().iter().map(|s| s.dropped).sum::<u64>();
    let mut sent = 0u64;
    while dropped(&h) == 0 {
        assert!(sent < 16_000, "never detected the slow consumer");
        let mut payload = sent.to_be_bytes().to_vec();
        payload.resize(4000, b'x');
        room_push(&h, "live://slow", &payload, "");
        sent += 1;
    }
    // It reads again: a gapless prefix, then the goodbye that says to resume.
    let (bye, before) = stalled.goodbye_after();
    assert!(bye.starts_with("slow_consumer: ") && bye.contains("resume"), "{bye}");
    let prefix: Vec<u64> = before.iter().map(|g| Push2::parse(&g.body).offset).collect();
    assert_eq!(prefix, (1..=prefix.len() as u64).collect::<Vec<_>>());
    assert!((prefix.len() as u64) < sent, "it lost what was queued at the close");
    // More is published while it is away, then it resumes.
    for _ in 0..10 {
        let mut payload = sent.to_be_bytes().to_vec();
        payload.resize(4000, b'x');
        room_push(&h, "live://slow", &payload, "");
        sent += 1;
    }
    let (mut again, _) = Client::authed_v2(h.tcp_addr, "{}");
    let last = prefix.len() as u64;
    let reply = again.join(2, "live://slow", Some((last, &epoch)));
    assert_eq!(reply["recovered"], true, "{reply}");
    for want in last + 1..=sent {
        let p = again.read_push2().expect("every missed message");
        assert_eq!((p.offset, &p.payload[..8]), (want, &(want - 1).to_be_bytes()[..]));
    }
}

#[test]
fn history_over_http_with_ids_and_ttls() {
    let h = start_server(|_| {});
    post(
        &h,
        "/v1/push/room",
        br#"{"room":"chat://1","op":1000,"body":"one","id":"m-1"}"#,
    );
    room_push(&h, "chat://1", b"short-lived", "&ttl=1");
    post(
        &h,
        "/v1/push/room",
        br#"{"room":"chat://1","op":1001,"body_base64":"AAE="}"#,
    );
    let (s, v) = http(
        h.http_addr,
        "GET",
        "/v1/history?room=chat://1&since=0&limit=10",
        &[],
        b"",
    );
    assert_eq!(s, 200, "{v}");
    let d = &v["data"];
    assert_eq!((d["room"].as_str(), d["offset"].as_u64()), (Some("chat://1"), Some(3)));
    assert_eq!(d["epoch"].as_str().unwrap().len(), 16);
    let m = d["messages"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(
        (&m[0]["offset"], &m[0]["op"], &m[0]["id"], &m[0]["body_base64"]),
        (
            &Value::from(1),
            &Value::from(1000),
            &Value::from("m-1"),
            &Value::from("b25l")
        )
    );
    assert_eq!(m[2]["body_base64"], "AAE=");
    // since and limit page through it.
    let (_, v) = http(
        h.http_addr,
        "GET",
        "/v1/history?room=chat://1&since=1&limit=1",
        &[],
        b"",
    );
    assert_eq!(v["data"]["messages"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"]["messages"][0]["offset"], 2);
    // The TTL of 1 s ends: message 2 leaves history.
    wait_until("the TTL to end", || {
        let (_, v) = http(h.http_addr, "GET", "/v1/history?room=chat://1", &[], b"");
        v["data"]["messages"].as_array().map(|m| m.len()) == Some(2)
    });
    // A room nobody published to has no log yet; bad queries are 400s.
    let (_, v) = http(h.http_addr, "GET", "/v1/history?room=none://x", &[], b"");
    assert_eq!(
        (&v["data"]["epoch"], &v["data"]["messages"]),
        (&Value::Null, &serde_json::json!([]))
    );
    for bad in [
        "/v1/history",
        "/v1/history?room=a&since=x",
        "/v1/history?room=a&limit=-1",
    ] {
        assert_eq!(http(h.http_addr, "GET", bad, &[], b"").0, 400, "{bad}");
    }
    let (s, _) = http(
        h.http_addr,
        "POST",
        "/v1/push/room",
        &[],
        format!(r#"{{"room":"r","op":1,"id":"{}"}}"#, "i".repeat(129)).as_bytes(),
    );
    assert_eq!(s, 400, "a message id over 128 bytes");
}

#[test]
fn bad_version_2_requests_are_answered_and_nobody_else_is_touched() {
    let h = start_server(|c| c.client.max_rooms = 3);
    let (mut bystander, _) = Client::authed_v2(h.tcp_addr, "{}");
    bystander.join(2, "live://by", None);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"key":"mine"}"#);
    let mut seq = 10;
    let mut error = |c: &mut Client, op: u32, body: &[u8]| {
        seq += 1;
        c.send_as(2, op, seq, body);
        let g = c.read().unwrap();
        assert_eq!((g.op, g.seq), (op2::ERROR, seq), "{}", g.text());
        let v: Value = serde_json::from_slice(&g.body).unwrap();
        (v["code"].as_u64().unwrap(), v["reason"].as_str().unwrap().to_string())
    };
    for (op, body, code, reason) in [
        (op2::JOIN, &b"not json"[..], 4000, "bad_request"),
        (op2::JOIN, b"[1]", 4000, "bad_request"),
        (op2::JOIN, br#"{"room":""}"#, 4000, "bad_request"),
        (op2::JOIN, br#"{"room":"r","epoch":"zz"}"#, 4000, "bad_request"),
        (op2::LEAVE, br#"{"room":"never"}"#, 4004, "not_joined"),
        (op2::LEAVE, b"\xff\xfe", 4000, "bad_request"),
        (12, b"live://x", 4001, "unknown_op"),
        (op2::PUSH, b"", 4001, "unknown_op"),
    ] {
        assert_eq!(error(&mut c, op, body), (code, reason.to_string()), "op {op} {body:?}");
    }
    for r in ["a", "b", "c"] {
        c.join(1, r, None);
    }
    assert_eq!(
        error(&mut c, op2::JOIN, br#"{"room":"d"}"#),
        (4002, "room_limit".to_string())
    );
    assert_eq!(
        error(&mut c, op2::JOIN, br#"{"room":"a"}"#),
        (4003, "already_joined".to_string())
    );
    c.send_as(2, op2::LEAVE, 99, br#"{"room":"a"}"#);
    let g = c.read().unwrap();
    assert_eq!(
        (g.op, g.seq, g.text()),
        (op2::LEAVE_REPLY, 99, r#"{"room":"a"}"#.to_string())
    );
    // Still up, still served; the bystander too.
    c.send_as(2, op::HEARTBEAT, 100, b"");
    let g = c.read().unwrap();
    assert_eq!((g.ver, g.op, g.seq, g.body.len()), (2, op::HEARTBEAT_REPLY, 100, 0));
    room_push(&h, "live://by", b"still here", "");
    assert_eq!(bystander.read_push2().unwrap().payload, b"still here");
    // Framing errors still close, and only that connection.
    c.send_raw(&[0, 0, 0, 20, 0, 9]);
    assert!(c.expect_closed().unwrap().starts_with("bad_header_length"));
    room_push(&h, "live://by", b"after", "");
    assert_eq!(bystander.read_push2().unwrap().payload, b"after");
    assert_eq!(closes(&h, "bad_header_length"), 1);
}

#[test]
fn version_1_and_version_2_share_rooms_and_each_gets_its_own_frames() {
    let h = start_server(|_| {});
    let mut v1 = Client::authed(h.tcp_addr, r#"{"room_id":"live://both","accepts":[1000]}"#);
    let (mut v2c, key) = Client::authed_v2(h.tcp_addr, r#"{"mid":42}"#);
    assert_eq!(
        key.len(),
        volley::shard::addr::ASSIGNED_KEY_LEN,
        "a server-assigned key, told to the client: {key}"
    );
    v2c.join(2, "live://both", None);
    room_push(&h, "live://both", b"room", "&id=r-1");
    let g = v1.read_push();
    assert_eq!((g.ver, g.op, g.body.as_slice()), (1, 1000, &b"room"[..]));
    let p = v2c.read_push2().unwrap();
    assert_eq!(
        (p.kind, p.op, p.offset, p.id.as_str(), p.payload.as_slice()),
        (1, 1000, 1, "r-1", &b"room"[..])
    );
    // Its key reaches it: a key push with the key op 8 named.
    post(&h, &format!("/goim/push/keys?operation=7&keys={key}"), b"to-key");
    let p = v2c.read_push2().unwrap();
    assert_eq!(
        (p.kind, p.op, p.room.as_str(), p.payload.as_slice()),
        (3, 7, "", &b"to-key"[..])
    );
    post(&h, "/goim/push/mids?operation=8&mids=42", b"to-user");
    let p = v2c.read_push2().unwrap();
    assert_eq!((p.kind, p.op, p.payload.as_slice()), (2, 8, &b"to-user"[..]));
}
