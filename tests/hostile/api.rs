//! The application-server side under attack: connections that trickle
//! their headers, bodies that never end, unauthenticated publishers that
//! announce huge frames. Each is bounded by a deadline, a connection cap
//! that evicts the idle, or a memory budget, while the bystander's pushes
//! (a fresh HTTP connection each) keep getting through.

use super::common::{frame, op, start_server};
use super::{rss, total, Bystander};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Opens a connection that sends `head` and then nothing.
fn stalled(addr: SocketAddr, head: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head).unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) within `within`, skipping
/// whatever it answered first.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        s.set_read_timeout(Some(end - Instant::now() + Duration::from_millis(1)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_headers_meet_a_deadline_and_cannot_keep_publishers_out() {
    let key = "k".repeat(32);
    let h = start_server(|c| {
        c.api.key = Some("k".repeat(32));
        c.api.header_timeout_secs = 2;
        c.api.max_conns = 40;
    });
    let by = Bystander::keyed(h.tcp_addr, h.http_addr, Some(key.clone()));
    // An application server that connects before it has anything to send
    // is not a slow client: the header deadline starts at a request's
    // first byte, the idle one (30 s) at the accept.
    let mut early = stalled(h.http_addr, b"");
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let req = format!("GET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n");
    early.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    early.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Twice the cap of connections that send half a request line, then a
    // header byte every 500 ms: each is past its header deadline within 2 s,
    // and at the cap the one waiting longest makes room for a newcomer.
    let mut slow: Vec<TcpStream> = (0..80)
        .map(|_| stalled(h.http_addr, b"GET /v1/stats HTTP/1.1\r\n"))
        .collect();
    for _ in 0..6 {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(2)),
            "slow connection {i} still open"
        );
    }
    let timed_out = total(&h, |s| s.api_timeouts) + total(&h, |s| s.api_evicted);
    assert!(timed_out >= 80, "{timed_out} closed by deadline or eviction");
    // A well-behaved client still gets its answer, with the key.
    let (status, _) = super::common::http(h.http_addr, "GET", "/v1/stats", &[("X-Api-Key", &key)], b"");
    assert_eq!(status, 200);
    by.finish();
}

#[test]
fn unfinished_bodies_are_bounded_by_body_memory_and_refused_before_100_continue() {
    let _alone = super::measuring();
    let h = start_server(|c| {
        c.api.request_timeout_secs = 3;
        c.api.body_memory = 16 << 20;
    });
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let before = rss();
    // A hundred pushes that declare 4 MiB and send almost all of it.
    let head = "POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n";
    let writers: Vec<_> = (0..100)
        .map(|_| {
            let addr = h.http_addr;
            let head = head.to_string();
            std::thread::spawn(move || {
                let mut s = stalled(addr, head.as_bytes());
                s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                let chunk = vec![b'x'; 64 << 10];
                for _ in 0..63 {
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                s
            })
        })
        .collect();
    let mut held: Vec<TcpStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let grew = rss().saturating_sub(before);
    eprintln!("rss grew {} MiB holding 100 unfinished 4 MiB bodies", grew >> 20);
    assert!(grew < 96 << 20, "RSS grew by {grew} bytes");
    let refused = total(&h, |s| s.api_refused);
    assert!(refused >= 80, "{refused} refused for body memory");
    for (i, s) in held.iter_mut().enumerate() {
        let mut first = [0u8; 12];
        let _ = s.peek(&mut first);
        let answer = String::from_utf8_lossy(&first).into_owned();
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "unfinished body {i} outlived its deadline (answered {answer:?})"
        );
    }
    // A declared body over the limit is refused without `100 Continue`.
    let mut s = stalled(
        h.http_addr,
        b"POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\nExpect: 100-continue\r\n\r\n",
    );
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&answer));
    // HEAD on a GET route answers like GET, without the body.
    let mut s = stalled(
        h.http_addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.ends_with("\r\n\r\n"), "no body: {all:?}");
    by.finish();
}

#[test]
fn unauthenticated_publishers_cannot_make_the_server_buffer_or_stay() {
    let _alone = super::measuring();
    let h = start_server(|c| {
        c.api.key = Some("k".repeat(32));
        c.client.handshake_timeout_secs = 2;
    });
    let by = Bystander::keyed(h.tcp_addr, h.http_addr, Some("k".repeat(32)));
    let before = rss();
    // A hundred connections announcing a 4 MiB auth frame: each is told
    // `body_too_large` as soon as the length arrives, before any of it is
    // buffered.
    let mut huge = frame(1, op::AUTH, 1, b"");
    huge[..4].copy_from_slice(&((4u32 << 20) + 16).to_be_bytes());
    for _ in 0..100 {
        let mut s = stalled(h.publish_addr, &huge);
        let _ = s.write_all(&vec![b'x'; 256 << 10]);
        let mut c = super::common::Client { s };
        let why = c.expect_closed().unwrap_or_default();
        assert!(why.starts_with("body_too_large"), "{why}");
    }
    assert!(rss().saturating_sub(before) < 32 << 20, "RSS grew holding nothing");
    // One that trickles its auth frame is closed at the handshake deadline
    // however often a byte arrives.
    let mut s = stalled(h.publish_addr, &frame(1, op::AUTH, 1, &[b'k'; 32])[..20]);
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"k").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut c = super::common::Client { s };
    let why = c.expect_closed().unwrap_or_default();
    assert!(closed || why.starts_with("handshake_timeout"), "{why}");
    assert!(why.is_empty() || why.starts_with("handshake_timeout"), "{why}");
    by.finish();
}
