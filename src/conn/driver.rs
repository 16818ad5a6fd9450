//! `ClientDriver`: what drives one client connection — raw TCP or
//! WebSocket — moving bytes only: socket → shard (or WebSocket session →
//! shard), shard's queue → socket. Not a task: `Drivers`, the shard's table
//! of them, is run by the shard's reactor (`conn::reactor`) when the
//! connection's socket has bytes, takes writes again, or its record was
//! woken (`Shard::wake_conn`: a close, the flusher handing a queue over).
//!
//! One driver per connection, in the table of the shard that accepted it;
//! it never leaves that shard. What the bytes mean is decided elsewhere:
//! frames by `Shard::feed`, WebSocket policy by `proto::ws::Session`, whose
//! actions the driver carries out. Each run, in this order:
//!
//! ```text
//! 1. read: recv() into the shard's scratch buffer (never a buffer of our own
//!    while idle) until EAGAIN; whole frames go to the shard (or the
//!    session), a partial tail is kept in `partial` until it completes
//! 2. write: one sendmsg() of up to 64 queued frames (coalescing) — its own
//!    replies, and whatever the shard's flusher (`conn::flush`) left because
//!    the socket was full; on EAGAIN, a POLLOUT request on the readiness ring
//! 3. if the record says "closing": no more reading; write what is queued
//!    (the op 6 goodbye last) as the socket takes it; once the queue is empty
//!    (or the peer is gone, or the shard gave up on it after
//!    CLOSE_FLUSH_SECS), shut the socket, remove its requests from the ring,
//!    forget the connection and the driver
//! ```
//!
//! A connection costs no glommio task, stream or poll `Source`: the driver
//! holds its socket as a bare descriptor, and the shard's readiness ring
//! keeps one multishot POLLIN request per connection (idle RSS per
//! connection fell from ~1,150 to ~400 B, BENCHMARKS.md).
//!
//! Deliveries do not run the driver: a queue's empty → non-empty edge puts
//! the connection on the shard's dirty list, and the flusher writes it.
//!
//! Invariants: a run never leaves the shard borrowed; a driver reads until
//! EAGAIN or asks to run again (the ring reports arrivals, not readable
//! state); a driver run to write drains its queue until empty or EAGAIN, or
//! asks to run again; a driver and its connection record share a `ConnRef`,
//! and the driver outlives the record (it removes it).

use super::ring;
use crate::metrics::{self, ShardStats};
use crate::proto::close::CloseReason;
use crate::proto::ws::session::{Action, Rules};
use crate::proto::ws::Session;
use crate::proto::{binary, v2};
use crate::shard::handoff::Input;
use crate::shard::mesh::ConnRef;
use crate::shard::outbound::{Outbound, MAX_IOV};
use crate::shard::{Shard, Shared, Transport};
use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// Size of the per-shard read buffer shared by every connection's reads.
const SCRATCH: usize = 64 * 1024;
/// Reads per run before other connections get their turn.
const READS_PER_RUN: usize = 4;
/// Writes per run before other connections get their turn.
const WRITES_PER_RUN: usize = 16;

thread_local! {
    /// The shard's read buffer: a connection only owns bytes while a frame is
    /// split across reads.
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
    /// The shard's drivers.
    static DRIVERS: RefCell<Drivers> = RefCell::new(Drivers::default());
}

/// Adds the driver of connection `id` to this shard's table.
pub fn add(id: ConnRef, d: ClientDriver) {
    DRIVERS.with(|t| t.borrow_mut().insert(id, d));
}

/// Runs connection `id`'s driver on this shard (see `Drivers::run`).
pub fn run(shard: &RefCell<Shard>, id: ConnRef) -> Step {
    DRIVERS.with(|t| t.borrow_mut().run(shard, id))
}

/// What connection `id`'s driver holds of its input, for the next process
/// (`volley upgrade`; empty if it has no driver).
pub fn saved_input(id: ConnRef) -> Input {
    DRIVERS.with(|t| t.borrow().get(id).map(ClientDriver::save).unwrap_or_default())
}

/// Drops this shard's drivers at shutdown (see `Drivers::clear`).
pub fn clear(shard: &RefCell<Shard>) {
    let _ = DRIVERS.try_with(|t| t.borrow_mut().clear(shard));
}

/// One client connection's I/O state.
pub struct ClientDriver {
    /// The socket (closed when the driver is dropped).
    fd: OwnedFd,
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

/// What a run left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until the ring or the shard wakes it.
    Wait,
    /// Budget spent with work left: run again after the others.
    Again,
    /// Finished: the connection is forgotten; drop the driver.
    Done,
}

