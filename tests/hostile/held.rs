//! What held before the limits, kept holding: the API's answers to
//! oversized headers, ambiguous framing and path tricks; WebSocket frames
//! that claim 2^63 bytes and ping floods; connection churn that leaves
//! nothing behind. (The token header tricks are in `auth::jwt`'s unit
//! tests; bodies over the limit, 413, in tests/publish_http.rs; clients
//! that stop reading, in tests/budget.rs.)

use crate::common::{self, frame, op, start_server, ws_frame, RawWs};
use crate::{measuring, rss, total, Bystander};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `request` on a fresh API connection and reads until the server
/// closes it (or 10 s pass): every response it answered.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// The status of every response in `answered`, in order.
fn statuses(answered: &str) -> Vec<u16> {
    answered
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| answered.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[test]
fn the_api_answers_oversized_headers_ambiguous_framing_and_path_tricks_and_closes() {
    let h = start_server(|_| {});
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let api = h.http_addr;

    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    assert_eq!(statuses(&exchange(api, big.as_bytes())), [431], "headers past 64 KiB");

    // Content-Length and Transfer-Encoding together (a proxy in front may
    // read them the other way): the request hidden after the chunked body
    // is never answered; the connection ends after at most one answer.
    let hidden = "GET /v1/stats HTTP/1.1\r\nHost: t\r\n\r\n";
    let body = format!("0\r\n\r\n{hidden}");
    let cl_te = format!(
        "POST /v1/push/all HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let answered = exchange(api, cl_te.as_bytes());
    let got = statuses(&answered);
    assert!(got.len() <= 1 && !answered.contains("\"total\""), "CL+TE: {answered}");
    assert!(got.iter().all(|s| (400..500).contains(s)), "CL+TE refused: {answered}");
    // Two lengths that disagree, and a transfer coding that is not chunked.
    let two_lengths = "POST /v1/push/all HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc";
    assert_eq!(statuses(&exchange(api, two_lengths.as_bytes())), [400], "two lengths");
    let gzip = "POST /v1/push/all HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc";
    assert_eq!(statuses(&exchange(api, gzip.as_bytes())), [400], "TE gzip");

    // Paths that climb out or encode a route's name reach no route.
    for path in [
        "/v1/../metrics",
        "/v1/%2e%2e/metrics",
        "/goim/push/../../etc/passwd",
        "/%2fv1%2fstats",
        "//v1/stats",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(statuses(&exchange(api, req.as_bytes())), [404], "{path}");
    }
    by.finish();
}

/// A raw WebSocket connection on `/sub`, authenticated.
fn ws_authed(addr: SocketAddr) -> RawWs {
    let mut w = RawWs::open(addr);
    w.send_frame(0x2, &frame(1, op::AUTH, 1, br#"{"accepts":[]}"#), true);
    w
}

#[test]
fn websocket_frames_claiming_2_63_bytes_and_ping_floods_are_closed() {
    let h = start_server(|_| {});
    let by = Bystander::start(h.tcp_addr, h.http_addr);

    // A header claiming 2^63 − 1 bytes, and nothing after it: closed on the
    // header alone, nothing buffered.
    let before = common::closes(&h, "ws_too_big");
    let mut huge = ws_authed(h.ws_addr);
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    huge.s.write_all(&head).unwrap();
    assert_eq!(huge.close_frame().0, 1009);
    common::wait_until("ws_too_big counted", || common::closes(&h, "ws_too_big") == before + 1);

    // Pings sent without reading the pongs: the pongs queue like any other
    // output, and the connection is closed as a slow consumer at its
    // outbound limit.
    let before = common::closes(&h, "slow_consumer");
    let flood = ws_authed(h.ws_addr);
    flood.s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let pings: Vec<u8> = (0..1000).flat_map(|_| ws_frame(0x9, &[b'p'; 125], true)).collect();
    let mut sent = 0usize;
    // At most 128 MiB of pings; the close comes long before.
    while sent < 128 << 20 && (&flood.s).write_all(&pings).is_ok() {
        sent += pings.len();
    }
    common::wait_until("the flood closed as a slow consumer", || {
        common::closes(&h, "slow_consumer") == before + 1
    });
    eprintln!("ping flood: closed after at most {} MB of pings", sent >> 20);
    by.finish();
}

#[test]
fn a_thousand_connections_opened_and_closed_leave_nothing_behind() {
    let _m = measuring();
    // One source address opening 1,000 connections in a second or two is
    // what the per-IP rate limit stops by default; here it is off (the
    // documented way), to see what churn leaves.
    let h = start_server(|c| c.limits.conn_rate_per_ip = 0);
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let churn = |n: usize| {
        for i in 0..n {
            let mut c = common::Client::connect(h.tcp_addr);
            let auth = format!(
                r#"{{"mid":{},"key":"churn-{i}","room_id":"live://churn-{}"}}"#,
                i + 1,
                i % 50
            );
            c.send(op::AUTH, 1, auth.as_bytes());
            assert_eq!(c.read().expect("auth reply").op, op::AUTH_REPLY);
        }
    };
    churn(1000);
    let settled = || {
        common::wait_until("every churned connection gone", || total(&h, |s| s.conns) == 1);
        // Their rooms, users and keys went with them: only the bystander
        // is online, in its room.
        common::wait_until("the rooms emptied", || {
            let (_, top) = common::http(h.http_addr, "GET", "/goim/online/top?type=live&limit=100", &[], b"");
            let (_, all) = common::http(h.http_addr, "GET", "/goim/online/total", &[], b"");
            top["data"].as_array().map(Vec::len) == Some(1) && all["data"]["conn_count"] == 1
        });
        rss()
    };
    let base = settled();
    churn(1000);
    let after = settled();
    let grew = after.saturating_sub(base);
    eprintln!("RSS after 1,000 more connections came and went: {base} -> {after} (+{grew})");
    // Other tests of this binary run beside this one: the bound catches a
    // connection's buffers left behind (16 KiB and up each), not bytes.
    assert!(
        grew < 16 << 20,
        "1,000 connections that came and went left {grew} bytes"
    );
    by.finish();
}
