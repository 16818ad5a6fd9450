//! Client connection I/O: accepting clients on a shard, or adopting those
//! the previous process handed over (`volley upgrade`); `driver`, the state
//! per connection that moves its bytes between the socket and the shard
//! (raw TCP or WebSocket alike); `ring`, the shard's readiness ring;
//! `reactor`, the task that runs the drivers as the ring reports; and
//! `flush`, the one task per shard that writes what fan-out queued.
//!
//! Runs on each shard's executor: acceptors and the reactor in its default
//! task queue, the flusher in its control queue. This and the
//! application-server side (`api`) are the code that touches sockets.
//! Everything a byte means is decided in the shard and `proto`.

pub mod driver;
pub mod flush;
pub mod reactor;
pub mod ring;

use crate::metrics::ShardStats;
use crate::net::{accept_each, ListenerKind};
use crate::shard::{Shard, Transport};
use driver::ClientDriver;
use glommio::net::TcpListener;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// Accepts clients on `listener` until the shard shuts down: each gets a
/// record on the shard, a driver in the shard's table, and a multishot poll
/// on the shard's readiness ring. `kind` says which wire they speak.
pub async fn accept(listener: TcpListener, shard: Rc<RefCell<Shard>>, kind: ListenerKind) {
    let transport = if kind == ListenerKind::ClientWs {
        Transport::WsUpgrading
    } else {
        Transport::Tcp
    };
    let sndbuf = shard.borrow().shared.config.limits.socket_sndbuf;
    accept_each(listener, shard, kind, move |stream, shard| {
        let _ = stream.set_nodelay(true);
        if sndbuf > 0 {
            set_sndbuf(stream.as_raw_fd(), sndbuf);
        }
        let ip = stream
            .peer_addr()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
        // The connection is ours from here: glommio's stream (and the poll
        // `Source` it would arm) gives way to the descriptor alone, watched
        // on the shard's readiness ring.
        // SAFETY: plain syscall on the accepted socket.
        let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        drop(stream);
        if fd < 0 {
            ShardStats::add(&shard.borrow().stats().accept_errors, 1);
            return;
        }
        // SAFETY: just duplicated, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sh = shard.borrow_mut();
        let id = sh.new_conn(ip, transport, fd.as_raw_fd());
        ring::watch(fd.as_raw_fd(), id);
        driver::add(id, ClientDriver::new(fd, &sh.shared, transport));
    })
    .await;
}

/// Takes over connections the previous process handed over (`volley
/// upgrade`): their records go into the shard at their slots
/// (`Shard::import`), then each socket is watched on the readiness ring
/// and gets a driver that goes on with the input it had. Returns how many.
pub fn adopt(
    shard: &Rc<RefCell<Shard>>,
    state: crate::shard::handoff::ShardState,
    fds: Vec<OwnedFd>,
) -> Result<usize, crate::shard::handoff::HandoffError> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sh = shard.borrow_mut();
    let inputs = sh.import(state, &raw)?;
    let n = inputs.len();
    for ((id, input), fd) in inputs.into_iter().zip(fds) {
        ring::watch(fd.as_raw_fd(), id);
        driver::add(id, ClientDriver::adopted(fd, &sh.shared, input));
    }
    Ok(n)
}

/// Caps the socket's kernel send buffer (`[limits] socket_sndbuf`); a
/// failure leaves the kernel's autotuning, which is only less strict.
fn set_sndbuf(fd: RawFd, bytes: usize) {
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt on a socket we own, with a c_int value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}
