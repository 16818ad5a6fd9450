//! `TcpDriver`: the task that drives one client connection — raw TCP or
//! WebSocket — read, decode, act, write, as a single hand-written future.
//!
//! A WebSocket connection is the same driver with a `WsConn` box: the HTTP
//! upgrade is answered first, then each binary message is handed to the shard
//! exactly like a chunk of the TCP stream (it must hold whole frames), and
//! control frames are answered here. The echo endpoint reuses all of it and
//! only replaces "hand to the shard" with "send it back".
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
use crate::proto::{binary, ws};
use crate::shard::mesh::ConnRef;
use crate::shard::{Fed, Shard, Transport};
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
    /// Bytes of an incomplete frame or upgrade request (empty, unallocated,
    /// most of the time).
    partial: Vec<u8>,
    /// WebSocket state; `None` for raw TCP.
    ws: Option<Box<WsConn>>,
}

/// What a WebSocket connection needs beyond a TCP one.
#[derive(Debug, Default)]
struct WsConn {
    /// The 101 answer is queued; frames follow.
    upgraded: bool,
    /// Connected to the echo endpoint.
    echo: bool,
    /// Message assembly.
    reader: ws::Reader,
}

impl TcpDriver {
    /// A driver for an accepted, registered connection.
    pub fn new(stream: TcpStream, shard: Rc<RefCell<Shard>>, id: ConnRef, transport: Transport) -> Self {
        let fd = stream.as_raw_fd();
        TcpDriver {
            stream,
            fd,
            shard,
            id,
            partial: Vec::new(),
            ws: (transport != Transport::Tcp).then(Box::default),
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
                        if self.ws.is_some() {
                            self.ingest_ws(&mut buf[..n]);
                        } else {
                            self.ingest(&buf[..n]);
                        }
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

    /// WebSocket counterpart of `ingest`: `data` is unmasked in place.
    fn ingest_ws(&mut self, data: &mut [u8]) {
        if self.partial.is_empty() {
            let used = self.process_ws(data);
            if used < data.len() && !self.closing() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.process_ws(&mut buf);
            if used < buf.len() && !self.closing() {
                buf.drain(..used);
                self.partial = buf;
            }
        }
    }

    fn closing(&self) -> bool {
        self.shard
            .borrow_mut()
            .conn_mut(self.id)
            .is_none_or(|c| c.close.is_some())
    }

    /// Answers the upgrade if it is still due, then handles whole frames.
    /// Returns the bytes consumed; the rest is an incomplete request or frame.
    fn process_ws(&mut self, buf: &mut [u8]) -> usize {
        let id = self.id;
        let ws = self.ws.as_mut().expect("WebSocket connection");
        let mut shard = self.shard.borrow_mut();
        let mut used = 0;
        if !ws.upgraded {
            match ws::parse_upgrade(buf, &shard.shared.ws_rules) {
                Ok(None) => return 0,
                Ok(Some(up)) => {
                    shard.enqueue_bytes(id, ws::response_101(&up.accept));
                    ws.upgraded = true;
                    ws.echo = up.path == 1;
                    shard.ws_upgraded(id, ws.echo);
                    used = up.len;
                }
                Err(e) => {
                    shard.enqueue_bytes(id, e.response());
                    shard.close(id, CloseReason::BadUpgrade, &e.to_string());
                    return buf.len();
                }
            }
        }
        let cfg = &shard.shared.config;
        let limits = ws::Limits {
            max_message: if ws.echo {
                cfg.ws_echo_max_message
            } else {
                cfg.max_body + binary::HEADER_LEN
            },
        };
        let echo = ws.echo;
        let res = ws.reader.read(&mut buf[used..], limits, |ev| {
            match ev {
                ws::Event::Message { text, payload } if echo => {
                    let op = if text { ws::opcode::TEXT } else { ws::opcode::BINARY };
                    shard.enqueue_bytes(id, ws::frame(op, payload));
                }
                ws::Event::Message { text: true, .. } => shard.close(
                    id,
                    CloseReason::WsUnsupportedData,
                    "text messages are not part of the protocol; send binary frames",
                ),
                ws::Event::Message { payload, .. } => {
                    let (n, fed) = shard.feed(id, payload);
                    if fed == Fed::Continue && n < payload.len() {
                        shard.close(
                            id,
                            CloseReason::ProtocolError,
                            "a WebSocket message must hold whole frames",
                        );
                    }
                }
                ws::Event::Ping(p) => shard.enqueue_bytes(id, ws::frame(ws::opcode::PONG, p)),
                ws::Event::Pong => shard.ws_pong(id),
                ws::Event::Close(code, _) => {
                    // Echo the status code, as RFC 6455 5.5.1 suggests.
                    let reply = if code == 1005 {
                        ws::frame(ws::opcode::CLOSE, &[])
                    } else {
                        ws::close_frame(code, "")
                    };
                    shard.enqueue_bytes(id, reply);
                    shard.close(id, CloseReason::WsClosed, "");
                }
            }
            shard.conn_mut(id).is_some_and(|c| c.close.is_none())
        });
        match res {
            Ok(n) => used + n,
            Err(e) => {
                let reason = match e.code {
                    ws::close::INVALID_DATA => CloseReason::WsInvalidData,
                    ws::close::TOO_BIG => CloseReason::WsTooBig,
                    _ => CloseReason::WsProtocol,
                };
                shard.close_with_code(id, reason, e.reason, Some(e.code));
                buf.len()
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
