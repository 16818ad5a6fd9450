//! Test harness: start the real server on 127.0.0.1:0 through `Server::start`
//! (which returns only once every shard serves), then speak raw bytes.
#![allow(dead_code)]

pub mod process;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
pub use volley::proto::binary::op;
use volley::{Config, Server, ServerHandle};

/// A server with 2 shards on ephemeral loopback ports, keeping what it
/// keeps in memory (tests of the durable store give it a folder of its
/// own); `tweak` edits the config.
pub fn start_server(tweak: impl FnOnce(&mut Config)) -> ServerHandle {
    Server::start(config(tweak)).expect("server starts")
}

/// The configuration `start_server` starts with.
pub fn config(tweak: impl FnOnce(&mut Config)) -> Config {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut c = Config {
        shards: 2,
        shutdown_grace_secs: 1,
        ..Config::default()
    };
    c.storage.mode = volley::config::StorageMode::Memory;
    c.tcp.listen = any;
    c.ws.listen = any;
    c.api.listen = any;
    c.api.publish_listen = any;
    tweak(&mut c);
    c
}

pub fn frame(ver: u16, op: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + body.len());
    v.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
    v.extend_from_slice(&16u16.to_be_bytes());
    v.extend_from_slice(&ver.to_be_bytes());
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub ver: u16,
    pub op: u32,
    pub seq: u32,
    pub body: Vec<u8>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Client {
    pub s: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s }
    }

    /// Connects from source address `src` (any 127.0.0.0/8 address works
    /// without setup), so per-IP limits can tell clients apart.
    pub fn connect_from(addr: SocketAddr, src: &str) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.connect(&addr.into()).unwrap();
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { s }
    }

    /// Connects and authenticates with `auth` (JSON); asserts the op 8 reply.
    pub fn authed(addr: SocketAddr, auth: &str) -> Client {
        let mut c = Client::connect(addr);
        c.send(op::AUTH, 1, auth.as_bytes());
        let r = c.read().expect("auth reply");
        assert_eq!(
            (r.op, r.seq, r.ver),
            (op::AUTH_REPLY, 1, 1),
            "auth reply: {r:?} ({})",
            r.text()
        );
        c
    }

    pub fn send(&mut self, op: u32, seq: u32, body: &[u8]) {
        self.send_as(1, op, seq, body);
    }

    /// A frame with the given protocol version.
    pub fn send_as(&mut self, ver: u16, op: u32, seq: u32, body: &[u8]) {
        self.s.write_all(&frame(ver, op, seq, body)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes);
    }

    /// The next frame; None on EOF or reset.
    pub fn read(&mut self) -> Option<Got> {
        let mut h = [0u8; 16];
        if self.s.read_exact(&mut h).is_err() {
            return None;
        }
        let len = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
        assert_eq!(u16::from_be_bytes([h[4], h[5]]), 16, "server header length");
        let mut body = vec![0u8; len - 16];
        self.s.read_exact(&mut body).ok()?;
        Some(Got {
            ver: u16::from_be_bytes([h[6], h[7]]),
            op: u32::from_be_bytes(h[8..12].try_into().unwrap()),
            seq: u32::from_be_bytes(h[12..16].try_into().unwrap()),
            body,
        })
    }

    /// The next frame, skipping heartbeat replies.
    pub fn read_push(&mut self) -> Got {
        loop {
            let g = self.read().expect("a push, got EOF");
            if g.op != op::HEARTBEAT_REPLY {
                return g;
            }
        }
    }

    /// Reads until EOF and returns the op 6 goodbye text if one came first.
    pub fn expect_closed(&mut self) -> Option<String> {
        let mut goodbye = None;
        while let Some(g) = self.read() {
            if g.op == op::DISCONNECT {
                goodbye = Some(g.text());
            }
        }
        goodbye
    }

    /// Reads until EOF; the last frame must be the op 6 goodbye, whose text
    /// is returned with every frame before it.
    pub fn goodbye_after(&mut self) -> (String, Vec<Got>) {
        let mut got = Vec::new();
        while let Some(g) = self.read() {
            got.push(g);
        }
        let last = got.pop().expect("a goodbye before EOF, got nothing");
        assert_eq!(last.op, op::DISCONNECT, "the last frame is the goodbye: {last:?}");
        (last.text(), got)
    }
}

