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
    // Load balancers ask without a key: health is open to all.
    let (status, v) = http(h.http_addr, "GET", "/healthz", &[], b"");
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    let (status, _) = http(h.http_addr, "HEAD", "/healthz", &[("X-Api-Key", "wrong")], b"");
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

#[test]
fn a_retried_publish_is_delivered_once_and_answered_with_the_first_offset() {
    let h = start_server(|_| {});
    let mut c = Client::authed(
        h.tcp_addr,
        r#"{"mid":5,"key":"dk","room_id":"live://d","accepts":[1000]}"#,
    );

    // A room: the owner answers with the offset; a retry with the same id
    // gets the first one's, marked, and is not delivered again.
    let first = post(&h, "/goim/push/room?operation=1000&type=live&room=d&id=m-1", b"a");
    assert_eq!(first["data"]["offset"], 1, "{first}");
    assert_eq!(first["data"]["duplicate"], false);
    let again = post(&h, "/goim/push/room?operation=1000&type=live&room=d&id=m-1", b"a");
    assert_eq!(again["data"]["offset"], 1, "{again}");
    assert_eq!(again["data"]["duplicate"], true);
    assert_eq!(again["data"]["epoch"], first["data"]["epoch"]);
    let other = post(&h, "/goim/push/room?operation=1000&type=live&room=d&id=m-2", b"b");
    assert_eq!(
        (other["data"]["offset"].as_u64(), other["data"]["duplicate"].as_bool()),
        (Some(2), Some(false))
    );
    // The same id in another room is another message.
    let elsewhere = post(&h, "/goim/push/room?operation=1000&type=live&room=e&id=m-1", b"x");
    assert_eq!(elsewhere["data"]["duplicate"], false);
    assert_eq!(c.read_push().text(), "a");
    assert_eq!(c.read_push().text(), "b");

    // Without an id, a goim route answers as goim does: once routed.
    let plain = post(&h, "/goim/push/room?operation=1000&type=live&room=d", b"p");
    assert!(plain.get("data").is_none(), "{plain}");

    // Users, keys, everyone: each recipient gets a retried push once.
    let routes = [
        "/goim/push/mids?operation=1000&mids=5&id=u-1",
        "/goim/push/keys?operation=1000&keys=dk&id=k-1",
        "/goim/push/all?operation=1000&id=all-1",
    ];
    for route in routes {
        for _ in 0..2 {
            let v = post(&h, route, route.as_bytes());
            assert!(v.get("data").is_none(), "only room pushes have an offset: {v}");
        }
    }

    // The native batch answers each message: an offset for room messages.
    let (status, v) = http(
        h.http_addr,
        "POST",
        "/v1/publish",
        &[],
        br#"{"messages":[
            {"target":"room","room":"live://d","op":1000,"body":"c","id":"m-3"},
            {"target":"room","room":"live://d","op":1000,"body":"c","id":"m-3"},
            {"target":"keys","keys":["dk"],"op":1000,"body":"d"}]}"#,
    );
    assert_eq!(status, 200, "{v}");
    let results = &v["data"]["results"];
    assert_eq!(
        (results[0]["offset"].as_u64(), results[0]["duplicate"].as_bool()),
        (Some(4), Some(false))
    );
    assert_eq!(
        (results[1]["offset"].as_u64(), results[1]["duplicate"].as_bool()),
        (Some(4), Some(true))
    );
    assert!(results[2].is_null());

    // Pushes taking different paths may arrive in any order: count them
    // until the connection has been quiet for a while.
    c.s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut got = std::collections::BTreeMap::new();
    while let Some(g) = c.read() {
        *got.entry(g.text()).or_insert(0) += 1;
    }
    let want: std::collections::BTreeMap<String, i32> = routes
        .iter()
        .map(|r| r.to_string())
        .chain(["p".into(), "c".into(), "d".into()])
        .map(|t| (t, 1))
        .collect();
    assert_eq!(got, want);
    let dups: u64 = h.stats().iter().map(|s| s.publish_duplicates).sum();
    assert_eq!(
        dups, 6,
        "the room retries (route, batch), the user's and the key's, and everyone's on each of 2 shards"
    );
}

#[test]
fn without_a_window_nothing_is_deduplicated() {
    let h = start_server(|c| c.api.dedup_window_secs = 0);
    let mut c = Client::authed(h.tcp_addr, r#"{"room_id":"live://n"}"#);
    for expect in [1, 2] {
        let v = post(&h, "/goim/push/room?operation=1000&type=live&room=n&id=same", b"again");
        assert_eq!(
            (v["data"]["offset"].as_u64(), v["data"]["duplicate"].as_bool()),
            (Some(expect), Some(false))
        );
        assert_eq!(c.read_push().text(), "again");
    }
}
