//! `volley-loadgen attack KIND`: one hostile client's attack at a time
//! against a running volley (docs/LIMITS.md says what each limit answers),
//! with a bystander beside it: a client in another room, from another
//! source address, getting one push a second through the HTTP API. Reports
//! what the attack got (answers, refusals, what it holds), the server's
//! memory and CPU (with --server-pid), a few of its counters, and how late
//! the bystander's pushes were.
//!
//! Runs on plain threads with blocking sockets: attacks need to be
//! persistent, not fast. Every socket is on loopback (the addresses given,
//! the attacker's source `--from`, the bystander's 127.0.0.2), every run
//! ends after `--secs`.

mod kinds;

use crate::procfs::procs_usage;
use crate::publish::get_json;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use volley::proto::binary::{self, op};

/// Which attack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Read marks (op 48) for ever-new rooms, 30 per op 9 batch.
    Marks,
    /// Joins and leaves of ever-new rooms, 30 per op 9 batch.
    Joins,
    /// 250 connections asking for 64 patterns of 120 segments each.
    DeepPatterns,
    /// 100 connections asking for 64 patterns of 100 segments mixing `*`
    /// that match one room (what is refused replaced by 16 of the worst
    /// patterns the bounds allow), 20 clients publishing to that room at 10
    /// a second.
    PatternCpu,
    /// Unauthenticated TCP publishers announcing 4 MiB auth frames, 100 at a
    /// time, reconnecting.
    PublisherPreauth,
    /// HTTP API connections trickling their headers, a byte every 5 s, up
    /// to 1,100.
    SlowHeaders,
    /// 100 HTTP requests declaring 4 MiB bodies that never finish,
    /// reconnecting.
    Bodies,
    /// Unauthenticated sockets from one address (raw TCP, and WebSocket
    /// upgrades begun and stopped) as fast as they open, held; a client from
    /// another address connects once a second.
    Handshakes,
    /// User pushes to users nobody connects as, until `[inbox] memory`.
    InboxCap,
    /// One message each to 300,000 rooms, past `[history] memory`.
    HistoryCap,
}

/// What an attack needs to know.
#[derive(Clone, Debug)]
pub struct Target {
    /// Client TCP listener.
    pub tcp: SocketAddr,
    /// Client WebSocket listener.
    pub ws: SocketAddr,
    /// HTTP API.
    pub http: SocketAddr,
    /// TCP publisher listener.
    pub publish: SocketAddr,
    /// API key ("" for none).
    pub api_key: String,
    /// The attacker's source address.
    pub from: String,
    /// Until when the attack runs.
    pub until: Instant,
    /// Set when the run is over.
    pub stop: Arc<AtomicBool>,
}

impl Target {
    /// Whether the attack should go on.
    pub fn on(&self) -> bool {
        Instant::now() < self.until && !self.stop.load(Relaxed)
    }
}

