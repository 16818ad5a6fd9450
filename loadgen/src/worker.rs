//! Workers: each a glommio executor thread with a private fd table that
//! opens its share of the connections at the paced rate, runs each one's
//! handshake as a task (`subscribe`), and hands subscribed ones to its own
//! receive thread (`recv`).
//!
//! Scale: a process may hold only RLIMIT_NOFILE descriptors per fd table
//! (20,000 on the development host, not raisable). Each worker therefore
//! calls `unshare(CLONE_FILES)` first and gets a private fd table, so N
//! workers hold N times the limit in one process. Workers share no
//! descriptors after that (no cross-worker channels or wakers), which is
//! what makes it safe. Source ports: with `IP_BIND_ADDRESS_NO_PORT` the port
//! is picked at connect time per (source, destination), so capacity is ~28k
//! ports x sources x targets.
//!
//! Connection n (global numbering: i-th of worker w is n = i * workers + w)
//! goes to target n % targets, from source address n / targets % sources.

use crate::recv::Handoff;
use crate::run::Run;
use crate::stats::{new_hist, SharedHist, Track};
use crate::subscribe::subscribe;
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most connections one worker (one private fd table) is given; leaves room
/// under a 20,000 RLIMIT_NOFILE for the executor's own descriptors.
pub const MAX_CONNS_PER_WORKER: usize = 19_500;

/// The `i`-th loopback source address (127.1.0.1, 127.1.0.2, ...).
pub fn source_addr(i: usize) -> std::net::IpAddr {
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

/// Starts `common.workers` workers; returns their handles and the histogram
/// they fold their latencies into when they end.
pub fn spawn_workers(run: &Run) -> anyhow::Result<(Vec<glommio::ExecutorJoinHandle<()>>, SharedHist)> {
    let hist = Arc::new(Mutex::new(new_hist()));
    let c = &run.common;
    let mut handles = Vec::new();
    for id in 0..c.workers {
        let count = c.conns / c.workers + usize::from(id < c.conns % c.workers);
        let (run, hist) = (run.clone(), hist.clone());
        handles.push(
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("loadgen-{id}"))
                .io_memory(512 << 10)
                .spawn(move || run_worker(id, count, run, hist))
                .map_err(|e| anyhow::anyhow!("cannot start worker {id}: {e}"))?,
        );
    }
    Ok((handles, hist))
}

async fn run_worker(id: usize, count: usize, run: Run, all: SharedHist) {
    // A private fd table: see the module docs. Nothing is shared after this.
    // SAFETY: unshare(2) with a flag only affects this thread.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        eprintln!("worker {id}: unshare(CLONE_FILES): {}", std::io::Error::last_os_error());
    }
    let (handoff, receiver) = match Handoff::start(id, &run) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("worker {id}: cannot start its receive thread: {e}");
            return;
        }
    };
    let handoff = Rc::new(handoff);
    let c = &run.common;
    let per_conn_gap = Duration::from_secs_f64(c.workers as f64 / c.rate.max(1) as f64);
    let hist = Rc::new(RefCell::new(new_hist()));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for i in 0..count {
        let due = start + per_conn_gap * i as u32;
        match due.checked_duration_since(Instant::now()) {
            Some(d) => glommio::timer::sleep(d).await,
            // Behind schedule (connect itself slow, or the CPU busy): without
            // an await this loop would hold the executor until every
            // connection is opened, and the handshakes already sent would go
            // unread (19,000-connection ramps stood still for seconds at
            // 14.1k, where connects from one address get slow).
            None => glommio::yield_if_needed().await,
        }
        // Global connection number: spreads targets and sources evenly.
        let n = i * c.workers + id;
        let t = n % c.target.len();
        let source = (c.sources > 0).then(|| source_addr(n / c.target.len() % c.sources));
        run.totals.step(id, t, |p| &p.started);
        let stream = match connect_from(source, c.target[t]) {
            Ok(s) => s,
            Err(e) => {
                if run.totals.connect_failed.load(Relaxed) < 5 {
                    eprintln!("worker {id}: connect to {} failed: {e}", c.target[t]);
                }
                run.totals.fail(id, t, &e);
                continue;
            }
        };
        let (run, hist, handoff) = (run.clone(), hist.clone(), handoff.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut track = Track {
                worker: id,
                target: t,
                ..Track::default()
            };
            let r = subscribe(stream, &run, &mut track, &hist, &handoff).await;
            let totals = &run.totals;
            match r {
                Err(e) if !track.authed => totals.fail(id, t, &e),
                // The server hung up before accepting us: a failure too,
                // or the run would wait for it until its deadline.
                Ok(()) if !track.authed && !run.stop.load(Relaxed) => {
                    totals.fail(id, t, &std::io::Error::other("closed before the handshake completed"))
                }
                Ok(()) if track.handed_off => {}
                _ => {
                    totals.closed.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    while !run.stop.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    // Give subscribers a moment to notice, then fold the histograms in.
    glommio::timer::sleep(Duration::from_millis(100)).await;
    let received = receiver.join().expect("receive thread");
    let mut all = all.lock().expect("no worker panicked holding it");
    let _ = all.add(&*hist.borrow());
    let _ = all.add(&received);
    drop(all);
    drop(tasks);
}
