//! The broadcast modes: volley's (`broadcast`: volley subscribers, HTTP or
//! TCP publisher) and the generic WebSocket one (`ws`: any server), both the
//! same measured run — subscribe everyone, publish `msg_rate * duration`
//! time-stamped messages at the paced rate, wait for them, report.
//!
//! Runs on the main thread (the publisher is paced there); the subscribers
//! are the workers'. CPU is sampled around the publish phase only, memory
//! around the ramp.

use crate::cli::{decode_hex, unescape, Common, Generic, Load, PublishVia};
use crate::hello::Hello;
use crate::payload::{generic_payload, stamp, GENERIC_MIN_SIZE, STAMP_LEN};
use crate::procfs::{kernel_net_memory, machine_cpu, proc_usage, procs_usage, self_rss, tick_secs};
use crate::publish::{HttpPublisher, TcpPublisher, WsPublisher};
use crate::run::{now_ns, Run};
use crate::wire::BENCH_OP;
use crate::worker::spawn_workers;
use crate::{ramp, report};
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// A publisher: sends message `seq`, stamped with send time `ns`.
pub type Publish = Box<dyn FnMut(u64, u64) -> Result<()>>;

/// Room pushes of `size`-byte stamped payloads to volley's `room`: over
/// TCP publisher connections at `publish_tcp` (an op 2 barrier after
/// message `total - 1`), or, when there are none, HTTP POSTs to every
/// `http` API.
pub fn room_publisher(
    room: &str,
    http: &[SocketAddr],
    publish_tcp: &[SocketAddr],
    api_key: &str,
    size: usize,
    total: u64,
) -> Result<Publish> {
    let mut payload = vec![b'x'; size];
    if publish_tcp.is_empty() {
        let (typ, id) = room.split_once("://").context("--room must be type://id")?;
        let path = format!("/goim/push/room?operation={BENCH_OP}&type={typ}&room={id}");
        let mut publishers = http
            .iter()
            .map(|&a| HttpPublisher::connect(a, api_key))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(move |seq, ns| {
            stamp(&mut payload, seq, ns);
            publishers.iter_mut().try_for_each(|p| p.post(&path, &payload))
        }))
    } else {
        let mut publishers = publish_tcp
            .iter()
            .map(|&a| TcpPublisher::connect(a, api_key))
            .collect::<Result<Vec<_>>>()?;
        let room = room.to_string();
        Ok(Box::new(move |seq, ns| {
            stamp(&mut payload, seq, ns);
            TcpPublisher::all(&mut publishers, &room, BENCH_OP, &payload, seq + 1 == total)
        }))
    }
}

/// The `broadcast` mode: volley subscribers in `common.room`, published to
/// over HTTP (`http`) or over TCP publisher connections (`publish_tcp`).
pub fn volley(
    common: Common,
    http: Vec<SocketAddr>,
    publish_tcp: Vec<SocketAddr>,
    api_key: String,
    load: Load,
) -> Result<()> {
    if load.size < STAMP_LEN {
        bail!("--size must be at least {STAMP_LEN}");
    }
    let total = load.msg_rate * load.duration;
    let publish = room_publisher(&common.room, &http, &publish_tcp, &api_key, load.size, total)?;
    let hello = Hello::volley(&common.room, common.ws.is_some());
    measure(&Run::new(common, hello), load, publish)
}

/// The `ws` mode: any WebSocket broadcast server, generic payloads.
pub fn generic(common: Common, a: Generic, load: Load) -> Result<()> {
    if load.size < GENERIC_MIN_SIZE {
        bail!("--size must be at least {GENERIC_MIN_SIZE}");
    }
    let Some(ws_path) = common.ws.clone() else {
        bail!("the ws mode needs --ws PATH");
    };
    let hello = match (&a.first_message, &a.first_binary_hex, a.volley) {
        (Some(_), Some(_), _) | (Some(_), _, true) | (_, Some(_), true) => {
            bail!("--first-message, --first-binary-hex and --volley exclude each other")
        }
        (_, _, true) => Hello::generic(&crate::hello::volley_auth(&common.room), true),
        (_, Some(h), _) => Hello::generic(&decode_hex(h)?, true),
        (m, None, _) => Hello::generic(&m.as_deref().map(unescape).unwrap_or_default(), false),
    };
    let size = load.size;
    let publish: Publish = match a.publish {
        PublishVia::Http => {
            if a.publish_http.is_empty() {
                bail!("--publish http needs --publish-http ADDRS");
            }
            let mut publishers = a
                .publish_http
                .iter()
                .map(|&addr| HttpPublisher::connect(addr, ""))
                .collect::<Result<Vec<_>>>()?;
            let path = a.publish_path;
            Box::new(move |seq, ns| {
                let payload = generic_payload(seq, ns, size);
                publishers.iter_mut().try_for_each(|p| p.post(&path, &payload))
            })
        }
        PublishVia::Tcp => {
            if a.publish_tcp.is_empty() {
                bail!("--publish tcp needs --publish-tcp ADDRS");
            }
            let mut publishers = a
                .publish_tcp
                .iter()
                .map(|&addr| TcpPublisher::connect(addr, ""))
                .collect::<Result<Vec<_>>>()?;
            let total = load.msg_rate * load.duration;
            let room = common.room.clone();
            Box::new(move |seq, ns| {
                let payload = generic_payload(seq, ns, size);
                TcpPublisher::all(&mut publishers, &room, BENCH_OP, &payload, seq + 1 == total)
            })
        }
        PublishVia::Ws => {
            let hello = a.publisher_first_message.as_deref().map(unescape).unwrap_or_default();
            let mut pubs = common
                .target
                .iter()
                .map(|&t| WsPublisher::connect(t, &ws_path, &hello))
                .collect::<Result<Vec<_>>>()?;
            let template = String::from_utf8(unescape(&a.publish_template)).context("template")?;
            Box::new(move |seq, ns| {
                let payload = String::from_utf8(generic_payload(seq, ns, size)).expect("ASCII");
                let msg = template
                    .replace("{len}", &size.to_string())
                    .replace("{payload}", &payload);
                pubs.iter_mut().try_for_each(|p| p.send(msg.as_bytes()))
            })
        }
    };
    measure(&Run::new(common, hello), load, publish)
}

