//! Draining a node (`POST /v1/drain`, `volley drain`): every client open
//! when it begins is told to reconnect (op 6 `restart`, WebSocket close
//! 1012) at its own moment of the window, a client that comes back stays,
//! a version-2 client resumes without a loss, and `/healthz` sends new
//! clients elsewhere.

mod common;

use common::{closes, http, op, start_server, wait_until, Client, RawWs};
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

fn room_push(addr: std::net::SocketAddr, text: &str) {
    let (s, v) = http(
        addr,
        "POST",
        "/goim/push/room?operation=1000&type=live&room=drain",
        &[],
        text.as_bytes(),
    );
    assert_eq!((s, &v["code"]), (200, &Value::from(0)), "{v}");
}

#[test]
fn a_drain_tells_every_client_to_reconnect_over_the_window_and_those_who_come_back_stay() {
    let h = start_server(|_| {});
    let clients: Vec<Client> = (0..40)
        .map(|_| Client::authed(h.tcp_addr, r#"{"accepts":[]}"#))
        .collect();
    let mut ws: Vec<RawWs> = (0..4).map(|_| RawWs::open(h.ws_addr)).collect();
    for w in &mut ws {
        w.send_frame(2, &common::frame(1, op::AUTH, 1, br#"{"accepts":[]}"#), true);
    }
    // A version-2 member of a room, who reads what is published before the
    // drain reaches it and resumes afterwards.
    let (mut member, _) = Client::authed_v2(h.tcp_addr, "{}");
    let reply = member.join(2, "live://drain", None);
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        room_push(h.http_addr, &format!("before {i}"));
    }
    let mut last = 0;
    for _ in 0..3 {
        last = member.read_push2().expect("a push before the drain").offset;
    }
    wait_until("every connection authenticated", || {
        common::authed_per_shard(&h).iter().sum::<u64>() == 45
    });

    let start = Instant::now();
    let (status, v) = http(h.http_addr, "POST", "/v1/drain?over=2", &[], b"");
    assert_eq!((status, &v["data"]["begun"]), (200, &Value::from(true)), "{v}");
    let (status, v) = http(h.http_addr, "POST", "/v1/drain?over=2", &[], b"");
    assert_eq!(status, 409, "a second drain is refused: {v}");
    let (status, v) = http(h.http_addr, "GET", "/healthz", &[], b"");
    assert_eq!(status, 503, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("drain"), "{v}");

    // Each client hears its goodbye at its own moment.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let bye = c.expect_closed();
                (bye, start.elapsed())
            })
        })
        .collect();
    let ws_readers: Vec<_> = ws
        .into_iter()
        .map(|mut w| std::thread::spawn(move || w.close_frame()))
        .collect();
    let mut when = Vec::new();
    for r in readers {
        let (bye, at) = r.join().unwrap();
        let bye = bye.expect("an op 6 goodbye");
        assert!(bye.starts_with("restart: "), "{bye}");
        when.push(at);
    }
    for r in ws_readers {
        let (code, reason) = r.join().unwrap();
        assert_eq!(code, 1012, "{reason}");
        assert!(reason.starts_with("restart"), "{reason}");
    }
    when.sort();
    // Spread over the window, not all at once (a loaded host can only
    // delay a goodbye, never bring one forward).
    assert!(
        when[when.len() - 1] - when[0] >= Duration::from_millis(1000),
        "goodbyes not spread over the 2 s window: {when:?}"
    );

    // The member was told too; published meanwhile, then resumed.
    assert!(member.read_push2().is_none(), "the member's goodbye");
    room_push(h.http_addr, "after");
    let (mut back, _) = Client::authed_v2(h.tcp_addr, "{}");
    let reply = back.join(2, "live://drain", Some((last, &epoch)));
    assert_eq!(reply["recovered"], true, "{reply}");
    let p = back.read_push2().expect("the message published while away");
    assert_eq!((p.offset, p.payload.as_slice()), (last + 1, &b"after"[..]));

    wait_until("the drain is done", || {
        http(h.http_addr, "GET", "/v1/drain", &[], b"").1["data"]["done"] == true
    });
    let (_, v) = http(h.http_addr, "GET", "/v1/drain", &[], b"");
    assert_eq!(
        (&v["data"]["told"], &v["data"]["planned"]),
        (&Value::from(45), &Value::from(45)),
        "{v}"
    );
    assert_eq!(closes(&h, "restart"), 45);
    // A client who came back during the drain stays.
    back.send_as(2, op::HEARTBEAT, 9, b"");
    let r = back.read().expect("a heartbeat reply after the drain");
    assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 9));
    let (status, v) = http(h.http_addr, "GET", "/healthz", &[], b"");
    assert_eq!(status, 503, "a drained node stays out of the balancer: {v}");
    assert!(v["message"].as_str().unwrap().starts_with("drained"), "{v}");
    h.shutdown();
    h.join();
}

#[test]
fn bad_windows_are_refused_and_the_route_needs_the_key() {
    let h = start_server(|c| c.api.key = Some("k".into()));
    let (status, _) = http(h.http_addr, "POST", "/v1/drain?over=2", &[], b"");
    assert_eq!(status, 401);
    let key = [("x-api-key", "k")];
    for bad in ["abc", "-1", "86401"] {
        let (status, v) = http(h.http_addr, "POST", &format!("/v1/drain?over={bad}"), &key, b"");
        assert_eq!(status, 400, "{bad}: {v}");
    }
    let (status, v) = http(h.http_addr, "GET", "/v1/drain", &key, b"");
    assert_eq!((status, &v["data"]["begun"]), (200, &Value::from(false)), "{v}");
    let (status, _) = http(h.http_addr, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200, "no drain yet");
    h.shutdown();
    h.join();
}

#[test]
fn the_drain_command_finds_the_api_as_serve_would_and_follows_the_drain() {
    let h = start_server(|c| c.api.key = Some("secret".into()));
    let c = Client::authed(h.tcp_addr, r#"{"accepts":[]}"#);
    let volley = env!("CARGO_BIN_EXE_volley");
    let api = h.http_addr.to_string();
    // Without the key: refused, and it says so.
    let out = std::process::Command::new(volley)
        .args(["drain", "--over", "1", "--api-listen", &api])
        .env_remove("VOLLEY_API_KEY")
        .env_remove("VOLLEY_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{out:?}");
    // The key from a config file, as `serve` would read it.
    let dir = std::env::temp_dir().join(format!("volley-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("volley.toml");
    write!(std::fs::File::create(&file).unwrap(), "[api]\nkey = \"secret\"\n").unwrap();
    let out = std::process::Command::new(volley)
        .args(["drain", "--over", "1", "--api-listen", &api, "--config"])
        .arg(&file)
        .env_remove("VOLLEY_API_KEY")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("drain begun on"), "{text}");
    assert!(text.trim_end().ends_with("(done)"), "{text}");
    let mut c = c;
    assert!(c.expect_closed().unwrap().starts_with("restart"));
    h.shutdown();
    h.join();
}