/// One HTTP/1.1 request over a fresh connection; returns status and JSON body.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, json)
}

pub fn post(h: &ServerHandle, path: &str, body: &[u8]) -> Value {
    let (status, v) = http(h.http_addr, "POST", path, &[], body);
    assert_eq!(status, 200, "{path}: {v}");
    assert_eq!(v["code"], 0, "{path}: {v}");
    v
}

/// Reads `n` user pushes (version 2): (push id, text).
pub fn read_user_pushes(c: &mut Client, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let p = c.read_push2().expect("a user push");
            assert_eq!(p.kind, 2, "a user push");
            (p.offset, String::from_utf8(p.payload).unwrap())
        })
        .collect()
}

/// Sends a version-2 request and returns its reply's JSON, with the
/// reply's op as `op`.
pub fn request(c: &mut Client, op: u32, seq: u32, body: Value) -> Value {
    c.send_as(2, op, seq, body.to_string().as_bytes());
    let g = c.read().expect("a reply");
    assert_eq!(g.seq, seq, "{}", g.text());
    let mut v: Value = serde_json::from_slice(&g.body).unwrap();
    v["op"] = g.op.into();
    v
}

/// Polls `cond` until it holds (the server publishes some views once a second).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Authenticated connections per shard.
pub fn authed_per_shard(h: &ServerHandle) -> Vec<u64> {
    h.stats().iter().map(|s| s.authed).collect()
}

/// Opens clients from `make` until both shards hold at least one of them.
/// SO_REUSEPORT spreads by 4-tuple hash, so a handful always suffices.
pub fn spread(h: &ServerHandle, mut make: impl FnMut(usize) -> Client) -> Vec<Client> {
    let base = authed_per_shard(h);
    let mut out = Vec::new();
    for i in 0..64 {
        out.push(make(i));
        let now = authed_per_shard(h);
        if out.len() >= 4 && now.iter().zip(&base).all(|(n, b)| n > b) {
            return out;
        }
    }
    panic!("64 connections all landed on one shard");
}

/// TCP publisher connections closed for `reason`, all shards.
pub fn publisher_closes(h: &ServerHandle, reason: &str) -> u64 {
    h.stats()
        .iter()
        .map(|s| s.publisher_closes.get(reason).copied().unwrap_or(0))
        .sum()
}

pub fn closes(h: &ServerHandle, reason: &str) -> u64 {
    h.stats()
        .iter()
        .map(|s| s.closes.get(reason).copied().unwrap_or(0))
        .sum()
}

/// A version-2 push, read with the test's own parser (an oracle independent
/// of the server's encoder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push2 {
    pub op: u32,
    pub kind: u8,
    pub room: String,
    pub offset: u64,
    pub epoch: u64,
    pub id: String,
    pub payload: Vec<u8>,
}

/// Version-2 operation codes (docs/PROTOCOL.md).
pub mod op2 {
    pub const JOIN: u32 = 40;
    pub const JOIN_REPLY: u32 = 41;
    pub const LEAVE: u32 = 42;
    pub const LEAVE_REPLY: u32 = 43;
    pub const PUSH: u32 = 44;
    pub const ACK: u32 = 46;
    pub const ACK_REPLY: u32 = 47;
    pub const READ: u32 = 48;
    pub const READ_REPLY: u32 = 49;
    pub const ERROR: u32 = 50;
}

impl Push2 {
    pub fn parse(b: &[u8]) -> Push2 {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as usize;
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        let (rl, il) = (u16_at(6), u16_at(24));
        Push2 {
            op: u32::from_be_bytes(b[0..4].try_into().unwrap()),
            kind: b[4],
            room: String::from_utf8(b[26..26 + rl].to_vec()).unwrap(),
            offset: u64_at(8),
            epoch: u64_at(16),
            id: String::from_utf8(b[26 + rl..26 + rl + il].to_vec()).unwrap(),
            payload: b[26 + rl + il..].to_vec(),
        }
    }
}

