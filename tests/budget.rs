//! The global outbound budget (`[limits] outbound_budget`) against the real
//! binary: 19,000 clients join one room and stop reading while an HTTP
//! publisher goes on; the server's resident memory must stay within the
//! budget of where it stood before the first publish, the stalled clients
//! must be closed as slow consumers, and a member that reads must get every
//! message.
//!
//! The server runs as a child process because this process needs 19,000
//! descriptors for the clients alone (the host allows 20,000 per process).
//! This file holds one test so that no other test shares its descriptors.

mod common;

use common::{frame, op};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STALLED: usize = 19_000;
const BUDGET: usize = 256 << 20;
/// Pushes per publish request: each is a burst of that many frames per
/// connection before its driver writes, memory the budget must leave room for.
const BATCH: u64 = 5;
const ROOM: &str = "live://stall";

/// The server child; killed when dropped.
struct Volley {
    child: Child,
    tcp: SocketAddr,
    api: SocketAddr,
}

impl Drop for Volley {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Volley {
    fn start() -> Volley {
        let budget = BUDGET.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["serve", "--shards", "2", "--log-format", "json", "--log-level", "info"])
            .args(["--tcp-listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"])
            .args(["--api-listen", "127.0.0.1:0", "--api-publish-listen", "127.0.0.1:0"])
            .args(["--limits-outbound-budget", &budget])
            // 19,000 clients from one address, 500 in flight at a time.
            .args(["--limits-max-conns-per-ip", "0", "--limits-conn-rate-per-ip", "0"])
            .args(["--limits-max-handshakes-per-ip", "0", "--storage-mode", "memory"])
            .args(["--client-heartbeat-timeout-secs", "600"])
            // A stalled client's socket fills after kilobytes, not megabytes.
            .args(["--limits-socket-sndbuf", "16384"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("volley binary starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let serving = loop {
            let line = lines.next().expect("log line before exit").unwrap();
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "volley serving" {
                break v["fields"].clone();
            }
        };
        // Drain the log (a close is logged per connection) so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let addr = |k: &str| serving[k].as_str().unwrap().parse().unwrap();
        Volley {
            tcp: addr("tcp"),
            api: addr("api"),
            child,
        }
    }

    /// Resident memory of the server process, bytes.
    fn rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    fn stats(&self) -> Value {
        let (status, v) = common::http(self.api, "GET", "/v1/stats", &[], b"");
        assert_eq!(status, 200);
        v["data"]["total"].clone()
    }
}

/// Connects and authenticates `n` clients into the room without reading
/// anything but the auth reply; their receive buffers are made small so
/// the kernel holds little of what the server sends them.
fn stalled_clients(addr: SocketAddr, n: usize, first_mid: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut batch: Vec<TcpStream> = chunk
            .iter()
            .map(|i| {
                let mut s = TcpStream::connect(addr).expect("connect");
                let auth = format!(r#"{{"mid":{},"room_id":"{ROOM}"}}"#, first_mid + i);
                s.write_all(&frame(1, op::AUTH, 1, auth.as_bytes())).unwrap();
                s
            })
            .collect();
        for s in &mut batch {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut head = [0u8; 16];
            s.read_exact(&mut head).expect("auth reply");
            let len = u32::from_be_bytes(head[..4].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 16];
            s.read_exact(&mut body).unwrap();
            assert_eq!(u32::from_be_bytes(head[8..12].try_into().unwrap()), op::AUTH_REPLY);
            let small: libc::c_int = 4096;
            // SAFETY: setsockopt on a socket we own, with a c_int value.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&small as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        all.append(&mut batch);
    }
    all
}

#[test]
fn nineteen_thousand_stalled_clients_stay_within_the_outbound_budget() {
    let start = Instant::now();
    let v = Volley::start();

    // One member that reads everything, counting pushes.
    let mut reader = common::Client::authed(v.tcp, &format!(r#"{{"mid":1,"room_id":"{ROOM}"}}"#));
    reader.s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let unblock = reader.s.try_clone().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reading = {
        let (got, done) = (got.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Relaxed) {
                match reader.read() {
                    Some(g) if g.op == 1000 => {
                        got.fetch_add(1, Relaxed);
                    }
                    Some(g) if g.op == op::DISCONNECT => panic!("the reader was closed: {}", g.text()),
                    Some(_) => {}
                    None => break,
                }
            }
        })
    };

    let tcp = v.tcp;
    let per = STALLED / 4;
    let threads: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || stalled_clients(tcp, per, 10 + t * per)))
        .collect();
    let stalled: Vec<TcpStream> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(stalled.len(), STALLED);
    let s = v.stats();
    assert_eq!(s["authed"], STALLED as u64 + 1, "{s}");
    let before = v.rss();
    let t0 = Instant::now();
    eprintln!("connected in {:?}", start.elapsed());

    // 64 B pushes, BATCH per request, until every stalled client is closed.
    let body = "x".repeat(64);
    let batch = serde_json::json!({
        "messages": vec![serde_json::json!({"target": "room", "room": ROOM, "op": 1000, "body": body}); BATCH as usize]
    })
    .to_string();
    let (mut sent, mut peak) = (0u64, before);
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, r) = common::http(v.api, "POST", "/v1/publish", &[], batch.as_bytes());
        assert_eq!(status, 200, "{r}");
        sent += BATCH;
        // Paced by the member that reads: the server is not asked for more
        // than it can write, so what queues is what the stalled clients
        // do not take.
        let wait = Instant::now() + Duration::from_secs(20);
        while got.load(Relaxed) < sent {
            assert!(
                Instant::now() < wait,
                "the reader is stuck at {} of {sent}",
                got.load(Relaxed)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        peak = peak.max(v.rss());

        if sent % 200 == 0 {
            let s = v.stats();
            // The last few, alone under the budget, fill up to their own
            // limit of 1 MiB (7,000 pushes) before they go: not this
            // test's subject.
            if s["closes"]["slow_consumer"].as_u64().unwrap_or(0) >= STALLED as u64 * 19 / 20 {
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "stalled clients still open after {sent} messages: {}",
            v.stats()
        );
    }
    eprintln!("published in {:?}", t0.elapsed());
    let s = v.stats();
    let grew = peak.saturating_sub(before);
    eprintln!(
        "rss before {before} B, peak {peak} B (+{grew} B, budget {BUDGET}); {sent} messages; \
         budget_closes {}, slow_consumer closes {}",
        s["budget_closes"], s["closes"]["slow_consumer"]
    );
    assert!(grew <= BUDGET, "RSS grew by {grew} bytes, budget {BUDGET}");
    assert!(
        s["budget_closes"].as_u64().unwrap() > 0,
        "the budget closed connections: {s}"
    );
    common::wait_until("the reader to get every message", || got.load(Relaxed) == sent);
    done.store(true, Relaxed);
    let _ = unblock.shutdown(std::net::Shutdown::Both);
    drop(stalled);
    let _ = reading.join();
    eprintln!("done in {:?}", start.elapsed());
}