impl ClientDriver {
    /// A driver for an accepted, registered connection.
    pub fn new(fd: OwnedFd, shared: &Arc<Shared>, transport: Transport) -> Self {
        let ws = (transport != Transport::Tcp).then(|| {
            Box::new(WsConn {
                session: Session::default(),
                shared: shared.clone(),
            })
        });
        ClientDriver {
            fd,
            partial: Vec::new(),
            ws,
        }
    }

    /// A driver for a connection handed over by the previous process
    /// (`volley upgrade`), going on with what that one's driver held.
    pub fn adopted(fd: OwnedFd, shared: &Arc<Shared>, input: Input) -> Self {
        ClientDriver {
            fd,
            partial: input.partial,
            ws: input.ws.map(|saved| {
                Box::new(WsConn {
                    session: Session::restore(saved),
                    shared: shared.clone(),
                })
            }),
        }
    }

    /// What it holds of its input, for the next process.
    pub fn save(&self) -> Input {
        Input {
            partial: self.partial.clone(),
            ws: self.ws.as_ref().map(|w| w.session.save()),
        }
    }

    /// Reads, writes, and finishes a closing connection; see the module doc.
    pub fn run(&mut self, shard: &RefCell<Shard>, id: ConnRef) -> Step {
        let Some(closing) = shard.borrow().conn(id).map(|c| c.closing()) else {
            return Step::Done;
        };
        let mut again = false;
        if !closing {
            let r = self.read(shard, id).and_then(|more| Ok(more | self.write(shard, id)?));
            match r {
                Ok(more) => again = more,
                Err(reason) => shard.borrow_mut().close(id, reason, ""),
            }
        }
        let (closing, gone) = match shard.borrow().conn(id) {
            None => (true, true),
            Some(c) => (
                c.closing(),
                matches!(c.close, Some(CloseReason::PeerClosed | CloseReason::IoError)),
            ),
        };
        if !closing {
            return if again { Step::Again } else { Step::Wait };
        }
        // Flush the goodbye as the socket takes it; POLLOUT (or the shard
        // giving up) runs us for the rest.
        let flushed = gone
            || match self.write(shard, id) {
                Err(_) => true,
                Ok(more) => {
                    again = more;
                    shard.borrow().conn(id).is_none_or(|c| c.out.is_empty())
                }
            };
        if flushed {
            self.finish(shard, id);
            return Step::Done;
        }
        if again {
            Step::Again
        } else {
            Step::Wait
        }
    }

