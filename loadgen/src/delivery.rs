//! The delivery modes, over version-2 subscribers (`v2client`):
//!
//! - `churn`: N subscribers join one room; while a publisher sends
//!   time-stamped room pushes at a fixed rate, a percentage of them close
//!   and reconnect every period, resuming from the last offset they saw.
//!   Every subscriber must end with every message exactly once, in order:
//!   exits 1 on any loss, duplicate, offset gap or unrecovered resume.
//! - `inbox`: N users, offline, get M pushes each (over the TCP publisher,
//!   many users per push); then they connect, receive what waited, and
//!   acknowledge it. Reports how long storing and delivering took and what
//!   a stored message costs the server.
//!
//! Runs on the main thread (publishing, waiting, reporting); the
//! connections are `v2client`'s threads.

use crate::broadcast::room_publisher;
use crate::cli::{Common, Load, MixArgs};
use crate::payload::{stamp, STAMP_LEN};
use crate::procfs::{procs_usage, tick_secs};
use crate::publish::{get_json, TcpPublisher};
use crate::report;
use crate::retrying::{retrying_publisher, spawn_pusher, Retrying};
use crate::run::now_ns;
use crate::stats::new_hist;
use crate::v2client::mix::{Kind, Mix};
use crate::v2client::{self, Outcome, Role, Shared};
use crate::wire::BENCH_OP;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use volley::proto::publish::Target;

/// Starts the connection threads (`common.workers` of them, each with its
/// own fd table) for `common.conns` connections.
fn start(common: &Common, shared: &Arc<Shared>) -> Vec<std::thread::JoinHandle<Outcome>> {
    let w = common.workers.max(1);
    (0..w)
        .map(|t| {
            let mine: Vec<usize> = (t..common.conns).step_by(w).collect();
            v2client::spawn(shared.clone(), mine, w)
        })
        .collect()
}

/// Waits until `count()` reaches `want`, printing progress each second;
/// false if `limit` passed first.
fn wait_for(what: &str, want: u64, limit: Duration, count: impl Fn() -> u64) -> bool {
    let end = Instant::now() + limit;
    let start = Instant::now();
    let mut last = Instant::now();
    while count() < want {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>5.1}s] {what}: {} of {want}",
                start.elapsed().as_secs_f64(),
                count()
            );
            last = Instant::now();
        }
    }
    true
}

/// Stops the threads and folds their outcomes.
fn finish(shared: &Shared, handles: Vec<std::thread::JoinHandle<Outcome>>) -> Outcome {
    shared.stop.store(true, Relaxed);
    let mut all = Outcome {
        hist: new_hist(),
        next_seq: Vec::new(),
        pauses: new_hist(),
        by_sec: Vec::new(),
    };
    for h in handles {
        let o = h.join().expect("a connection thread panicked");
        let _ = all.hist.add(&o.hist);
        let _ = all.pauses.add(&o.pauses);
        all.next_seq.extend(o.next_seq);
        if all.by_sec.len() < o.by_sec.len() {
            all.by_sec.resize_with(o.by_sec.len(), || None);
        }
        for (mine, theirs) in all.by_sec.iter_mut().zip(o.by_sec) {
            if let Some(t) = theirs {
                let _ = mine.get_or_insert_with(v2client::sec_hist).add(&t);
            }
        }
    }
    all
}

