//! The HTTP API's answers to bad requests: a 4xx status and a JSON error that
//! says what is wrong.

mod common;
use common::*;

#[test]
fn bad_requests_get_4xx_json_errors() {
    let h = start_server(|c| c.api.max_push_body = 100);
    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("POST", "/goim/push/room?type=live&room=1", b"x", 400, "operation"),
        (
            "POST",
            "/goim/push/room?operation=abc&type=live&room=1",
            b"x",
            400,
            "operation",
        ),
        ("POST", "/goim/push/room?operation=1000&room=1", b"x", 400, "type"),
        ("POST", "/goim/push/keys?operation=1000", b"x", 400, "keys"),
        ("POST", "/goim/push/mids?operation=1000&mids=x", b"x", 400, "mid"),
        (
            "POST",
            "/goim/push/all?operation=1000",
            &[b'x'; 101],
            413,
            "max_push_body",
        ),
        ("GET", "/goim/push/all?operation=1000", b"", 405, "not allowed"),
        ("GET", "/nope", b"", 404, "no route"),
        ("POST", "/v1/push/room", b"{", 400, "JSON"),
        ("POST", "/v1/push/room", br#"{"op":1}"#, 400, "room"),
        ("POST", "/v1/push/keys", br#"{"op":1,"keys":[]}"#, 400, "keys"),
        (
            "POST",
            "/v1/push/room",
            br#"{"op":1,"room":"r","target":"all"}"#,
            400,
            "contradicts",
        ),
        ("POST", "/v1/push/all", br#"{"op":1,"bogus":1}"#, 400, "bogus"),
        (
            "POST",
            "/v1/publish",
            br#"{"messages":[{"target":"room","room":"r","op":1},{"target":"x","op":1}]}"#,
            400,
            "messages[1]",
        ),
        ("GET", "/goim/online/top?type=live", b"", 400, "limit"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, v) = http(h.http_addr, method, path, &[], body);
        assert_eq!(got, *status, "{method} {path}: {v}");
        assert_eq!(v["code"], -i64::from(*status), "{method} {path}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{method} {path}: message {msg:?} lacks {needle:?}"
        );
    }
}

#[test]
fn request_body_limit() {
    let h = start_server(|c| c.api.max_body = 1000);
    let (status, v) = http(h.http_addr, "POST", "/goim/push/all?operation=1", &[], &[b'x'; 2000]);
    assert_eq!(status, 413, "{v}");
}

#[test]
fn api_key_is_enforced_when_set() {
    let h = start_server(|c| c.api.key = Some("s3cret".into()));
    let (status, v) = http(h.http_addr, "GET", "/v1/stats", &[], b"");
    assert_eq!((status, v["code"].as_i64()), (401, Some(-401)));
    let (status, _) = http(h.http_addr, "GET", "/v1/stats", &[("X-Api-Key", "wrong")], b"");
    assert_eq!(status, 401);
    let (status, _) = http(
        h.http_addr,
        "GET",
        "/v1/stats",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(status, 200);
    let (status, _) = http(h.http_addr, "GET", "/v1/stats", &[("X-Api-Key", "s3cret")], b"");
    assert_eq!(status, 200);
}

#[test]
fn online_and_stats_report_what_is_connected() {
    let h = start_server(|_| {});
    let _a: Vec<Client> = (0..3)
        .map(|_| Client::authed(h.tcp_addr, r#"{"room_id":"live://big"}"#))
        .collect();
    let _b = Client::authed(h.tcp_addr, r#"{"room_id":"live://small"}"#);
    wait_until("top rooms", || {
        let (_, v) = http(h.http_addr, "GET", "/goim/online/top?type=live&limit=1", &[], b"");
        v["data"] == serde_json::json!([{"room_id": "big", "count": 3}])
    });
    let (_, v) = http(h.http_addr, "GET", "/goim/online/total", &[], b"");
    assert_eq!(v["data"], serde_json::json!({"conn_count": 4, "ip_count": 1}));
    let (_, v) = http(
        h.http_addr,
        "GET",
        "/v1/online/rooms?rooms=live://big,live://small,live://none",
        &[],
        b"",
    );
    assert_eq!(
        v["data"],
        serde_json::json!({"live://big": 3, "live://small": 1, "live://none": 0})
    );
    let (_, v) = http(h.http_addr, "GET", "/v1/stats", &[], b"");
    assert_eq!(v["data"]["total"]["authed"], 4);
    assert_eq!(v["data"]["shards"].as_array().unwrap().len(), 2);
}