/// Connects the subscribers, publishes `msg_rate * duration` messages through
/// `publish(seq, send_ns)`, waits for them to arrive, and reports (exits 1 on
/// loss or duplicates).
fn measure(run: &Run, load: Load, mut publish: Publish) -> Result<()> {
    let Load {
        msg_rate,
        size,
        duration,
        drain_secs,
    } = load;
    let (common, totals) = (&run.common, &run.totals);
    let mem0 = (procs_usage(&common.server_pid), self_rss(), kernel_net_memory());
    let (handles, hist) = spawn_workers(run)?;
    let took = ramp::wait_connected(common, totals)?;
    let subs = totals.connected.load(Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    let mem1 = (procs_usage(&common.server_pid), self_rss(), kernel_net_memory());
    let per = |a: u64, b: u64| (b as f64 - a as f64) / subs.max(1) as f64;
    let memory = serde_json::json!({
        "server_rss_before_bytes": mem0.0.map(|u| u.0),
        "server_rss_after_bytes": mem1.0.map(|u| u.0),
        "server_rss_per_conn_bytes": mem0.0.zip(mem1.0).map(|(a, b)| per(a.0, b.0)),
        "loadgen_rss_per_conn_bytes": per(mem0.1, mem1.1),
        "kernel_mem_per_conn_bytes": per(mem0.2, mem1.2),
    });
    let total_msgs = msg_rate * duration;
    let (m0, s0, l0) = (
        machine_cpu(),
        procs_usage(&common.server_pid),
        proc_usage(std::process::id()),
    );
    let r0 = totals.received.load(Relaxed);
    let start = Instant::now();
    let mut last = Instant::now();
    for seq in 0..total_msgs {
        let due = start + Duration::from_secs_f64(seq as f64 / msg_rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        publish(seq, now_ns(run.base))?;
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>5.1}s] published {} received {}",
                start.elapsed().as_secs_f64(),
                seq + 1,
                totals.received.load(Relaxed) - r0
            );
            last = Instant::now();
        }
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let expected = total_msgs * subs;
    let drain_end = Instant::now() + Duration::from_secs(drain_secs);
    while totals.received.load(Relaxed) - r0 < expected && Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(10));
        // A server still working through its queues shows here, and one that
        // stopped delivering shows as a count that stands still.
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>5.1}s] draining: received {} of {expected}",
                start.elapsed().as_secs_f64(),
                totals.received.load(Relaxed) - r0
            );
            last = Instant::now();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (m1, s1, l1) = (
        machine_cpu(),
        procs_usage(&common.server_pid),
        proc_usage(std::process::id()),
    );
    run.stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let received = totals.received.load(Relaxed) - r0;
    let h = hist.lock().expect("no worker panicked holding it");
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let machine_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_frac = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64;
    let machine_cpu_secs = busy_frac * machine_cores * elapsed;
    let server_cpu_secs = match (s0, s1) {
        (Some(a), Some(b)) => Some((b.1 - a.1) as f64 * tick_secs()),
        _ => None,
    };
    let per_delivery = |secs: f64| secs * 1e6 / received.max(1) as f64;
    let report = serde_json::json!({
        "mode": "broadcast",
        "subscribers": subs,
        "connect_secs": took.as_secs_f64(),
        "connect_failed": totals.connect_failed.load(Relaxed),
        "connect_failures": totals.failures(),
        "memory": memory,
        "published": total_msgs,
        "publish_rate": total_msgs as f64 / publish_secs,
        "payload_bytes": size,
        "expected": expected,
        "received": received,
        "lost": expected.saturating_sub(received),
        "gaps": totals.gaps.load(Relaxed),
        "subscribers_closed": totals.closed.load(Relaxed),
        "left_unread": {"subscribers": totals.left_unread.load(Relaxed), "bytes": totals.left_unread_bytes.load(Relaxed)},
        "dups": totals.dups.load(Relaxed),
        "deliveries_per_sec": received as f64 / elapsed,
        "machine_cpu_us_per_delivery": per_delivery(machine_cpu_secs),
        "server_cpu_us_per_delivery": server_cpu_secs.map(per_delivery),
        // The load generator's own share (its receive syscalls included).
        "loadgen_cpu_us_per_delivery": l0.zip(l1).map(|(a, b)| per_delivery((b.1 - a.1) as f64 * tick_secs())),
        "latency_us": {"p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999), "max": h.max() as f64 / 1000.0},
    });
    report::print_report(&report, common.json);
    if received < expected || totals.dups.load(Relaxed) > 0 {
        std::process::exit(1);
    }
    Ok(())
}
