//! Publishers, on plain blocking sockets on the main thread (they send at a
//! paced rate; the subscribers are the load): an HTTP client for volley's
//! publish API, volley's pipelined TCP publisher connection, and a WebSocket
//! client for servers that publish what a client sends (NATS, the tokio
//! peer).
//!
//! Frames and bodies are built with volley's own encoders
//! (`proto::binary`, `proto::publish`, `proto::ws`). Loopback only.

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;
use volley::proto::binary::{self, op};
use volley::proto::publish::{self, Target};
use volley::proto::ws::frame::client_frame;
use volley::proto::ws::opcode;
use volley::proto::ws::upgrade::client_request;

/// Keep-alive HTTP/1.1 client for the publish API: one request at a time.
pub struct HttpPublisher {
    s: std::net::TcpStream,
    http: SocketAddr,
    /// `X-Api-Key` header line, or empty.
    key_header: String,
}

impl HttpPublisher {
    /// Connects to the API at `http`, presenting `api_key` (empty: none).
    pub fn connect(http: SocketAddr, api_key: &str) -> Result<Self> {
        let s = std::net::TcpStream::connect(http).context("connect to the HTTP API")?;
        s.set_nodelay(true)?;
        let key_header = if api_key.is_empty() {
            String::new()
        } else {
            format!("X-Api-Key: {api_key}\r\n")
        };
        Ok(HttpPublisher { s, http, key_header })
    }

    /// POSTs `body` to `path` and waits for a 200.
    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<()> {
        self.post_json(path, body).map(drop)
    }

    /// POSTs `body` to `path`, waits for a 200, and returns its JSON.
    pub fn post_json(&mut self, path: &str, body: &[u8]) -> Result<serde_json::Value> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n",
            self.http,
            self.key_header,
            body.len()
        );
        self.s.write_all(head.as_bytes())?;
        self.s.write_all(body)?;
        let mut resp = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("API closed the connection");
            }
            resp.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(end) = r.parse(&resp).context("bad HTTP response")? else {
                continue;
            };
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            if resp.len() >= end + len {
                if r.code != Some(200) {
                    bail!("publish failed: {}", String::from_utf8_lossy(&resp));
                }
                return Ok(serde_json::from_slice(&resp[end..end + len]).unwrap_or(serde_json::Value::Null));
            }
        }
    }
}

/// volley's TCP publisher connection (docs/API.md): publishes go out
/// pipelined with sequence 0 (no reply); `barrier` (op 2 → op 3) confirms that
/// every earlier one was routed, or returns the server's op 6 reason.
pub struct TcpPublisher {
    s: std::net::TcpStream,
    addr: SocketAddr,
    body: BytesMut,
    frame: BytesMut,
}

