//! Publishing that survives the server going away for a moment (a
//! restart, an upgrade): HTTP posts retried with their message ids, so each
//! is kept exactly once (`Retrying`), the churn mode's room publisher over
//! it, and its pusher of acknowledged pushes to users.
//!
//! Runs on the main thread (the room publisher) and on a thread of its own
//! (the pusher).

use crate::broadcast::Publish;
use crate::payload::{stamp, STAMP_LEN};
use crate::publish::HttpPublisher;
use crate::run::now_ns;
use crate::v2client::Shared;
use crate::wire::BENCH_OP;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// HTTP posts that are retried (reconnecting) for up to `retry` while the
/// server is away: with message ids in the paths and the durable store,
/// each is published exactly once across a restart or an upgrade.
pub struct Retrying {
    http: SocketAddr,
    api_key: String,
    retry: Duration,
    conn: Option<HttpPublisher>,
}

impl Retrying {
    pub fn new(http: SocketAddr, api_key: &str, retry: Duration) -> Self {
        Retrying {
            http,
            api_key: api_key.to_string(),
            retry,
            conn: None,
        }
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> Result<()> {
        let until = Instant::now() + self.retry;
        loop {
            if self.conn.is_none() {
                self.conn = HttpPublisher::connect(self.http, &self.api_key).ok();
            }
            let sent = match self.conn.as_mut() {
                Some(c) => c.post(path, body),
                None => Err(anyhow::anyhow!("cannot connect to {}", self.http)),
            };
            match sent {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(_) => {
                    self.conn = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Publishes each message to `room` over HTTP with message id
/// `RUN-SEQ`, retried while the server is away (`Retrying`).
pub fn retrying_publisher(
    room: &str,
    http: SocketAddr,
    api_key: &str,
    size: usize,
    retry: Duration,
) -> Result<Publish> {
    let (typ, rid) = room.split_once("://").context("--room must be type://id")?;
    let base = format!(
        "/goim/push/room?operation={BENCH_OP}&type={typ}&room={rid}&id=churn{}-",
        std::process::id()
    );
    let mut payload = vec![b'x'; size];
    let mut poster = Retrying::new(http, api_key, retry);
    Ok(Box::new(move |seq, ns| {
        stamp(&mut payload, seq, ns);
        poster.post(&format!("{base}{seq}"), &payload)
    }))
}

/// The op of the pushes to users (the room's is `BENCH_OP`).
const USER_OP: u32 = BENCH_OP + 1;

/// Pushes to users at `rate` a second while `shared.churning` is set,
/// each to the next of `mids`, time-stamped with its own sequence and
/// carrying a message id; answers how many were published.
pub fn spawn_pusher(
    mut poster: Retrying,
    rate: u64,
    mids: Vec<i64>,
    size: usize,
    shared: Arc<Shared>,
) -> std::thread::JoinHandle<Result<u64>> {
    std::thread::spawn(move || {
        let run = std::process::id();
        let mut payload = vec![b'u'; size.max(STAMP_LEN)];
        let start = Instant::now();
        let mut seq = 0u64;
        while shared.churning.load(Relaxed) && !mids.is_empty() {
            let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d.min(Duration::from_millis(50)));
                continue;
            }
            let mid = mids[seq as usize % mids.len()];
            stamp(&mut payload, seq, now_ns(shared.base));
            poster.post(
                &format!("/goim/push/mids?operation={USER_OP}&mids={mid}&id=push{run}-{seq}"),
                &payload,
            )?;
            seq += 1;
        }
        Ok(seq)
    })
}