fn latency(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({"p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "max": h.max() as f64 / 1000.0})
}

/// Options of the churn mode beyond the common ones.
pub struct Churn {
    /// Subscribers (per load generator thread, the first ones) that ask
    /// for presence events.
    pub watchers: usize,
    /// HTTP APIs to publish to (when no TCP publisher is given).
    pub http: Vec<SocketAddr>,
    /// TCP publisher addresses.
    pub publish_tcp: Vec<SocketAddr>,
    /// API key.
    pub api_key: String,
    /// Percentage of subscribers reconnecting each period.
    pub pct: u64,
    /// The period.
    pub period: Duration,
    /// Retry each publish (HTTP, with a message id, so the server keeps it
    /// once) for this long while the server is away (a restart); zero: a
    /// failed publish ends the run.
    pub retry: Duration,
    /// Which connections are what (WebSocket, version 1, patterns), the
    /// heartbeat and the pushes to users.
    pub mix: MixArgs,
}

/// The `churn` mode.
pub fn churn(common: Common, opts: Churn, load: Load) -> Result<()> {
    if common.ws.is_some() {
        bail!("churn's WebSocket share is --ws-pct with --ws-target; leave out --ws");
    }
    let m = &opts.mix;
    if m.ws_pct > 0 && m.ws_target.is_empty() {
        bail!("--ws-pct needs --ws-target");
    }
    if m.v1_pct + m.pattern_pct > 100 || m.ws_pct > 100 {
        bail!("the percentages add up to more than 100");
    }
    if load.size < STAMP_LEN {
        bail!("--size must be at least {STAMP_LEN}");
    }
    let Load {
        msg_rate,
        size,
        duration,
        drain_secs,
    } = load;
    let total = msg_rate * duration;
    let n = common.conns as u64;
    let mut publish = if opts.retry.is_zero() {
        room_publisher(&common.room, &opts.http, &opts.publish_tcp, &opts.api_key, size, total)?
    } else {
        let http = *opts
            .http
            .first()
            .context("--retry-secs publishes over HTTP: give --http")?;
        retrying_publisher(&common.room, http, &opts.api_key, size, opts.retry)?
    };
    let mut shared = Shared::new(
        common.target.clone(),
        common.sources,
        Role::Room(common.room.clone()),
        common.rate,
        (opts.pct, opts.period),
    );
    shared.watchers = opts.watchers;
    shared.mix = Mix {
        v1_pct: m.v1_pct,
        pattern_pct: m.pattern_pct,
        pattern: m.pattern.clone(),
        ws_pct: m.ws_pct,
        ws_targets: m.ws_target.clone(),
        ws_path: m.ws_path.clone(),
        heartbeat: (m.heartbeat_secs > 0.0).then(|| Duration::from_secs_f64(m.heartbeat_secs)),
    };
    let shared = Arc::new(shared);
    // Users of the version-2 subscribers, who acknowledge their pushes.
    let mids: Vec<i64> = (0..common.conns)
        .filter(|&i| shared.mix.kind(i) != Kind::V1)
        .map(|i| shared.first_mid + i as i64)
        .collect();
    let t0 = Instant::now();
    let handles = start(&common, &shared);
    let ramp_limit = Duration::from_secs(n / common.rate.max(1) + 60);
    if !wait_for("joined", n, ramp_limit, || shared.live.load(Relaxed)) {
        finish(&shared, handles);
        bail!("only {} of {n} subscribers joined", shared.live.load(Relaxed));
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let s0 = procs_usage(&common.server_pid);
    shared.churning.store(true, Relaxed);
    let pusher = match (m.push_rate, opts.http.first()) {
        (0, _) => None,
        (_, None) => bail!("--push-rate pushes over HTTP: give --http"),
        (rate, Some(&http)) => {
            let poster = Retrying::new(http, &opts.api_key, opts.retry);
            Some(spawn_pusher(poster, rate, mids, size, shared.clone()))
        }
    };
    let start_at = Instant::now();
    let mut last = Instant::now();
    for seq in 0..total {
        let due = start_at + Duration::from_secs_f64(seq as f64 / msg_rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        publish(seq, now_ns(shared.base))?;
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>5.1}s] published {} received {} reconnects {}",
                start_at.elapsed().as_secs_f64(),
                seq + 1,
                shared.received.load(Relaxed),
                shared.reconnects.load(Relaxed)
            );
            last = Instant::now();
        }
    }
    shared.churning.store(false, Relaxed);
    let pushed = match pusher {
        Some(p) => p.join().expect("the pusher panicked")?,
        None => 0,
    };
    let expected = total * n;
    let drain_until = Instant::now() + Duration::from_secs(drain_secs);
    let left = || drain_until.saturating_duration_since(Instant::now());
    wait_for("received", expected, left(), || shared.received.load(Relaxed));
    wait_for("user pushes", pushed, left(), || shared.user_pushes.load(Relaxed));
    let beats = shared.heartbeats_sent.load(Relaxed);
    wait_for("heartbeats answered", beats, left(), || {
        shared.heartbeats_answered.load(Relaxed)
    });
    let elapsed = start_at.elapsed().as_secs_f64();
    let s1 = procs_usage(&common.server_pid);
    let Outcome {
        hist,
        next_seq: next,
        pauses,
        by_sec,
    } = finish(&shared, handles);
    // [second of the run, p99 ms, max ms, deliveries] for each second
    // with deliveries.
    let by_sec: Vec<serde_json::Value> = (by_sec.iter().enumerate())
        .filter_map(|(s, h)| {
            let h = h.as_ref()?;
            let ms = |us: u64| us as f64 / 1000.0;
            Some(serde_json::json!([
                s,
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                h.len()
            ]))
        })
        .collect();
    let received = shared.received.load(Relaxed);
    let short = next.iter().filter(|&&s| s < total).count();
    let lost = expected.saturating_sub(received);
    let (dups, gaps, unrecovered) = (
        shared.dups.load(Relaxed),
        shared.gaps.load(Relaxed),
        shared.unrecovered.load(Relaxed),
    );
    let (user_pushes, user_push_dups) = (shared.user_pushes.load(Relaxed), shared.user_push_dups.load(Relaxed));
    let users_lost = pushed.saturating_sub(user_pushes);
    let unanswered = beats.saturating_sub(shared.heartbeats_answered.load(Relaxed));
    let (kind_room, kind_pattern, kind_v1, over_ws) = shared.mix.census(common.conns);
    let ms = |ns: u64| ns as f64 / 1e6;
    let server_cpu = s0
        .zip(s1)
        .map(|(a, b)| (b.1 - a.1) as f64 * tick_secs() * 1e6 / received.max(1) as f64);
    let report = serde_json::json!({
        "mode": "churn",
        "subscribers": n,
        "connect_secs": connect_secs,
        "churn_pct": opts.pct,
        "churn_period_secs": opts.period.as_secs_f64(),
        "reconnects": shared.reconnects.load(Relaxed),
        "server_closes": shared.server_closes.load(Relaxed),
        "server_closes_per_sec": shared.server_closes_per_sec(),
        "connect_failed": shared.connect_failed.load(Relaxed),
        "published": total,
        "payload_bytes": size,
        "expected": expected,
        "received": received,
        "lost": lost,
        "subscribers_short": short,
        "dups": dups,
        "gaps": gaps,
        "unrecovered_resumes": unrecovered,
        "unrecovered_why": *shared.unrecovered_why.lock().unwrap(),
        "errors": shared.errors.load(Relaxed),
        "watchers": opts.watchers,
        "presence_events": shared.presence_events.load(Relaxed),
        "deliveries_per_sec": received as f64 / elapsed,
        "server_cpu_us_per_delivery": server_cpu,
        "latency_us": latency(&hist),
        "started_unix": shared.base_unix,
        "latency_by_sec": by_sec,
        "mix": {"room": kind_room, "pattern": kind_pattern, "v1": kind_v1, "websocket": over_ws},
        "pause_ms": {
            "p50": ms(pauses.value_at_quantile(0.5)),
            "p99": ms(pauses.value_at_quantile(0.99)),
            "p99_99": ms(pauses.value_at_quantile(0.9999)),
            "max": ms(pauses.max()),
        },
        "heartbeats_sent": beats,
        "heartbeats_unanswered": unanswered,
        "user_pushes_published": pushed,
        "user_pushes_received": user_pushes,
        "user_pushes_lost": users_lost,
        "user_push_dups": user_push_dups,
        "acks_sent": shared.acked.load(Relaxed),
        "acks_answered": shared.acks_answered.load(Relaxed),
    });
    report::print_report(&report, common.json);
    let users_wrong = users_lost > 0 || user_push_dups > 0 || unanswered > 0;
    if lost > 0 || dups > 0 || gaps > 0 || unrecovered > 0 || users_wrong {
        std::process::exit(1);
    }
    Ok(())
}

