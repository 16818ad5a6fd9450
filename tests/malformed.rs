//! Bad input closes only the offending connection, with a named reason sent
//! in op 6 and counted; everyone else keeps being served.

mod common;
use common::*;
use std::time::Duration;

fn healthy_still_served(h: &volley::ServerHandle, c: &mut Client, tag: &str) {
    post(h, "/goim/push/room?operation=1000&type=live&room=ok", tag.as_bytes());
    assert_eq!(c.read_push().body, tag.as_bytes());
}

fn check_bad(bytes: &[u8], reason: &str) {
    let h = start_server(|_| {});
    let mut good = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#));
    let mut bad = Client::connect(h.tcp_addr);
    if reason != "auth_required" && reason != "bad_auth" {
        bad.send(7, 1, br#"{"room_id":"live://ok"}"#);
        assert_eq!(bad.read().unwrap().op, 8);
    }
    bad.send_raw(bytes);
    let bye = bad.expect_closed();
    assert!(
        bye.as_deref().is_some_and(|b| b.starts_with(reason)),
        "{reason}: goodbye {bye:?}"
    );
    wait_until(reason, || closes(&h, reason) == 1);
    // Each push goes to the whole room: member i reads the copy of push i
    // first, then later copies; every copy carries the same tag.
    for c in good.iter_mut() {
        healthy_still_served(&h, c, reason);
    }
}

#[test]
fn frame_before_auth() {
    check_bad(&frame(1, 2, 0, b""), "auth_required");
}

#[test]
fn wrong_header_length() {
    let mut f = frame(1, 2, 0, b"abcd");
    f[5] = 20;
    check_bad(&f, "bad_header_length");
}

#[test]
fn oversize_body() {
    // Only the header is sent: the announced length alone must close it.
    let mut f = frame(1, 4, 0, b"");
    f[0..4].copy_from_slice(&(16u32 + 4097).to_be_bytes());
    check_bad(&f, "body_too_large");
}

#[test]
fn garbage_bytes() {
    check_bad(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "body_too_large");
}

#[test]
fn short_packet_length() {
    let mut f = frame(1, 2, 0, b"");
    f[0..4].copy_from_slice(&3u32.to_be_bytes());
    check_bad(&f, "bad_packet_length");
}

#[test]
fn bad_auth_json() {
    check_bad(&frame(1, 7, 1, b"{not json"), "bad_auth");
}

#[test]
fn bad_accepts_list() {
    check_bad(&frame(1, 14, 1, b"10,abc"), "bad_body");
}

#[test]
fn unsupported_version() {
    check_bad(&frame(7, 2, 1, b""), "unsupported_version");
}

#[test]
fn silent_connection_hits_handshake_timeout() {
    let h = start_server(|c| c.handshake_timeout_secs = 1);
    let mut c = Client::connect(h.tcp_addr);
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let bye = c.expect_closed().expect("op 6");
    assert!(bye.starts_with("handshake_timeout"), "{bye}");
}

#[test]
fn client_that_stops_heartbeating_is_closed_within_the_deadline() {
    let h = start_server(|c| c.heartbeat_timeout_secs = 2);
    let mut quiet = Client::authed(h.tcp_addr, r#"{}"#);
    let mut alive = Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#);
    let start = std::time::Instant::now();
    // `alive` heartbeats every 500 ms while `quiet` says nothing.
    let beat = std::thread::spawn(move || {
        for i in 0..8 {
            alive.send(2, i, b"");
            assert_eq!(alive.read().expect("alive keeps its connection").op, 3);
            std::thread::sleep(Duration::from_millis(500));
        }
        alive
    });
    quiet.s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let bye = quiet.expect_closed().expect("op 6");
    let took = start.elapsed();
    assert!(bye.starts_with("heartbeat_timeout"), "{bye}");
    // Deadline 2 s on a 1 s sweep: closed after 2 s and before 3 s (+ slack).
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let mut alive = beat.join().unwrap();
    healthy_still_served(&h, &mut alive, "after");
    assert_eq!(closes(&h, "heartbeat_timeout"), 1);
}

#[test]
fn slow_consumer_is_closed_and_its_queue_bounded() {
    let limit = 256 * 1024;
    let h = start_server(|c| {
        c.outbound_limit = limit;
        c.max_push_body = 4096;
    });
    let mut reader = Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#);
    let mut stalled = Client::authed(h.tcp_addr, r#"{"room_id":"live://ok"}"#);
    let payload = vec![b'x'; 4000];
    let reading = std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let g = reader.read_push();
            if g.body == b"end" {
                return (reader, n);
            }
            n += 1;
        }
    });
    // Loopback socket buffers hold a few MB; publish until the stalled client
    // overflows its queue (bounded: 64 MB at most).
    let mut sent = 0u64;
    while closes(&h, "slow_consumer") == 0 {
        assert!(sent < 16_000, "never detected the slow consumer");
        post(&h, "/goim/push/room?operation=1000&type=live&room=ok", &payload);
        sent += 1;
    }
    post(&h, "/goim/push/room?operation=1000&type=live&room=ok", b"end");
    let (_reader, got) = reading.join().unwrap();
    assert_eq!(got, sent, "the reading member got every message");
    let dropped: u64 = h.stats().iter().map(|s| s.dropped).sum();
    assert!(dropped >= 1);
    // The stalled client finds the goodbye once it finally reads, after the
    // backlog the kernel had accepted.
    stalled.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let bye = stalled.expect_closed();
    if let Some(b) = bye {
        assert!(b.starts_with("slow_consumer"), "{b}");
    }
}
