//! volley-loadgen: drives a volley server (or any WebSocket broadcast server)
//! and measures it.
//!
//! - `idle`: open N connections at a given rate, subscribe them to a room,
//!   hold them, and report connect time and (with `--server-pid`) the
//!   server's RSS per connection.
//! - `broadcast`: N volley subscribers in one room, a publisher sending room
//!   pushes at a fixed rate over HTTP or volley's pipelined TCP publisher.
//! - `ws`: the same load against any WebSocket broadcast server (generic
//!   mode), so volley can be compared side by side with other servers.
//! - `churn`: version-2 subscribers reconnecting and resuming while a room
//!   broadcast runs; `inbox`: offline users' pushes stored, then delivered
//!   and acknowledged (`delivery`, over `v2client`).
//! - `durable`: for the durable store — `publish` and `verify` (every
//!   acknowledged publish stored exactly once, across restarts), `pipeline`
//!   (acknowledged pushes with a window in flight on the TCP publisher) and
//!   `jetstream` (the same loads against NATS JetStream).
//!
//! Every payload carries a sequence number and a send time stamp; subscribers
//! record publish-to-receive latency in hdrhistogram and detect loss, gaps and
//! duplicates. Reports deliveries per second and server, load generator and
//! whole-machine CPU per delivery. Exit status is non-zero when anything was
//! lost, duplicated, or failed to connect.
//!
//! Modules: `cli` (flags), `hello` (what subscribers send first), `worker` (executors with private fd tables, the
//! paced connect loop), `subscribe` (handshakes), `recv` (epoll receive
//! threads), `wire` (reading what servers send), `payload` (stamps and
//! markers), `stats` (counters, sequence tracking, the acknowledged-publish report), `publish` (HTTP, TCP and
//! WebSocket publishers), `run` (what a run's threads share), `broadcast`
//! (the measured run), `ramp` (progress
//! and stall reports), `procfs` (memory, CPU, threads, accept queues),
//! `report` (the final report), `durable`, `pipeline` and `jetstream` (the
//! durable-store steps above), `attack` (one hostile client at a time beside a
//! bystander).

mod attack;
mod broadcast;
mod cli;
mod delivery;
mod durable;
mod hello;
mod jetstream;
mod payload;
mod pipeline;
mod procfs;
mod publish;
mod ramp;
mod recv;
mod report;
mod retrying;
mod run;
mod stats;
mod subscribe;
mod v2client;
mod wire;
mod worker;

use anyhow::{bail, Result};
use clap::Parser;
use cli::{Cli, Cmd, Common};
use hello::Hello;
use procfs::{kernel_net_memory, procs_usage, self_rss};
use run::Run;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use worker::{spawn_workers, MAX_CONNS_PER_WORKER};

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Attack {
            kind,
            target,
            ws,
            http,
            publish_tcp,
            api_key,
            from,
            secs,
            server_pid,
            json,
        } => {
            let t = attack::Target {
                tcp: target,
                ws,
                http,
                publish: publish_tcp,
                api_key,
                from,
                until: std::time::Instant::now() + Duration::from_secs(secs),
                stop: Default::default(),
            };
            attack::run(kind, t, &server_pid, json)
        }
        Cmd::Durable { step } => match step {
            cli::DurableStep::Publish {
                http,
                api_key,
                rooms,
                users,
                user_pct,
                rate,
                secs,
                size,
                conns,
                log,
                run,
            } => durable::publish(durable::PublishOpts {
                http,
                api_key,
                rooms,
                users,
                user_pct: user_pct.min(100),
                rate,
                secs,
                size,
                conns,
                log,
                run: run.unwrap_or_else(|| format!("p{}", std::process::id())),
            }),
            cli::DurableStep::Pipeline(p) => pipeline::run(p),
            cli::DurableStep::Jetstream {
                nats,
                conns,
                secs,
                size,
                window,
            } => jetstream::run(nats, conns, secs, size, window),
            cli::DurableStep::Verify {
                http,
                target,
                api_key,
                log,
            } => durable::verify(durable::VerifyOpts {
                http,
                target,
                api_key,
                log,
            }),
        },
        cmd => load(cmd),
    }
}

