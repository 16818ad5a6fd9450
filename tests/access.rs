//! Who may do what, over real sockets: JWT auth and every refusal, room
//! permissions, client publish and its limits, token refresh and expiry,
//! room patterns, presence, and the connection limits. Each refusal closes
//! (or answers) only the offender, is counted by name, and a bystander
//! keeps receiving.
mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use volley::config::{AuthMode, UserConnPolicy};
use volley::{Config, ServerHandle};

const OLD: &str = "old-secret-0123456789abcdef012345";
const NEW: &str = "new-secret-0123456789abcdef012345";
const PUBLISH: u32 = 52;
const PUBLISH_REPLY: u32 = 53;
const TOKEN: u32 = 54;
const TOKEN_REPLY: u32 = 55;
const REFRESH: u32 = 56;
const PRESENCE: u32 = 58;

fn key(name: &str) -> std::path::PathBuf {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR")).into()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn jwt_server(tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    start_server(|c| {
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt_secret = vec![OLD.into(), NEW.into()];
        c.auth.jwt_public_key = vec![
            key("es256-public.pem"),
            key("es256-next-public.pem"),
            key("rs256-public.pem"),
        ];
        tweak(c)
    })
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let k = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(NEW.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&std::fs::read(key("es256-private.pem")).unwrap()).unwrap(),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&std::fs::read(key("rs256-private.pem")).unwrap()).unwrap(),
        _ => unreachable!(),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &k).unwrap()
}

