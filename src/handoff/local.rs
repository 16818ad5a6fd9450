//! Taking a running server's listeners and connections for the next
//! process (`take`), and letting go of them once it has them (`let_go`).
//!
//! Runs on the caller's thread (the hand-off's own), and on each shard's
//! runtime through `ShardMsg::Run` steps:
//!
//! ```text
//! quiet     each shard: copies of its listening sockets kept, acceptors
//!           ended; its connections neither read nor written (off the
//!           readiness ring); API connections end once answered, TCP
//!           publishers park at their next read (`api::tcp_handoff`; the
//!           sweep goes on)
//! export    each shard: once nothing it started waits (joins, journal
//!           answers), no API connection is left but parked publishers and
//!           its inbox is empty — its records and its publishers', with
//!           each connection's socket
//! check     no shard acted on a message since its export: the records
//!           are one moment of the whole server; otherwise export again
//! let go    each shard ends without a word or a touch to any socket
//! resume    (instead, when the next process does not take over) each shard
//!           accepts again on the sockets it kept, reads and writes again
//! ```
//!
//! Invariant: from `quiet` on, nothing new enters the server (no accept,
//! no read), so what is under way finishes and the shards settle; the
//! records are taken only once all have.

use super::Adoption;
use crate::net;
use crate::shard::handoff::ShardState;
use crate::shard::mesh::ShardMsg;
use crate::shard::msg::RunOnShard;
use crate::shard::{run, Shard, Shared};
use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait between two tries at an export.
const RETRY: Duration = Duration::from_millis(5);

/// One shard's records, its connections' sockets (its drivers' own
/// descriptors), and how many messages it had acted on.
type Exported = (ShardState, Vec<RawFd>, u64);

/// What `lend` gives: as an `Adoption`, but each connection's socket is
/// the descriptor its driver here still owns — valid until `let_go` or
/// `resume`, and not to be closed. For handing over to another process,
/// where SCM_RIGHTS makes the copies: a server of many connections could
/// not hold a second descriptor for each.
#[derive(Debug)]
pub struct Lent {
    /// The key tag and secret.
    pub keys: (u64, Vec<u8>),
    /// Listening sockets (copies), what each is for and its shard.
    pub listeners: Vec<(net::ListenerKind, usize, OwnedFd)>,
    /// Per shard: its records and its connections' descriptors, in order.
    pub shards: Vec<(ShardState, Vec<RawFd>)>,
}

/// Runs `step` on every shard; each answer, in shard order, or why not
/// within `until`.
fn on_every_shard<T: Send + 'static>(
    shared: &Shared,
    until: Instant,
    step: impl Fn(&Rc<RefCell<Shard>>) -> T + Send + Clone + 'static,
) -> Result<Vec<T>, String> {
    let n = shared.mesh.nr_shards();
    let (tx, rx) = mpsc::channel();
    for s in 0..n {
        let (tx, step) = (tx.clone(), step.clone());
        let run = move |sh: &Rc<RefCell<Shard>>| {
            let _ = tx.send((s, step(sh)));
        };
        shared.mesh.send(s, ShardMsg::Run(RunOnShard(Box::new(run))));
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let left = until.saturating_duration_since(Instant::now());
        let (s, v) = rx
            .recv_timeout(left)
            .map_err(|_| "a shard did not answer in time".to_string())?;
        out[s] = Some(v);
    }
    Ok(out.into_iter().map(|v| v.expect("every shard answered once")).collect())
}

/// The step `quiet` on one shard (see the module doc).
fn quiet(shard: &Rc<RefCell<Shard>>) -> Result<Vec<(net::ListenerKind, OwnedFd)>, String> {
    let listeners = net::stop_acceptors().map_err(|e| format!("cannot keep the listening sockets: {e}"))?;
    let mut sh = shard.borrow_mut();
    sh.handing_off = true;
    for r in sh.conn_ids() {
        crate::conn::ring::forget(r);
    }
    crate::conn::ring::submit();
    crate::api::tcp_handoff::park_all();
    crate::api::conns::let_go();
    sh.pause_cluster();
    Ok(listeners)
}