    /// Reads until EAGAIN; `Ok(true)` when the budget ran out first.
    fn read(&mut self, shard: &RefCell<Shard>, id: ConnRef) -> Result<bool, CloseReason> {
        for _ in 0..READS_PER_RUN {
            let done = SCRATCH_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                // SAFETY: a non-blocking recv into a buffer we own, for its
                // length.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                match n {
                    0 => Err(CloseReason::PeerClosed),
                    n if n > 0 => {
                        self.ingest(shard, id, &mut buf[..n as usize]);
                        Ok(false)
                    }
                    _ => match io::Error::last_os_error().kind() {
                        // Drained: the connection's multishot poll on the
                        // shard's readiness ring reports what comes next.
                        io::ErrorKind::WouldBlock => Ok(true),
                        io::ErrorKind::Interrupted => Ok(false),
                        _ => Err(CloseReason::IoError),
                    },
                }
            })?;
            if done || shard.borrow().is_closing(id) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Hands newly read bytes on, after any partial frame kept from before;
    /// keeps what is left of an incomplete frame for the next read.
    fn ingest(&mut self, shard: &RefCell<Shard>, id: ConnRef, data: &mut [u8]) {
        shard.borrow_mut().set_clock(metrics::clock_us());
        if self.partial.is_empty() {
            let used = self.process(shard, id, data);
            if used < data.len() && !shard.borrow().is_closing(id) {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.process(shard, id, &mut buf);
            if used < buf.len() && !shard.borrow().is_closing(id) {
                buf.drain(..used);
                self.partial = buf;
            }
        }
    }

    /// Whole frames (TCP) or whatever the WebSocket session makes of the
    /// bytes; returns how many were consumed.
    fn process(&mut self, shard: &RefCell<Shard>, id: ConnRef, buf: &mut [u8]) -> usize {
        let mut shard = shard.borrow_mut();
        let Some(ws) = self.ws.as_mut() else {
            return shard.feed(id, buf);
        };
        let WsConn { session, shared } = &mut **ws;
        let rules = Rules {
            upgrade: &shared.ws_rules,
            max_message: v2::frame_limit(binary::op::AUTH, shared.config.limits.max_body) + binary::HEADER_LEN,
            echo_max_message: shared.config.ws.echo_max_message,
        };
        let mut used = 0;
        while !shard.is_closing(id) {
            let (action, n) = session.handle_read(&mut buf[used..], rules);
            used += n;
            let Some(action) = action else { break };
            match action {
                Action::Send(bytes) => shard.enqueue_bytes(id, bytes),
                Action::Upgraded {
                    response,
                    echo,
                    compressed_sends,
                } => {
                    shard.enqueue_bytes(id, response);
                    shard.ws_upgraded(id, echo, compressed_sends);
                }
                Action::Deliver(payload) => shard.feed_message(id, payload),
                Action::Alive => shard.ws_pong(id),
                Action::Close {
                    reason,
                    detail,
                    code,
                    reply,
                } => {
                    if let Some(reply) = reply {
                        shard.enqueue_bytes(id, reply);
                    }
                    shard.close_with_code(id, reason, &detail, code);
                }
            }
        }
        used
    }

    /// Writes until the queue is empty or the socket is full (POLLOUT
    /// requested); `Ok(true)` when the budget ran out first.
    fn write(&mut self, shard: &RefCell<Shard>, id: ConnRef) -> Result<bool, CloseReason> {
        for _ in 0..WRITES_PER_RUN {
            let mut shard = shard.borrow_mut();
            let Some(c) = shard.conn(id) else {
                return Ok(false);
            };
            if c.out.is_empty() {
                return Ok(false);
            }
            let n = match write_queue(self.fd.as_raw_fd(), &c.out) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Requested after the failed send, the POLLOUT fires at
                    // once if the peer has drained meanwhile.
                    shard.write_blocked(id);
                    ring::want_write(self.fd.as_raw_fd(), id);
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(CloseReason::IoError),
            };
            wrote(&mut shard, id, n, metrics::clock_us());
        }
        Ok(true)
    }

    /// Forgets the connection (its goodbye is written, or given up). The
    /// socket closes when the driver is dropped.
    fn finish(&mut self, shard: &RefCell<Shard>, id: ConnRef) {
        ring::forget(id);
        // SAFETY: plain syscall on a descriptor we own; errors are irrelevant
        // (the peer may be gone).
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) };
        shard.borrow_mut().remove_conn(id);
    }
}

/// The shard's drivers, by connection slot (the same slot as the record's).
#[derive(Default)]
pub struct Drivers {
    slots: Vec<Option<(u32, ClientDriver)>>,
}

impl Drivers {
    /// The driver of connection `id`.
    pub fn get(&self, id: ConnRef) -> Option<&ClientDriver> {
        match self.slots.get(id.idx as usize) {
            Some(Some((gen, d))) if *gen == id.gen => Some(d),
            _ => None,
        }
    }

    /// Adds the driver of connection `id`.
    pub fn insert(&mut self, id: ConnRef, d: ClientDriver) {
        let i = id.idx as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i] = Some((id.gen, d));
    }

    /// Runs `id`'s driver (nothing if it is gone) and drops it once done.
    pub fn run(&mut self, shard: &RefCell<Shard>, id: ConnRef) -> Step {
        let Some(slot) = self.slots.get_mut(id.idx as usize) else {
            return Step::Done;
        };
        let Some((gen, d)) = slot.as_mut() else {
            return Step::Done;
        };
        if *gen != id.gen {
            return Step::Done;
        }
        let step = d.run(shard, id);
        if step == Step::Done {
            *slot = None;
        }
        step
    }

    /// Drops every driver left at shutdown, forgetting its connection so
    /// that the counts stay right; closes their sockets.
    pub fn clear(&mut self, shard: &RefCell<Shard>) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some((gen, _)) = slot.take() {
                let id = ConnRef { idx: i as u32, gen };
                ring::forget(id);
                if let Ok(mut sh) = shard.try_borrow_mut() {
                    sh.remove_conn(id);
                }
            }
        }
    }
}

/// Counts `n` bytes of `r`'s queue written at `now` (how long its oldest
/// frame waited, bytes, one write) and drops them from the queue: every
/// write, the driver's and the flusher's, goes through here.
pub fn wrote(sh: &mut Shard, r: ConnRef, n: usize, now: u32) {
    if let Some((c, stats)) = sh.conn_and_stats(r) {
        stats.queue_wait_us.record(now.wrapping_sub(c.out.since()));
        ShardStats::add(&stats.bytes_out, n as u64);
        ShardStats::add(&stats.writes, 1);
    }
    sh.written(r, n, now);
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
