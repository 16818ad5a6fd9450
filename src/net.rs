//! Listening sockets: which listeners a server runs (`ListenerSpec`, built
//! from the configuration as data), binding one socket per shard for each,
//! and the accept loop every listener kind shares.
//!
//! Binding runs on the caller's thread in `Server::start`; `accept_each` runs
//! on each shard's executor, one task per listener, and awaits. Sockets are
//! built with socket2 (SO_REUSEPORT, the configured backlog: glommio's own
//! `bind` fixes the backlog at 1024). The first socket of a spec binds the
//! requested address, possibly port 0, and every other shard's binds the port
//! it got, so tests use an ephemeral port and still spread connections over
//! every shard.
//!
//! Invariants: every spec gets exactly one socket per shard, all on the same
//! address; an accept error never ends the loop (it is counted, then the loop
//! backs off), only shutdown does.
//!
//! Not here: what a connection does once accepted (the `take` callback
//! decides), and TLS (a future `ListenerSpec` option).

use crate::config::Config;
use crate::metrics::ShardStats;
use crate::shard::Shard;
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// Least time between two "accept failed" lines of one listener on a shard.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ListenerKind {
    /// Client protocol frames over raw TCP.
    ClientTcp,
    /// Client protocol over WebSocket (and the echo endpoint, when enabled).
    ClientWs,
    /// The HTTP API.
    Api,
    /// TCP publisher connections.
    Publisher,
}

impl ListenerKind {
    /// Name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::ClientTcp => "clients (tcp)",
            ListenerKind::ClientWs => "clients (websocket)",
            ListenerKind::Api => "api",
            ListenerKind::Publisher => "publishers",
        }
    }

    /// Application servers, not clients: served from the shard's
    /// latency-sensitive control task queue.
    pub fn is_control(self) -> bool {
        matches!(self, ListenerKind::Api | ListenerKind::Publisher)
    }
}

/// One listener the server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// What it serves.
    pub kind: ListenerKind,
    /// Where it listens (port 0: any, resolved at bind).
    pub addr: SocketAddr,
    /// listen() backlog per shard socket (the kernel caps it at somaxconn).
    pub backlog: u32,
}

impl ListenerSpec {
    /// The listeners `cfg` asks for: client TCP, client WebSocket, HTTP API
    /// and TCP publisher. Application-server listeners keep a smaller backlog:
    /// they see a handful of long-lived connections, not reconnect storms.
    pub fn from_config(cfg: &Config) -> Vec<ListenerSpec> {
        let control_backlog = cfg.backlog.min(4096);
        vec![
            ListenerSpec {
                kind: ListenerKind::ClientTcp,
                addr: cfg.tcp.listen,
                backlog: cfg.backlog,
            },
            ListenerSpec {
                kind: ListenerKind::ClientWs,
                addr: cfg.ws.listen,
                backlog: cfg.backlog,
            },
            ListenerSpec {
                kind: ListenerKind::Api,
                addr: cfg.api.listen,
                backlog: control_backlog,
            },
            ListenerSpec {
                kind: ListenerKind::Publisher,
                addr: cfg.api.publish_listen,
                backlog: control_backlog,
            },
        ]
    }
}

/// A listener bound on every shard.
#[derive(Debug)]
pub struct Bound {
    /// The spec, its address resolved (port 0 replaced by the real port).
    pub spec: ListenerSpec,
    /// One socket per shard, in shard order.
    pub sockets: Vec<Socket>,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The error.
    pub source: std::io::Error,
}

fn listen(addr: SocketAddr, backlog: u32) -> Result<Socket, BindError> {
    let err = |source| BindError { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_cloexec(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX)).map_err(err)?;
    Ok(s)
}

/// Fails if some socket already listens on `addr`. Our sockets share their
/// port with SO_REUSEPORT, which would let a second server (or anything of
/// the same user with the option set) bind it silently and take a share of
/// the connections; a socket without the option, bound but never listening,
/// is refused where a listener exists, and tells.
fn probe_free(addr: SocketAddr) -> Result<(), BindError> {
    let err = |source| BindError { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    match s.bind(&addr.into()) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(err(std::io::Error::new(
            e.kind(),
            "address in use: another process (another volley?) listens there",
        ))),
        Err(e) => Err(err(e)),
        Ok(()) => Ok(()),
    }
}

/// Binds `spec` once per shard (port 0 resolved by the first socket);
/// refuses an address something already listens on.
pub fn bind(spec: &ListenerSpec, nr_shards: usize) -> Result<Bound, BindError> {
    if spec.addr.port() != 0 {
        probe_free(spec.addr)?;
    }
    let first = listen(spec.addr, spec.backlog)?;
    let actual = first.local_addr().ok().and_then(|a| a.as_socket()).ok_or(BindError {
        addr: spec.addr,
        source: std::io::Error::other("no local address"),
    })?;
    let mut sockets = vec![first];
    for _ in 1..nr_shards {
        sockets.push(listen(actual, spec.backlog)?);
    }
    Ok(Bound {
        spec: ListenerSpec {
            addr: actual,
            ..spec.clone()
        },
        sockets,
    })
}

