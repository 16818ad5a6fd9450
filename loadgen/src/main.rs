//! volley-loadgen: drives a volley server over its goim TCP protocol and
//! measures it.
//!
//! - `idle`: open N connections at a given rate, authenticate them into a room,
//!   hold them, and report connect time and (with `--server-pid`) the server's
//!   RSS per connection.
//! - `broadcast`: N subscribers in one room, one publisher sending room pushes
//!   at a fixed rate, as HTTP POSTs on a keep-alive connection or pipelined
//!   over volley's TCP publisher connection. Each payload carries a sequence
//!   number and a send time stamp; subscribers record publish-to-receive
//!   latency in hdrhistogram and detect loss, gaps and duplicates. Reports
//!   deliveries per second, whole-machine and server CPU per delivery.
//!
//! Connections are spread over `--workers` glommio executors (threads), each
//! owning its connections, round-robin over the `--target` list and over
//! `--sources` loopback source addresses. Exit status is non-zero when
//! anything was lost, duplicated, or failed to connect.
//!
//! Scale: a process may hold only RLIMIT_NOFILE descriptors per fd table
//! (20,000 on the development host, not raisable). Each worker therefore calls
//! `unshare(CLONE_FILES)` first and gets a private fd table, so N workers hold
//! N times the limit in one process. Workers share no descriptors after that
//! (no cross-worker channels or wakers), which is what makes it safe. Source
//! ports: with `IP_BIND_ADDRESS_NO_PORT` the port is picked at connect time
//! per (source, destination), so capacity is ~28k ports x sources x targets.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "volley-loadgen", about = "Load generator for volley")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// volley client addresses, comma-separated (the TCP listeners, or the
    /// WebSocket ones with --ws); connections go round-robin over them.
    #[arg(long, default_value = "127.0.0.1:3101", value_delimiter = ',')]
    target: Vec<SocketAddr>,
    /// Spread connections over this many loopback source addresses
    /// (127.1.x.y); 0 = let the kernel pick (127.0.0.1).
    #[arg(long, default_value_t = 0)]
    sources: usize,
    /// Speak the protocol over WebSocket at this path (e.g. /sub) instead of
    /// raw TCP: one frame per binary message.
    #[arg(long)]
    ws: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Connections opened per second.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Room every connection joins.
    #[arg(long, default_value = "live://bench")]
    room: String,
    /// Worker threads (each a glommio executor owning its connections).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// PIDs of the volley servers (comma-separated), to report their RSS and
    /// CPU (summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle authenticated connections.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold the connections after the last one is up.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    /// Room broadcast: N subscribers, a publisher at a fixed rate.
    Broadcast {
        #[command(flatten)]
        common: Common,
        /// volley HTTP API addresses (comma-separated): every message is
        /// published to each (one room per server process).
        #[arg(long, default_value = "127.0.0.1:3111", value_delimiter = ',')]
        http: Vec<SocketAddr>,
        /// Publish over volley's TCP publisher connections at these addresses
        /// (comma-separated, one per server process) instead of HTTP:
        /// pipelined, no reply per message, an op 2 barrier at the end.
        #[arg(long, value_delimiter = ',')]
        publish_tcp: Vec<SocketAddr>,
        /// API key for publishing (HTTP header or TCP publisher auth).
        #[arg(long, default_value = "")]
        api_key: String,
        #[command(flatten)]
        load: Load,
    },
    /// Generic WebSocket broadcast: drives any WebSocket broadcast server
    /// (volley, NATS, a tokio server...) with the same load. Subscribers
    /// upgrade at --ws, send --first-message, and count every message holding
    /// a payload marker; a publisher sends time-stamped payloads over its own
    /// WebSocket (--publish ws) or an HTTP POST (--publish http).
    Ws {
        #[command(flatten)]
        common: Common,
        /// Text each subscriber sends after the upgrade (\r \n \t unescaped),
        /// e.g. "CONNECT {}\r\nSUB bench 1\r\n" for NATS.
        #[arg(long)]
        first_message: Option<String>,
        /// Binary message each subscriber sends after the upgrade, in hex
        /// (instead of --first-message), e.g. a volley auth frame.
        #[arg(long)]
        first_binary_hex: Option<String>,
        /// How messages are published.
        #[arg(long, value_enum, default_value_t = PublishVia::Ws)]
        publish: PublishVia,
        /// Text the WebSocket publisher sends after its upgrade.
        #[arg(long)]
        publisher_first_message: Option<String>,
        /// What the WebSocket publisher sends per message: `{payload}` and
        /// `{len}` are replaced, e.g. "PUB bench {len}\r\n{payload}\r\n".
        #[arg(long, default_value = "{payload}")]
        publish_template: String,
        /// HTTP APIs to POST each payload to (--publish http).
        #[arg(long, value_delimiter = ',')]
        publish_http: Vec<SocketAddr>,
        /// Path of that POST.
        #[arg(long, default_value = "/goim/push/room?operation=1000&type=live&room=bench")]
        publish_path: String,
        /// volley TCP publisher addresses (--publish tcp).
        #[arg(long, value_delimiter = ',')]
        publish_tcp: Vec<SocketAddr>,
        #[command(flatten)]
        load: Load,
    },
}

/// Publisher transport of the generic WebSocket mode.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum PublishVia {
    /// One more WebSocket connection sends each message.
    Ws,
    /// An HTTP POST per message to every --publish-http address.
    Http,
    /// A room push to --room over volley's TCP publisher connection at every
    /// --publish-tcp address (pipelined, open loop like a WebSocket publisher).
    Tcp,
}

/// What a generic-mode subscriber sends after its upgrade.
struct Generic {
    first: Vec<u8>,
    binary: bool,
}