fn hs(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn user(mid: i64) -> Value {
    json!({"sub": mid.to_string(), "exp": now() + 600})
}

fn auth_body(token: &str, room: &str) -> String {
    json!({"mid": 1, "room_id": room, "token": token, "accepts": [1000]}).to_string()
}

/// Authenticates with `ver` and expects a close whose goodbye names `reason`.
fn refused(addr: SocketAddr, ver: u16, body: &str, reason: &str) {
    let mut c = Client::connect(addr);
    c.send_as(ver, op::AUTH, 1, body.as_bytes());
    let bye = c.expect_closed().unwrap_or_default();
    assert!(bye.starts_with(reason), "version {ver}: wanted {reason}, got {bye:?}");
}

/// A version-2 request answered with op 50 of `code`.
fn error_code(c: &mut Client, seq: u32) -> u64 {
    loop {
        let g = c.read().expect("a reply");
        if g.op == op2::ERROR {
            assert_eq!(g.seq, seq);
            let v: Value = serde_json::from_slice(&g.body).unwrap();
            return v["code"].as_u64().unwrap();
        }
        assert!(g.op == op::HEARTBEAT_REPLY || g.op == op2::PUSH, "unexpected {g:?}");
    }
}

fn errors(h: &ServerHandle, name: &str) -> u64 {
    h.stats().iter().map(|s| s.errors.get(name).copied().unwrap_or(0)).sum()
}

/// A version-2 bystander in `room`; returns it after checking it gets a push.
fn bystander(h: &ServerHandle, token: &str, room: &str) -> Client {
    let (mut c, _) = Client::authed_v2(h.tcp_addr, &auth_body(token, ""));
    assert!(c.join(1, room, None)["offset"].is_u64());
    c
}

fn push_room(h: &ServerHandle, room: &str, body: &str) {
    post(
        h,
        "/v1/push/room",
        json!({"room": room, "op": 1000, "body": body}).to_string().as_bytes(),
    );
}

/// Waits for the close counter of `reason` to reach `n` (a close is counted
/// when its connection's record goes, after the goodbye is written).
fn closes_reach(h: &ServerHandle, reason: &str, n: u64) {
    wait_until(reason, || closes(h, reason) >= n);
    assert_eq!(closes(h, reason), n, "{reason}");
}

fn still_served(h: &ServerHandle, c: &mut Client, room: &str, n: u32) {
    push_room(h, room, &format!("still-{n}"));
    let p = c.read_push2().expect("the bystander still gets pushes");
    assert_eq!(p.payload, format!("still-{n}").as_bytes());
}

#[test]
fn every_token_refusal_closes_only_that_connection_by_name() {
    let h = jwt_server(|_| {});
    let mut by = bystander(&h, &sign(Algorithm::HS256, &user(5)), "live://by");
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&user(7).to_string())
    );
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &user(7),
        &EncodingKey::from_secret(NEW.as_bytes()),
    )
    .unwrap();
    let cases = [
        (json!({"mid": 7}).to_string(), "token_required"),
        (auth_body("not-a-jwt", ""), "token_malformed"),
        (
            auth_body(&hs("wrong-secret-0123456789abcdef0123", &user(7)), ""),
            "token_bad_signature",
        ),
        (auth_body(&alg_none, ""), "token_alg_refused"),
        (auth_body(&hs384, ""), "token_alg_refused"),
        (
            auth_body(&sign(Algorithm::HS256, &json!({"sub":"7","exp": now() - 60})), ""),
            "token_expired",
        ),
        (
            auth_body(
                &sign(
                    Algorithm::HS256,
                    &json!({"sub":"7","exp": now() + 600, "nbf": now() + 300}),
                ),
                "",
            ),
            "token_not_yet_valid",
        ),
    ];
    for (i, (body, reason)) in cases.iter().enumerate() {
        for ver in [1, 2] {
            refused(h.tcp_addr, ver, body, reason);
        }
        still_served(&h, &mut by, "live://by", i as u32);
    }
    for reason in [
        "token_required",
        "token_malformed",
        "token_bad_signature",
        "token_expired",
        "token_not_yet_valid",
    ] {
        closes_reach(&h, reason, 2);
    }
    closes_reach(&h, "token_alg_refused", 4);

    // Rotation: both secrets, both EC keys and the RSA key are accepted, and
    // the token's sub is the user whatever the body says.
    let es_next = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &user(11),
        &EncodingKey::from_ec_pem(&std::fs::read(key("es256-next-private.pem")).unwrap()).unwrap(),
    )
    .unwrap();
    for t in [
        hs(OLD, &user(11)),
        hs(NEW, &user(11)),
        sign(Algorithm::ES256, &user(11)),
        es_next,
        sign(Algorithm::RS256, &user(11)),
    ] {
        let (mut c, _) = Client::authed_v2(h.tcp_addr, &auth_body(&t, ""));
        post(&h, "/goim/push/mids?mids=11&operation=1000", b"to-11");
        assert_eq!(c.read_push2().unwrap().payload, b"to-11");
        let _ = Client::authed(h.tcp_addr, &auth_body(&t, ""));
    }
    h.shutdown();
}

#[test]
fn rooms_the_token_does_not_allow_are_refused() {
    let h = jwt_server(|_| {});
    let t = sign(
        Algorithm::HS256,
        &json!({"sub":"3","exp": now() + 600, "rooms": ["live://*", "chat/eu/>"]}),
    );
    let mut by = bystander(&h, &t, "live://by");
    // Version 1: the auth's room, then op 12.
    refused(h.tcp_addr, 1, &auth_body(&t, "chat/us/1"), "room_not_allowed");
    let mut v1 = Client::authed(h.tcp_addr, &auth_body(&t, "live://1"));
    v1.send(op::CHANGE_ROOM, 2, b"chat/eu/lobby");
    assert_eq!(v1.read_push().op, op::CHANGE_ROOM_REPLY);
    v1.send(op::CHANGE_ROOM, 3, b"live://1/sub");
    assert!(v1.expect_closed().unwrap().starts_with("room_not_allowed"));
    closes_reach(&h, "room_not_allowed", 2);
    // Version 2: errors, and the connection goes on.
    let (mut c, _) = Client::authed_v2(h.tcp_addr, &auth_body(&t, ""));
    for (seq, room) in [(2, "chat/us/1"), (3, "live://1/x"), (4, ">"), (5, "chat/*/lobby")] {
        c.send_as(2, op2::JOIN, seq, json!({ "room": room }).to_string().as_bytes());
        assert_eq!(error_code(&mut c, seq), 4008, "{room}");
    }
    assert_eq!(c.join(6, "chat/eu/x/y", None)["offset"], 0);
    assert_eq!(c.join(7, "live://*", None)["pattern"], true);
    assert_eq!(errors(&h, "forbidden"), 4);
    still_served(&h, &mut by, "live://by", 0);
    h.shutdown();
}