/// Starts the acceptor of a `kind` listener on its shard (the server's
/// choice of task and queue per kind).
pub type StartAcceptor = Box<dyn Fn(ListenerKind, TcpListener) -> Result<glommio::Task<()>, String>>;

/// A shard's acceptor tasks, the listening sockets they accept on, and
/// while a hand-off holds them, this shard's copies of those sockets.
#[derive(Default)]
struct Acceptors {
    start: Option<StartAcceptor>,
    tasks: Vec<glommio::Task<()>>,
    listeners: Vec<(ListenerKind, RawFd)>,
    stopped: Vec<(ListenerKind, OwnedFd)>,
}

thread_local! {
    /// This shard's acceptors, so that a hand-off (`volley upgrade`) can
    /// keep their sockets, end the tasks, and start them again if the
    /// next process does not take over.
    static ACCEPTORS: std::cell::RefCell<Acceptors> = std::cell::RefCell::new(Acceptors::default());
}

/// Starts this shard's acceptors on `listeners` (each descriptor is the
/// acceptor's from here on) with `start`, which is kept to start them
/// again after a hand-off that did not happen.
pub fn start_acceptors(start: StartAcceptor, listeners: &[(ListenerKind, RawFd)]) -> Result<(), String> {
    ACCEPTORS.with(|a| a.borrow_mut().start = Some(start));
    for &(kind, fd) in listeners {
        start_one(kind, fd)?;
    }
    Ok(())
}

fn start_one(kind: ListenerKind, fd: RawFd) -> Result<(), String> {
    ACCEPTORS.with(|a| {
        let mut a = a.borrow_mut();
        let start = a.start.as_ref().ok_or("no acceptor to start")?;
        // SAFETY: the descriptor is a listening socket handed to us to own
        // (bound by `bind`, or a copy made by `stop_acceptors`).
        let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let task = start(kind, listener)?;
        a.tasks.push(task);
        a.listeners.push((kind, fd));
        Ok(())
    })
}

/// This shard's listening sockets as its acceptors hold them (shutdown
/// ends their accepts with them).
pub fn listener_fds() -> Vec<RawFd> {
    ACCEPTORS.with(|a| a.borrow().listeners.iter().map(|&(_, fd)| fd).collect())
}

/// Lets this shard's acceptors run on their own until the executor ends
/// (they are tasks of it: dropped after it, they could not be cancelled).
pub fn detach_acceptors() {
    let tasks = ACCEPTORS.with(|a| std::mem::take(&mut a.borrow_mut().tasks));
    for t in tasks {
        t.detach();
    }
}

/// Ends this shard's acceptors, keeping a copy of each listening socket
/// (the acceptors close theirs as they end) and giving another to the
/// caller, for the next process: no connection is accepted here until
/// `resume_acceptors`.
pub fn stop_acceptors() -> std::io::Result<Vec<(ListenerKind, OwnedFd)>> {
    use std::os::fd::{AsFd, BorrowedFd};
    ACCEPTORS.with(|a| {
        let mut a = a.borrow_mut();
        let mut given = Vec::with_capacity(a.listeners.len());
        for (kind, fd) in std::mem::take(&mut a.listeners) {
            // SAFETY: the descriptor is open: its acceptor, which owns it,
            // is still in `tasks`.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            a.stopped.push((kind, fd.as_fd().try_clone_to_owned()?));
            given.push((kind, fd.as_fd().try_clone_to_owned()?));
        }
        // Dropping a task cancels its pending accept and closes its
        // listener.
        a.tasks.clear();
        Ok(given)
    })
}

/// Starts this shard's acceptors again on the copies `stop_acceptors`
/// kept: the hand-off did not happen.
pub fn resume_acceptors() -> Result<(), String> {
    let stopped = ACCEPTORS.with(|a| std::mem::take(&mut a.borrow_mut().stopped));
    for (kind, fd) in stopped {
        start_one(kind, std::os::fd::IntoRawFd::into_raw_fd(fd))?;
    }
    Ok(())
}

/// Accepts on `listener` until the shard shuts down, handing each connection
/// to `take`. Accept errors (EMFILE and the like) are counted, logged at
/// most once per `ACCEPT_LOG_EVERY` with how many there were, and back off
/// instead of spinning. `kind` names the listener in logs.
pub async fn accept_each(
    listener: TcpListener,
    shard: Rc<RefCell<Shard>>,
    kind: ListenerKind,
    mut take: impl FnMut(TcpStream, &Rc<RefCell<Shard>>),
) {
    let (mut last_log, mut failed) = (None::<std::time::Instant>, 0u64);
    loop {
        let res = listener.accept().await;
        if shard.borrow().shutting_down {
            break;
        }
        match res {
            Ok(stream) => take(stream, &shard),
            Err(e) => {
                ShardStats::add(&shard.borrow().stats().accept_errors, 1);
                // Out of descriptors, this fails for every pending
                // connection: one line per interval, with the count.
                failed += 1;
                let now = std::time::Instant::now();
                if last_log.is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_EVERY) {
                    tracing::warn!(error = %e, listener = kind.name(), failures = failed, "accept failed");
                    (last_log, failed) = (Some(now), 0);
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