impl TcpPublisher {
    /// Connects and authenticates with `api_key` (empty when none is set).
    pub fn connect(addr: SocketAddr, api_key: &str) -> Result<Self> {
        let s =
            std::net::TcpStream::connect(addr).with_context(|| format!("connect to the TCP publisher port {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut p = TcpPublisher {
            s,
            addr,
            body: BytesMut::new(),
            frame: BytesMut::new(),
        };
        p.send(op::AUTH, 1, api_key.as_bytes())?;
        p.expect(op::AUTH_REPLY)?;
        Ok(p)
    }

    fn send(&mut self, op: u32, seq: u32, body: &[u8]) -> Result<()> {
        self.frame.clear();
        binary::encode(&mut self.frame, binary::VERSION_GOIM, op, seq, body);
        self.s
            .write_all(&self.frame)
            .with_context(|| format!("publisher {}", self.addr))
    }

    /// Reads until op `want`; an op 6 is the server's refusal.
    fn expect(&mut self, want: u32) -> Result<()> {
        loop {
            let mut h = [0u8; binary::HEADER_LEN];
            self.s
                .read_exact(&mut h)
                .with_context(|| format!("publisher {}: waiting for op {want}", self.addr))?;
            let len = (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize).saturating_sub(binary::HEADER_LEN);
            if len > 1 << 20 {
                bail!("publisher {}: a {len}-byte reply is not one of ours", self.addr);
            }
            let mut frame = h.to_vec();
            frame.resize(binary::HEADER_LEN + len, 0);
            self.s.read_exact(&mut frame[binary::HEADER_LEN..])?;
            let Ok(Some((f, _))) = binary::decode(&frame, len) else {
                bail!("publisher {}: the server sent something that is not a frame", self.addr)
            };
            match f.op {
                op::DISCONNECT => bail!(
                    "publisher {}: server closed it: {}",
                    self.addr,
                    String::from_utf8_lossy(f.body)
                ),
                o if o == want => return Ok(()),
                _ => {}
            }
        }
    }

    /// The authenticated connection, for a caller that reads and writes it
    /// itself (`durable pipeline`).
    pub fn into_stream(self) -> std::net::TcpStream {
        self.s
    }

    /// A room push of `payload` with business operation `push_op`.
    pub fn push_room(&mut self, room: &str, push_op: u32, payload: &[u8]) -> Result<()> {
        self.push(&Target::Room(room.to_string()), push_op, payload)
    }

    /// A push of `payload` to `target` with business operation `push_op`.
    pub fn push(&mut self, target: &Target, push_op: u32, payload: &[u8]) -> Result<()> {
        self.body.clear();
        let pub_op = publish::encode(&mut self.body, target, push_op, payload);
        let body = std::mem::take(&mut self.body);
        let r = self.send(pub_op, 0, &body);
        self.body = body;
        r
    }

    /// op 2 → op 3: every earlier publish was routed.
    pub fn barrier(&mut self) -> Result<()> {
        self.send(op::HEARTBEAT, 1, &[])?;
        self.expect(op::HEARTBEAT_REPLY)
    }

    /// One room push to every publisher; after the `last` one a barrier on
    /// each: every message routed, or the server's reason why not.
    pub fn all(pubs: &mut [TcpPublisher], room: &str, push_op: u32, payload: &[u8], last: bool) -> Result<()> {
        for p in pubs.iter_mut() {
            p.push_room(room, push_op, payload)?;
        }
        if last {
            for p in pubs.iter_mut() {
                p.barrier()?;
            }
        }
        Ok(())
    }
}

/// A WebSocket publisher. A drain thread reads and discards whatever the
/// server sends it, so a server that echoes to the sender never blocks on it.
pub struct WsPublisher {
    s: std::net::TcpStream,
}

impl WsPublisher {
    /// Connects, upgrades at `path`, and sends `hello` as a text message
    /// (if not empty).
    pub fn connect(target: SocketAddr, path: &str, hello: &[u8]) -> Result<Self> {
        let mut s = std::net::TcpStream::connect(target).with_context(|| format!("publisher connect {target}"))?;
        s.set_nodelay(true)?;
        s.write_all(client_request(path, &target.to_string()).as_bytes())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b)? == 0 {
                bail!("publisher: server closed during the upgrade");
            }
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("publisher upgrade refused: {}", String::from_utf8_lossy(&head));
        }
        let mut p = WsPublisher { s };
        if !hello.is_empty() {
            p.send(hello)?;
        }
        let mut drain = p.s.try_clone()?;
        std::thread::spawn(move || {
            let mut sink = [0u8; 64 << 10];
            while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
        });
        Ok(p)
    }

    /// One text message.
    pub fn send(&mut self, text: &[u8]) -> Result<()> {
        self.s
            .write_all(&client_frame(true, opcode::TEXT, crate::wire::MASK, text))
            .context("publisher send")
    }
}

/// `GET path` on the HTTP API at `http` (one request, its own connection);
/// the reply's `data`.
pub fn get_json(http: SocketAddr, api_key: &str, path: &str) -> Result<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(http).context("connect to the HTTP API")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let key = if api_key.is_empty() {
        String::new()
    } else {
        format!("X-Api-Key: {api_key}\r\n")
    };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {http}\r\n{key}Connection: close\r\n\r\n").as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let at = memchr::memmem::find(&resp, b"\r\n\r\n").context("no end of headers")?;
    let v: serde_json::Value = serde_json::from_slice(&resp[at + 4..]).context("JSON reply")?;
    Ok(v["data"].clone())
}
