//! `durable jetstream`: the peer of `durable publish` for the durable-store
//! benchmark — NATS JetStream publishing with acknowledgements, over the
//! NATS text protocol on plain blocking sockets: a file-storage stream is
//! created (or found), then `--conns` connections each keep `--window`
//! publishes waiting for JetStream's acks (`{"stream":..,"seq":..}` on the
//! reply subject, in publish order): with 1, each waits for its ack before
//! the next, as `durable publish` waits for volley's answer; with more, as
//! an asynchronous JetStream publisher does and `durable pipeline` does
//! with volley. Reports acknowledged messages per second and ack latency.
//! Loopback only.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One NATS connection.
struct Nats {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Nats {
    fn connect(addr: SocketAddr) -> Result<Nats> {
        let s = TcpStream::connect(addr).with_context(|| format!("connect to nats-server at {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut n = Nats {
            w: s.try_clone()?,
            r: BufReader::new(s),
        };
        let info = n.line()?;
        if !info.starts_with("INFO") {
            bail!("not a NATS server: {info}");
        }
        n.w.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n")?;
        loop {
            let l = n.line()?;
            if l.starts_with("PONG") {
                return Ok(n);
            }
            if l.starts_with("-ERR") {
                bail!("nats-server refused the connection: {l}");
            }
        }
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            bail!("nats-server closed the connection");
        }
        Ok(l.trim_end().to_string())
    }

    /// The payload of the next MSG (answering PINGs meanwhile).
    fn next_msg(&mut self) -> Result<Vec<u8>> {
        loop {
            let l = self.line()?;
            if l.starts_with("PING") {
                self.w.write_all(b"PONG\r\n")?;
                continue;
            }
            if l.starts_with("-ERR") {
                bail!("nats-server: {l}");
            }
            if let Some(rest) = l.strip_prefix("MSG ") {
                let len: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("a MSG without a length")?;
                let mut body = vec![0u8; len + 2];
                self.r.read_exact(&mut body)?;
                body.truncate(len);
                return Ok(body);
            }
        }
    }

    /// Publishes `payload` to `subject` asking for a reply on `inbox`.
    fn request(&mut self, subject: &str, inbox: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let mut m = Vec::new();
        pub_frame(&mut m, subject, inbox, payload);
        self.w.write_all(&m)?;
        self.next_msg()
    }
}

/// Appends a PUB of `payload` to `subject` with reply subject `inbox`.
fn pub_frame(m: &mut Vec<u8>, subject: &str, inbox: &str, payload: &[u8]) {
    m.extend_from_slice(format!("PUB {subject} {inbox} {}\r\n", payload.len()).as_bytes());
    m.extend_from_slice(payload);
    m.extend_from_slice(b"\r\n");
}

/// `durable jetstream`.
pub fn run(addr: SocketAddr, conns: usize, secs: f64, size: usize, window: usize) -> Result<()> {
    let mut admin = Nats::connect(addr)?;
    admin.w.write_all(b"SUB _INBOX.admin 1\r\n")?;
    let cfg = json!({"name": "volleybench", "subjects": ["volleybench"], "storage": "file", "max_msgs": 10_000_000});
    let answer = admin.request(
        "$JS.API.STREAM.CREATE.volleybench",
        "_INBOX.admin",
        cfg.to_string().as_bytes(),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if v.get("error").is_some_and(|e| e["err_code"] != 10058) {
        bail!("creating the stream: {v} (is JetStream on? nats-server -js)");
    }
    let acked = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(crate::stats::new_hist()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..conns.max(1))
        .map(|i| {
            let (acked, hist) = (acked.clone(), hist.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut n = Nats::connect(addr)?;
                let inbox = format!("_INBOX.pub{i}");
                n.w.write_all(format!("SUB {inbox} 1\r\n").as_bytes())?;
                let payload = vec![b'x'; size];
                let mut lat = crate::stats::new_hist();
                let mut inflight = VecDeque::with_capacity(window);
                let mut out = Vec::new();
                loop {
                    out.clear();
                    while inflight.len() < window.max(1) && Instant::now() < deadline {
                        pub_frame(&mut out, "volleybench", &inbox, &payload);
                        inflight.push_back(Instant::now());
                    }
                    if !out.is_empty() {
                        n.w.write_all(&out)?;
                    }
                    let Some(t) = inflight.pop_front() else { break };
                    let ack = n.next_msg()?;
                    if !ack.starts_with(b"{\"stream\"") {
                        bail!("not an ack: {}", String::from_utf8_lossy(&ack));
                    }
                    let _ = lat.record(t.elapsed().as_micros().max(1) as u64);
                    acked.fetch_add(1, Relaxed);
                }
                let _ = hist.lock().unwrap().add(&lat);
                Ok(())
            })
        })
        .collect();
    let fields = json!({"mode": "durable jetstream", "conns": conns, "window": window, "payload_bytes": size});
    crate::stats::report_acks(threads, fields, &acked, &hist, start)
}
