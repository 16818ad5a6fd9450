//! The request examples of README.md, docs/CLUSTER.md and docs/API.md, run
//! against a real server: every `curl` line of a shell block, every
//! message object of API.md's JSON block, and every route of API.md's
//! tables written with an example query. Each must answer as its doc says
//! (success, and the fields the doc shows), so the change that breaks an
//! example breaks this test.

mod common;

use common::*;
use serde_json::Value;

const README: &str = include_str!("../README.md");
const CLUSTER: &str = include_str!("../docs/CLUSTER.md");
const API: &str = include_str!("../docs/API.md");

/// The lines of the doc's fenced blocks of language `lang`.
fn fenced<'a>(doc: &'a str, lang: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            inside = !inside && line.trim_start_matches('`') == lang;
            continue;
        }
        if inside {
            out.push(line);
        }
    }
    out
}

/// A shell line's words, single quotes kept together.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut word, mut quoted, mut any) = (String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            '#' if !quoted && !any => break,
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// Runs one `curl` command line of a doc against `h`: (status, JSON).
fn curl(h: &volley::ServerHandle, line: &str) -> (u16, Value) {
    let w = words(line);
    assert_eq!(w[0], "curl", "{line}");
    let (mut body, mut url, mut headers) = (None, None, Vec::new());
    let mut i = 1;
    while i < w.len() {
        match w[i].as_str() {
            "-d" | "--data" => {
                body = Some(w[i + 1].clone());
                i += 1;
            }
            "-H" => {
                headers.push(w[i + 1].clone());
                i += 1;
            }
            u if u.starts_with("http://") => url = Some(u.to_string()),
            other => panic!("{line}: curl option {other} not understood by this test"),
        }
        i += 1;
    }
    let url = url.unwrap_or_else(|| panic!("{line}: no URL"));
    let path = &url[url[7..].find('/').map(|i| i + 7).expect("a path")..];
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|h| h.split_once(": ").expect("Name: value"))
        .collect();
    let method = if body.is_some() { "POST" } else { "GET" };
    http(h.http_addr, method, path, &headers, body.unwrap_or_default().as_bytes())
}

/// Every quoted name followed by `:` in a doc's example reply.
fn fields_shown(example: &str) -> Vec<String> {
    example
        .split('"')
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[1].trim_start().starts_with(':'))
        .map(|w| w[0].to_string())
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .collect()
}

/// Whether `name` is a key somewhere in `v`.
fn has_key(v: &Value, name: &str) -> bool {
    match v {
        Value::Object(m) => m.contains_key(name) || m.values().any(|v| has_key(v, name)),
        Value::Array(a) => a.iter().any(|v| has_key(v, name)),
        _ => false,
    }
}

fn server() -> volley::ServerHandle {
    start_server(|c| {
        // The dev token route answers only with development tokens on.
        c.auth.mode = volley::config::AuthMode::Jwt;
        c.auth.jwt_secret = vec!["a-secret-of-at-least-thirty-two-bytes!!".into()];
        c.auth.dev_tokens = true;
    })
}

#[test]
fn the_curl_lines_of_readme_and_cluster_md_answer_as_shown() {
    let h = server();
    let lines: Vec<&str> = [README, CLUSTER]
        .iter()
        .flat_map(|doc| fenced(doc, "sh"))
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in lines {
        let (status, v) = curl(&h, line);
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{line}: {v}");
    }
    // The stats the README's last line reads saw its publish.
    let (_, v) = http(h.http_addr, "GET", "/v1/stats", &[], b"");
    assert!(v["data"]["total"]["published"].as_u64() >= Some(2), "{v}");
}

#[test]
fn the_message_objects_of_api_md_are_accepted_by_their_routes() {
    let h = server();
    let messages: Vec<Value> = fenced(API, "json")
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(messages.len(), 4);
    for m in &messages {
        let path = format!("/v1/push/{}", m["target"].as_str().unwrap());
        let (status, v) = http(h.http_addr, "POST", &path, &[], m.to_string().as_bytes());
        assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{m}: {v}");
        if m["target"] == "room" {
            for field in ["offset", "epoch", "duplicate"] {
                assert!(v["data"].get(field).is_some(), "{m}: {v}");
            }
        }
    }
    let batch = serde_json::json!({ "messages": messages }).to_string();
    let (status, v) = http(h.http_addr, "POST", "/v1/publish", &[], batch.as_bytes());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["accepted"], 4, "{v}");
}

#[test]
fn the_routes_api_md_writes_with_an_example_query_answer_with_the_fields_it_shows() {
    let h = server();
    // Something for the reads to find.
    // (past offset 40, which the history example reads after)
    let messages: Vec<Value> = (1..=45)
        .map(|i| serde_json::json!({"target": "room", "room": "live://1", "op": 1000, "body": "hi", "id": format!("m-{i}")}))
        .chain([serde_json::json!({"target": "room", "room": "chat://1", "op": 1000, "body": "hi"})])
        .collect();
    let batch = serde_json::json!({ "messages": messages }).to_string();
    assert_eq!(http(h.http_addr, "POST", "/v1/publish", &[], batch.as_bytes()).0, 200);
    let (_, v) = http(h.http_addr, "POST", "/v1/dev/token?mid=41&name=ann", &[], b"");
    let token = v["data"]["token"].as_str().expect("a development token");
    let auth = serde_json::json!({"mid": 41, "room_id": "live://1", "token": token}).to_string();
    let _member = Client::authed(h.tcp_addr, &auth);
    wait_until("the member counted", || {
        let (_, v) = http(h.http_addr, "GET", "/v1/online/rooms?rooms=live://1", &[], b"");
        v["data"]["live://1"] == 1
    });
    let mut tried = 0;
    let mut rows: Vec<&str> = API
        .lines()
        .filter(|l| l.starts_with("| `GET /") || l.starts_with("| `POST /"))
        .collect();
    // A drain turns `/healthz` to 503 for good: its rows come last.
    rows.sort_by_key(|row| row.starts_with("| `POST /v1/drain") || row.starts_with("| `GET /v1/drain"));
    for row in rows {
        let cells: Vec<&str> = row.split(" | ").collect();
        let route = cells[0].trim_start_matches("| `");
        let route = &route[..route.find('`').unwrap()];
        let (method, path) = route.split_once(' ').unwrap();
        // Rows that name routes without an example request are the push
        // routes (run by the other tests) and the query-less reads.
        if !path.contains('?') && !matches!(path, "/v1/stats" | "/metrics" | "/healthz" | "/volley.js" | "/v1/drain") {
            continue;
        }
        let (status, v) = http(h.http_addr, method, path, &[], b"");
        assert_eq!(status, 200, "{route}: {v}");
        tried += 1;
        let shown = cells.last().unwrap();
        if !shown.trim_start().starts_with("`{") {
            continue;
        }
        let example = shown.split('`').nth(1).unwrap();
        for field in fields_shown(example) {
            if field == "code" || field == "message" {
                continue;
            }
            assert!(has_key(&v, &field), "{route}: no `{field}` in {v}");
        }
    }
    assert!(tried >= 10, "{tried} routes");
}