/// Marker that starts a generic-mode payload: "VL", 16 hex digits of
/// sequence, 16 of send time (ns since the run began), then padding.
const MARKER: &[u8] = b"VL";
const GENERIC_MIN_SIZE: usize = 34;

fn generic_payload(seq: u64, ns: u64, size: usize) -> Vec<u8> {
    let mut p = format!("VL{seq:016x}{ns:016x}").into_bytes();
    p.resize(size, b'x');
    p
}

/// Every payload marker in a received message (a NATS MSG, a volley frame,
/// a bare echo...).
fn scan_payloads(data: &[u8], track: &mut Track, totals: &Totals, hist: &RefCell<Histogram<u64>>, now: u64) {
    let hex = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    for at in memchr::memmem::find_iter(data, MARKER) {
        let Some(f) = data.get(at + 2..at + GENERIC_MIN_SIZE) else {
            continue;
        };
        if let (Some(seq), Some(sent)) = (hex(&f[..16]), hex(&f[16..32])) {
            record(seq, sent, track, totals, hist, now);
        }
    }
}

fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\t", "\t")
        .into_bytes()
}

/// The latency histogram every worker folds its own into at the end.
type SharedHist = Arc<Mutex<Histogram<u64>>>;

/// Shared counters, updated by every worker.
#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    connect_failed: AtomicU64,
    /// Failures by cause, in `FAIL_CAUSES` order.
    failed_by: [AtomicU64; FAIL_CAUSES.len()],
    received: AtomicU64,
    gaps: AtomicU64,
    dups: AtomicU64,
    closed: AtomicU64,
}

/// Connect failure causes reported separately.
const FAIL_CAUSES: [&str; 7] = [
    "refused",
    "timed_out",
    "addr_not_available",
    "too_many_files",
    "reset",
    "upgrade_refused",
    "other",
];

impl Totals {
    fn fail(&self, e: &std::io::Error) {
        let cause = match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => 0,
            Some(libc::ETIMEDOUT) => 1,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => 2,
            Some(libc::EMFILE) | Some(libc::ENFILE) => 3,
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => 4,
            _ if e.to_string().contains("upgrade refused") => 5,
            _ => 6,
        };
        self.failed_by[cause].fetch_add(1, Relaxed);
        self.connect_failed.fetch_add(1, Relaxed);
    }

    fn failures(&self) -> serde_json::Value {
        FAIL_CAUSES
            .iter()
            .zip(&self.failed_by)
            .map(|(n, c)| (n.to_string(), serde_json::json!(c.load(Relaxed))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// The `i`-th loopback source address (127.1.0.1, 127.1.0.2, ...).
fn source_addr(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 1 + (i / 64_000) as u8, (i / 250 % 256) as u8, (i % 250 + 1) as u8).into()
}

/// A non-blocking connect from `source` (port chosen at connect time) to
/// `target`; the first write waits for the handshake.
fn connect_from(source: Option<std::net::IpAddr>, target: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option on a socket we own.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: the descriptor comes from into_raw_fd and is owned by nobody else.
    Ok(unsafe { TcpStream::from_raw_fd(s.into_raw_fd()) })
}

fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn frame(op: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + body.len());
    v.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
    v.extend_from_slice(&16u16.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// (rss bytes, cpu ticks) of a process.
fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss_kb * 1024, ticks))
}

/// (rss bytes, cpu ticks) summed over processes; None if any is gone.
fn procs_usage(pids: &[u32]) -> Option<(u64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .try_fold((0, 0), |(r, t), &p| proc_usage(p).map(|(r2, t2)| (r + r2, t + t2)))
}

/// Kernel memory the TCP stack holds: slab plus socket buffer pages, bytes.
fn kernel_net_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|w| *w == "mem")
                .and_then(|i| f.get(i + 1)?.parse().ok())
        })
        .unwrap_or(0);
    slab_kb * 1024 + tcp_pages * 4096
}

/// (busy, total) jiffies of the whole machine.
fn machine_cpu() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn tick_secs() -> f64 {
    // SAFETY: sysconf has no memory effects.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Worker {
    id: usize,
    count: usize,
    common: Common,
    generic: Option<Arc<Generic>>,
    totals: Arc<Totals>,
    hist: Arc<Mutex<Histogram<u64>>>,
    stop: Arc<AtomicBool>,
    base: Instant,
}