fn publish(c: &mut Client, seq: u32, room: &str, payload: &[u8]) {
    c.send_as(
        2,
        PUBLISH,
        seq,
        &volley::proto::v2::publish_body(1000, room, "", payload),
    );
}

#[test]
fn clients_publish_where_allowed_within_rate_and_size() {
    let h = jwt_server(|c| {
        c.client.publish_rate = 1;
        c.client.publish_burst = 2;
        c.client.max_publish_payload = 16;
    });
    let reader = sign(Algorithm::HS256, &user(20));
    let writer = sign(
        Algorithm::HS256,
        &json!({"sub":"21","exp": now() + 600, "publish": ["chat/>"]}),
    );
    let mut r = bystander(&h, &reader, "chat/a");
    let (mut w, _) = Client::authed_v2(h.tcp_addr, &auth_body(&writer, ""));
    publish(&mut w, 2, "chat/a", b"hello");
    let g = w.read().unwrap();
    assert_eq!((g.op, g.seq), (PUBLISH_REPLY, 2), "{}", g.text());
    let v: Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(
        (v["room"].as_str(), v["offset"].as_u64(), v["duplicate"].as_bool()),
        (Some("chat/a"), Some(1), Some(false))
    );
    let p = r.read_push2().unwrap();
    assert_eq!(
        (p.room.as_str(), p.offset, p.payload.as_slice()),
        ("chat/a", 1, &b"hello"[..])
    );

    publish(&mut w, 3, "live://1", b"x");
    assert_eq!(error_code(&mut w, 3), 4008);
    publish(&mut w, 4, "chat/a", &[b'x'; 17]);
    assert_eq!(error_code(&mut w, 4), 4010);
    publish(&mut w, 5, "chat/*", b"x");
    assert_eq!(error_code(&mut w, 5), 4000, "a pattern");
    // Burst 2: one used above; the second passes, the third is refused.
    publish(&mut w, 6, "chat/a", b"two");
    assert_eq!(w.read().unwrap().op, PUBLISH_REPLY);
    publish(&mut w, 7, "chat/a", b"three");
    assert_eq!(error_code(&mut w, 7), 4009);
    assert_eq!(r.read_push2().unwrap().payload, b"two");
    // A reader whose token grants no publish.
    publish(&mut r, 8, "chat/a", b"x");
    assert_eq!(error_code(&mut r, 8), 4008);
    for (name, n) in [
        ("forbidden", 2),
        ("payload_too_large", 1),
        ("rate_limited", 1),
        ("bad_request", 1),
    ] {
        assert_eq!(errors(&h, name), n, "{name}");
    }
    // Version 1 op 4 keeps goim's reply.
    let mut v1 = Client::authed(h.tcp_addr, &auth_body(&writer, ""));
    v1.send(op::SEND_MSG, 9, b"hi");
    assert_eq!(v1.read_push().op, op::SEND_MSG_REPLY);
    h.shutdown();
}

