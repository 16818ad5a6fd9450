//! The WebSocket transport against a real 2-shard server, driven by an
//! independent client library (tungstenite) and, for what a well-behaved
//! library refuses to send, by hand-made frames over a plain socket. Every bad
//! case must close only its own connection: a bystander keeps getting pushes.

mod common;

use common::{closes, frame, op, post, read_head, start_server, wait_until, Client, Got, RawWs};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, resp) = tungstenite::client::client(format!("ws://{addr}{path}"), s).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

fn parse(bytes: &[u8]) -> Got {
    let len = u32::from_be_bytes(bytes[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len(), "one protocol frame per WebSocket message");
    Got {
        ver: u16::from_be_bytes([bytes[6], bytes[7]]),
        op: u32::from_be_bytes(bytes[8..12].try_into().unwrap()),
        seq: u32::from_be_bytes(bytes[12..16].try_into().unwrap()),
        body: bytes[16..].to_vec(),
    }
}

/// The next protocol frame, answering pings on the way (tungstenite queues
/// the pong itself); skips heartbeat replies when `skip_hb`.
fn next(ws: &mut Ws, skip_hb: bool) -> Got {
    loop {
        match ws.read().expect("a message") {
            Message::Binary(b) => {
                let g = parse(&b);
                if !(skip_hb && g.op == op::HEARTBEAT_REPLY) {
                    return g;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn ws_authed(addr: SocketAddr, auth: &str) -> Ws {
    let mut ws = ws_connect(addr, "/sub");
    ws.send(Message::binary(frame(1, op::AUTH, 1, auth.as_bytes())))
        .unwrap();
    let r = next(&mut ws, false);
    assert_eq!((r.op, r.seq), (op::AUTH_REPLY, 1), "auth reply {}", r.text());
    ws
}

/// Reads until the server's close frame; returns its code and reason.
fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(c))) => return (c.code.into(), c.reason.to_string()),
            Ok(Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

#[test]
fn every_push_kind_reaches_websocket_and_tcp_clients_alike() {
    let h = start_server(|_| {});
    let mut a = ws_authed(
        h.ws_addr,
        r#"{"mid":41,"key":"wk","room_id":"live://9","accepts":[1000]}"#,
    );
    let mut t = Client::authed(h.tcp_addr, r#"{"mid":41,"room_id":"live://9","accepts":[1000]}"#);

    post(&h, "/goim/push/room?operation=1000&type=live&room=9", b"room");
    assert_eq!(next(&mut a, true).text(), "room");
    assert_eq!(t.read_push().text(), "room");
    post(&h, "/goim/push/keys?operation=1000&keys=wk", b"key");
    assert_eq!(next(&mut a, true).text(), "key");
    post(&h, "/goim/push/mids?operation=1000&mids=41", b"user");
    assert_eq!(next(&mut a, true).text(), "user");
    assert_eq!(t.read_push().text(), "user");
    post(&h, "/goim/push/all?operation=1000", b"all");
    assert_eq!(next(&mut a, true).text(), "all");
    assert_eq!(t.read_push().text(), "all");

    // Heartbeat reply carries the room count (both clients, any shard).
    wait_until("room count published", || {
        a.send(Message::binary(frame(1, op::HEARTBEAT, 5, b""))).unwrap();
        let r = next(&mut a, false);
        assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 5));
        u32::from_be_bytes(r.body[..4].try_into().unwrap()) == 2
    });
    // An op 9 batch is one message with the frames concatenated.
    let mut batch = frame(1, op::HEARTBEAT, 6, b"");
    batch.extend(frame(1, op::SEND_MSG, 7, b""));
    a.send(Message::binary(frame(1, op::RAW, 0, &batch))).unwrap();
    assert_eq!(next(&mut a, false).op, op::HEARTBEAT_REPLY);
    assert_eq!(next(&mut a, false).op, op::SEND_MSG_REPLY);
}

#[test]
fn fragmented_messages_with_interleaved_pings_are_assembled() {
    let h = start_server(|_| {});
    let mut ws = ws_connect(h.ws_addr, "/sub");
    let auth = frame(1, op::AUTH, 1, br#"{"room_id":"live://f","accepts":[]}"#);
    let (head, tail) = auth.split_at(10);
    ws.write(Message::Frame(Frame::message(
        head.to_vec(),
        OpCode::Data(Data::Binary),
        false,
    )))
    .unwrap();
    ws.write(Message::Ping(b"mid".to_vec().into())).unwrap();
    ws.write(Message::Frame(Frame::message(
        tail.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    ws.flush().unwrap();
    let mut saw_pong = false;
    let reply = loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"mid");
                saw_pong = true;
            }
            Message::Binary(b) => break parse(&b),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_pong, "the ping between fragments was answered first");
    assert_eq!(reply.op, op::AUTH_REPLY);
}

#[test]
fn server_pings_keep_a_silent_websocket_client_alive() {
    let h = start_server(|c| c.client.heartbeat_timeout_secs = 1);
    let mut quiet = ws_authed(h.ws_addr, r#"{"room_id":"live://p","accepts":[]}"#);
    // No op 2 from this client; tungstenite answers the server's pings.
    let mut pings = 0;
    while pings < 2 {
        if let Message::Ping(p) = quiet.read().unwrap() {
            assert_eq!(&p[..], b"volley");
            pings += 1;
        }
    }
    post(&h, "/goim/push/room?operation=1&type=live&room=p", b"still here");
    assert_eq!(next(&mut quiet, true).text(), "still here");

    drop(quiet);

    // A raw client that never answers is closed once the grace runs out.
    let mut deaf = RawWs::open(h.ws_addr);
    deaf.send_frame(0x2, &frame(1, op::AUTH, 1, br#"{"accepts":[]}"#), true);
    let (code, reason) = deaf.close_frame();
    assert_eq!(code, 1000);
    assert!(reason.contains("heartbeat_timeout"), "{reason}");
    wait_until("counted", || closes(&h, "heartbeat_timeout") == 1);
}

#[test]
fn close_handshake_echoes_the_code() {
    let h = start_server(|_| {});
    let mut ws = ws_authed(h.ws_addr, r#"{"accepts":[]}"#);
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 4001.into(),
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(close_of(&mut ws).0, 4001);
    wait_until("counted", || closes(&h, "ws_closed") == 1);
}

#[test]
fn each_violation_gets_its_close_code_and_harms_nobody_else() {
    let h = start_server(|c| c.limits.max_body = 256);
    let mut bystander = ws_authed(h.ws_addr, r#"{"room_id":"live://b","accepts":[]}"#);
    let auth = frame(1, op::AUTH, 1, br#"{"accepts":[]}"#);
    type Case = (&'static str, fn(&mut RawWs, &[u8]), u16, &'static str);
    let cases: Vec<Case> = vec![
        (
            "unmasked frame",
            |w, _| w.send_frame(0x2, b"x", false),
            1002,
            "ws_protocol_error",
        ),
        (
            "reserved opcode",
            |w, _| w.send_frame(0x3, b"", true),
            1002,
            "ws_protocol_error",
        ),
        (
            "oversize frame",
            // Over the largest frame a message may carry: an auth frame's
            // 16,384 + 16, whatever max_body says.
            |w, _| w.send_frame(0x2, &[0; 16_401], true),
            1009,
            "ws_too_big",
        ),
        (
            "invalid UTF-8 text",
            |w, _| w.send_frame(0x1, &[0xc3, 0x28], true),
            1007,
            "ws_invalid_utf8",
        ),
        (
            "text on the binary protocol",
            |w, _| w.send_frame(0x1, b"hi", true),
            1003,
            "ws_unsupported_data",
        ),
        (
            "two frames split over messages",
            |w, a| w.send_frame(0x2, &a[..20], true),
            1002,
            "protocol_error",
        ),
        (
            "frame before auth",
            |w, _| w.send_frame(0x2, &frame(1, op::HEARTBEAT, 1, b""), true),
            1008,
            "auth_required",
        ),
        (
            "protocol body over max_body",
            |w, _| w.send_frame(0x2, &frame(1, op::HEARTBEAT, 1, &[b' '; 1000])[..40], true),
            1009,
            "body_too_large",
        ),
        (
            "wrong protocol header length",
            |w, _| {
                let mut f = frame(1, op::HEARTBEAT, 1, b"");
                f[5] = 15;
                w.send_frame(0x2, &f, true)
            },
            1002,
            "bad_header_length",
        ),
    ];
    for (what, act, code, reason) in cases {
        let before = closes(&h, reason);
        let mut w = RawWs::open(h.ws_addr);
        act(&mut w, &auth);
        let (got, text) = w.close_frame();
        assert_eq!(got, code, "{what}: close code ({text})");
        wait_until(what, || closes(&h, reason) == before + 1);
        post(&h, "/goim/push/room?operation=1&type=live&room=b", what.as_bytes());
        assert_eq!(next(&mut bystander, true).text(), what, "bystander after {what}");
    }
}

#[test]
fn bad_upgrades_get_http_errors_and_slow_handshakes_are_closed() {
    let h = start_server(|c| {
        c.client.handshake_timeout_secs = 1;
        c.ws.origins = vec!["https://ok.example".into()];
    });
    let ask = |req: &str| {
        let mut s = TcpStream::connect(h.ws_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        read_head(&mut s)
    };
    let good = "GET /sub HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    assert!(ask(&format!("{good}Origin: https://ok.example\r\n\r\n")).starts_with("HTTP/1.1 101"));
    assert!(ask(&format!("{good}Origin: https://evil.example\r\n\r\n")).starts_with("HTTP/1.1 403"));
    assert!(
        ask(&format!("{good}\r\n")).starts_with("HTTP/1.1 403"),
        "no Origin while a list is set"
    );
    let with_origin = format!("{good}Origin: https://ok.example\r\n\r\n");
    assert!(ask(&with_origin.replace("/sub", "/nope")).starts_with("HTTP/1.1 404"));
    assert!(ask(&with_origin.replace("Version: 13", "Version: 7")).starts_with("HTTP/1.1 426"));
    assert!(ask(&with_origin.replace("dGhlIHNhbXBsZSBub25jZQ==", "x")).starts_with("HTTP/1.1 400"));
    assert!(ask("BREW /pot HTCPCP/1.0\r\n\r\n").starts_with("HTTP/1.1 400"));
    wait_until("refusals counted", || closes(&h, "bad_upgrade") == 6);

    // Half a request, then nothing: closed by the handshake deadline.
    let mut slow = TcpStream::connect(h.ws_addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(b"GET /sub HTTP/1.1\r\nHost: t\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(rest.is_empty(), "no answer to an unfinished request");
    wait_until("slow handshake counted", || closes(&h, "handshake_timeout") == 1);

    // Headers that never end are cut at the size limit.
    let mut flood = TcpStream::connect(h.ws_addr).unwrap();
    flood.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = flood.write_all(format!("GET /sub HTTP/1.1\r\nX: {}", "a".repeat(20_000)).as_bytes());
    assert!(read_head(&mut flood).starts_with("HTTP/1.1 431"));
}

#[test]
fn echo_endpoint_is_off_by_default_and_echoes_when_on() {
    let h = start_server(|_| {});
    let s = TcpStream::connect(h.ws_addr).unwrap();
    let err = tungstenite::client::client(format!("ws://{}/echo", h.ws_addr), s).unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");

    let h = start_server(|c| c.ws.echo = true);
    let mut ws = ws_connect(h.ws_addr, "/echo");
    ws.send(Message::text("héllo")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("héllo"));
    ws.send(Message::binary(vec![0u8; 100_000])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8; 100_000]));
}

#[test]
fn shutdown_sends_op_6_then_close_1001() {
    let h = start_server(|_| {});
    let mut ws = ws_authed(h.ws_addr, r#"{"accepts":[]}"#);
    h.shutdown();
    let bye = next(&mut ws, true);
    assert_eq!(bye.op, op::DISCONNECT);
    assert!(bye.text().starts_with("shutdown"), "{}", bye.text());
    let (code, reason) = close_of(&mut ws);
    assert_eq!(code, 1001);
    assert!(reason.starts_with("shutdown"), "{reason}");
    h.join();
}
