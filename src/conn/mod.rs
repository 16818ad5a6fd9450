//! Client connection I/O: accepting clients on a shard, `driver`, the task
//! per connection that moves its bytes between the socket and the shard
//! (raw TCP or WebSocket alike), and `flush`, the one task per shard that
//! writes what fan-out queued.
//!
//! Runs on each shard's executor, in its default task queue; this and the
//! application-server side (`api`) are the code that awaits on sockets.
//! Everything a byte means is decided in the shard and `proto`.

pub mod driver;
pub mod flush;

use crate::net::{accept_each, ListenerKind};
use crate::shard::{Shard, Transport};
use driver::ClientDriver;
use glommio::net::TcpListener;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

/// Accepts clients on `listener` until the shard shuts down: each gets a
/// record on the shard and a driver task. `kind` says which wire they speak.
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
        let id = shard.borrow_mut().new_conn(ip, transport, stream.as_raw_fd());
        glommio::spawn_local(ClientDriver::new(stream, shard.clone(), id, transport)).detach();
    })
    .await;
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