#[test]
fn tokens_are_refreshed_or_the_connection_expires() {
    let h = jwt_server(|c| {
        c.auth.refresh_secs = 2;
        c.auth.grace_secs = 1;
        c.auth.leeway_secs = 0;
    });
    let short = |mid: i64| sign(Algorithm::HS256, &json!({"sub": mid.to_string(), "exp": now() + 3}));
    let (mut keeps, _) = Client::authed_v2(h.tcp_addr, &auth_body(&short(30), ""));
    let (mut lapses, _) = Client::authed_v2(h.tcp_addr, &auth_body(&short(31), ""));
    let v1 = Client::authed(h.tcp_addr, &auth_body(&short(32), ""));
    let ask = keeps.read().unwrap();
    assert_eq!(ask.op, REFRESH, "{}", ask.text());
    // Another user's token is refused; the connection goes on.
    let other = json!({"token": sign(Algorithm::HS256, &user(99))}).to_string();
    keeps.send_as(2, TOKEN, 5, other.as_bytes());
    assert_eq!(error_code(&mut keeps, 5), 4011);
    let fresh = json!({"token": sign(Algorithm::HS256, &user(30))}).to_string();
    keeps.send_as(2, TOKEN, 6, fresh.as_bytes());
    let g = keeps.read().unwrap();
    assert_eq!((g.op, g.seq), (TOKEN_REPLY, 6));
    assert_eq!(lapses.read().unwrap().op, REFRESH);
    assert!(lapses.expect_closed().unwrap().starts_with("token_expired"));
    let mut v1 = v1;
    assert!(
        v1.expect_closed().unwrap().starts_with("token_expired"),
        "version 1 cannot refresh"
    );
    closes_reach(&h, "token_expired", 2);
    keeps.send_as(2, op::HEARTBEAT, 7, b"");
    assert_eq!(
        keeps.read().unwrap().op,
        op::HEARTBEAT_REPLY,
        "the refreshed connection stays"
    );
    h.shutdown();
}