/// Runs `kind` for `secs` seconds and reports.
pub fn run(kind: Kind, target: Target, server_pid: &[u32], json_out: bool) -> Result<()> {
    let start = Instant::now();
    let secs = target.until.saturating_duration_since(start).as_secs_f64();
    let by = Bystander::start(&target)?;
    let usage0 = procs_usage(server_pid);
    let stats0 = get_json(target.http, &target.api_key, "/v1/stats").ok();
    let peak = Arc::new(Mutex::new(usage0.map_or(0, |u| u.0)));
    let sampler = {
        let (peak, pids, stop) = (peak.clone(), server_pid.to_vec(), target.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                if let Some((rss, _)) = procs_usage(&pids) {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(rss);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let got = kinds::run(kind, &target);
    let wall = start.elapsed().as_secs_f64();
    let usage1 = procs_usage(server_pid);
    let stats1 = get_json(target.http, &target.api_key, "/v1/stats").ok();
    target.stop.store(true, Relaxed);
    let bystander = by.finish();
    let _ = sampler.join();
    let tick = crate::procfs::tick_secs();
    let server = match (usage0, usage1) {
        (Some((rss0, t0)), Some((rss1, t1))) => json!({
            "rss_start_mb": rss0 as f64 / 1048576.0,
            "rss_peak_mb": *peak.lock().unwrap() as f64 / 1048576.0,
            "rss_end_mb": rss1 as f64 / 1048576.0,
            "cpu_pct": (t1 - t0) as f64 * tick / wall * 100.0,
        }),
        _ => Value::Null,
    };
    let report = json!({
        "kind": format!("{kind:?}"),
        "secs": secs,
        "attack": got.unwrap_or_else(|e| json!({"error": format!("{e:#}")})),
        "server": server,
        "counters": counters(stats0.as_ref(), stats1.as_ref()),
        "bystander": bystander,
    });
    crate::report::print_report(&report, json_out);
    Ok(())
}

/// The server's counters the attacks are about: gauges as they end,
/// counters as they moved.
fn counters(before: Option<&Value>, after: Option<&Value>) -> Value {
    let (Some(b), Some(a)) = (before, after) else {
        return Value::Null;
    };
    let (b, a) = (&b["total"], &a["total"]);
    let gauges = [
        "conns",
        "authed",
        "room_logs",
        "history_bytes",
        "history_messages",
        "inbox_bytes",
        "inbox_messages",
        "pattern_bytes",
    ];
    let moved = [
        "history_logs_evicted",
        "history_evicted_memory",
        "inbox_evicted_memory",
        "pattern_refused",
        "api_timeouts",
        "api_evicted",
        "api_refused",
        "accept_errors",
        "publisher_publishes",
    ];
    let mut out = serde_json::Map::new();
    for g in gauges {
        out.insert(g.into(), a[g].clone());
    }
    for c in moved {
        if let (Some(x), Some(y)) = (a[c].as_u64(), b[c].as_u64()) {
            out.insert(c.into(), (x - y).into());
        }
    }
    for (group, names) in [
        ("closes", &a["closes"]),
        ("publisher_closes", &a["publisher_closes"]),
        ("errors", &a["errors"]),
    ] {
        let moved: serde_json::Map<String, Value> = names
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let d = v.as_u64()? - b[group][k].as_u64().unwrap_or(0);
                (d > 0).then(|| (k.clone(), d.into()))
            })
            .collect();
        out.insert(group.into(), moved.into());
    }
    out.into()
}

/// A client from 127.0.0.2 in `live://bystander`, pushed to once a second
/// over HTTP; notes how late each push arrives.
struct Bystander {
    stop: Arc<AtomicBool>,
    publisher: std::thread::JoinHandle<u64>,
    reader: std::thread::JoinHandle<Vec<(u64, f64)>>,
    unblock: TcpStream,
}

impl Bystander {
    fn start(t: &Target) -> Result<Bystander> {
        let mut s = connect_from(t.tcp, "127.0.0.2").context("the bystander connects")?;
        let auth = br#"{"mid":7777,"room_id":"live://bystander"}"#;
        s.write_all(&frame(1, op::AUTH, 1, auth))?;
        let reply = read_frame(&mut s).context("the bystander's auth reply")?;
        anyhow::ensure!(reply.0 == op::AUTH_REPLY, "the bystander was refused: op {}", reply.0);
        let unblock = s.try_clone()?;
        let mut beat = s.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let publisher = {
            let (stop, sent, http, key) = (stop.clone(), sent.clone(), t.http, t.api_key.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    let _ = beat.write_all(&frame(1, op::HEARTBEAT, 0, b""));
                    sent.lock().unwrap().push(Instant::now());
                    let path = "/goim/push/room?operation=1000&type=live&room=bystander";
                    if post(http, &key, path, n.to_string().as_bytes()).ok() != Some(200) {
                        sent.lock().unwrap().pop();
                    } else {
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                n
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Ok((opcode, body)) = read_frame(&mut s) {
                if opcode == 1000 {
                    let n: u64 = String::from_utf8_lossy(&body).parse().unwrap_or(u64::MAX);
                    if let Some(at) = sent.lock().unwrap().get(n as usize) {
                        got.push((n, at.elapsed().as_secs_f64() * 1000.0));
                    }
                }
            }
            got
        });
        Ok(Bystander {
            stop,
            publisher,
            reader,
            unblock,
        })
    }

    fn finish(self) -> Value {
        self.stop.store(true, Relaxed);
        let published = self.publisher.join().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(2));
        let _ = self.unblock.shutdown(std::net::Shutdown::Both);
        let got = self.reader.join().unwrap_or_default();
        let mut delays: Vec<f64> = got.iter().map(|g| g.1).collect();
        delays.sort_by(f64::total_cmp);
        let in_order = got.windows(2).all(|w| w[0].0 < w[1].0);
        json!({
            "published": published,
            "received": got.len(),
            "in_order": in_order,
            "delay_ms_p50": delays.get(delays.len() / 2).copied().unwrap_or(0.0),
            "delay_ms_max": delays.last().copied().unwrap_or(0.0),
        })
    }
}

/// A TCP connection from source address `src` (any of 127.0.0.0/8).
pub fn connect_from(addr: SocketAddr, src: &str) -> Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from: SocketAddr = format!("{src}:0").parse()?;
    s.bind(&from.into())?;
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

/// One protocol frame.
pub fn frame(ver: u16, opcode: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    binary::encode(&mut b, ver, opcode, seq, body);
    b.to_vec()
}

/// The next frame's operation and body.
pub fn read_frame(s: &mut TcpStream) -> std::io::Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(16)];
    s.read_exact(&mut body)?;
    Ok((u32::from_be_bytes([h[8], h[9], h[10], h[11]]), body))
}

/// One POST to the HTTP API on a connection of its own; the status.
pub fn post(http: SocketAddr, key: &str, path: &str, body: &[u8]) -> Result<u16> {
    let mut s = TcpStream::connect(http)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let key = if key.is_empty() {
        String::new()
    } else {
        format!("X-Api-Key: {key}\r\n")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\n{key}Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let status = String::from_utf8_lossy(&resp)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("a status line")?;
    Ok(status)
}
