//! What the run counts: `Totals` (shared by every worker thread: connects,
//! failures by cause, deliveries, gaps, duplicates, and per worker and per
//! target how far each connection got), `Track`, one subscriber's view
//! of the message sequence (loss, duplicates, gaps, latency), and
//! `report_acks`, what a run of acknowledged publishes reports.
//!
//! Totals are relaxed atomics bumped once per batch, not per message; a
//! subscriber keeps its own counts and flushes them (`Track::flush`).
//!
//! Sequence rules: messages are numbered 0, 1, 2... and a subscriber
//! expects them in order. A higher number than expected is a gap of the
//! difference (those messages are lost to it); a lower one is a duplicate;
//! what was never received at all is `expected - received` at the end.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The latency histogram every worker folds its own into at the end.
pub type SharedHist = Arc<Mutex<Histogram<u64>>>;

/// A latency histogram: 1 ns to 60 s, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Waits for the publisher threads of an acknowledged-publish run started
/// at `start`, then prints `fields` with what they counted (`acked`, `hist`
/// of ack latencies in µs): acknowledged messages, per second, latency.
pub fn report_acks(
    threads: Vec<std::thread::JoinHandle<anyhow::Result<()>>>,
    mut fields: serde_json::Value,
    acked: &AtomicU64,
    hist: &Mutex<Histogram<u64>>,
    start: std::time::Instant,
) -> anyhow::Result<()> {
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
    }
    let secs = start.elapsed().as_secs_f64();
    let h = hist.lock().expect("no publisher panicked holding it");
    let n = acked.load(Relaxed);
    fields["acknowledged"] = n.into();
    fields["acknowledged_per_sec"] = (n as f64 / secs).into();
    fields["secs"] = secs.into();
    fields["latency_us"] =
        serde_json::json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max()});
    println!("{fields}");
    Ok(())
}

/// Connect failure causes reported separately.
pub const FAIL_CAUSES: [&str; 7] = [
    "refused",
    "timed_out",
    "addr_not_available",
    "too_many_files",
    "reset",
    "upgrade_refused",
    "other",
];

/// How far connections got, for one worker or one target.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections attempted (socket created, connect started).
    pub started: AtomicU64,
    /// TCP handshake done: the first request (auth or upgrade) was written.
    pub written: AtomicU64,
    /// Subscribed: authenticated (volley) or upgraded (generic mode).
    pub connected: AtomicU64,
    /// Given up: a connect error or a close before subscribing.
    pub failed: AtomicU64,
}

/// A plain copy of a `Progress`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// See `Progress::started`.
    pub started: u64,
    /// See `Progress::written`.
    pub written: u64,
    /// See `Progress::connected`.
    pub connected: u64,
    /// See `Progress::failed`.
    pub failed: u64,
}

impl Progress {
    /// A plain copy.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            started: self.started.load(Relaxed),
            written: self.written.load(Relaxed),
            connected: self.connected.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }
}

/// Shared counters, updated by every worker.
#[derive(Debug, Default)]
pub struct Totals {
    /// Subscribers connected (authenticated or upgraded).
    pub connected: AtomicU64,
    /// Connections that failed before subscribing.
    pub connect_failed: AtomicU64,
    /// Failures by cause, in `FAIL_CAUSES` order.
    pub failed_by: [AtomicU64; FAIL_CAUSES.len()],
    /// Payloads received (all subscribers).
    pub received: AtomicU64,
    /// Messages skipped in a subscriber's sequence.
    pub gaps: AtomicU64,
    /// Messages received twice (or out of order).
    pub dups: AtomicU64,
    /// Subscribers closed after subscribing.
    pub closed: AtomicU64,
    /// At the end of the run: subscribers whose sockets still held bytes the
    /// load generator had not read, and how many bytes. Non-zero means a
    /// shortfall was the load generator's, not the server's.
    pub left_unread: AtomicU64,
    /// See `left_unread`.
    pub left_unread_bytes: AtomicU64,
    /// Per worker, how far its connections got.
    pub workers: Vec<Progress>,
    /// Per target (index into `--target`), how far its connections got.
    pub targets: Vec<Progress>,
}

impl Totals {
    /// Counters for `workers` workers and `targets` targets.
    pub fn new(workers: usize, targets: usize) -> Self {
        Totals {
            workers: (0..workers).map(|_| Progress::default()).collect(),
            targets: (0..targets).map(|_| Progress::default()).collect(),
            ..Totals::default()
        }
    }