async fn run_worker(w: Worker) {
    // A private fd table: see the module docs. Nothing is shared after this.
    // SAFETY: unshare(2) with a flag only affects this thread.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        eprintln!(
            "worker {}: unshare(CLONE_FILES): {}",
            w.id,
            std::io::Error::last_os_error()
        );
    }
    // Without it a worker could park forever in its pacing sleep (see
    // volley::wake_keeper): 1M runs stalled that way at 968k-987k.
    let _keeper = volley::wake_keeper::spawn(&format!("loadgen-keep-{}", w.id), volley::wake_keeper::PERIOD)
        .map_err(|e| eprintln!("worker {}: cannot spawn its wake keeper: {e}", w.id))
        .ok();
    // SAFETY: plain syscalls creating descriptors this worker owns.
    let (epfd, wake) = unsafe {
        (
            libc::epoll_create1(libc::EPOLL_CLOEXEC),
            libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC),
        )
    };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: u64::MAX,
    };
    // SAFETY: registering our eventfd.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, wake, &mut ev) };
    let (tx, rx) = std::sync::mpsc::channel();
    // Spawned after unshare: it shares this worker's fd table.
    let receiver = {
        let (totals, stop, base) = (w.totals.clone(), w.stop.clone(), w.base);
        std::thread::Builder::new()
            .name(format!("loadgen-rx-{}", w.id))
            .spawn(move || receive_loop(epfd, wake, rx, totals, stop, base))
            .expect("spawn the receive thread")
    };
    let handoff = Rc::new(Handoff { tx, wake });
    let per_conn_gap = Duration::from_secs_f64(w.common.workers as f64 / w.common.rate.max(1) as f64);
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
    ));
    let auth = format!(r#"{{"room_id":"{}","accepts":[]}}"#, w.common.room);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..w.count {
        let due = start + per_conn_gap * i as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            glommio::timer::sleep(d).await;
        }
        // Global connection number: spreads targets and sources evenly.
        let n = i * w.common.workers + w.id;
        let target = w.common.target[n % w.common.target.len()];
        let source = (w.common.sources > 0).then(|| source_addr(n / w.common.target.len() % w.common.sources));
        let stream = match connect_from(source, target) {
            Ok(s) => s,
            Err(e) => {
                if w.totals.connect_failed.load(Relaxed) < 5 {
                    eprintln!("worker {}: connect to {target} failed: {e}", w.id);
                }
                w.totals.fail(&e);
                continue;
            }
        };
        let totals = w.totals.clone();
        let hist = hist.clone();
        let stop = w.stop.clone();
        let auth = auth.clone();
        let ws = w.common.ws.clone();
        let generic = w.generic.clone();
        let handoff = handoff.clone();
        let base = w.base;
        tasks.push(glommio::spawn_local(async move {
            let mut track = Track::default();
            let r = match &ws {
                Some(path) => {
                    let hello = match &generic {
                        Some(g) if g.first.is_empty() => None,
                        Some(g) => Some(ws_frame(if g.binary { 0x2 } else { 0x1 }, &g.first)),
                        None => Some(ws_frame(0x2, &frame(7, 1, auth.as_bytes()))),
                    };
                    let sub = Sub {
                        track: &mut track,
                        totals: &totals,
                        hist: &hist,
                        base,
                        generic: generic.is_some(),
                    };
                    ws_subscriber(stream, path, hello, sub, &stop, &handoff).await
                }
                None => subscriber(stream, &auth, &mut track, &totals, &hist, &stop, base, &handoff).await,
            };
            match r {
                Err(e) if !track.authed => totals.fail(&e),
                // The server hung up before accepting us: a failure too,
                // or the run would wait for it until its deadline.
                Ok(()) if !track.authed && !stop.load(Relaxed) => {
                    totals.fail(&std::io::Error::other("closed before the handshake completed"))
                }
                Ok(()) if track.handed_off => {}
                _ => {
                    totals.closed.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    while !w.stop.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    // Give subscribers a moment to notice, then fold the histograms in.
    glommio::timer::sleep(Duration::from_millis(100)).await;
    let received = receiver.join().expect("receive thread");
    let mut all = w.hist.lock().unwrap();
    all.add(&*hist.borrow()).unwrap();
    all.add(&received).unwrap();
    drop(all);
    drop(tasks);
}

#[allow(clippy::too_many_arguments)]
async fn subscriber(
    mut s: TcpStream,
    auth: &str,
    track: &mut Track,
    totals: &Totals,
    hist: &RefCell<Histogram<u64>>,
    stop: &AtomicBool,
    base: Instant,
    handoff: &Handoff,
) -> std::io::Result<()> {
    s.write_all(&frame(7, 1, auth.as_bytes())).await?;
    // Small on purpose: a million of these must fit; it grows for bursts.
    let mut buf = vec![0u8; 512];
    let mut have = 0usize;
    while read_more(&mut s, &mut buf, &mut have, stop).await? {
        let now = now_ns(base);
        let at = tcp_frames(&buf[..have], |f| on_frame(f, track, totals, hist, now));
        track.flush(totals);
        buf.copy_within(at..have, 0);
        have -= at;
        if track.authed {
            return handoff.give(&s, buf, have, false, false, track);
        }
    }
    Ok(())
}

/// Reads more of a handshake into `buf[have..]`, growing `buf` when full;
/// false once the run stops or the server closed. No per-read timeout (a
/// timer per connection per read would cost more than the read): the worker
/// ends by dropping its executor.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, have: &mut usize, stop: &AtomicBool) -> std::io::Result<bool> {
    if stop.load(Relaxed) {
        return Ok(false);
    }
    if *have == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    let n = s.read(&mut buf[*have..]).await?;
    *have += n;
    Ok(n > 0)
}

/// What one subscriber has seen.
#[derive(Default)]
struct Track {
    authed: bool,
    /// Passed to the receive thread (which counts its close).
    handed_off: bool,
    next_seq: u64,
    /// Payloads counted here and not yet added to `Totals::received`: the
    /// shared counter is bumped once per batch, not once per message.
    unflushed: u64,
}

impl Track {
    fn flush(&mut self, totals: &Totals) {
        if self.unflushed > 0 {
            totals.received.fetch_add(std::mem::take(&mut self.unflushed), Relaxed);
        }
    }
}

/// Accounts for one protocol frame received by a subscriber.
/// `now`: when the bytes were read (ns since the run began), taken once per
/// read rather than per message: frames read together arrived together.
fn on_frame(f: &[u8], track: &mut Track, totals: &Totals, hist: &RefCell<Histogram<u64>>, now: u64) {
    if f.len() < 16 {
        return;
    }
    let op = u32::from_be_bytes(f[8..12].try_into().unwrap());
    let body = &f[16..];
    match op {
        8 if !track.authed => {
            track.authed = true;
            totals.connected.fetch_add(1, Relaxed);
        }
        1000 if body.len() >= 16 => {
            let seq = u64::from_be_bytes(body[0..8].try_into().unwrap());
            let sent = u64::from_be_bytes(body[8..16].try_into().unwrap());
            record(seq, sent, track, totals, hist, now);
        }
        _ => {}
    }
}

/// Accounts for one received payload: latency, loss, duplicates, gaps.
fn record(seq: u64, sent: u64, track: &mut Track, totals: &Totals, hist: &RefCell<Histogram<u64>>, now: u64) {
    let lat = now.saturating_sub(sent).max(1);
    let _ = hist.borrow_mut().record(lat);
    track.unflushed += 1;
    if seq < track.next_seq {
        totals.dups.fetch_add(1, Relaxed);
    } else {
        if seq > track.next_seq {
            totals.gaps.fetch_add(seq - track.next_seq, Relaxed);
        }
        track.next_seq = seq + 1;
    }
}

/// A masked client WebSocket frame (FIN set). The mask is fixed: it guards
/// against cache poisoning by proxies, which loopback benchmarks do not have.
fn ws_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0xc3, 0x3c, 0xa5];
    let mut v = Vec::with_capacity(14 + payload.len());
    v.push(0x80 | op);
    if payload.len() < 126 {
        v.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 0xffff {
        v.push(0x80 | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        v.push(0x80 | 127);
        v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    v.extend_from_slice(&MASK);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    v
}

/// A subscriber over WebSocket: upgrade, auth in a binary message, then one
/// protocol frame per server message; pings are answered.
/// Where a subscriber accounts what it receives.
struct Sub<'a> {
    track: &'a mut Track,
    totals: &'a Totals,
    hist: &'a RefCell<Histogram<u64>>,
    base: Instant,
    /// Generic mode: payload markers anywhere in any data message; connected
    /// once upgraded. Otherwise volley frames; connected once authenticated.
    generic: bool,
}

async fn ws_subscriber(
    mut s: TcpStream,
    path: &str,
    hello: Option<Vec<u8>>,
    sub: Sub<'_>,
    stop: &AtomicBool,
    handoff: &Handoff,
) -> std::io::Result<()> {
    let Sub {
        track,
        totals,
        hist,
        base,
        generic,
    } = sub;
    let req = upgrade_request(path, "volley");
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 512];
    let mut have = 0usize;
    let mut upgraded = false;
    while read_more(&mut s, &mut buf, &mut have, stop).await? {
        let mut at = 0;
        if !upgraded {
            let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other("upgrade refused"));
            }
            upgraded = true;
            // Only now: some servers (NATS) refuse data sent before their 101.
            if let Some(h) = &hello {
                s.write_all(h).await?;
            }
            if generic {
                track.authed = true;
                totals.connected.fetch_add(1, Relaxed);
            }
            at = end + 4;
        }
        let mut pongs = Vec::new();
        let (used, closed) = ws_messages(&buf[at..have], generic, track, totals, hist, now_ns(base), &mut pongs);
        track.flush(totals);
        at += used;
        for p in pongs {
            s.write_all(&p).await?;
        }
        if closed {
            return Ok(());
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if track.authed {
            return handoff.give(&s, buf, have, true, generic, track);
        }
    }
    Ok(())
}

/// Server WebSocket frames (unmasked) in `buf`: calls `on(opcode, payload)`
/// for each whole one until it returns false; returns the bytes consumed.
fn ws_frames(buf: &[u8], mut on: impl FnMut(u8, &[u8]) -> bool) -> usize {
    let mut at = 0;
    while buf.len() - at >= 2 {
        let (op, len_code) = (buf[at] & 0x0f, buf[at + 1] & 0x7f);
        let (len, hdr) = match len_code {
            126 if buf.len() - at >= 4 => (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4),
            127 if buf.len() - at >= 10 => (
                u64::from_be_bytes(buf[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if buf.len() - at < hdr + len {
            break;
        }
        let go_on = on(op, &buf[at + hdr..at + hdr + len]);
        at += hdr + len;
        if !go_on {
            break;
        }
    }
    at
}

/// Accounts for the server's WebSocket messages in `buf` (payload markers in
/// generic mode, protocol frames otherwise) and collects the pongs to send.
/// Returns the bytes consumed and whether a close frame came.
fn ws_messages(
    buf: &[u8],
    generic: bool,
    track: &mut Track,
    totals: &Totals,
    hist: &RefCell<Histogram<u64>>,
    now: u64,
    pongs: &mut Vec<Vec<u8>>,
) -> (usize, bool) {
    let mut closed = false;
    let used = ws_frames(buf, |op, payload| {
        match op {
            0x1 | 0x2 if generic => scan_payloads(payload, track, totals, hist, now),
            0x2 => on_frame(payload, track, totals, hist, now),
            0x9 => pongs.push(ws_frame(0xA, payload)),
            0x8 => closed = true,
            _ => {}
        }
        !closed
    });
    (used, closed)
}

/// The upgrade request every WebSocket client here sends (a fixed key: the
/// load generator does not check the accept value).
fn upgrade_request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Protocol frames in `buf`: calls `on(frame)` for each whole one; returns
/// the bytes consumed.
fn tcp_frames(buf: &[u8], mut on: impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    while buf.len() - at >= 16 {
        let len = (u32::from_be_bytes(buf[at..at + 4].try_into().unwrap()) as usize).max(16);
        if buf.len() - at < len {
            break;
        }
        on(&buf[at..at + len]);
        at += len;
    }
    at
}

/// A subscriber past its handshake, owned by its worker's receive thread.
struct Recv {
    fd: RawFd,
    buf: Vec<u8>,
    have: usize,
    track: Track,
    ws: bool,
    generic: bool,
}

/// How long the receive thread lets events gather after a small batch.
const COALESCE: Duration = Duration::from_micros(500);

/// Where a worker's subscribers go once their handshake is done: a plain
/// thread of the same worker (so the same private fd table) that reads them
/// all through one edge-triggered epoll. Each message then costs a `recv` and
/// a share of one `epoll_wait`, instead of a recv plus a fresh glommio poll
/// request per message (measured: 6.9 us per delivery, more than half the
/// server's own cost, before this).
struct Handoff {
    tx: std::sync::mpsc::Sender<Box<Recv>>,
    wake: RawFd,
}

impl Handoff {
    /// Passes the connection (a duplicate of its descriptor; the glommio
    /// stream is dropped by the caller) and what it already read.
    fn give(
        &self,
        s: &TcpStream,
        buf: Vec<u8>,
        have: usize,
        ws: bool,
        generic: bool,
        track: &mut Track,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: dup of a descriptor we own; the copy is owned by the Recv.
        let fd = unsafe { libc::dup(s.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = Recv {
            fd,
            buf,
            have,
            track: std::mem::take(track),
            ws,
            generic,
        };
        // What the caller still sees: authenticated, and no longer its own.
        track.authed = true;
        track.handed_off = true;
        let _ = self.tx.send(Box::new(r));
        let one: u64 = 1;
        // SAFETY: 8-byte write to our eventfd.
        unsafe { libc::write(self.wake, (&one as *const u64).cast(), 8) };
        Ok(())
    }
}

/// The receive thread: registers handed-over sockets, reads whatever is
/// ready, accounts every payload; ends when `stop` is set and returns its
/// latency histogram.
fn receive_loop(
    epfd: RawFd,
    wake: RawFd,
    rx: std::sync::mpsc::Receiver<Box<Recv>>,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
    base: Instant,
) -> Histogram<u64> {
    let hist = RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap());
    let mut conns: Vec<Option<Box<Recv>>> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while !stop.load(Relaxed) {
        // SAFETY: epoll_wait into a buffer of the given length.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 50) };
        let mut batch = 0u64;
        for e in &events[..n.max(0) as usize] {
            let key = e.u64;
            // Read to EAGAIN only when the peer may have closed: otherwise a
            // short read means the socket is empty, and any later arrival
            // raises a new edge (this saves a recv per message).
            let to_eagain = e.events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            if key == u64::MAX {
                let mut v = [0u8; 8];
                // SAFETY: 8-byte read from our eventfd.
                unsafe { libc::read(wake, v.as_mut_ptr().cast(), 8) };
                while let Ok(r) = rx.try_recv() {
                    let idx = conns.len();
                    let mut ev = libc::epoll_event {
                        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                        u64: idx as u64,
                    };
                    // SAFETY: registering a descriptor we own.
                    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, r.fd, &mut ev) };
                    conns.push(Some(r));
                    let r = conns[idx].as_mut().unwrap();
                    let alive = drain(r, true, &totals, &hist, base);
                    batch += std::mem::take(&mut r.track.unflushed);
                    if !alive {
                        close_recv(&mut conns[idx], &totals);
                    }
                }
            } else if let Some(Some(r)) = conns.get_mut(key as usize) {
                let alive = drain(r, to_eagain, &totals, &hist, base);
                batch += std::mem::take(&mut r.track.unflushed);
                if !alive {
                    close_recv(&mut conns[key as usize], &totals);
                }
            }
        }
        if batch > 0 {
            totals.received.fetch_add(batch, Relaxed);
        }
        // Interrupt coalescing: a server spreads one broadcast over tens of
        // milliseconds, and waking per handful of sockets made context
        // switches the largest single cost here (a quarter of the thread's
        // samples). Letting events gather for a moment costs at most this
        // much added latency.
        if (n as usize) < events.len() / 16 {
            std::thread::sleep(COALESCE);
        }
    }
    for c in conns.iter_mut() {
        if let Some(r) = c.take() {
            // SAFETY: closing the duplicate we own.
            unsafe { libc::close(r.fd) };
        }
    }
    hist.into_inner()
}

fn close_recv(slot: &mut Option<Box<Recv>>, totals: &Totals) {
    if let Some(r) = slot.take() {
        // SAFETY: closing the duplicate we own (this also leaves the epoll set).
        unsafe { libc::close(r.fd) };
        totals.closed.fetch_add(1, Relaxed);
    }
}

/// Reads `r` until a short read (or, with `to_eagain`, until EAGAIN) and
/// accounts what arrived; false when the connection closed.
fn drain(r: &mut Recv, to_eagain: bool, totals: &Totals, hist: &RefCell<Histogram<u64>>, base: Instant) -> bool {
    let mut empty = false;
    loop {
        let now = now_ns(base);
        let (used, alive) = if r.ws {
            let mut pongs = Vec::new();
            let (used, closed) = ws_messages(&r.buf[..r.have], r.generic, &mut r.track, totals, hist, now, &mut pongs);
            for p in pongs {
                // SAFETY: a small write on a descriptor we own; a full socket
                // buffer only loses a pong.
                unsafe {
                    libc::send(
                        r.fd,
                        p.as_ptr().cast(),
                        p.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
            }
            (used, !closed)
        } else {
            let track = &mut r.track;
            (
                tcp_frames(&r.buf[..r.have], |f| on_frame(f, track, totals, hist, now)),
                true,
            )
        };
        r.buf.copy_within(used..r.have, 0);
        r.have -= used;
        if !alive {
            return false;
        }
        if empty {
            return true;
        }
        if r.have == r.buf.len() {
            r.buf.resize(r.buf.len() * 2, 0);
        }
        // SAFETY: recv into the unfilled part of our buffer.
        let n = unsafe {
            libc::recv(
                r.fd,
                r.buf[r.have..].as_mut_ptr().cast(),
                r.buf.len() - r.have,
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return false,
            n if n > 0 => {
                empty = !to_eagain && (n as usize) < r.buf.len() - r.have;
                r.have += n as usize;
            }
            _ => {
                let e = std::io::Error::last_os_error();
                return matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR));
            }
        }
    }
}

/// Minimal HTTP/1.1 keep-alive client for the publish API (loopback only).
struct Publisher {
    s: std::net::TcpStream,
    http: SocketAddr,
    /// `X-Api-Key` header line, or empty.
    key_header: String,
}

impl Publisher {
    fn connect(http: SocketAddr, api_key: &str) -> Result<Self> {
        let s = std::net::TcpStream::connect(http).context("connect to the HTTP API")?;
        s.set_nodelay(true)?;
        let key_header = if api_key.is_empty() {
            String::new()
        } else {
            format!("X-Api-Key: {api_key}\r\n")
        };
        Ok(Publisher { s, http, key_header })
    }
    fn post(&mut self, path: &str, body: &[u8]) -> Result<()> {
        use std::io::{Read, Write};
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n",
            self.http,
            self.key_header,
            body.len()
        );
        self.s.write_all(head.as_bytes())?;
        self.s.write_all(body)?;
        let mut resp = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("API closed the connection");
            }
            resp.extend_from_slice(&chunk[..n]);
            if let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") {
                let headers = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
                let len: usize = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if resp.len() >= end + 4 + len {
                    if !headers.starts_with("http/1.1 200") {
                        bail!("publish failed: {}", String::from_utf8_lossy(&resp));
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// volley's TCP publisher connection (docs/API.md): publishes go out
/// pipelined with sequence 0 (no reply); `barrier` (op 2 → op 3) confirms that
/// every earlier one was routed, or returns the server's op 6 reason.
struct TcpPublisher {
    s: std::net::TcpStream,
    addr: SocketAddr,
    body: Vec<u8>,
}

impl TcpPublisher {
    fn connect(addr: SocketAddr, api_key: &str) -> Result<Self> {
        use std::io::Write;
        let s =
            std::net::TcpStream::connect(addr).with_context(|| format!("connect to the TCP publisher port {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut p = TcpPublisher {
            s,
            addr,
            body: Vec::new(),
        };
        p.s.write_all(&frame(7, 1, api_key.as_bytes()))?;
        p.expect(8)?;
        Ok(p)
    }

    /// Reads until op `want`; an op 6 is the server's refusal.
    fn expect(&mut self, want: u32) -> Result<()> {
        use std::io::Read;
        loop {
            let mut h = [0u8; 16];
            self.s
                .read_exact(&mut h)
                .with_context(|| format!("publisher {}: waiting for op {want}", self.addr))?;
            let len = (u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize).saturating_sub(16);
            let op = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            let mut body = vec![0u8; len];
            self.s.read_exact(&mut body)?;
            match op {
                6 => bail!(
                    "publisher {}: server closed it: {}",
                    self.addr,
                    String::from_utf8_lossy(&body)
                ),
                o if o == want => return Ok(()),
                _ => {}
            }
        }
    }

    fn push_room(&mut self, room: &str, op: u32, payload: &[u8]) -> Result<()> {
        use std::io::Write;
        self.body.clear();
        self.body.extend_from_slice(&op.to_be_bytes());
        self.body.extend_from_slice(&(room.len() as u16).to_be_bytes());
        self.body.extend_from_slice(room.as_bytes());
        self.body.extend_from_slice(payload);
        self.s
            .write_all(&frame(24, 0, &self.body))
            .with_context(|| format!("publish to {}", self.addr))
    }

    fn barrier(&mut self) -> Result<()> {
        use std::io::Write;
        self.s.write_all(&frame(2, 1, &[]))?;
        self.expect(3)
    }

    /// One room push (business op 1000) to every publisher; after the
    /// `last` one a barrier on each: every message routed, or the server's
    /// reason why not.
    fn all(pubs: &mut [TcpPublisher], room: &str, payload: &[u8], last: bool) -> Result<()> {
        for p in pubs.iter_mut() {
            p.push_room(room, 1000, payload)?;
        }
        if last {
            for p in pubs.iter_mut() {
                p.barrier()?;
            }
        }
        Ok(())
    }
}

fn spawn_workers(
    common: &Common,
    generic: Option<Arc<Generic>>,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
    base: Instant,
) -> Result<(Vec<glommio::ExecutorJoinHandle<()>>, SharedHist)> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?));
    let mut handles = Vec::new();
    for id in 0..common.workers {
        let count = common.conns / common.workers + usize::from(id < common.conns % common.workers);
        let w = Worker {
            id,
            count,
            common: common.clone(),
            generic: generic.clone(),
            totals: totals.clone(),
            hist: hist.clone(),
            stop: stop.clone(),
            base,
        };
        handles.push(
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("loadgen-{id}"))
                .io_memory(512 << 10)
                .spawn(move || run_worker(w))
                .map_err(|e| anyhow::anyhow!("cannot start worker {id}: {e}"))?,
        );
    }
    Ok((handles, hist))
}

fn wait_connected(common: &Common, totals: &Totals) -> Result<Duration> {
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        let c = totals.connected.load(Relaxed);
        let f = totals.connect_failed.load(Relaxed);
        if c + f >= common.conns as u64 {
            if f > 0 {
                eprintln!("{f} connections failed");
            }
            return Ok(start.elapsed());
        }
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>5.1}s] connected {c}/{} failed {f} {}",
                start.elapsed().as_secs_f64(),
                common.conns,
                if f > 0 {
                    totals.failures().to_string()
                } else {
                    String::new()
                }
            );
            last = Instant::now();
        }
        if start.elapsed() > Duration::from_secs(30 + common.conns as u64 / common.rate.max(1) * 2) {
            bail!("only {c} of {} connections authenticated", common.conns);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Most connections one worker (one private fd table) is given; leaves room
/// under a 20,000 RLIMIT_NOFILE for the executor's own descriptors.
const MAX_CONNS_PER_WORKER: usize = 19_500;

fn self_rss() -> u64 {
    proc_usage(std::process::id()).map_or(0, |u| u.0)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let common = match &cli.cmd {
        Cmd::Idle { common, .. } | Cmd::Broadcast { common, .. } | Cmd::Ws { common, .. } => common,
    };
    let nofile = {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit fills the struct we pass.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        r.rlim_cur as usize
    };
    let per_worker = common.conns.div_ceil(common.workers.max(1));
    if per_worker > MAX_CONNS_PER_WORKER.min(nofile.saturating_sub(500)) {
        bail!(
            "{per_worker} connections per worker passes the open-file limit ({nofile} per fd table); \
             use --workers {} or more",
            common
                .conns
                .div_ceil(MAX_CONNS_PER_WORKER.min(nofile.saturating_sub(500)).max(1))
        );
    }
    if common.target.is_empty() || common.workers == 0 {
        bail!("need at least one --target and one worker");
    }
    let base = Instant::now();
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    match cli.cmd {
        Cmd::Idle { common, hold_secs } => {
            let before = procs_usage(&common.server_pid);
            let (self0, kernel0) = (self_rss(), kernel_net_memory());
            let (handles, _) = spawn_workers(&common, None, &totals, &stop, base)?;
            let took = wait_connected(&common, &totals)?;
            std::thread::sleep(Duration::from_secs(hold_secs));
            let after = procs_usage(&common.server_pid);
            let (self1, kernel1) = (self_rss(), kernel_net_memory());
            let n = totals.connected.load(Relaxed);
            let per_conn = match (before, after) {
                (Some(b), Some(a)) if n > 0 => Some((a.0 as f64 - b.0 as f64) / n as f64),
                _ => None,
            };
            let per = |a: u64, b: u64| (b as f64 - a as f64) / n.max(1) as f64;
            stop.store(true, Relaxed);
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
            print_report(&report, common.json);
            if totals.connect_failed.load(Relaxed) > 0 {
                std::process::exit(1);
            }
        }
        Cmd::Broadcast {
            common,
            http,
            publish_tcp,
            api_key,
            load,
        } => {
            if load.size < 16 {
                bail!("--size must be at least 16");
            }
            let path = {
                let (typ, id) = common.room.split_once("://").context("--room must be type://id")?;
                format!("/goim/push/room?operation=1000&type={typ}&room={id}")
            };
            let Load {
                msg_rate,
                size,
                duration,
                ..
            } = load;
            let total = msg_rate * duration;
            let mut payload = vec![b'x'; size];
            let stamp = |payload: &mut [u8], seq: u64, ns: u64| {
                payload[0..8].copy_from_slice(&seq.to_be_bytes());
                payload[8..16].copy_from_slice(&ns.to_be_bytes());
            };
            if publish_tcp.is_empty() {
                let mut publishers = http
                    .iter()
                    .map(|&a| Publisher::connect(a, &api_key))
                    .collect::<Result<Vec<_>>>()?;
                run_broadcast(&common, None, load, &totals, &stop, base, |seq, ns| {
                    stamp(&mut payload, seq, ns);
                    for p in &mut publishers {
                        p.post(&path, &payload)?;
                    }
                    Ok(())
                })?;
            } else {
                let mut publishers = publish_tcp
                    .iter()
                    .map(|&a| TcpPublisher::connect(a, &api_key))
                    .collect::<Result<Vec<_>>>()?;
                run_broadcast(&common, None, load, &totals, &stop, base, |seq, ns| {
                    stamp(&mut payload, seq, ns);
                    TcpPublisher::all(&mut publishers, &common.room, &payload, seq + 1 == total)
                })?;
            }
        }
        Cmd::Ws {
            common,
            first_message,
            first_binary_hex,
            publish,
            publisher_first_message,
            publish_template,
            publish_http,
            publish_path,
            publish_tcp,
            load,
        } => {
            if load.size < GENERIC_MIN_SIZE {
                bail!("--size must be at least {GENERIC_MIN_SIZE}");
            }
            let Some(ws_path) = common.ws.clone() else {
                bail!("the ws mode needs --ws PATH");
            };
            let generic = match (&first_message, &first_binary_hex) {
                (Some(_), Some(_)) => bail!("--first-message and --first-binary-hex exclude each other"),
                (_, Some(h)) => Generic {
                    first: decode_hex(h)?,
                    binary: true,
                },
                (m, None) => Generic {
                    first: m.as_deref().map(unescape).unwrap_or_default(),
                    binary: false,
                },
            };
            let Load {
                msg_rate,
                size,
                duration,
                ..
            } = load;
            // Each publisher is a closure over its connections; one run.
            let publisher: Box<dyn FnMut(u64, u64) -> Result<()>> = match publish {
                PublishVia::Http => {
                    if publish_http.is_empty() {
                        bail!("--publish http needs --publish-http ADDRS");
                    }
                    let mut publishers = publish_http
                        .iter()
                        .map(|&a| Publisher::connect(a, ""))
                        .collect::<Result<Vec<_>>>()?;
                    Box::new(move |seq, ns| {
                        let payload = generic_payload(seq, ns, size);
                        for p in &mut publishers {
                            p.post(&publish_path, &payload)?;
                        }
                        Ok(())
                    })
                }
                PublishVia::Tcp => {
                    if publish_tcp.is_empty() {
                        bail!("--publish tcp needs --publish-tcp ADDRS");
                    }
                    let mut publishers = publish_tcp
                        .iter()
                        .map(|&a| TcpPublisher::connect(a, ""))
                        .collect::<Result<Vec<_>>>()?;
                    let total = msg_rate * duration;
                    let room = common.room.clone();
                    Box::new(move |seq, ns| {
                        let payload = generic_payload(seq, ns, size);
                        TcpPublisher::all(&mut publishers, &room, &payload, seq + 1 == total)
                    })
                }
                PublishVia::Ws => {
                    let hello = publisher_first_message.as_deref().map(unescape).unwrap_or_default();
                    let mut pubs = common
                        .target
                        .iter()
                        .map(|&t| WsPublisher::connect(t, &ws_path, &hello))
                        .collect::<Result<Vec<_>>>()?;
                    let template = String::from_utf8(unescape(&publish_template)).context("template")?;
                    Box::new(move |seq, ns| {
                        let payload = String::from_utf8(generic_payload(seq, ns, size)).expect("ASCII");
                        let msg = template
                            .replace("{len}", &size.to_string())
                            .replace("{payload}", &payload);
                        for p in &mut pubs {
                            p.send(msg.as_bytes())?;
                        }
                        Ok(())
                    })
                }
            };
            run_broadcast(&common, Some(Arc::new(generic)), load, &totals, &stop, base, publisher)?;
        }
    }
    Ok(())
}

/// Message rate, size and timing of a broadcast run.
#[derive(clap::Args, Clone, Copy)]
struct Load {
    /// Messages published per second.
    #[arg(long, default_value_t = 10)]
    msg_rate: u64,
    /// Payload size in bytes: at least 16 (sequence + time stamp), 34 in the
    /// ws mode (plus its marker).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds to wait after the last publish for deliveries to finish.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
}

/// Connects the subscribers, publishes `msg_rate * duration` messages through
/// `publish(seq, send_ns)`, waits for them to arrive, and reports (exits 1 on
/// loss or duplicates).
fn run_broadcast(
    common: &Common,
    generic: Option<Arc<Generic>>,
    load: Load,
    totals: &Arc<Totals>,
    stop: &Arc<AtomicBool>,
    base: Instant,
    mut publish: impl FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    let Load {
        msg_rate,
        size,
        duration,
        drain_secs,
    } = load;
    let mem0 = (procs_usage(&common.server_pid), self_rss(), kernel_net_memory());
    let (handles, hist) = spawn_workers(common, generic, totals, stop, base)?;
    let took = wait_connected(common, totals)?;
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
        publish(seq, now_ns(base))?;
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
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (m1, s1, l1) = (
        machine_cpu(),
        procs_usage(&common.server_pid),
        proc_usage(std::process::id()),
    );
    stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let received = totals.received.load(Relaxed) - r0;
    let h = hist.lock().unwrap();
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let machine_cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_frac = (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64;
    let machine_cpu_secs = busy_frac * machine_cores * elapsed;
    let server_cpu_secs = match (s0, s1) {
        (Some(a), Some(b)) => Some((b.1 - a.1) as f64 * tick_secs()),
        _ => None,
    };
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
        "dups": totals.dups.load(Relaxed),
        "deliveries_per_sec": received as f64 / elapsed,
        "machine_cpu_us_per_delivery": machine_cpu_secs * 1e6 / received.max(1) as f64,
        "server_cpu_us_per_delivery": server_cpu_secs.map(|s| s * 1e6 / received.max(1) as f64),
        // The load generator's own share (its receive syscalls included).
        "loadgen_cpu_us_per_delivery": l0.zip(l1).map(|(a, b)| (b.1 - a.1) as f64 * tick_secs() * 1e6 / received.max(1) as f64),
        "latency_us": {"p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p999": us(0.999), "max": h.max() as f64 / 1000.0},
    });
    print_report(&report, common.json);
    if received < expected || totals.dups.load(Relaxed) > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn decode_hex(h: &str) -> Result<Vec<u8>> {
    if h.len() & 1 == 1 {
        bail!("odd-length hex");
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).context("bad hex"))
        .collect()
}

/// The final report: one JSON object with `--json`, else aligned
/// `name  value` lines (nested names dotted, e.g. `latency_us.p99`).
fn print_report(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    let mut lines = Vec::new();
    flatten("", v, &mut lines);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in lines {
        println!("{k:<width$}  {v}");
    }
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        serde_json::Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            out.push((
                prefix.to_string(),
                if f.abs() >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.3}")
                },
            ));
        }
        serde_json::Value::Null => out.push((prefix.to_string(), "-".into())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// A WebSocket publisher on a plain blocking socket (main thread). A drain
/// thread reads and discards whatever the server sends it, so a server that
/// echoes to the sender never blocks on it.
struct WsPublisher {
    s: std::net::TcpStream,
}

impl WsPublisher {
    fn connect(target: SocketAddr, path: &str, hello: &[u8]) -> Result<Self> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(target).with_context(|| format!("publisher connect {target}"))?;
        s.set_nodelay(true)?;
        let req = upgrade_request(path, &target.to_string());
        s.write_all(req.as_bytes())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b)? == 0 {
                bail!("publisher: server closed during the upgrade");
            }
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            bail!("publisher upgrade refused: {}", String::from_utf8_lossy(&head));
        }
        if !hello.is_empty() {
            s.write_all(&ws_frame(0x1, hello))?;
        }
        let mut drain = s.try_clone()?;
        std::thread::spawn(move || {
            let mut sink = [0u8; 64 << 10];
            while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
        });
        Ok(WsPublisher { s })
    }

    fn send(&mut self, text: &[u8]) -> Result<()> {
        use std::io::Write;
        self.s.write_all(&ws_frame(0x1, text)).context("publisher send")
    }
}
