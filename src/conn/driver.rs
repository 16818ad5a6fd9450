//! `ClientDriver`: the task that drives one client connection — raw TCP or
//! WebSocket — as a single hand-written future that only moves bytes:
//! socket → shard (or WebSocket session → shard), shard's queue → socket.
//!
//! One driver per connection, spawned on the shard that accepted it; it never
//! leaves that shard. What the bytes mean is decided elsewhere: frames by
//! `Shard::feed`, WebSocket policy by `proto::ws::Session`, whose actions the
//! driver carries out. Each poll, in this order:
//!
//! ```text
//! 1. record the task's waker in the connection's record (deliveries wake it)
//! 2. read: recv() into the shard's scratch buffer (never a buffer of our own
//!    while idle); whole frames go to the shard (or the session), a partial
//!    tail is kept in `partial` until it completes
//! 3. write: one sendmsg() of up to 64 queued frames (coalescing) — its own
//!    replies, and whatever the shard's flusher (`conn::flush`) left because
//!    the socket was full; on EAGAIN, glommio's poll_write arms POLLOUT and
//!    we return Pending
//! 4. if the record says "closing": no more reading; write what is queued
//!    (the op 6 goodbye last) as the socket takes it; once the queue is empty
//!    (or the peer is gone, or the shard gave up on it after
//!    CLOSE_FLUSH_SECS), shut the socket, forget the connection, finish
//! ```
//!
//! Deliveries do not wake the driver: a queue's empty → non-empty edge puts
//! the connection on the shard's dirty list, and the flusher writes it.
//! The driver is woken for reads, for POLLOUT (after the flusher found the
//! socket full and woke it once to arm it), and to close.
//!
//! Invariants: the shard is never borrowed across a `Poll::Pending`; a
//! driver woken to write drains its queue until empty or EAGAIN. glommio hands out one
//! waker per task; polling with our own task's context keeps its waker
//! refcount far from glommio 0.9's i16 limit (a task polling thousands of
//! sockets with one context panics).

use crate::metrics::{self, ShardStats};
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::ws::session::{Action, Rules};
use crate::proto::ws::Session;
use crate::shard::mesh::ConnRef;
use crate::shard::outbound::{Outbound, MAX_IOV};
use crate::shard::{Shard, Shared, Transport};
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Size of the per-shard read buffer shared by every connection's reads.
const SCRATCH: usize = 64 * 1024;
/// Reads per poll before yielding to other connections.
const READS_PER_POLL: usize = 4;
/// Writes per poll before yielding to other connections.
const WRITES_PER_POLL: usize = 16;

thread_local! {
    /// The shard's read buffer: a connection only owns bytes while a frame is
    /// split across reads.
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
}

/// The future that owns one client connection.
pub struct ClientDriver {
    /// The socket.
    stream: TcpStream,
    /// Its descriptor, for `sendmsg`.
    fd: RawFd,
    /// The shard that owns this connection.
    shard: Rc<RefCell<Shard>>,
    /// This connection's record on the shard.
    id: ConnRef,
    /// Bytes of an incomplete frame or upgrade request (empty, unallocated,
    /// most of the time).
    partial: Vec<u8>,
    /// WebSocket state; `None` for raw TCP (which pays nothing for it).
    ws: Option<Box<WsConn>>,
}

/// What a WebSocket connection needs beyond a TCP one.
struct WsConn {
    /// The protocol state machine.
    session: Session,
    /// For the upgrade rules and limits (one clone per connection, not one
    /// per read: the count is shared by every shard).
    shared: Arc<Shared>,
}

impl ClientDriver {
    /// A driver for an accepted, registered connection.
    pub fn new(stream: TcpStream, shard: Rc<RefCell<Shard>>, id: ConnRef, transport: Transport) -> Self {
        let fd = stream.as_raw_fd();
        let ws = (transport != Transport::Tcp).then(|| {
            Box::new(WsConn {
                session: Session::default(),
                shared: shard.borrow().shared.clone(),
            })
        });
        ClientDriver {
            stream,
            fd,
            shard,
            id,
            partial: Vec::new(),
            ws,
        }
    }

    fn read(&mut self, cx: &mut Context<'_>) -> Result<(), CloseReason> {
        for _ in 0..READS_PER_POLL {
            let done = SCRATCH_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                match Pin::new(&mut self.stream).poll_read(cx, &mut buf[..]) {
                    Poll::Pending => Ok(true),
                    Poll::Ready(Ok(0)) => Err(CloseReason::PeerClosed),
                    Poll::Ready(Ok(n)) => {
                        self.ingest(&mut buf[..n]);
                        Ok(false)
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
                    Poll::Ready(Err(_)) => Err(CloseReason::IoError),
                }
            })?;
            if done {
                return Ok(());
            }
        }
        // Budget spent with data possibly left: come back after others ran.
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Hands newly read bytes on, after any partial frame kept from before;
    /// keeps what is left of an incomplete frame for the next read.
    fn ingest(&mut self, data: &mut [u8]) {
        self.shard.borrow_mut().set_clock(metrics::clock_us());
        if self.partial.is_empty() {
            let used = self.process(data);
            if used < data.len() && !self.closing() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.process(&mut buf);
            if used < buf.len() && !self.closing() {
                buf.drain(..used);
                self.partial = buf;
            }
        }
    }

    fn closing(&self) -> bool {
        self.shard.borrow().is_closing(self.id)
    }