/// The load modes: connections, a room, traffic, a report.
fn load(cmd: Cmd) -> Result<()> {
    let cli = Cli { cmd };
    let common = match &cli.cmd {
        Cmd::Attack { .. } | Cmd::Durable { .. } => anyhow::bail!("not a load mode"),
        Cmd::Idle { common, .. }
        | Cmd::Broadcast { common, .. }
        | Cmd::Ws { common, .. }
        | Cmd::Churn { common, .. }
        | Cmd::Inbox { common, .. } => common.clone(),
    };
    // Inbox users connect at most --concurrent at a time.
    let open_at_once = match &cli.cmd {
        Cmd::Inbox { concurrent, .. } if *concurrent > 0 => common.conns.min(*concurrent),
        _ => common.conns,
    };
    check_limits(&common, open_at_once)?;
    match cli.cmd {
        Cmd::Attack { .. } | Cmd::Durable { .. } => anyhow::bail!("not a load mode"),
        Cmd::Idle { hold_secs, .. } => idle(common, hold_secs),
        Cmd::Broadcast {
            http,
            publish_tcp,
            api_key,
            load,
            ..
        } => broadcast::volley(common, http, publish_tcp, api_key, load),
        Cmd::Ws { generic, load, .. } => broadcast::generic(common, generic, load),
        Cmd::Churn {
            http,
            publish_tcp,
            api_key,
            churn_pct,
            churn_period_secs,
            retry_secs,
            watchers,
            mix,
            load,
            ..
        } => delivery::churn(
            common,
            delivery::Churn {
                watchers,
                mix,
                http,
                publish_tcp,
                api_key,
                pct: churn_pct,
                period: Duration::from_secs_f64(churn_period_secs.max(0.01)),
                retry: Duration::from_secs_f64(retry_secs.max(0.0)),
            },
            load,
        ),
        Cmd::Inbox {
            http,
            publish_tcp,
            api_key,
            messages,
            size,
            per_push,
            drain_secs,
            concurrent,
            ..
        } => delivery::inbox(
            common,
            delivery::Inbox {
                http,
                publish_tcp,
                api_key,
                messages,
                size,
                per_push,
                drain_secs,
                concurrent,
            },
        ),
    }
}

/// Refuses a run whose `open` connections at once cannot fit the
/// per-fd-table open-file limit.
fn check_limits(common: &Common, open: usize) -> Result<()> {
    if common.target.is_empty() || common.workers == 0 {
        bail!("need at least one --target and one worker");
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    let nofile = r.rlim_cur as usize;
    let per_worker = open.div_ceil(common.workers);
    let fits = MAX_CONNS_PER_WORKER.min(nofile.saturating_sub(500)).max(1);
    if per_worker > fits {
        bail!(
            "{per_worker} connections per worker passes the open-file limit ({nofile} per fd table); \
             use --workers {} or more",
            open.div_ceil(fits)
        );
    }
    Ok(())
}

/// The idle mode: connect, hold, report memory per connection.
fn idle(common: Common, hold_secs: u64) -> Result<()> {
    let hello = Hello::volley(&common.room, common.ws.is_some());
    let run = Run::new(common, hello);
    let c = &run.common;
    let before = procs_usage(&c.server_pid);
    let (self0, kernel0) = (self_rss(), kernel_net_memory());
    let (handles, _) = spawn_workers(&run)?;
    let took = ramp::wait_connected(c, &run.totals)?;
    std::thread::sleep(Duration::from_secs(hold_secs));
    let after = procs_usage(&c.server_pid);
    let (self1, kernel1) = (self_rss(), kernel_net_memory());
    let totals = &run.totals;
    let n = totals.connected.load(Relaxed);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some((a.0 as f64 - b.0 as f64) / n as f64),
        _ => None,
    };
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n.max(1) as f64;
    run.stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let report = serde_json::json!({
        "mode": "idle",
        "connections": n,
        "connect_failed": totals.connect_failed.load(Relaxed),
        "connect_secs": took.as_secs_f64(),
        "connect_rate_per_sec": n as f64 / took.as_secs_f64().max(1e-9),
        "server_rss_before_bytes": before.map(|b| b.0),
        "server_rss_after_bytes": after.map(|a| a.0),
        "server_rss_per_conn_bytes": per_conn,
        "loadgen_rss_per_conn_bytes": per(self0, self1),
        "kernel_mem_per_conn_bytes": per(kernel0, kernel1),
        "connect_failures": totals.failures(),
    });
    report::print_report(&report, c.json);
    if totals.connect_failed.load(Relaxed) > 0 {
        std::process::exit(1);
    }
    Ok(())
}