/// The step `export` on one shard: `Ok(Err(what))` while it has not
/// settled, saying what it waits for.
fn export(shard: &Rc<RefCell<Shard>>) -> Result<Result<Exported, String>, String> {
    let sh = shard.borrow();
    let parked = crate::api::tcp_handoff::parked();
    let open = crate::api::conns::open().saturating_sub(parked);
    let backlog = sh.shared.mesh.backlog(sh.id);
    let redis = sh.cluster_quiet();
    if !sh.settled() || open > 0 || backlog > 0 || parked != sh.publisher_fds().count() || !redis {
        let waits =
            format!(
            "shard {}: {}{}{open} API or publisher connections open and not parked ({}), {backlog} messages waiting",
            sh.id,
            if redis { "" } else { "Redis subscriptions not yet let go, " },
            if sh.settled() {
                ""
            } else {
                "a join or the journal under way, "
            },
            crate::api::conns::describe()
        );
        return Ok(Err(waits));
    }
    let (mut state, mut raw) = sh.export(crate::conn::driver::saved_input).map_err(|e| e.to_string())?;
    let (publishers, fds) = crate::api::tcp_handoff::exported();
    state.publishers = publishers;
    raw.extend(fds);
    Ok(Ok((state, raw, run::handled())))
}

/// Takes every shard's listeners and connections for the next server in
/// this process, within `timeout`, each socket copied. From the first step
/// on this server accepts and reads nothing; on success it must be let go
/// (`let_go`) once the next server has taken over, or `resume`d.
pub fn take(shared: &Arc<Shared>, timeout: Duration) -> Result<Adoption, String> {
    let lent = lend(shared, timeout)?;
    let mut shards = Vec::with_capacity(lent.shards.len());
    for (state, raw) in lent.shards {
        let mut fds = Vec::with_capacity(raw.len());
        for fd in raw {
            // SAFETY: the descriptor is open, owned by the connection's
            // driver, which nothing runs any more (`lend`).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let copy = fd.as_fd().try_clone_to_owned();
            fds.push(copy.map_err(|e| format!("cannot keep a socket: {e}"))?);
        }
        shards.push((state, fds));
    }
    Ok(Adoption {
        keys: lent.keys,
        listeners: lent.listeners,
        shards,
    })
}

/// As `take`, with the connections' sockets lent (`Lent`), not copied.
pub fn lend(shared: &Arc<Shared>, timeout: Duration) -> Result<Lent, String> {
    let until = Instant::now() + timeout;
    let mut listeners = Vec::new();
    for (s, l) in on_every_shard(shared, until, quiet)?.into_iter().enumerate() {
        listeners.extend(l?.into_iter().map(|(kind, fd)| (kind, s, fd)));
    }
    let mut waits = Vec::new();
    loop {
        let exported = on_every_shard(shared, until, export).map_err(|e| format!("{e} ({})", waits.join("; ")))?;
        let mut shards = Vec::with_capacity(exported.len());
        waits.clear();
        for e in exported {
            match e? {
                Ok(e) => shards.push(e),
                Err(w) => waits.push(w),
            }
        }
        if shards.len() == shared.mesh.nr_shards() {
            let now = on_every_shard(shared, until, |_| run::handled())?;
            if shards.iter().zip(&now).all(|(e, &h)| e.2 == h) {
                let keys = (shared.keys.tag(), shared.keys.secret().to_vec());
                let shards = shards.into_iter().map(|(state, fds, _)| (state, fds)).collect();
                return Ok(Lent {
                    keys,
                    listeners,
                    shards,
                });
            }
        }
        if Instant::now() + RETRY > until {
            return Err(format!("the shards did not settle in time ({})", waits.join("; ")));
        }
        std::thread::sleep(RETRY);
    }
}

/// The step `resume` on one shard: its acceptors start again on the
/// listening sockets it kept, its connections are watched on the
/// readiness ring again (each run once, for what arrived meanwhile), and
/// what is queued for them is written.
fn resume_shard(shard: &Rc<RefCell<Shard>>) -> Result<(), String> {
    crate::api::conns::hold_on();
    crate::api::tcp_handoff::unpark_all();
    let mut sh = shard.borrow_mut();
    sh.resume_cluster();
    sh.handing_off = false;
    for r in sh.conn_ids() {
        if let Some(fd) = sh.conn(r).map(|c| c.fd) {
            crate::conn::ring::watch(fd, r);
        }
        sh.wake_conn(r);
        if sh.conn(r).is_some_and(|c| !c.out.is_empty()) {
            sh.mark_dirty(r);
        }
    }
    crate::conn::ring::submit();
    drop(sh);
    net::resume_acceptors()
}

/// Takes back what `take` took, when the next process did not take over:
/// every shard accepts, reads and writes again as before (within
/// `timeout`). What `take` gave out (the `Adoption`) must be dropped, not
/// used.
pub fn resume(shared: &Shared, timeout: Duration) -> Result<(), String> {
    let until = Instant::now() + timeout;
    for r in on_every_shard(shared, until, resume_shard)? {
        r?;
    }
    Ok(())
}

/// Ends every shard without a word to anyone or a touch to any socket:
/// the next process serves them now.
pub fn let_go(shared: &Shared) {
    for s in 0..shared.mesh.nr_shards() {
        shared.mesh.send(s, ShardMsg::LetGo);
    }
}
