//! Bad input over real sockets closes only the offending connection, with a
//! named reason sent in op 6 as the last frame and counted once; everyone
//! else keeps being served. (What each rule does without sockets is in the
//! simulated-time tests, `src/shard/sim/tests.rs`.)

mod common;
use common::*;
use std::time::{Duration, Instant};

fn healthy_still_served(h: &volley::ServerHandle, c: &mut Client, tag: &str) {
    post(h, "/goim/push/room?operation=1000&type=live&room=ok", tag.as_bytes());
    assert_eq!(c.read_push().body, tag.as_bytes());
}

/// `bytes` from a fresh connection (authenticated first unless the case is
/// about auth) must end it with op 6 `<reason>...` as its last frame, count
/// exactly one close of that reason, and leave every bystander served.
fn check_bad(bytes: &[u8], reason: &str, authenticate: bool) {
    let h = start_server(|_| {});
    let mut good = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#));
    let mut bad = Client::connect(h.tcp_addr);
    if authenticate {
        bad.send(op::AUTH, 1, br#"{"room_id":"live://ok"}"#);
        assert_eq!(bad.read().unwrap().op, op::AUTH_REPLY);
    }
    bad.send_raw(bytes);
    let (bye, before) = bad.goodbye_after();
    assert!(bye.starts_with(reason), "{reason}: goodbye {bye:?}");
    assert!(before.is_empty(), "{reason}: nothing but the goodbye: {before:?}");
    wait_until(reason, || closes(&h, reason) == 1);
    // Each push goes to the whole room: member i reads the copy of push i
    // first, then later copies; every copy carries the same tag.
    for c in good.iter_mut() {
        healthy_still_served(&h, c, reason);
    }
    assert_eq!(closes(&h, reason), 1, "only the offender was closed");
}

#[test]
fn frame_before_auth() {
    check_bad(&frame(1, op::HEARTBEAT, 0, b""), "auth_required", false);
}

#[test]
fn wrong_header_length() {
    let mut f = frame(1, op::HEARTBEAT, 0, b"abcd");
    f[5] = 20;
    check_bad(&f, "bad_header_length", true);
}

#[test]
fn oversize_body() {
    // Only the header is sent: the announced length alone must close it.
    let mut f = frame(1, op::SEND_MSG, 0, b"");
    f[0..4].copy_from_slice(&(16u32 + 4097).to_be_bytes());
    check_bad(&f, "body_too_large", true);
}

#[test]
fn garbage_bytes() {
    check_bad(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "body_too_large", true);
}

#[test]
fn short_packet_length() {
    let mut f = frame(1, op::HEARTBEAT, 0, b"");
    f[0..4].copy_from_slice(&3u32.to_be_bytes());
    check_bad(&f, "bad_packet_length", true);
}

#[test]
fn bad_auth_json() {
    check_bad(&frame(1, op::AUTH, 1, b"{not json"), "bad_auth", false);
}

#[test]
fn bad_accepts_list() {
    check_bad(&frame(1, op::SUB, 1, b"10,abc"), "bad_body", true);
}

#[test]
fn auth_in_an_unserved_version() {
    check_bad(&frame(3, op::AUTH, 1, b"{}"), "unsupported_version", false);
}

/// goim's own benchmark client never sets the version of its heartbeats
/// (it sends 0), and goim never checks the field; neither does volley on a
/// version-1 connection. Op 4 likewise.
#[test]
fn version_0_heartbeats_and_op_4_as_goims_benchmark_client_sends_them() {
    let h = start_server(|_| {});
    let mut c = Client::authed(
        h.tcp_addr,
        r#"{"mid":1,"room_id":"test://1","accepts":[1000,1001,1002]}"#,
    );
    for seq in 1..4 {
        c.send_as(0, op::HEARTBEAT, seq, b"");
        let r = c.read().expect("heartbeat reply");
        assert_eq!((r.ver, r.op, r.seq, r.body.len()), (0, op::HEARTBEAT_REPLY, seq, 4));
    }
    c.send_as(0, op::SEND_MSG, 9, b"hello");
    let r = c.read().expect("op 5");
    assert_eq!((r.ver, r.op, r.seq), (0, op::SEND_MSG_REPLY, 9));
    post(&h, "/goim/push/room?operation=1000&type=test&room=1", b"still here");
    let g = c.read_push();
    assert_eq!((g.ver, g.op, g.body.as_slice()), (1, 1000, &b"still here"[..]));
    assert_eq!(closes(&h, "unsupported_version"), 0);
}

/// The one wall-clock check of deadlines (the rules themselves are tested
/// on simulated time): the real sweep closes a silent unauthenticated
/// connection and a silent authenticated one, and spares one that
/// heartbeats.
#[test]
fn the_sweep_closes_silent_connections_on_the_real_clock() {
    let h = start_server(|c| {
        c.client.handshake_timeout_secs = 1;
        c.client.heartbeat_timeout_secs = 2;
    });
    let mut mute = Client::connect(h.tcp_addr);
    let mut quiet = Client::authed(h.tcp_addr, r#"{}"#);
    let mut alive = Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#);
    let start = Instant::now();
    let beat = std::thread::spawn(move || {
        for i in 0..8 {
            alive.send(op::HEARTBEAT, i, b"");
            assert_eq!(
                alive.read().expect("alive keeps its connection").op,
                op::HEARTBEAT_REPLY
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        alive
    });
    let (bye, _) = mute.goodbye_after();
    assert!(bye.starts_with("handshake_timeout"), "{bye}");
    let (bye, _) = quiet.goodbye_after();
    assert!(bye.starts_with("heartbeat_timeout"), "{bye}");
    // Generous: a loaded CI machine may run the 1 s sweep late.
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    let mut alive = beat.join().unwrap();
    healthy_still_served(&h, &mut alive, "after");
    assert_eq!(
        (closes(&h, "handshake_timeout"), closes(&h, "heartbeat_timeout")),
        (1, 1)
    );
}

/// A deadline of T seconds never closes before T (docs/PROTOCOL.md: "closed
/// between T and T+1 s after its deadline"), wherever in the shard's
/// one-second sweep the connection came: four of each kind, made a quarter
/// second apart, on the client port and the publisher port, before auth
/// (handshake, 1 s) and after it (heartbeat, 2 s). Each is timed from the
/// last thing it sent or was answered; only the lower bound is exact, the
/// upper one is generous for a loaded machine.
#[test]
fn deadlines_never_close_before_they_are_due() {
    let h = start_server(|c| {
        c.client.handshake_timeout_secs = 1;
        c.client.heartbeat_timeout_secs = 2;
    });
    let mut waiting = Vec::new();
    for i in 0..4 {
        for (port, authed) in [
            (h.tcp_addr, false),
            (h.tcp_addr, true),
            (h.publish_addr, false),
            (h.publish_addr, true),
        ] {
            let mut c = Client::connect(port);
            let mut from = Instant::now();
            let due = if authed {
                let body: &[u8] = if port == h.tcp_addr { b"{}" } else { b"" };
                c.send(op::AUTH, 1, body);
                assert_eq!(c.read().expect("auth reply").op, op::AUTH_REPLY);
                from = Instant::now();
                2
            } else {
                1
            };
            waiting.push(std::thread::spawn(move || {
                let bye = c.expect_closed().unwrap_or_default();
                (i, port, authed, bye, from.elapsed(), due)
            }));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for w in waiting {
        let (i, port, authed, bye, took, due) = w.join().unwrap();
        let what = format!("connection {i} to {port}, authed {authed}: {bye:?} after {took:?}");
        let reason = if authed {
            "heartbeat_timeout"
        } else {
            "handshake_timeout"
        };
        assert!(bye.starts_with(reason), "{what}");
        assert!(took >= Duration::from_secs(due), "closed before its deadline: {what}");
        assert!(took < Duration::from_secs(due + 8), "{what}");
    }
}

#[test]
fn slow_consumer_is_closed_and_its_queue_bounded() {
    let limit = 256 * 1024;
    let h = start_server(|c| {
        c.limits.outbound_limit = limit;
        c.api.max_push_body = 4096;
    });
    let mut reader = Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#);
    let mut stalled = Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#);
    let reading = std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let g = reader.read_push();
            if g.body == b"end" {
                return (reader, n);
            }
            assert_eq!(&g.body[..8], &n.to_be_bytes(), "the reader gets every push in order");
            n += 1;
        }
    });
    // Loopback socket buffers hold a few MB; publish until the stalled client
    // overflows its queue (bounded: 64 MB at most) and the server starts
    // dropping what it cannot queue.
    let dropped = |h: &volley::ServerHandle| h.stats().iter().map(|s| s.dropped).sum::<u64>();
    let mut sent = 0u64;
    while dropped(&h) == 0 {
        assert!(sent < 16_000, "never detected the slow consumer");
        let mut payload = sent.to_be_bytes().to_vec();
        payload.resize(4000, b'x');
        post(&h, "/goim/push/room?operation=1000&type=live&room=ok", &payload);
        sent += 1;
    }
    post(&h, "/goim/push/room?operation=1000&type=live&room=ok", b"end");
    let (_reader, got) = reading.join().unwrap();
    assert_eq!(got, sent, "the reading member got every message");
    // The stalled client reads again (within the few seconds a closing
    // connection is given to take its goodbye): what the kernel had taken
    // before the close, a gapless prefix of the pushes, then the goodbye,
    // then EOF.
    let (bye, before) = stalled.goodbye_after();
    assert!(bye.starts_with("slow_consumer: "), "{bye}");
    assert!((before.len() as u64) < sent, "it lost what was queued at the close");
    for (i, g) in before.iter().enumerate() {
        assert_eq!(&g.body[..8], &(i as u64).to_be_bytes(), "a prefix, in order, no gap");
    }
    wait_until("the close counted", || closes(&h, "slow_consumer") == 1);
    let dropped = dropped(&h);
    assert!(
        dropped >= 1 && before.len() as u64 + dropped <= sent + 1,
        "dropped {dropped}, received {} of {sent}",
        before.len()
    );
}
