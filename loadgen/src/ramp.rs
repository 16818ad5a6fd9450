//! Watching the ramp: a progress line every second until every connection
//! has subscribed or failed, and — when the count stops moving — a report of
//! which workers and which servers are behind, at which stage, and what the
//! threads on both sides are doing.
//!
//! Runs on the main thread while the workers connect; reads only counters
//! and /proc. A connection goes started → written (TCP handshake done, first
//! request sent) → connected (authenticated / upgraded), or failed:
//!
//! ```text
//! behind at "started"    the worker has not opened them yet: its own pacing is late
//! behind at "written"    TCP handshake not done: SYN or accept queue trouble on the server's host
//! behind at "connected"  sent, no answer: the server accepted (or the kernel queued) but does not reply
//! ```

use crate::cli::Common;
use crate::procfs::{accept_queue, syscall_name, threads, ThreadState};
use crate::stats::{ProgressSnapshot, Totals};
use anyhow::{bail, Result};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Seconds without progress before the ramp counts as stalled.
const STALL_SECS: u64 = 10;
/// How often a stall is reported again while it lasts.
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Most workers or targets listed in a report.
const LIST_MAX: usize = 10;

/// Connections worker `w` (of `workers`) opens out of `conns`.
pub fn share(conns: usize, workers: usize, w: usize) -> usize {
    conns / workers + usize::from(w < conns % workers)
}

/// Connections that go to target `t` (of `targets`), by the workers'
/// numbering (connection n goes to target n % targets).
fn target_share(conns: usize, targets: usize, t: usize) -> usize {
    conns / targets + usize::from(t < conns % targets)
}

