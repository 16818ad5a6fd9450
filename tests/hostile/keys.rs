//! Connection keys cannot be taken from another user: with tokens, a key
//! the auth body names must be listed in the token's `keys` claim, and a
//! key held by another user's connection is refused even then; a
//! server-assigned key carries a signature, so knowing the form (every
//! version-2 client sees its own) does not let anyone make up another's.

use super::common::{self, op, op2, Client};
use super::{jwt_server, token, Bystander};
use serde_json::{json, Value};

const PRESENCE: u32 = 58;

/// The payload of the next push `c` gets, past presence events.
fn next_push(c: &mut Client) -> Vec<u8> {
    loop {
        let g = c.read().expect("a push");
        if g.op == op2::PUSH {
            return common::Push2::parse(&g.body).payload;
        }
        assert_eq!(g.op, PRESENCE, "{}", g.text());
    }
}

fn auth_v2(addr: std::net::SocketAddr, body: &Value) -> Result<(Client, String), String> {
    let mut c = Client::connect(addr);
    c.send_as(2, op::AUTH, 1, body.to_string().as_bytes());
    match c.read() {
        Some(g) if g.op == op::AUTH_REPLY => {
            let v: Value = serde_json::from_slice(&g.body).unwrap();
            Ok((c, v["key"].as_str().unwrap().to_string()))
        }
        Some(g) if g.op == op::DISCONNECT => Err(g.text()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn with_tokens_no_user_takes_over_another_users_connection_or_its_key_pushes() {
    let h = jwt_server(|_| {});
    let by = Bystander::jwt(h.tcp_addr, h.http_addr);
    // User 101 holds a chosen key (its token lists it) and an assigned
    // one; both watch presence in a room user 200 joins too.
    let phone = json!({"token": token(json!({"sub": "101", "keys": ["device-101-phone"]})), "key": "device-101-phone"});
    let (mut victim, key) = auth_v2(h.tcp_addr, &phone).unwrap();
    assert_eq!(key, "device-101-phone");
    let (mut victim2, assigned) = auth_v2(h.tcp_addr, &json!({"token": token(json!({"sub": "101"}))})).unwrap();
    victim2.send_as(2, op2::JOIN, 2, br#"{"room":"live://hall","presence":true}"#);
    assert_eq!(victim2.read().unwrap().op, op2::JOIN_REPLY);
    victim.send_as(2, op2::JOIN, 2, br#"{"room":"live://hall","presence":true}"#);
    assert_eq!(victim.read().unwrap().op, op2::JOIN_REPLY);
    // The attacker, user 200 with a valid token of its own, knows both
    // keys (presence events show members' keys, as the issue's attacker
    // read them).
    let mine = token(json!({"sub": "200"}));
    // Naming either key with its own token: refused, the victims stay.
    for k in ["device-101-phone", assigned.as_str()] {
        let why = auth_v2(h.tcp_addr, &json!({"token": mine, "key": k})).err().unwrap();
        assert!(why.starts_with("key_not_allowed"), "{k}: {why}");
    }
    // Even a token that lists the key (a backend's mistake) does not take
    // it from another user's connection.
    let listed =
        json!({"token": token(json!({"sub": "200", "keys": ["device-101-phone"]})), "key": "device-101-phone"});
    let mut c = Client::connect(h.tcp_addr);
    c.send_as(2, op::AUTH, 1, listed.to_string().as_bytes());
    let why = c.expect_closed().unwrap_or_default();
    assert!(why.starts_with("key_in_use"), "{why}");
    // Key pushes still reach user 101, and only it.
    let push = |k: &str, body: &str| {
        let path = format!("/goim/push/keys?operation=1000&keys={k}");
        common::post(&h, &path, body.as_bytes());
    };
    push("device-101-phone", "to-phone");
    push(&assigned, "to-assigned");
    assert_eq!(next_push(&mut victim), b"to-phone");
    assert_eq!(next_push(&mut victim2), b"to-assigned");
    // The same user on a new device takes its own key over, as before.
    let (_again, _) = auth_v2(h.tcp_addr, &phone).unwrap();
    let why = victim.expect_closed().unwrap_or_default();
    assert!(why.starts_with("replaced"), "{why}");
    by.finish();
}

#[test]
fn assigned_keys_cannot_be_guessed_from_ones_own() {
    // The signature is what is tried here, not the per-IP attempt rate
    // that would slow the guesses down.
    let h = common::start_server(|c| c.limits.conn_rate_per_ip = 0);
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let mut others: Vec<(Client, String)> = (0..8)
        .map(|i| Client::authed_v2(h.tcp_addr, &json!({ "mid": 300 + i }).to_string()))
        .collect();
    // The attacker's own key shows the form: tag, shard, slot, generation
    // (and, since the fix, a signature). Guess the neighbours': every
    // shard, slots around its own, early generations, with its own
    // signature, and without one (the old form).
    let (_me, mine) = Client::authed_v2(h.tcp_addr, r#"{"mid":999}"#);
    let tag = &mine[..13];
    let tail = mine.get(36..).unwrap_or("");
    let slot = u32::from_str_radix(&format!("{}{}", &mine[19..23], &mine[24..28]), 16).unwrap();
    let mut guesses = 0;
    for shard in 0..2u16 {
        for s in slot.saturating_sub(12)..slot.max(12) + 4 {
            for gen in 1..4u32 {
                let address = format!("{tag}-{shard:04x}-{:04x}-{:04x}{gen:08x}", s >> 16, s & 0xffff);
                for k in [address.clone(), format!("{address}{tail}")] {
                    if k == mine {
                        continue; // its own, which it may take over
                    }
                    let mut c = Client::connect(h.tcp_addr);
                    c.send_as(2, op::AUTH, 1, json!({ "mid": 999, "key": k }).to_string().as_bytes());
                    assert_eq!(c.read().unwrap().op, op::AUTH_REPLY);
                    guesses += 1;
                }
            }
        }
    }
    assert!(guesses >= 191);
    // Nobody was replaced: a push to each key reaches its connection.
    for (c, key) in &mut others {
        let path = format!("/goim/push/keys?operation=1000&keys={key}");
        common::post(&h, &path, b"still-mine");
        assert_eq!(c.read_push2().unwrap().payload, b"still-mine");
    }
    assert_eq!(common::closes(&h, "replaced"), 0);
    by.finish();
}