    /// Whole frames (TCP) or whatever the WebSocket session makes of the
    /// bytes; returns how many were consumed.
    fn process(&mut self, buf: &mut [u8]) -> usize {
        let mut shard = self.shard.borrow_mut();
        let Some(ws) = self.ws.as_mut() else {
            return shard.feed(self.id, buf);
        };
        let WsConn { session, shared } = &mut **ws;
        let rules = Rules {
            upgrade: &shared.ws_rules,
            max_message: shared.config.limits.max_body + binary::HEADER_LEN,
            echo_max_message: shared.config.ws.echo_max_message,
        };
        let mut used = 0;
        while !shard.is_closing(self.id) {
            let (action, n) = session.handle_read(&mut buf[used..], rules);
            used += n;
            let Some(action) = action else { break };
            match action {
                Action::Send(bytes) => shard.enqueue_bytes(self.id, bytes),
                Action::Upgraded { response, echo } => {
                    shard.enqueue_bytes(self.id, response);
                    shard.ws_upgraded(self.id, echo);
                }
                Action::Deliver(payload) => shard.feed_message(self.id, payload),
                Action::Alive => shard.ws_pong(self.id),
                Action::Close {
                    reason,
                    detail,
                    code,
                    reply,
                } => {
                    if let Some(reply) = reply {
                        shard.enqueue_bytes(self.id, reply);
                    }
                    shard.close_with_code(self.id, reason, &detail, code);
                }
            }
        }
        used
    }

    /// Writes until the queue is empty, the socket is full (POLLOUT armed), or
    /// the per-poll budget is spent.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), CloseReason> {
        for _ in 0..WRITES_PER_POLL {
            let mut shard = self.shard.borrow_mut();
            let Some((c, stats)) = shard.conn_and_stats(self.id) else {
                return Ok(());
            };
            if c.out.is_empty() {
                return Ok(());
            }
            let n = match write_queue(self.fd, &c.out) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Let glommio arm POLLOUT for this task; it retries the
                    // send first, so a race with a draining peer is harmless.
                    match Pin::new(&mut self.stream).poll_write(cx, c.out.front()) {
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(_)) => return Err(CloseReason::IoError),
                        Poll::Pending => {
                            shard.write_blocked(self.id);
                            return Ok(());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(CloseReason::IoError),
            };
            let now = metrics::clock_us();
            let waited = now.wrapping_sub(c.out.since());
            stats.queue_wait_us.record(waited);
            ShardStats::add(&stats.bytes_out, n as u64);
            ShardStats::add(&stats.writes, 1);
            shard.written(self.id, n, now);
        }
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Forgets the connection (its goodbye is written, or given up). The
    /// socket closes when the driver is dropped.
    fn finish(&mut self) {
        let mut shard = self.shard.borrow_mut();
        if let Some(c) = shard.conn_mut(self.id) {
            c.waker = None;
        }
        // SAFETY: plain syscall on a descriptor we own; errors are irrelevant
        // (the peer may be gone).
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        shard.remove_conn(self.id);
    }
}

/// One non-blocking `sendmsg` of up to `MAX_IOV` queued frames of `out`.
/// Returns the bytes written (the caller calls `advance`); `WouldBlock` when
/// the socket buffer is full.
pub fn write_queue(fd: RawFd, out: &Outbound) -> io::Result<usize> {
    let mut iov = [IoSlice::new(&[]); MAX_IOV];
    let n = out.iovecs(&mut iov);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec (std guarantees it on Unix).
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = n as _;
    // SAFETY: every iovec points into a `Bytes` borrowed from `out`, which
    // outlives the call; the kernel only reads them.
    let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl Future for ClientDriver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let closing = {
            let mut shard = this.shard.borrow_mut();
            let Some(c) = shard.conn_mut(this.id) else {
                return Poll::Ready(());
            };
            if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                c.waker = Some(cx.waker().clone());
            }
            c.closing()
        };
        if !closing {
            let r = this.read(cx).and_then(|()| this.write(cx));
            if let Err(reason) = r {
                this.shard.borrow_mut().close(this.id, reason, "");
            }
        }
        let (closing, gone) = {
            let sh = this.shard.borrow();
            match sh.conn(this.id) {
                None => (true, true),
                Some(c) => (
                    c.closing(),
                    matches!(c.close, Some(CloseReason::PeerClosed | CloseReason::IoError)),
                ),
            }
        };
        if !closing {
            return Poll::Pending;
        }
        // Flush the goodbye as the socket takes it; POLLOUT (or the shard
        // giving up) wakes us for the rest.
        let flushed =
            gone || this.write(cx).is_err() || this.shard.borrow().conn(this.id).is_none_or(|c| c.out.is_empty());
        if flushed {
            this.finish();
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for ClientDriver {
    fn drop(&mut self) {
        // Dropped without finishing (executor ended at shutdown): still forget
        // the connection so counts stay right.
        if let Ok(mut shard) = self.shard.try_borrow_mut() {
            if shard.conn(self.id).is_some() {
                shard.remove_conn(self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn coalesced_write_over_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut o = Outbound::default();
        for i in 0..100u8 {
            o.push(Bytes::from(vec![i; 3]), 3, 1 << 20, 0).unwrap();
        }
        let n = write_queue(a.as_raw_fd(), &o).unwrap();
        assert_eq!(n, MAX_IOV * 3, "one call writes MAX_IOV frames");
        o.advance(n, 0);
        let n = write_queue(a.as_raw_fd(), &o).unwrap();
        o.advance(n, 0);
        assert!(o.is_empty());
        let mut got = vec![0u8; 300];
        use std::io::Read;
        (&b).read_exact(&mut got).unwrap();
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(got, want);
    }
}