/// Options of the inbox mode beyond the common ones.
pub struct Inbox {
    /// The HTTP API (stats).
    pub http: SocketAddr,
    /// TCP publisher address.
    pub publish_tcp: SocketAddr,
    /// API key.
    pub api_key: String,
    /// Pushes per user.
    pub messages: u64,
    /// Payload size.
    pub size: usize,
    /// Users per push.
    pub per_push: usize,
    /// Seconds to wait for delivery and acknowledgement.
    pub drain_secs: u64,
    /// Most users connected at once (0: all).
    pub concurrent: usize,
}

fn inbox_stats(http: SocketAddr, key: &str) -> Result<(u64, u64)> {
    let v = get_json(http, key, "/v1/stats")?;
    let t = &v["total"];
    Ok((
        t["inbox_messages"].as_u64().unwrap_or(0),
        t["inbox_bytes"].as_u64().unwrap_or(0),
    ))
}

/// The `inbox` mode.
pub fn inbox(common: Common, o: Inbox) -> Result<()> {
    if common.ws.is_some() {
        bail!("inbox speaks version 2 over raw TCP; leave out --ws");
    }
    let n = common.conns as u64;
    let stored_want = n * o.messages;
    let first_mid = 1_000_000i64;
    let (m0, b0) = inbox_stats(o.http, &o.api_key)?;
    let rss0 = procs_usage(&common.server_pid);
    let base = Instant::now();
    let mut p = TcpPublisher::connect(o.publish_tcp, &o.api_key)?;
    let mut payload = vec![b'x'; o.size.max(STAMP_LEN)];
    let t0 = Instant::now();
    for m in 0..o.messages {
        for chunk in (0..n as i64).collect::<Vec<_>>().chunks(o.per_push.max(1)) {
            stamp(&mut payload, m, now_ns(base));
            let mids = chunk.iter().map(|i| first_mid + i).collect();
            p.push(&Target::Mids(mids), BENCH_OP, &payload)?;
        }
    }
    p.barrier()?;
    let stored_ok = wait_for("stored", m0 + stored_want, Duration::from_secs(60), || {
        inbox_stats(o.http, &o.api_key).map_or(0, |s| s.0)
    });
    let store_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let rss1 = procs_usage(&common.server_pid);
    let (m1, b1) = inbox_stats(o.http, &o.api_key)?;
    let stored = m1 - m0;

    let mut shared = Shared::new(
        common.target.clone(),
        common.sources,
        Role::Inbox { expect: o.messages },
        common.rate,
        (0, Duration::from_secs(1)),
    );
    shared.max_open = o.concurrent;
    let shared = Arc::new(shared);
    let t1 = Instant::now();
    let handles = start(&common, &shared);
    let all_done = wait_for("users done", n, Duration::from_secs(o.drain_secs), || {
        shared.done.load(Relaxed)
    });
    let deliver_secs = t1.elapsed().as_secs_f64();
    let acked_ok = wait_for("left in inboxes (down to 0)", stored, Duration::from_secs(30), || {
        stored.saturating_sub(inbox_stats(o.http, &o.api_key).map_or(stored, |s| s.0.saturating_sub(m0)))
    });
    let left = inbox_stats(o.http, &o.api_key)?.0.saturating_sub(m0);
    finish(&shared, handles);
    let received = shared.received.load(Relaxed);
    let per = |a: u64, b: u64| (b as f64 - a as f64) / stored.max(1) as f64;
    let report = serde_json::json!({
        "mode": "inbox",
        "users": n,
        "messages_per_user": o.messages,
        "concurrent_users": o.concurrent,
        "payload_bytes": o.size,
        "stored": stored,
        "store_secs": store_secs,
        "server_rss_per_stored_message_bytes": rss0.zip(rss1).map(|(a, b)| per(a.0, b.0)),
        "inbox_bytes_per_stored_message": per(b0, b1),
        "delivered": received,
        "users_done": shared.done.load(Relaxed),
        "deliver_secs": deliver_secs,
        "deliveries_per_sec": received as f64 / deliver_secs,
        "acked": shared.acked.load(Relaxed),
        "left_in_inboxes": left,
        "server_closes": shared.server_closes.load(Relaxed),
        "server_closes_per_sec": shared.server_closes_per_sec(),
        "connect_failed": shared.connect_failed.load(Relaxed),
        "errors": shared.errors.load(Relaxed),
    });
    report::print_report(&report, common.json);
    // A user whose connection was closed gets its unacknowledged pushes
    // again: more than expected is not a fault, fewer is.
    if !stored_ok || !all_done || !acked_ok || received < stored_want {
        std::process::exit(1);
    }
    Ok(())
}
