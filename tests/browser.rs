//! The demo live room in a real browser: headless Chromium driven through
//! chromedriver (WebDriver over HTTP), two tabs in one room, against a
//! server that runs JWT auth with the development token endpoint on. Both
//! tabs must sign in with a development token and connect through
//! web/volley.js (protocol version 2), see the room's online count reach 2
//! and the other's arrival as a presence event, agree permessage-deflate
//! with the server (what they send and its big pushes are compressed), and
//! show a message sent
//! from one of them as a client publish (no HTTP publish from the page);
//! closed by the server as slow consumers by a burst, both must resume and
//! show every message of the burst exactly once; and a reloaded tab must
//! show the room's history. And across `volley upgrade` of a server run
//! as its own process, the page must keep its connection (volley.js counts
//! no second open) and show every message once. scripts/test.sh installs
//! chromium and chromium-driver.

mod common;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A chromedriver we started, stopped (by its PID) when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // chromedriver leads its own process group, which holds the
        // browsers it started: take them all down, pass or fail.
        // SAFETY: plain kill(2) on a process group we created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `n` letters and digits that deflate cannot shrink much (about 6 bits a
/// character): padding that stays big when the server compresses it.
fn noise(n: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x >> 58) as usize] as char
        })
        .collect()
}

/// One WebDriver command; returns its `value`.
fn wd(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut s = TcpStream::connect(addr).expect("chromedriver is listening");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    // chromedriver may keep the connection open: read exactly Content-Length.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, body_len) = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{method} {path}: connection closed before the response");
        out.extend_from_slice(&buf[..n]);
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("chromedriver sends Content-Length");
            break (end + 4, len);
        }
    };
    while out.len() < head_end + body_len {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "{method} {path}: short body");
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    let json = String::from_utf8_lossy(&out[head_end..head_end + body_len]);
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
    assert!(v["value"]["error"].is_null(), "{method} {path}: {}", v["value"]);
    v["value"].clone()
}

/// A WebDriver session of headless Chromium with a profile of its own;
/// returns its id and the profile's folder.
fn browser(d: &Driver, name: &str) -> (String, std::path::PathBuf) {
    let profile =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-{name}-{}", std::process::id()));
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", profile.display())]
        }
    }}});
    let session = wd(d.addr, "POST", "/session", Some(caps));
    let sid = session["sessionId"].as_str().expect("session id").to_string();
    (sid, profile)
}

fn start_driver() -> Driver {
    let port = free_port();
    use std::os::unix::process::CommandExt;
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver on PATH (apt-get install chromium chromium-driver; scripts/test.sh does it)");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let end = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < end, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, addr }
}

