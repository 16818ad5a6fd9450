//! The TCP publisher connection (docs/API.md, "TCP publisher"): every push
//! kind, acks and the op 2 barrier, op 9 batches, the API key, and bad input
//! closing only the offending publisher. Bodies are built by hand here, from
//! the documented layout, not with the server's own encoder.

mod common;
use common::*;
use std::time::Duration;
use volley::proto::publish::op as pop;

fn keys_body(op: u32, keys: &[&str], payload: &[u8]) -> Vec<u8> {
    let mut b = op.to_be_bytes().to_vec();
    b.extend_from_slice(&(keys.len() as u16).to_be_bytes());
    for k in keys {
        b.extend_from_slice(&(k.len() as u16).to_be_bytes());
        b.extend_from_slice(k.as_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn mids_body(op: u32, mids: &[i64], payload: &[u8]) -> Vec<u8> {
    let mut b = op.to_be_bytes().to_vec();
    b.extend_from_slice(&(mids.len() as u16).to_be_bytes());
    for m in mids {
        b.extend_from_slice(&m.to_be_bytes());
    }
    b.extend_from_slice(payload);
    b
}

fn all_body(op: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = op.to_be_bytes().to_vec();
    b.extend_from_slice(payload);
    b
}

/// op 2 → op 3: every publish before it has been routed.
fn barrier(p: &mut Client) {
    p.send(op::HEARTBEAT, 77, b"");
    let r = p.read().expect("barrier reply");
    assert_eq!(
        (r.op, r.seq, r.body.len()),
        (op::HEARTBEAT_REPLY, 77, 0),
        "{}",
        r.text()
    );
}

#[test]
fn every_push_kind_reaches_its_recipients() {
    let h = start_server(|_| {});
    // Subscribers on both shards, each with its own key and user.
    let mut subs = spread(&h, |i| {
        Client::authed(
            h.tcp_addr,
            &format!(
                r#"{{"mid":{},"key":"k{i}","room_id":"live://t","accepts":[1000]}}"#,
                100 + i
            ),
        )
    });
    let mut p = publisher(h.publish_addr, None);

    p.send(pop::PUSH_ROOM, 0, &room_body(1001, "live://t", b"to the room"));
    for s in &mut subs {
        let g = s.read_push();
        assert_eq!((g.op, g.seq, g.text().as_str()), (1001, 0, "to the room"));
    }

    // Acked: the reply is op + 1 with the sequence, once routed.
    p.send(pop::PUSH_ALL, 9, &all_body(1000, b"to all"));
    let ack = p.read().unwrap();
    assert_eq!((ack.op, ack.seq), (pop::PUSH_ALL + 1, 9));
    for s in &mut subs {
        assert_eq!(s.read_push().text(), "to all");
    }

    p.send(pop::PUSH_KEYS, 0, &keys_body(1000, &["k0", "k1"], b"to keys"));
    p.send(pop::PUSH_MIDS, 0, &mids_body(1000, &[102, 103], b"to users"));
    barrier(&mut p);
    assert_eq!(subs[0].read_push().text(), "to keys");
    assert_eq!(subs[1].read_push().text(), "to keys");
    assert_eq!(subs[2].read_push().text(), "to users");
    assert_eq!(subs[3].read_push().text(), "to users");

    // Nothing else arrived for anyone.
    barrier(&mut p);
    for s in &mut subs {
        s.send(op::HEARTBEAT, 5, b"");
        let g = s.read().unwrap();
        assert_eq!(g.op, op::HEARTBEAT_REPLY, "unexpected frame {g:?}");
    }
    let published: u64 = h.stats().iter().map(|s| s.published).sum();
    assert_eq!(published, 4);
}

#[test]
fn op9_batches_arrive_whole_and_in_order() {
    let h = start_server(|_| {});
    let mut subs = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"room_id":"live://b"}"#));
    let mut p = publisher(h.publish_addr, None);
    let mut batch = Vec::new();
    for i in 0..500u32 {
        batch.extend(frame(
            1,
            pop::PUSH_ROOM,
            0,
            &room_body(1000, "live://b", &i.to_be_bytes()),
        ));
    }
    batch.extend(frame(1, pop::PUSH_ROOM, 3, &room_body(1000, "live://b", b"last")));
    p.send(op::RAW, 0, &batch);
    let ack = p.read().unwrap();
    assert_eq!((ack.op, ack.seq), (pop::PUSH_ROOM + 1, 3));
    for s in &mut subs {
        for i in 0..500u32 {
            assert_eq!(s.read_push().body, i.to_be_bytes());
        }
        assert_eq!(s.read_push().text(), "last");
    }
}

#[test]
fn api_key_is_required_when_set() {
    let h = start_server(|c| c.api.key = Some("s3cret".into()));
    let mut sub = Client::authed(h.tcp_addr, r#"{"room_id":"live://k"}"#);
    for wrong in ["", "s3cre", "s3cret!", "S3CRET"] {
        let mut p = Client::connect(h.publish_addr);
        p.send(op::AUTH, 1, wrong.as_bytes());
        let bye = p.expect_closed().expect("op 6 before the close");
        assert!(bye.starts_with("bad_api_key"), "{wrong:?}: {bye}");
    }
    // Counted just after the close.
    wait_until("4 bad_api_key closes", || publisher_closes(&h, "bad_api_key") == 4);
    let mut p = publisher(h.publish_addr, Some("s3cret"));
    p.send(pop::PUSH_ROOM, 0, &room_body(1000, "live://k", b"ok"));
    assert_eq!(sub.read_push().text(), "ok");
}

#[test]
fn bad_input_closes_only_that_publisher() {
    let h = start_server(|c| {
        c.api.max_push_body = 100;
        c.api.max_body = 1000;
    });
    let mut sub = Client::authed(h.tcp_addr, r#"{"room_id":"live://x"}"#);
    let mut good = publisher(h.publish_addr, None);
    let mut header16 = frame(1, pop::PUSH_ROOM, 0, &room_body(1000, "live://x", b"p"));
    header16[4..6].copy_from_slice(&12u16.to_be_bytes());
    let cases: Vec<(&str, bool, Vec<u8>, &str)> = vec![
        (
            "first frame not auth",
            false,
            frame(1, pop::PUSH_ROOM, 0, &room_body(1000, "live://x", b"p")),
            "auth_required",
        ),
        ("wrong header length", true, header16, "bad_header_length"),
        (
            "packet shorter than a header",
            true,
            vec![0, 0, 0, 8, 0, 16, 0, 1],
            "bad_packet_length",
        ),
        (
            "frame over max_http_body",
            true,
            frame(1, pop::PUSH_ROOM, 0, &[0u8; 1001]),
            "body_too_large",
        ),
        (
            "version 3",
            true,
            frame(3, pop::PUSH_ROOM, 0, &room_body(1000, "live://x", b"p")),
            "unsupported_version",
        ),
        (
            "room length past the body",
            true,
            frame(1, pop::PUSH_ROOM, 0, &[0, 0, 3, 232, 0, 50, b'a']),
            "bad_body",
        ),
        (
            "empty room",
            true,
            frame(1, pop::PUSH_ROOM, 0, &room_body(1000, "", b"p")),
            "bad_body",
        ),
        (
            "room over 256 bytes",
            true,
            frame(1, pop::PUSH_ROOM, 0, &room_body(1000, &"r".repeat(257), b"p")),
            "bad_body",
        ),
        (
            "room not UTF-8",
            true,
            frame(1, pop::PUSH_ROOM, 0, &[0, 0, 3, 232, 0, 2, 0xff, 0xfe]),
            "bad_body",
        ),
        (
            "no keys",
            true,
            frame(1, pop::PUSH_KEYS, 0, &keys_body(1000, &[], b"p")),
            "bad_body",
        ),
        (
            "payload over max_push_body",
            true,
            frame(1, pop::PUSH_ALL, 0, &all_body(1000, &[b'x'; 101])),
            "body_too_large",
        ),
        (
            "client op on the publisher port",
            true,
            frame(1, op::CHANGE_ROOM, 0, b"live://x"),
            "protocol_error",
        ),
        ("auth twice", true, frame(1, op::AUTH, 0, b""), "protocol_error"),
        (
            "op 9 inside op 9",
            true,
            frame(1, op::RAW, 0, &frame(1, op::RAW, 0, b"")),
            "protocol_error",
        ),
        (
            "op 9 ending inside a frame",
            true,
            frame(1, op::RAW, 0, &frame(1, pop::PUSH_ALL, 0, &all_body(1000, b"p"))[..20]),
            "protocol_error",
        ),
    ];
    for (i, (what, authed, bytes, reason)) in cases.iter().enumerate() {
        let before = publisher_closes(&h, reason);
        let mut p = if *authed {
            publisher(h.publish_addr, None)
        } else {
            Client::connect(h.publish_addr)
        };
        p.send_raw(bytes);
        let bye = p.expect_closed().unwrap_or_default();
        assert!(bye.starts_with(reason), "{what}: got {bye:?}, want {reason}");
        wait_until(what, || publisher_closes(&h, reason) == before + 1);
        // The bystanders are untouched.
        let msg = format!("after case {i}");
        good.send(pop::PUSH_ROOM, 0, &room_body(1000, "live://x", msg.as_bytes()));
        assert_eq!(sub.read_push().text(), msg, "{what}");
    }
    barrier(&mut good);
    let published: u64 = h.stats().iter().map(|s| s.published).sum();
    assert_eq!(published, cases.len() as u64, "no bad publish was routed");
}

#[test]
fn silent_publishers_time_out_and_shutdown_says_so() {
    let h = start_server(|c| {
        c.client.handshake_timeout_secs = 1;
        c.client.heartbeat_timeout_secs = 2;
    });
    let mut mute = Client::connect(h.publish_addr);
    assert_eq!(
        mute.expect_closed().as_deref(),
        Some("handshake_timeout: no auth within 1 s")
    );
    let mut idle = publisher(h.publish_addr, None);
    assert_eq!(
        idle.expect_closed().as_deref(),
        Some("heartbeat_timeout: nothing for 2 s")
    );
    // Heartbeats keep a publisher open past the deadline.
    let mut p = publisher(h.publish_addr, None);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(900));
        barrier(&mut p);
    }
    h.shutdown();
    assert_eq!(p.expect_closed().as_deref(), Some("shutdown"));
    h.join();
}

/// A version-2 publish body: message id and TTL, then the version-1 body.
fn v2_body(id: &str, ttl: u32, body: &[u8]) -> Vec<u8> {
    let mut b = (id.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(&ttl.to_be_bytes());
    b.extend_from_slice(body);
    b
}

#[test]
fn version_2_publishes_carry_a_message_id_and_a_retry_is_delivered_once() {
    let h = start_server(|_| {});
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":9}"#);
    let joined = c.join(1, "live://v2p", None);
    assert_eq!(joined["room"], "live://v2p", "{joined}");
    let mut p = publisher(h.publish_addr, None);
    for _ in 0..2 {
        p.send_as(
            2,
            pop::PUSH_ROOM,
            4,
            &v2_body("t-1", 60, &room_body(1000, "live://v2p", b"once")),
        );
        let ack = p.read().unwrap();
        assert_eq!((ack.ver, ack.op, ack.seq), (2, pop::PUSH_ROOM + 1, 4));
    }
    p.send_as(
        2,
        pop::PUSH_ROOM,
        0,
        &v2_body("", 0, &room_body(1000, "live://v2p", b"next")),
    );
    let first = c.read_push2().unwrap();
    assert_eq!((first.id.as_str(), first.payload.as_slice()), ("t-1", &b"once"[..]));
    let next = c.read_push2().unwrap();
    assert_eq!((next.offset, next.payload.as_slice()), (first.offset + 1, &b"next"[..]));

    // A bad prefix closes that publisher only.
    let mut bad = publisher(h.publish_addr, None);
    bad.send_as(2, pop::PUSH_ALL, 0, &v2_body(&"x".repeat(200), 0, &all_body(1000, b"")));
    let bye = bad.expect_closed().unwrap();
    assert!(bye.starts_with("bad_body: message id of 200 bytes"), "{bye}");
    barrier(&mut p);
}
