//! The per-shard runtime: the tasks that drive a `Shard` on its executor —
//! the mesh inbox loop (which does the fan-out), the one-second sweep — and
//! the shutdown drain.
//!
//! Runs on the shard's glommio executor and awaits (unlike the rest of
//! `shard`). The inbox and the sweep run in the shard's "control" task queue
//! (`Latency::Matters`, created by `control_queue`), beside the API and
//! publisher connections, so a publish is handled within a few milliseconds
//! even while thousands of connections have bytes for their drivers (run by
//! `conn::reactor` in the default queue).
//!
//! ```text
//! serve: spawn sweep (1 s, until the executor ends) + inbox; ready
//!        inbox: handle messages until Shutdown (closes every client);
//!               Drain starts a task that tells each client when its turn comes
//!        shut the listeners and the publishers' read sides
//!        drain: keep handling directory messages until every connection
//!               and publisher is gone, or shutdown_grace_secs
//! ```
//!
//! Invariants: the shard is borrowed only between awaits; `Shutdown` is the
//! last inbox message acted on as such; the fan-out time and queue clock
//! come from `metrics::clock_us`, the only clock the shard sees.

use super::mesh::ShardMsg;
use super::state::Shard;
use crate::metrics;
use glommio::{Latency, Shares, TaskQueueHandle};
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Longest the control queue (API, mesh inbox, sweep) waits for the CPU while
/// connection drivers run.
pub const CONTROL_LATENCY: Duration = Duration::from_millis(2);

/// Messages handled before the inbox yields to other tasks.
const INBOX_BATCH: u32 = 64;

/// Creates the shard's control task queue (see the module doc).
pub fn control_queue() -> TaskQueueHandle {
    glommio::executor().create_task_queue(Shares::default(), Latency::Matters(CONTROL_LATENCY), "control")
}

/// Runs the shard until shutdown: spawns the sweep and inbox tasks into
/// `control`, reports readiness through `ready` (with why not, if a task
/// cannot start), and after the inbox's `Shutdown` shuts the listening
/// sockets `listeners` names then (a hand-off that did not happen may have
/// changed them) and drains. Acceptors are the caller's (they are spawned before this).
pub async fn serve(
    shard: Rc<RefCell<Shard>>,
    control: TaskQueueHandle,
    listeners: fn() -> Vec<RawFd>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    shard.borrow_mut().set_unix(metrics::unix_now());
    let sweeper = shard.clone();
    // Runs until the executor ends, shutdown included.
    let sweep = async move {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            let mut sh = sweeper.borrow_mut();
            sh.set_unix(metrics::unix_now());
            sh.sweep();
        }
    };
    let tasks = glommio::spawn_local_into(sweep, control)
        .map(|t| t.detach())
        .and_then(|_| glommio::spawn_local_into(inbox(shard.clone()), control));
    let inbox = match tasks {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot spawn the shard's tasks: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    if inbox.await == End::LetGo {
        // The next process holds the listeners and connections: no
        // shutdown() on any socket, no goodbye. Dropping the drivers
        // closes this process's descriptors only.
        return;
    }
    // Fail the pending accepts so the loops end; new clients are refused.
    for fd in listeners() {
        // SAFETY: shutting a listening socket we own; no memory is involved.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    // Each publisher's pending read ends, it sees `shutting_down`, and says
    // goodbye on its write side, still open.
    for fd in shard.borrow().publisher_fds() {
        // SAFETY: the descriptor is open: it leaves the registry before its
        // stream is closed. Shutting a socket touches no memory.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
    drain(&shard).await;
}

/// How the inbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `Shutdown`: close everything.
    Shutdown,
    /// `LetGo`: the next process has it all.
    LetGo,
}

thread_local! {
    /// Messages this shard's inbox acted on, `Run` steps left out: the
    /// hand-off sees from two readings whether anything moved between.
    static HANDLED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Messages this shard's inbox has acted on (read on the shard's thread).
pub fn handled() -> u64 {
    HANDLED.with(std::cell::Cell::get)
}

/// The mesh inbox: every message for this shard, in arrival order, until
/// `Shutdown` or `LetGo`. Times each fan-out for the metrics.
async fn inbox(shard: Rc<RefCell<Shard>>) -> End {
    let (id, shared) = {
        let sh = shard.borrow();
        (sh.id, sh.shared.clone())
    };
    let mut handled = 0u32;
    loop {
        let msg = std::future::poll_fn(|cx| shared.mesh.poll_recv(id, cx)).await;
        let msg = match msg {
            ShardMsg::Drain { over_ms, seed } => {
                begin_drain(&shard, over_ms, seed);
                continue;
            }
            ShardMsg::Run(step) => {
                (step.0)(&shard);
                continue;
            }
            ShardMsg::LetGo => return End::LetGo,
            msg => msg,
        };
        HANDLED.with(|h| h.set(h.get() + 1));
        let stop = matches!(msg, ShardMsg::Shutdown);
        let fan_out = msg.is_fan_out();
        let start = metrics::clock_us();
        {
            let mut sh = shard.borrow_mut();
            sh.set_clock(start);
            sh.handle(msg);
        }
        if fan_out {
            shared.stats[id]
                .fanout_us
                .record(metrics::clock_us().wrapping_sub(start));
        }
        if stop {
            return End::Shutdown;
        }
        handled = handled.wrapping_add(1);
        if handled % INBOX_BATCH == 0 {
            glommio::executor().yield_if_needed().await;
        }
    }
}

/// Begins the shard's drain and, when it has connections to tell, a task
/// in the control queue that tells each at its time (`shard::conns::drain`).
fn begin_drain(shard: &Rc<RefCell<Shard>>, over_ms: u64, seed: u64) {
    let start = Instant::now();
    let ms = move || start.elapsed().as_millis() as u64;
    if shard.borrow_mut().drain_begin(ms(), over_ms, seed).is_none() {
        return;
    }
    let shard = shard.clone();
    let teller = async move {
        loop {
            let next = {
                let mut sh = shard.borrow_mut();
                sh.set_clock(metrics::clock_us());
                sh.drain_due(ms())
            };
            let Some(at) = next else { break };
            glommio::timer::sleep(Duration::from_millis(at.saturating_sub(ms()).max(1))).await;
        }
    };
    // Detached: it ends with its plan (or with the executor).
    match glommio::spawn_local_into(teller, glommio::executor().current_task_queue()) {
        Ok(t) => {
            t.detach();
        }
        Err(e) => tracing::error!(error = %e, "cannot start the drain; connections stay"),
    }
}

/// After shutdown: serve directory messages from shards still closing
/// their connections until this shard has none left (clients and
/// publishers), or the grace period ends.
async fn drain(shard: &Rc<RefCell<Shard>>) {
    let (id, shared) = {
        let sh = shard.borrow();
        (sh.id, sh.shared.clone())
    };
    let grace = Instant::now() + Duration::from_secs(shared.config.shutdown_grace_secs);
    // Publishes answered only once kept are kept before the shard ends.
    let open = |sh: &Shard| sh.nr_conns() > 0 || sh.stats().publishers.load(Relaxed) > 0 || sh.unkept();
    while open(&shard.borrow()) && Instant::now() < grace {
        while let Some(m) = shared.mesh.try_recv(id) {
            if !matches!(m, ShardMsg::Shutdown) {
                shard.borrow_mut().handle(m);
            }
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    tracing::debug!(shard = id, left = shard.borrow().nr_conns(), "shard stopped");
}
