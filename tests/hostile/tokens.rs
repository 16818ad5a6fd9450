//! Tokens as the protocol promises them: up to 8,192 bytes at auth and at
//! refresh, one spelling per user, no critical extension, and a refresh
//! that narrows `rooms` takes the connection out of what it no longer
//! allows. Also: a push to user 0 is refused, not kept for nobody; an echo
//! connection lives one deadline.

use super::common::{self, op, op2, Client};
use super::{jwt_server, token, Bystander};
use base64::Engine;
use serde_json::{json, Value};

const TOKEN: u32 = 54;
const TOKEN_REPLY: u32 = 55;

#[test]
fn tokens_of_8192_bytes_pass_at_auth_and_at_refresh() {
    let h = jwt_server(|c| c.auth.refresh_secs = 60);
    let by = Bystander::jwt(h.tcp_addr, h.http_addr);
    // The info claim is at most 1,024 bytes: make the length with rooms.
    let rooms: Vec<String> = (0..36).map(|i| format!("live://room-{i:0>150}")).collect();
    let rooms: Vec<&str> = rooms.iter().map(String::as_str).chain(["live://*"]).collect();
    let t = token(json!({"sub": "41", "rooms": rooms}));
    assert!(t.len() > 7_000 && t.len() <= 8192, "token of {} bytes", t.len());
    // Version 1 and version 2, TCP.
    let body = json!({"token": t, "room_id": "live://1"}).to_string();
    let _v1 = Client::authed(h.tcp_addr, &body);
    let (mut v2, _) = Client::authed_v2(h.tcp_addr, &json!({ "token": t }).to_string());
    // Over WebSocket too: the auth frame is one message of over 8 KiB.
    let (mut ws, _) = tungstenite::client(
        format!("ws://{}/sub", h.ws_addr),
        std::net::TcpStream::connect(h.ws_addr).unwrap(),
    )
    .unwrap();
    let auth = common::frame(2, op::AUTH, 1, json!({ "token": t }).to_string().as_bytes());
    ws.send(tungstenite::Message::Binary(auth.into())).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Binary(b) => assert_eq!(u32::from_be_bytes(b[8..12].try_into().unwrap()), op::AUTH_REPLY),
        other => panic!("{other:?}"),
    }
    // And a refresh with a token as long.
    v2.send_as(2, TOKEN, 9, json!({ "token": t }).to_string().as_bytes());
    let r = v2.read().unwrap();
    assert_eq!((r.op, r.seq), (TOKEN_REPLY, 9), "{}", r.text());
    by.finish();
}

#[test]
fn a_user_has_one_spelling_and_critical_extensions_are_refused() {
    let h = jwt_server(|_| {});
    let by = Bystander::jwt(h.tcp_addr, h.http_addr);
    for sub in [json!("+5"), json!("05"), json!("-7"), json!(-7), json!(" 5")] {
        let mut c = Client::connect(h.tcp_addr);
        let t = token(json!({ "sub": sub }));
        c.send(op::AUTH, 1, json!({ "token": t }).to_string().as_bytes());
        let why = c.expect_closed().unwrap_or_default();
        assert!(why.starts_with("token_malformed"), "sub {sub}: {why}");
    }
    // A header that names a critical extension: the signature is right,
    // the token is still refused (RFC 7515 §4.1.11).
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = token(json!({"sub": "5"})).split('.').nth(1).unwrap().to_string();
    let claims = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&exp).unwrap()).unwrap();
    let msg = format!(
        "{}.{}",
        b64(r#"{"alg":"HS256","crit":["http://example.com/x"]}"#),
        b64(&claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(super::SECRET.as_bytes());
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    let mut c = Client::connect(h.tcp_addr);
    c.send(
        op::AUTH,
        1,
        json!({ "token": format!("{msg}.{sig}") }).to_string().as_bytes(),
    );
    let why = c.expect_closed().unwrap_or_default();
    assert!(why.starts_with("token_malformed") && why.contains("crit"), "{why}");
    // The canonical spelling passes.
    let _ok = Client::authed(h.tcp_addr, &json!({ "token": token(json!({"sub": "5"})) }).to_string());
    by.finish();
}

#[test]
fn a_refresh_that_narrows_rooms_takes_the_connection_out_of_them() {
    let h = jwt_server(|_| {});
    let by = Bystander::jwt(h.tcp_addr, h.http_addr);
    let wide = token(json!({"sub": "9", "rooms": ["chat/>", "live://*"]}));
    let (mut c, _) = Client::authed_v2(h.tcp_addr, &json!({ "token": wide }).to_string());
    c.join(2, "chat/a", None);
    c.join(3, "live://1", None);
    c.send_as(2, op2::JOIN, 4, br#"{"room":"chat/*"}"#);
    assert_eq!(c.read().unwrap().op, op2::JOIN_REPLY);
    // The new token allows live:// rooms only.
    let narrow = token(json!({"sub": "9", "rooms": ["live://*"]}));
    c.send_as(2, TOKEN, 5, json!({ "token": narrow }).to_string().as_bytes());
    assert_eq!(c.read().unwrap().op, TOKEN_REPLY);
    let mut left = Vec::new();
    for _ in 0..2 {
        let g = c.read().unwrap();
        assert_eq!((g.op, g.seq), (op2::LEAVE_REPLY, 0), "{}", g.text());
        let v: Value = serde_json::from_slice(&g.body).unwrap();
        assert_eq!(v["reason"], "forbidden");
        left.push(v["room"].as_str().unwrap().to_string());
    }
    left.sort();
    assert_eq!(left, ["chat/*", "chat/a"]);
    // Pushes to chat/a no longer arrive; live://1's still do.
    common::post(&h, "/v1/push/room", br#"{"room":"chat/a","op":1000,"body":"no"}"#);
    common::post(&h, "/v1/push/room", br#"{"room":"live://1","op":1000,"body":"yes"}"#);
    let p = c.read_push2().unwrap();
    assert_eq!((p.room.as_str(), p.payload.as_slice()), ("live://1", &b"yes"[..]));
    by.finish();
}

#[test]
fn a_push_to_user_0_is_refused_and_echo_connections_live_one_deadline() {
    let h = common::start_server(|c| {
        c.ws.echo = true;
        c.client.heartbeat_timeout_secs = 2;
    });
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let (status, v) = common::http(h.http_addr, "POST", "/goim/push/mids?operation=1000&mids=0", &[], b"x");
    assert_eq!(status, 400, "{v}");
    let (status, v) = common::http(
        h.http_addr,
        "POST",
        "/v1/push/mids",
        &[],
        br#"{"mids":[3,0],"op":1,"body":"x"}"#,
    );
    assert_eq!(status, 400, "{v}");
    // An echo client that answers every ping is still closed when its one
    // deadline passes.
    let (mut ws, _) = tungstenite::client(
        format!("ws://{}/echo", h.ws_addr),
        std::net::TcpStream::connect(h.ws_addr).unwrap(),
    )
    .unwrap();
    ws.get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let start = std::time::Instant::now();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(f)) => {
                let f = f.expect("a close code");
                assert_eq!(u16::from(f.code), 1000);
                break;
            }
            Ok(_) => {} // pings are answered by tungstenite itself
            Err(e) => panic!("the echo connection ended without a close: {e}"),
        }
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    by.finish();
}