/// Runs `script` (a function body) in the current tab until it returns true.
fn wait_js(d: &Driver, sid: &str, what: &str, script: &str) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = wd(
            d.addr,
            "POST",
            &format!("/session/{sid}/execute/sync"),
            Some(json!({"script": script, "args": []})),
        );
        if v == json!(true) {
            return;
        }
        let state = wd(
            d.addr,
            "POST",
            &format!("/session/{sid}/execute/sync"),
            Some(json!({"script": "return document.body.innerText", "args": []})),
        );
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; page says:\n{state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_tabs_chat_resume_after_a_server_side_close_and_see_history_on_reload() {
    // One shard, so that a burst published in one request is queued whole
    // before the tabs' connections are written to: with room for one big
    // message only, both are closed as slow consumers, every time.
    let h = common::start_server(|c| {
        c.shards = 1;
        c.api.max_push_body = 16384;
        c.limits.outbound_limit = 20_000;
        c.auth.mode = volley::config::AuthMode::Jwt;
        c.auth.jwt_secret = vec!["browser-test-secret-0123456789abcdef".into()];
        c.auth.dev_tokens = true;
    });
    let d = start_driver();
    let (sid, profile) = browser(&d, "tabs");
    let url = |name: &str| format!("http://{}/demo?room=live://browser&name={name}", h.http_addr);

    wd(
        d.addr,
        "POST",
        &format!("/session/{sid}/url"),
        Some(json!({"url": url("alice")})),
    );
    let alice = wd(d.addr, "GET", &format!("/session/{sid}/window"), None);
    let bob = wd(
        d.addr,
        "POST",
        &format!("/session/{sid}/window/new"),
        Some(json!({"type": "tab"})),
    )["handle"]
        .clone();
    let switch = |handle: &Value| {
        wd(
            d.addr,
            "POST",
            &format!("/session/{sid}/window"),
            Some(json!({"handle": handle})),
        );
    };
    switch(&bob);
    wd(
        d.addr,
        "POST",
        &format!("/session/{sid}/url"),
        Some(json!({"url": url("bob")})),
    );

    for (who, handle) in [("bob", &bob), ("alice", &alice)] {
        switch(handle);
        wait_js(
            &d,
            &sid,
            &format!("{who} connected with 2 online"),
            &format!(
                "return document.getElementById('status').textContent === 'connected as {who}' \
                 && document.getElementById('online').textContent === '2'"
            ),
        );
    }
    assert_eq!(
        common::authed_per_shard(&h).iter().sum::<u64>(),
        2,
        "two WebSocket clients"
    );
    // Chromium offered permessage-deflate and the server agreed: what the
    // tabs send is compressed, and so are the big messages of the burst
    // below (the small ones go plain).
    wait_js(
        &d,
        &sid,
        "permessage-deflate agreed",
        "return document.getElementById('status').dataset.extensions \
         === 'permessage-deflate; server_no_context_takeover; client_no_context_takeover'",
    );
    switch(&alice);
    wait_js(
        &d,
        &sid,
        "bob's arrival as a presence event in alice's tab",
        "return [...document.querySelectorAll('#messages li')].some(li => li.textContent === '·bob joined')",
    );

    // Alice sends through the page's form: a client publish (op 52), not
    // the HTTP API.
    let stat = |name: &str| -> u64 {
        h.stats()
            .iter()
            .map(|s| serde_json::to_value(s).unwrap()[name].as_u64().unwrap())
            .sum()
    };
    let api_before = stat("published");
    wd(
        d.addr,
        "POST",
        &format!("/session/{sid}/execute/sync"),
        Some(
            json!({"script": "document.getElementById('text').value = 'hello from alice'; \
                               document.getElementById('send').click(); return true", "args": []}),
        ),
    );
    for (who, handle) in [("alice", &alice), ("bob", &bob)] {
        switch(handle);
        wait_js(
            &d,
            &sid,
            &format!("the message in {who}'s tab"),
            "return [...document.querySelectorAll('#messages li')].some(li => li.textContent === 'alicehello from alice')",
        );
    }
    assert_eq!(stat("client_publishes"), 1, "sent as a client publish");
    // Chromium compressed it, and the server inflated it (counted by the
    // shards' sweep, once a second).
    common::wait_until("the publish inflated", || stat("ws_inflated") >= 1);
    assert_eq!(stat("published"), api_before, "nothing through the publish API");

    // What README's *Try it* sends with curl: a goim room push whose body
    // is plain text, shown in both tabs as it came.
    let path = "/goim/push/room?operation=1000&type=live&room=browser";
    let (status, v) = common::http(h.http_addr, "POST", path, &[], b"hello from curl");
    assert_eq!(status, 200, "{v}");
    for (who, handle) in [("alice", &alice), ("bob", &bob)] {
        switch(handle);
        wait_js(
            &d,
            &sid,
            &format!("the curl message in {who}'s tab"),
            "return [...document.querySelectorAll('#messages li')].some(li => li.textContent === '?hello from curl')",
        );
    }

    // A burst of three 14 KB messages in one request (about 10.5 KB each
    // once compressed): the tabs' queues pass their 20,000-byte limit, the
    // server closes both, and each resumes.
    let slow_before = common::closes(&h, "slow_consumer");
    let msg = |i: usize| {
        json!({"target": "room", "room": "live://browser", "op": 1000,
        "body": json!({"from": "bot", "text": format!("big-{i}"), "pad": noise(14_000, i as u64)}).to_string()})
    };
    let burst = json!({"messages": [msg(1), msg(2), msg(3)]}).to_string();
    let (status, v) = common::http(h.http_addr, "POST", "/v1/publish", &[], burst.as_bytes());
    assert_eq!(status, 200, "{v}");
    common::wait_until("both tabs closed as slow consumers", || {
        common::closes(&h, "slow_consumer") >= slow_before + 2
    });
    common::wait_until("the burst compressed", || stat("ws_compressed") >= 3);
    let once = |text: &str| {
        format!(
            "return [...document.querySelectorAll('#messages li')].filter(li => li.textContent === '{text}').length === 1 \
             && document.getElementById('status').textContent.startsWith('connected as')"
        )
    };
    for (who, handle) in [("alice", &alice), ("bob", &bob)] {
        switch(handle);
        for i in 1..=3 {
            wait_js(
                &d,
                &sid,
                &format!("big-{i} once in {who}'s tab"),
                &once(&format!("botbig-{i}")),
            );
        }
    }

    // A reload shows the room's history, then goes on live.
    wd(d.addr, "POST", &format!("/session/{sid}/refresh"), Some(json!({})));
    wait_js(&d, &sid, "history after reload", &once("alicehello from alice"));
    wait_js(&d, &sid, "the burst in history", &once("botbig-3"));
    common::post(
        &h,
        "/v1/push/room",
        json!({"room": "live://browser", "op": 1000, "body": json!({"from": "bot", "text": "after reload"}).to_string()})
            .to_string()
            .as_bytes(),
    );
    wait_js(&d, &sid, "live after reload", &once("botafter reload"));
    wd(d.addr, "DELETE", &format!("/session/{sid}"), None);
    let _ = std::fs::remove_dir_all(&profile);
}

#[test]
fn the_demo_page_keeps_its_connection_across_an_upgrade() {
    // The server as a process of its own: an upgrade starts the binary
    // again and hands it the page's WebSocket. Auth off: the page connects
    // without a token.
    let s = common::process::Running::start(std::path::Path::new(env!("CARGO_BIN_EXE_volley")), "browser", &[]);
    let d = start_driver();
    let (sid, profile) = browser(&d, "upgrade");
    let url = format!("http://{}/demo?room=live://up&name=carol", s.api);
    wd(
        d.addr,
        "POST",
        &format!("/session/{sid}/url"),
        Some(json!({"url": url})),
    );
    let connected_once = "return document.getElementById('status').textContent === 'connected as carol' \
                          && document.getElementById('status').dataset.opens === '1'";
    wait_js(&d, &sid, "carol connected", connected_once);
    // Joined (the page joins right after connecting): the room counts her.
    common::wait_until("carol in the room", || {
        common::http(s.api, "GET", "/v1/online/rooms?rooms=live://up", &[], b"").1["data"]["live://up"] == 1
    });
    let once = |text: &str| {
        format!("return [...document.querySelectorAll('#messages li')].filter(li => li.textContent === '?{text}').length === 1")
    };
    s.publish("before the upgrade");
    wait_js(&d, &sid, "the message before", &once("before the upgrade"));

    let old = s.pid();
    let out = s.upgrade();
    assert!(out.status.success(), "{out:?}");
    assert_ne!(s.pid(), old);
    for i in 1..=5 {
        s.publish(&format!("after the upgrade {i}"));
    }
    for i in 1..=5 {
        wait_js(
            &d,
            &sid,
            &format!("message {i} after"),
            &once(&format!("after the upgrade {i}")),
        );
    }
    // Still the first connection: volley.js never reconnected, and the
    // message from before is still shown once (nothing was replayed).
    wait_js(&d, &sid, "no reconnect", connected_once);
    wait_js(&d, &sid, "nothing twice", &once("before the upgrade"));
    wd(d.addr, "DELETE", &format!("/session/{sid}"), None);
    let _ = std::fs::remove_dir_all(&profile);
}
