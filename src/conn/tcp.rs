//! `TcpDriver`: the task that drives one client TCP connection — read, decode,
//! act, write — as a single hand-written future.
//!
//! One driver per connection, spawned on the shard that accepted it; it never
//! leaves that shard. Each poll, in this order:
//!
//! ```text
//! 1. record the task's waker in the connection's record (deliveries wake it)
//! 2. read: recv() into the shard's scratch buffer (never a buffer of our own
//!    while idle); whole frames go to Shard::feed, a partial tail is kept in
//!    `partial` until it completes
//! 3. write: one sendmsg() of up to 64 queued frames (coalescing); on EAGAIN,
//!    glommio's poll_write arms POLLOUT and we return Pending
//! 4. if the record says "closing": one last non-blocking write (the op 6
//!    goodbye), shut the socket, forget the connection, finish
//! ```
//!
//! Invariants: the shard is never borrowed across a `Poll::Pending`; the
//! driver always drains its queue until empty or EAGAIN, which is what lets
//! delivery wake it only on the empty → non-empty edge.
//!
//! glommio hands out one waker per task; polling with our own task's context
//! keeps its waker refcount far from the i16 limit noted in FIELD-NOTES.

use crate::metrics::{CloseReason, ShardStats};
use crate::shard::mesh::ConnRef;
use crate::shard::{Fed, Shard};
use futures_lite::io::{AsyncRead, AsyncWrite};

use glommio::net::TcpStream;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
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
pub struct TcpDriver {
    /// The socket.
    stream: TcpStream,
    /// Its descriptor, for `sendmsg`.
    fd: RawFd,
    /// The shard that owns this connection.
    shard: Rc<RefCell<Shard>>,
    /// This connection's record on the shard.
    id: ConnRef,
    /// Bytes of an incomplete frame (empty, unallocated, most of the time).
    partial: Vec<u8>,
}

impl TcpDriver {
    /// A driver for an accepted, registered connection.
    pub fn new(stream: TcpStream, shard: Rc<RefCell<Shard>>, id: ConnRef) -> Self {
        let fd = stream.as_raw_fd();
        TcpDriver {
            stream,
            fd,
            shard,
            id,
            partial: Vec::new(),
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
                        self.ingest(&buf[..n]);
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

    /// Feeds bytes to the shard; a close it decides is recorded on the
    /// connection's record, which `poll` checks next.
    fn ingest(&mut self, data: &[u8]) {
        let mut shard = self.shard.borrow_mut();
        if self.partial.is_empty() {
            let (used, fed) = shard.feed(self.id, data);
            if fed == Fed::Continue && used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            self.partial.extend_from_slice(data);
            let (used, _) = shard.feed(self.id, &self.partial);
            self.partial.drain(..used);
            if self.partial.is_empty() {
                self.partial = Vec::new();
            }
        }
    }

    /// Writes until the queue is empty, the socket is full (POLLOUT armed), or
    /// the per-poll budget is spent.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), CloseReason> {
        for _ in 0..WRITES_PER_POLL {
            let mut shard = self.shard.borrow_mut();
            let Some(c) = shard.conn_mut(self.id) else {
                return Ok(());
            };
            if c.out.is_empty() {
                return Ok(());
            }
            let n = match c.out.write_to(self.fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Let glommio arm POLLOUT for this task; it retries the
                    // send first, so a race with a draining peer is harmless.
                    match Pin::new(&mut self.stream).poll_write(cx, c.out.front()) {
                        Poll::Ready(Ok(n)) => n,
                        Poll::Ready(Err(_)) => return Err(CloseReason::IoError),
                        Poll::Pending => return Ok(()),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(CloseReason::IoError),
            };
            c.out.advance(n);
            let stats = shard.stats();
            ShardStats::add(&stats.bytes_out, n as u64);
            ShardStats::add(&stats.writes, 1);
        }
        cx.waker().wake_by_ref();
        Ok(())
    }

    /// Sends what the socket takes right now (the goodbye), then forgets the
    /// connection. The socket closes when the driver is dropped.
    fn finish(&mut self) {
        let mut shard = self.shard.borrow_mut();
        if let Some(c) = shard.conn_mut(self.id) {
            for _ in 0..4 {
                match c.out.write_to(self.fd) {
                    Ok(n) if n > 0 => c.out.advance(n),
                    _ => break,
                }
            }
            c.waker = None;
        }
        // SAFETY: plain syscall on a descriptor we own; errors are irrelevant
        // (the peer may be gone).
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        shard.remove_conn(self.id);
    }
}

impl Future for TcpDriver {
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
            c.close.is_some()
        };
        if !closing {
            let r = this.read(cx).and_then(|()| this.write(cx));
            if let Err(reason) = r {
                this.shard.borrow_mut().close(this.id, reason, "");
            }
        }
        let closing = this
            .shard
            .borrow_mut()
            .conn_mut(this.id)
            .is_none_or(|c| c.close.is_some());
        if closing {
            this.finish();
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for TcpDriver {
    fn drop(&mut self) {
        // Dropped without finishing (executor ended at shutdown): still forget
        // the connection so counts stay right.
        if let Ok(mut shard) = self.shard.try_borrow_mut() {
            if shard.conn_mut(self.id).is_some() {
                shard.remove_conn(self.id);
            }
        }
    }
}
