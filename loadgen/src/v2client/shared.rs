//! `Shared`: what the connection threads and the main thread share — the
//! run's settings (targets, role, mix, churn) and its counters, each
//! counted by the threads with relaxed atomics and read by the main thread.

use super::mix::Mix;
use super::Role;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// What the threads share with the main thread.
pub struct Shared {
    /// Server client listeners (round robin).
    pub targets: Vec<SocketAddr>,
    /// Loopback source addresses to spread over (0: the kernel's choice).
    pub sources: usize,
    /// After-auth behaviour.
    pub role: Role,
    /// Connections opened per second at the start, all threads together.
    pub rate: u64,
    /// User id of connection 0 (connection i authenticates as first_mid + i).
    pub first_mid: i64,
    /// Most connections open at once, all threads together (0: no limit).
    /// With a limit, an inbox connection closes once it has everything, so
    /// more users than one server process's descriptors can be served.
    pub max_open: usize,
    /// Set: close and reconnect `churn_pct` percent every `churn_period`.
    pub churning: AtomicBool,
    /// Percentage of live connections cycled per period.
    pub churn_pct: u64,
    /// Churn period.
    pub churn_period: Duration,
    /// Set when the run is over.
    pub stop: AtomicBool,
    /// The run's clock.
    pub base: Instant,
    /// When `base` was, as Unix time in seconds (for scripts that line the
    /// run's seconds up with what they did meanwhile).
    pub base_unix: f64,
    /// Connections that reached their role (joined, or authenticated).
    pub live: AtomicU64,
    /// Pushes counted as new (in order, not seen before).
    pub received: AtomicU64,
    /// Connections done (inbox: every expected push received).
    pub done: AtomicU64,
    /// Pushes seen twice.
    pub dups: AtomicU64,
    /// Room offsets skipped (a push whose offset is not the last plus one).
    pub gaps: AtomicU64,
    /// Closes and reconnects done by churn.
    pub reconnects: AtomicU64,
    /// Connections the server closed (op 6 or end of stream), reconnected.
    pub server_closes: AtomicU64,
    /// Those, by second of the run (from `base`; the last bucket takes
    /// the rest).
    pub server_closes_by_sec: Vec<AtomicU64>,
    /// Resumes answered `recovered: false`.
    pub unrecovered: AtomicU64,
    /// Those, by the reason the server gave.
    pub unrecovered_why: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Version-2 errors (op 50) received.
    pub errors: AtomicU64,
    /// Connect attempts that failed (retried).
    pub connect_failed: AtomicU64,
    /// Pushes acknowledged (inbox).
    pub acked: AtomicU64,
    /// Connections in slots below this (on each thread) join with
    /// `"presence": true` (churn).
    pub watchers: usize,
    /// Presence events (op 58) received.
    pub presence_events: AtomicU64,
    /// Kinds, transports and heartbeat of a mixed run.
    pub mix: Mix,
    /// Heartbeats (op 2) sent.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeat answers (op 3) received.
    pub heartbeats_answered: AtomicU64,
    /// Pushes to a user received for the first time (by payload sequence).
    pub user_pushes: AtomicU64,
    /// Pushes to a user received again.
    pub user_push_dups: AtomicU64,
    /// Acknowledgements answered (op 47).
    pub acks_answered: AtomicU64,
}

/// Seconds of a run whose server closes are counted one by one.
const CLOSE_SECS: usize = 3600;

impl Shared {
    /// Counts a close by the server, and its second.
    pub(super) fn server_closed(&self) {
        self.server_closes.fetch_add(1, Relaxed);
        let sec = (self.base.elapsed().as_secs() as usize).min(CLOSE_SECS - 1);
        self.server_closes_by_sec[sec].fetch_add(1, Relaxed);
    }

    /// Server closes per second of the run, up to the last second with one.
    pub fn server_closes_per_sec(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.server_closes_by_sec.iter().map(|a| a.load(Relaxed)).collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }

    /// Shared state for `targets`, before any connection.
    pub fn new(targets: Vec<SocketAddr>, sources: usize, role: Role, rate: u64, churn: (u64, Duration)) -> Self {
        Shared {
            targets,
            sources,
            role,
            rate: rate.max(1),
            first_mid: 1_000_000,
            max_open: 0,
            churning: AtomicBool::new(false),
            churn_pct: churn.0,
            churn_period: churn.1,
            stop: AtomicBool::new(false),
            base: Instant::now(),
            base_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            live: AtomicU64::new(0),
            received: AtomicU64::new(0),
            done: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            server_closes: AtomicU64::new(0),
            server_closes_by_sec: (0..CLOSE_SECS).map(|_| AtomicU64::new(0)).collect(),
            unrecovered: AtomicU64::new(0),
            unrecovered_why: Default::default(),
            errors: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            watchers: 0,
            presence_events: AtomicU64::new(0),
            mix: Mix::default(),
            heartbeats_sent: AtomicU64::new(0),
            heartbeats_answered: AtomicU64::new(0),
            user_pushes: AtomicU64::new(0),
            user_push_dups: AtomicU64::new(0),
            acks_answered: AtomicU64::new(0),
        }
    }
}