#[test]
fn patterns_reach_every_matching_room_and_only_them() {
    let h = start_server(|_| {});
    let (mut sub, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":1}"#);
    assert_eq!(
        sub.join(1, "live://*", None),
        json!({"room": "live://*", "pattern": true})
    );
    assert_eq!(
        sub.join(2, "live://2", None)["offset"],
        0,
        "a room the pattern also matches"
    );
    sub.send_as(2, op2::JOIN, 3, br#"{"room":"a/>/b"}"#);
    assert_eq!(error_code(&mut sub, 3), 4000);
    sub.send_as(
        2,
        op2::JOIN,
        4,
        br#"{"room":"live://*","offset":1,"epoch":"0000000000000001"}"#,
    );
    assert_eq!(error_code(&mut sub, 4), 4000, "no resume on a pattern");
    // Rooms that exist: one with a version-1 member, one joined above.
    let mut v1 = Client::authed(h.tcp_addr, r#"{"mid":2,"room_id":"live://1"}"#);
    for room in ["live://9/x", "chat/1", "live://1"] {
        push_room(&h, room, room);
    }
    let p = sub.read_push2().unwrap();
    assert_eq!((p.room.as_str(), p.payload.as_slice()), ("live://1", &b"live://1"[..]));
    assert_eq!(v1.read_push().body, b"live://1");
    // The pattern publish: every existing matching room, each its own offset,
    // delivered once to the subscriber of both the pattern and live://2.
    wait_until("live://1 in the views", || {
        push_room(&h, "live://*", "all");
        true
    });
    let mut got: Vec<(String, u64)> = (0..2)
        .map(|_| sub.read_push2().unwrap())
        .map(|p| (p.room, p.offset))
        .collect();
    got.sort();
    assert_eq!(got, vec![("live://1".into(), 2), ("live://2".into(), 1)]);
    assert_eq!(v1.read_push().body, b"all");
    // Leaving the pattern stops it.
    sub.send_as(2, op2::LEAVE, 9, br#"{"room":"live://*"}"#);
    assert_eq!(sub.read().unwrap().op, op2::LEAVE_REPLY);
    push_room(&h, "live://1", "gone");
    push_room(&h, "live://2", "mine");
    assert_eq!(sub.read_push2().unwrap().payload, b"mine");
    h.shutdown();
}

/// The next presence event (op 58) `c` receives, skipping other frames.
fn next_presence(c: &mut Client) -> Value {
    loop {
        let g = c.read().expect("a presence event");
        if g.op == PRESENCE {
            return serde_json::from_slice(&g.body).unwrap();
        }
    }
}

#[test]
fn presence_lists_members_and_reports_joins_and_leaves() {
    let h = jwt_server(|_| {});
    let tok = |mid: i64, name: &str| {
        sign(
            Algorithm::HS256,
            &json!({"sub": mid.to_string(), "exp": now() + 600, "info": {"name": name}}),
        )
    };
    let (mut watcher, _) = Client::authed_v2(h.tcp_addr, &auth_body(&tok(40, "w"), ""));
    watcher.send_as(2, op2::JOIN, 1, br#"{"room":"room/p","presence":true}"#);
    assert_eq!(watcher.read().unwrap().op, op2::JOIN_REPLY);
    std::thread::sleep(Duration::from_millis(1200));
    let (mut ann, _) = Client::authed_v2(h.tcp_addr, &auth_body(&tok(41, "ann"), ""));
    ann.join(1, "room/p", None);
    let ev = next_presence(&mut watcher);
    assert_eq!(ev["room"], "room/p");
    assert_eq!(ev["joins"][0]["mid"], 41);
    assert_eq!(ev["joins"][0]["info"]["name"], "ann");
    let (code, v) = http(h.http_addr, "GET", "/v1/presence?room=room/p", &[], b"");
    assert_eq!(code, 200);
    assert_eq!(v["data"]["count"], 2);
    let mut mids: Vec<i64> = v["data"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mid"].as_i64().unwrap())
        .collect();
    mids.sort();
    assert_eq!(mids, vec![40, 41]);
    drop(ann);
    let ev = next_presence(&mut watcher);
    assert_eq!(ev["leaves"][0]["mid"], 41);
    h.shutdown();
}

fn connect_from(addr: SocketAddr, src: &str) -> Client {
    Client::connect_from(addr, src)
}

#[test]
fn connection_limits_close_only_the_one_over() {
    let h = start_server(|c| {
        c.limits.max_conns_per_ip = 3;
        c.limits.max_conns = 6;
    });
    let mut by = connect_from(h.tcp_addr, "127.0.0.2");
    by.send_as(2, op::AUTH, 1, br#"{"mid":1}"#);
    assert_eq!(by.read().unwrap().op, op::AUTH_REPLY);
    assert!(by.join(2, "live://by", None)["offset"].is_u64());
    let mut held: Vec<Client> = (0..3).map(|_| connect_from(h.tcp_addr, "127.0.0.3")).collect();
    wait_until("four records", || h.stats().iter().map(|s| s.conns).sum::<u64>() == 4);
    let mut over = connect_from(h.tcp_addr, "127.0.0.3");
    assert!(over.expect_closed().unwrap().starts_with("ip_conn_limit"));
    // A WebSocket client over the limit is told in HTTP.
    let mut ws = connect_from(h.ws_addr, "127.0.0.3");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut ws.s, &mut answer).ok();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("ip_conn_limit"), "{answer}");
    closes_reach(&h, "ip_conn_limit", 2);
    // The total: 1 + 3 held, two more from elsewhere, then one too many.
    wait_until("refused ones gone", || {
        h.stats().iter().map(|s| s.conns).sum::<u64>() == 4
    });
    held.push(connect_from(h.tcp_addr, "127.0.0.4"));
    held.push(connect_from(h.tcp_addr, "127.0.0.4"));
    wait_until("six records", || h.stats().iter().map(|s| s.conns).sum::<u64>() == 6);
    let mut full = connect_from(h.tcp_addr, "127.0.0.5");
    assert!(full.expect_closed().unwrap().starts_with("conn_limit"));
    closes_reach(&h, "conn_limit", 1);
    held[0].send(op::AUTH, 1, br#"{"mid":2}"#);
    assert_eq!(
        held[0].read().unwrap().op,
        op::AUTH_REPLY,
        "those within the limits are served"
    );
    still_served(&h, &mut by, "live://by", 0);
    h.shutdown();

    let h = start_server(|c| c.limits.conn_rate_per_ip = 3);
    // Four connections from one address back to back, within one second
    // (a retry covers a second boundary crossed between them): one of them
    // is over the rate. Each burst is opened before any is read, so the
    // reads' timeouts cannot spread a burst over several seconds.
    let mut refused_once = false;
    for _ in 0..3 {
        let burst: Vec<Client> = (0..4).map(|_| connect_from(h.tcp_addr, "127.0.0.6")).collect();
        for mut c in burst {
            c.s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            if c.read().is_some_and(|g| g.text().starts_with("ip_rate_limit")) {
                refused_once = true;
            }
        }
        if refused_once {
            break;
        }
    }
    assert!(refused_once);
    wait_until("ip_rate_limit counted", || closes(&h, "ip_rate_limit") >= 1);
    h.shutdown();
}

#[test]
fn connections_per_user_close_the_oldest_or_refuse_the_new() {
    for policy in [UserConnPolicy::CloseOldest, UserConnPolicy::Refuse] {
        let h = start_server(|c| {
            c.limits.max_conns_per_user = 2;
            c.limits.user_conn_policy = policy;
            // "Oldest" is the order the user's owner hears of them: with
            // two shards a connection on the owner's shard may register
            // before an earlier one's message from the other shard arrives.
            c.shards = 1;
        });
        let mut first = Client::authed(h.tcp_addr, r#"{"mid":50}"#);
        let second = Client::authed(h.tcp_addr, r#"{"mid":50}"#);
        let other = Client::authed(h.tcp_addr, r#"{"mid":51}"#);
        let mut third = Client::authed(h.tcp_addr, r#"{"mid":50}"#);
        let gone = if policy == UserConnPolicy::CloseOldest {
            &mut first
        } else {
            &mut third
        };
        assert!(
            gone.expect_closed().unwrap().starts_with("user_conn_limit"),
            "{policy:?}"
        );
        closes_reach(&h, "user_conn_limit", 1);
        drop((second, other));
        h.shutdown();
    }
}

#[test]
fn the_development_token_endpoint_is_off_unless_asked_for() {
    let off = jwt_server(|_| {});
    let (code, _) = http(off.http_addr, "POST", "/v1/dev/token?mid=5", &[], b"");
    assert_eq!(code, 404);
    off.shutdown();

    let h = jwt_server(|c| c.auth.dev_tokens = true);
    let (code, v) = http(
        h.http_addr,
        "POST",
        "/v1/dev/token?mid=5&name=ann&rooms=chat%2F%3E&publish=chat%2F%3E",
        &[],
        b"",
    );
    assert_eq!(code, 200, "{v}");
    let token = v["data"]["token"].as_str().unwrap().to_string();
    let (mut c, _) = Client::authed_v2(h.tcp_addr, &auth_body(&token, ""));
    assert_eq!(c.join(2, "chat/x", None)["offset"], 0);
    c.send_as(2, op2::JOIN, 3, br#"{"room":"live://1"}"#);
    assert_eq!(error_code(&mut c, 3), 4008, "the rooms asked for, no more");
    publish(&mut c, 4, "chat/x", b"hi");
    assert_eq!(c.read().unwrap().op, PUBLISH_REPLY);
    assert_eq!(c.read_push2().unwrap().payload, b"hi");
    let (code, _) = http(h.http_addr, "POST", "/v1/dev/token?mid=0", &[], b"");
    assert_eq!(code, 400);
    h.shutdown();
}

#[test]
fn rooms_per_connection_are_refused_past_the_limit_and_counted() {
    let h = start_server(|c| c.client.max_rooms = 2);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":1}"#);
    assert!(c.join(2, "live://1", None)["offset"].is_u64());
    assert_eq!(
        c.join(3, "live://*", None)["pattern"],
        true,
        "a pattern counts as a room"
    );
    c.send_as(2, op2::JOIN, 4, br#"{"room":"live://2"}"#);
    assert_eq!(error_code(&mut c, 4), 4002);
    assert_eq!(errors(&h, "room_limit"), 1);
    c.send_as(2, op2::LEAVE, 5, br#"{"room":"live://*"}"#);
    assert_eq!(c.read().unwrap().op, op2::LEAVE_REPLY);
    assert!(
        c.join(6, "live://2", None)["offset"].is_u64(),
        "room again after a leave"
    );
    h.shutdown();
}