/// Waits until every connection has subscribed or failed; returns how long
/// that took. Fails, with the stall report, after the ramp's deadline.
pub fn wait_connected(common: &Common, totals: &Totals) -> Result<Duration> {
    let start = Instant::now();
    let mut last_line = Instant::now();
    let (mut last_done, mut last_move) = (0u64, Instant::now());
    let mut last_report: Option<Instant> = None;
    let deadline = Duration::from_secs(30 + common.conns as u64 / common.rate.max(1) * 2);
    loop {
        let c = totals.connected.load(Relaxed);
        let f = totals.connect_failed.load(Relaxed);
        if c + f >= common.conns as u64 {
            if f > 0 {
                eprintln!("{f} connections failed");
            }
            return Ok(start.elapsed());
        }
        if c + f != last_done {
            (last_done, last_move) = (c + f, Instant::now());
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let failures = if f > 0 {
                totals.failures().to_string()
            } else {
                String::new()
            };
            let all = totals.workers_sum();
            eprintln!(
                "[{:>5.1}s] connected {c}/{} failed {f} {failures}(in handshake: tcp {}, answer {})",
                start.elapsed().as_secs_f64(),
                common.conns,
                all.started.saturating_sub(all.failed).saturating_sub(all.written),
                all.written.saturating_sub(all.connected),
            );
            last_line = Instant::now();
        }
        let stalled = last_move.elapsed() >= Duration::from_secs(STALL_SECS);
        if stalled && last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            eprint!("{}", stall_report(common, totals, last_move.elapsed()));
            last_report = Some(Instant::now());
        }
        if start.elapsed() > deadline {
            bail!(
                "only {c} of {} connections subscribed by {} s\n{}",
                common.conns,
                deadline.as_secs(),
                stall_report(common, totals, last_move.elapsed())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line per stage for `p` out of `due`.
fn stages(p: &ProgressSnapshot, due: u64) -> String {
    let open = p.started.saturating_sub(p.failed);
    let waiting_tcp = open.saturating_sub(p.written);
    let waiting_answer = p.written.saturating_sub(p.connected);
    format!(
        "{}/{due} connected, {} failed; not started {}, waiting for the TCP handshake {waiting_tcp}, \
         waiting for the server's answer {waiting_answer}",
        p.connected,
        p.failed,
        due.saturating_sub(p.started),
    )
}

fn thread_line(t: &ThreadState) -> String {
    let call = t.syscall.map_or("-".into(), syscall_name);
    format!("{}[{}] {} in {call}", t.name, t.tid, t.state)
}

/// Which workers and targets are behind, and why, as text.
pub fn stall_report(common: &Common, totals: &Totals, quiet: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== ramp stalled: no progress for {:.0} s", quiet.as_secs_f64());
    let behind = |all: Vec<(usize, ProgressSnapshot, u64)>| {
        let mut v: Vec<_> = all
            .into_iter()
            .filter(|(_, p, due)| p.connected + p.failed < *due)
            .collect();
        v.sort_by_key(|(_, p, due)| std::cmp::Reverse(due - p.connected - p.failed));
        v
    };
    let workers = behind(
        totals
            .workers
            .iter()
            .enumerate()
            .map(|(w, p)| (w, p.snapshot(), share(common.conns, common.workers, w) as u64))
            .collect(),
    );
    let _ = writeln!(out, "   workers behind: {} of {}", workers.len(), common.workers);
    let me = threads(std::process::id(), "loadgen-");
    for (w, p, due) in workers.iter().take(LIST_MAX) {
        let _ = writeln!(out, "   worker {w}: {}", stages(p, *due));
        // glommio names the executor thread "loadgen-<w>-<executor id>".
        let (exec, rx) = (format!("loadgen-{w}-"), format!("loadgen-rx-{w}"));
        for t in me.iter().filter(|t| t.name.starts_with(&exec) || t.name == rx) {
            let _ = writeln!(out, "     {}", thread_line(t));
        }
    }
    let targets = behind(
        totals
            .targets
            .iter()
            .enumerate()
            .map(|(t, p)| {
                (
                    t,
                    p.snapshot(),
                    target_share(common.conns, common.target.len(), t) as u64,
                )
            })
            .collect(),
    );
    let _ = writeln!(out, "   servers behind: {} of {}", targets.len(), common.target.len());
    for (t, p, due) in targets.iter().take(LIST_MAX) {
        let addr = common.target[*t];
        let queue = accept_queue(addr).map_or("?".into(), |q| q.to_string());
        let _ = writeln!(out, "   {addr}: {}; waiting to be accepted {queue}", stages(p, *due));
        // Server pids are given in target order when there is one per target.
        if common.server_pid.len() == common.target.len() {
            let pid = common.server_pid[*t];
            for th in threads(pid, "volley-") {
                let _ = writeln!(out, "     pid {pid} {}", thread_line(&th));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn shares_add_up_and_the_report_names_who_is_behind() {
        assert_eq!((0..7).map(|w| share(100, 7, w)).sum::<usize>(), 100);
        assert_eq!((0..3).map(|t| target_share(10, 3, t)).sum::<usize>(), 10);
        let cli = crate::cli::Cli::try_parse_from([
            "volley-loadgen",
            "idle",
            "--conns",
            "4",
            "--workers",
            "2",
            "--target",
            "127.0.0.1:9,127.0.0.1:10",
        ])
        .unwrap();
        let crate::cli::Cmd::Idle { common, .. } = cli.cmd else {
            panic!()
        };
        let totals = Totals::new(2, 2);
        // Worker 0 / target 0 done; worker 1 / target 1: one answered, one
        // sent but unanswered.
        for (w, t, stage) in [(0, 0, 0), (0, 0, 0), (1, 1, 0), (1, 1, 1)] {
            totals.step(w, t, |p| &p.started);
            totals.step(w, t, |p| &p.written);
            if stage == 0 {
                totals.step(w, t, |p| &p.connected);
            }
        }
        let r = stall_report(&common, &totals, Duration::from_secs(12));
        assert!(r.contains("workers behind: 1 of 2"), "{r}");
        assert!(r.contains("worker 1: 1/2 connected"), "{r}");
        assert!(r.contains("waiting for the server's answer 1"), "{r}");
        assert!(r.contains("127.0.0.1:10: 1/2 connected"), "{r}");
        assert!(!r.contains("worker 0:"), "{r}");
    }
}