impl Client {
    /// Connects and authenticates with version 2; returns the client and the
    /// key its op 8 named.
    pub fn authed_v2(addr: SocketAddr, auth: &str) -> (Client, String) {
        let mut c = Client::connect(addr);
        c.send_as(2, op::AUTH, 1, auth.as_bytes());
        let r = c.read().expect("auth reply");
        assert_eq!((r.op, r.seq, r.ver), (op::AUTH_REPLY, 1, 2), "auth reply: {}", r.text());
        let v: Value = serde_json::from_slice(&r.body).expect("JSON auth reply");
        let key = v["key"].as_str().expect("a key").to_string();
        (c, key)
    }

    /// Sends a version-2 join (resuming after `(offset, epoch)` if given)
    /// and returns its reply's JSON.
    pub fn join(&mut self, seq: u32, room: &str, resume: Option<(u64, &str)>) -> Value {
        let body = match resume {
            None => serde_json::json!({ "room": room }),
            Some((o, e)) => serde_json::json!({"room": room, "offset": o, "epoch": e}),
        };
        self.send_as(2, op2::JOIN, seq, body.to_string().as_bytes());
        let r = self.read().expect("join reply");
        assert_eq!((r.ver, r.op, r.seq), (2, op2::JOIN_REPLY, seq), "{}", r.text());
        serde_json::from_slice(&r.body).expect("JSON join reply")
    }

    /// The next version-2 push, skipping heartbeat replies; None on EOF.
    pub fn read_push2(&mut self) -> Option<Push2> {
        loop {
            let g = self.read()?;
            match g.op {
                op::HEARTBEAT_REPLY => continue,
                op2::PUSH => {
                    assert_eq!(g.ver, 2, "a version-2 push");
                    return Some(Push2::parse(&g.body));
                }
                op::DISCONNECT => return None,
                other => panic!("expected a push, got op {other}: {}", g.text()),
            }
        }
    }
}

/// A WebSocket client that sends exactly the bytes it is told to.
pub struct RawWs {
    pub s: TcpStream,
}

impl RawWs {
    pub fn open(addr: SocketAddr) -> RawWs {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            b"GET /sub HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        RawWs { s }
    }

    pub fn send_frame(&mut self, op: u8, payload: &[u8], masked: bool) {
        let _ = self.s.write_all(&ws_frame(op, payload, masked));
    }

    /// Skips server frames until a close frame; returns its code and reason.
    pub fn close_frame(&mut self) -> (u16, String) {
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).expect("a server frame before EOF");
            assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.s.read_exact(&mut l).unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.s.read_exact(&mut l).unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut p = vec![0u8; len];
            self.s.read_exact(&mut p).unwrap();
            if h[0] & 0x0f == 0x8 {
                let code = u16::from_be_bytes([p[0], p[1]]);
                let mut rest = Vec::new();
                let _ = self.s.read_to_end(&mut rest);
                return (code, String::from_utf8_lossy(&p[2..]).into_owned());
            }
        }
    }
}

/// Reads an HTTP response head, up to its blank line (or EOF).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A client WebSocket frame (FIN set), masked or not, as bytes.
pub fn ws_frame(op: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut v = vec![0x80 | op];
    let m = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        v.push(m | payload.len() as u8);
    } else {
        v.push(m | 127);
        v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    let key = [9, 8, 7, 6];
    if masked {
        v.extend_from_slice(&key);
    }
    v.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
    );
    v
}

/// A TCP publisher that authenticated with `key` (empty body when `None`).
pub fn publisher(addr: SocketAddr, key: Option<&str>) -> Client {
    let mut p = Client::connect(addr);
    p.send(op::AUTH, 1, key.unwrap_or("").as_bytes());
    let r = p.read().expect("auth reply");
    assert_eq!((r.op, r.seq), (op::AUTH_REPLY, 1), "{}", r.text());
    p
}

/// A TCP publisher's room push body (op 24), built from docs/API.md's
/// layout: business op, room length and room, payload.
pub fn room_body(op: u32, room: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = op.to_be_bytes().to_vec();
    b.extend_from_slice(&(room.len() as u16).to_be_bytes());
    b.extend_from_slice(room.as_bytes());
    b.extend_from_slice(payload);
    b
}