    /// The cause index of a connect error.
    pub fn cause_of(e: &std::io::Error) -> usize {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => 0,
            Some(libc::ETIMEDOUT) => 1,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => 2,
            Some(libc::EMFILE) | Some(libc::ENFILE) => 3,
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => 4,
            _ if e.to_string().contains("upgrade refused") => 5,
            _ => 6,
        }
    }

    /// Counts a connection of `worker` to `target` that failed with `e`.
    pub fn fail(&self, worker: usize, target: usize, e: &std::io::Error) {
        self.failed_by[Self::cause_of(e)].fetch_add(1, Relaxed);
        self.connect_failed.fetch_add(1, Relaxed);
        self.step(worker, target, |p| &p.failed);
    }

    /// Counts one connection of `worker` to `target` reaching a stage.
    pub fn step(&self, worker: usize, target: usize, stage: impl Fn(&Progress) -> &AtomicU64) {
        if let Some(p) = self.workers.get(worker) {
            stage(p).fetch_add(1, Relaxed);
        }
        if let Some(p) = self.targets.get(target) {
            stage(p).fetch_add(1, Relaxed);
        }
    }

    /// Every worker's progress added up.
    pub fn workers_sum(&self) -> ProgressSnapshot {
        self.workers.iter().fold(ProgressSnapshot::default(), |a, p| {
            let p = p.snapshot();
            ProgressSnapshot {
                started: a.started + p.started,
                written: a.written + p.written,
                connected: a.connected + p.connected,
                failed: a.failed + p.failed,
            }
        })
    }

    /// Failures by cause, as JSON.
    pub fn failures(&self) -> serde_json::Value {
        FAIL_CAUSES
            .iter()
            .zip(&self.failed_by)
            .map(|(n, c)| (n.to_string(), serde_json::json!(c.load(Relaxed))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// What one received payload meant for its subscriber's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The next one expected.
    InOrder,
    /// Ahead of the expected one: this many were skipped.
    Gap(u64),
    /// Already seen (or out of order).
    Duplicate,
}

/// What one subscriber has seen.
#[derive(Debug, Default)]
pub struct Track {
    /// The worker that owns the subscriber.
    pub worker: usize,
    /// Index of its target (`--target`).
    pub target: usize,
    /// Subscribed (authenticated or upgraded).
    pub authed: bool,
    /// Passed to the receive thread (which counts its close).
    pub handed_off: bool,
    /// The sequence number expected next.
    pub next_seq: u64,
    /// Payloads counted here and not yet added to `Totals::received`: the
    /// shared counter is bumped once per batch, not once per message.
    pub unflushed: u64,
}

impl Track {
    /// Where `seq` falls in the sequence; moves the expectation past it.
    pub fn see(&mut self, seq: u64) -> Seen {
        if seq < self.next_seq {
            return Seen::Duplicate;
        }
        let skipped = seq - self.next_seq;
        self.next_seq = seq + 1;
        if skipped == 0 {
            Seen::InOrder
        } else {
            Seen::Gap(skipped)
        }
    }

    /// Accounts for one received payload: latency, loss, duplicates, gaps.
    /// `now` is when the bytes were read (ns since the run began).
    pub fn record(&mut self, seq: u64, sent: u64, now: u64, totals: &Totals, hist: &RefCell<Histogram<u64>>) {
        let _ = hist.borrow_mut().record(now.saturating_sub(sent).max(1));
        self.unflushed += 1;
        match self.see(seq) {
            Seen::InOrder => {}
            Seen::Gap(n) => {
                totals.gaps.fetch_add(n, Relaxed);
            }
            Seen::Duplicate => {
                totals.dups.fetch_add(1, Relaxed);
            }
        }
    }

    /// Adds what was counted here to the shared total.
    pub fn flush(&mut self, totals: &Totals) {
        if self.unflushed > 0 {
            totals.received.fetch_add(std::mem::take(&mut self.unflushed), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_duplicates_and_order() {
        let mut t = Track::default();
        let seen: Vec<Seen> = [0, 1, 1, 4, 3, 5, 9].iter().map(|&s| t.see(s)).collect();
        assert_eq!(
            seen,
            vec![
                Seen::InOrder,
                Seen::InOrder,
                Seen::Duplicate,
                Seen::Gap(2),
                Seen::Duplicate,
                Seen::InOrder,
                Seen::Gap(3)
            ]
        );
        assert_eq!(t.next_seq, 10);
    }

    #[test]
    fn records_add_up_in_the_totals() {
        let totals = Totals::new(2, 3);
        let hist = RefCell::new(new_hist());
        let mut t = Track::default();
        for (seq, sent, now) in [(0, 10, 110), (2, 20, 220), (2, 30, 330)] {
            t.record(seq, sent, now, &totals, &hist);
        }
        assert_eq!(totals.received.load(Relaxed), 0, "not before a flush");
        t.flush(&totals);
        t.flush(&totals);
        assert_eq!(totals.received.load(Relaxed), 3);
        assert_eq!((totals.gaps.load(Relaxed), totals.dups.load(Relaxed)), (1, 1));
        assert_eq!(hist.borrow().len(), 3);
        assert_eq!(hist.borrow().max(), 300);

        totals.step(1, 2, |p| &p.started);
        totals.fail(1, 2, &std::io::Error::from_raw_os_error(libc::ETIMEDOUT));
        assert_eq!(totals.workers[1].snapshot().failed, 1);
        assert_eq!(totals.targets[2].snapshot().started, 1);
        assert_eq!(totals.failures()["timed_out"], 1);
        totals.step(9, 9, |p| &p.started); // out of range: ignored
    }
}
