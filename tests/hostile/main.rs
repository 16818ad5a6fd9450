//! Hostile clients and careless operators: each defect of the client port,
//! the API and the configuration, tried as an attacker (or a careless
//! operator) would, against the real server on loopback, while a bystander
//! client in another room, from another source address, keeps receiving one
//! push every `PACE`: every test ends by checking that it got every push, in
//! order, none later than `LATE` after it was published.
//!
//! One file per area (`mod`s below); the harness is here.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod config;
mod held;
mod ip_limits;
mod keys;
mod patterns;
mod room_logs;
mod tokens;

use common::{op, Client};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time between two of the bystander's pushes.
const PACE: Duration = Duration::from_millis(200);

/// Latest a bystander's push may arrive after its publish began. The
/// attacks run in this process too, on a 2-core host beside the server:
/// this bounds what they may do to others (seconds of stall, lost pushes),
/// not the server's latency, which BENCHMARKS.md measures.
const LATE: Duration = Duration::from_secs(2);

/// Pushes the bystander gets at least, however quick the attack.
const MIN_PUSHES: usize = 5;

/// The bystander's room.
const ROOM: &str = "live://bystander";

/// A client in `ROOM` from 127.0.0.2 and a publisher pushing to the room
/// every `PACE` through the HTTP API, each push's payload its sequence
/// number; the reader notes when each arrives.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<u64>,
    reader: JoinHandle<Vec<(u64, Duration)>>,
    unblock: std::net::TcpStream,
    /// When each push was sent, by sequence number.
    sent: Arc<Mutex<Vec<Instant>>>,
}

impl Bystander {
    /// Connects the bystander to the server at `tcp` (client port) and
    /// starts pushing through `api`.
    pub fn start(tcp: SocketAddr, api: SocketAddr) -> Bystander {
        Bystander::new(tcp, api, None, None)
    }

    /// `start`, publishing with the API key `key`.
    pub fn keyed(tcp: SocketAddr, api: SocketAddr, key: Option<String>) -> Bystander {
        Bystander::new(tcp, api, key, None)
    }

    /// `start` on a `jwt_server`: the bystander signs in with a token.
    pub fn jwt(tcp: SocketAddr, api: SocketAddr) -> Bystander {
        Bystander::new(tcp, api, None, Some(token(serde_json::json!({"sub": "7777"}))))
    }

    fn new(tcp: SocketAddr, api: SocketAddr, key: Option<String>, token: Option<String>) -> Bystander {
        let mut c = Client::connect_from(tcp, "127.0.0.2");
        let auth = serde_json::json!({"mid": 7777, "room_id": ROOM, "token": token.unwrap_or_default()});
        c.send(op::AUTH, 1, auth.to_string().as_bytes());
        let r = c.read().expect("the bystander's auth reply");
        assert_eq!(r.op, op::AUTH_REPLY, "{}", r.text());
        let unblock = c.s.try_clone().unwrap();
        let mut beat = c.s.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let publisher = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    // A heartbeat each time: tests may shorten the deadline.
                    let _ = std::io::Write::write_all(&mut beat, &common::frame(1, op::HEARTBEAT, 0, b""));
                    sent.lock().unwrap().push(Instant::now());
                    let path = "/goim/push/room?operation=1000&type=live&room=bystander";
                    let headers: Vec<(&str, &str)> = key.iter().map(|k| ("X-Api-Key", k.as_str())).collect();
                    let (status, v) = common::http(api, "POST", path, &headers, n.to_string().as_bytes());
                    assert_eq!(status, 200, "the bystander's push {n} was refused: {v}");
                    n += 1;
                    std::thread::sleep(PACE);
                }
                n
            })
        };
        let reader = std::thread::spawn({
            let sent = sent.clone();
            move || {
                let mut got = Vec::new();
                while let Some(g) = c.read() {
                    match g.op {
                        1000 => {
                            let n: u64 = g.text().parse().expect("a sequence number");
                            let at = sent.lock().unwrap()[n as usize];
                            got.push((n, at.elapsed()));
                        }
                        op::DISCONNECT => panic!("the bystander was closed: {}", g.text()),
                        _ => {}
                    }
                }
                got
            }
        });
        Bystander {
            stop,
            publisher,
            reader,
            unblock,
            sent,
        }
    }

    /// Stops pushing and checks what the bystander got: every push, in
    /// order, each within `LATE`. Returns the slowest one's delay.
    pub fn finish(self) -> Duration {
        while self.sent.lock().unwrap().len() < MIN_PUSHES && !self.publisher.is_finished() {
            std::thread::sleep(PACE);
        }
        self.stop.store(true, Relaxed);
        let published = self.publisher.join().expect("the bystander's publisher");
        let end = Instant::now() + LATE;
        while Instant::now() < end {
            let _ = std::io::Write::write_all(&mut &self.unblock, &common::frame(1, op::HEARTBEAT, 0, b""));
            std::thread::sleep(PACE);
        }
        let _ = self.unblock.shutdown(std::net::Shutdown::Both);
        let got = self.reader.join().expect("the bystander's reader");
        let order: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(order, (0..published).collect::<Vec<_>>(), "every push, in order");
        assert!(published >= 3, "the test ran long enough to tell ({published} pushes)");
        let worst = got.iter().map(|g| g.1).max().unwrap_or_default();
        assert!(worst <= LATE, "a bystander push took {worst:?}");
        eprintln!("bystander: {published} pushes, slowest {worst:?}");
        worst
    }
}

/// Held by the tests that measure this process's resident memory, so that
/// no other such test (the ones that allocate most) runs meanwhile.
pub fn measuring() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resident memory of this process (the server runs in it), bytes.
pub fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok())
        .expect("VmRSS")
        * 1024
}

/// A stat summed over the server's shards.
pub fn total(h: &volley::ServerHandle, f: impl Fn(&volley::metrics::StatsSnapshot) -> u64) -> u64 {
    h.stats().iter().map(f).sum()
}

/// The HS256 secret of `jwt_server`.
pub const SECRET: &str = "hostile-secret-0123456789abcdef01";

/// A server with JWT auth (HS256, `SECRET`), edited by `tweak`.
pub fn jwt_server(tweak: impl FnOnce(&mut volley::Config)) -> volley::ServerHandle {
    common::start_server(|c| {
        c.auth.mode = volley::config::AuthMode::Jwt;
        c.auth.jwt_secret = vec![SECRET.into()];
        tweak(c)
    })
}

/// `claims` signed with `SECRET`; `exp` defaults to ten minutes from now.
pub fn token(mut claims: serde_json::Value) -> String {
    if claims.get("exp").is_none() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        claims["exp"] = (now.as_secs() + 600).into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
