//! Where a worker's subscribers go once their handshake is done: a plain
//! thread of the same worker (so the same private fd table) that reads them
//! all through one edge-triggered epoll and accounts every payload.
//!
//! Each message then costs a `recv` and a share of one `epoll_wait`, instead
//! of a recv plus a fresh glommio poll request per message (measured: 6.9 us
//! per delivery, more than half the server's own cost, before this). The
//! thread ends when the run's stop flag is set and returns its latency
//! histogram; it owns the duplicated descriptors it was handed and closes
//! them.
//!
//! Invariants: a subscriber is read by exactly one thread after hand-over
//! (its glommio stream is dropped by the handshake task); a short read means
//! the socket is drained unless the peer may have closed (then read to
//! EAGAIN), so any later arrival raises a new edge.

use crate::run::{now_ns, Run};
use crate::stats::{new_hist, Totals, Track};
use crate::wire::{on_frame, tcp_frames, ws_messages, Sink};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the receive thread lets events gather after a small batch.
const COALESCE: Duration = Duration::from_micros(500);

/// A subscriber past its handshake, owned by its worker's receive thread.
struct Recv {
    fd: RawFd,
    buf: Vec<u8>,
    have: usize,
    track: Track,
    ws: bool,
    generic: bool,
}

/// The handshake tasks' end of the hand-over.
pub struct Handoff {
    tx: std::sync::mpsc::Sender<Box<Recv>>,
    wake: RawFd,
}

impl Handoff {
    /// Starts worker `id`'s receive thread (after its `unshare`: the thread
    /// shares the worker's fd table); returns the hand-over and the thread.
    pub fn start(id: usize, run: &Run) -> std::io::Result<(Handoff, std::thread::JoinHandle<Histogram<u64>>)> {
        // SAFETY: plain syscalls creating descriptors this worker owns.
        let (epfd, wake) = unsafe {
            (
                libc::epoll_create1(libc::EPOLL_CLOEXEC),
                libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC),
            )
        };
        if epfd < 0 || wake < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::MAX,
        };
        // SAFETY: registering our eventfd.
        unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, wake, &mut ev) };
        let (tx, rx) = std::sync::mpsc::channel();
        let (totals, stop, base) = (run.totals.clone(), run.stop.clone(), run.base);
        let thread = std::thread::Builder::new()
            .name(format!("loadgen-rx-{id}"))
            .spawn(move || receive_loop(epfd, wake, rx, totals, stop, base))?;
        Ok((Handoff { tx, wake }, thread))
    }

    /// Passes the connection (a duplicate of its descriptor; the glommio
    /// stream is dropped by the caller) and what it already read.
    pub fn give(
        &self,
        s: &TcpStream,
        buf: Vec<u8>,
        have: usize,
        ws: bool,
        generic: bool,
        track: &mut Track,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: dup of a descriptor we own; the copy is owned by the Recv.
        let fd = unsafe { libc::dup(s.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = Recv {
            fd,
            buf,
            have,
            track: std::mem::take(track),
            ws,
            generic,
        };
        // What the caller still sees: subscribed, and no longer its own.
        track.authed = true;
        track.handed_off = true;
        let _ = self.tx.send(Box::new(r));
        let one: u64 = 1;
        // SAFETY: 8-byte write to our eventfd.
        unsafe { libc::write(self.wake, (&one as *const u64).cast(), 8) };
        Ok(())
    }
}

/// The receive thread: registers handed-over sockets, reads whatever is
/// ready, accounts every payload; ends when `stop` is set and returns its
/// latency histogram.
fn receive_loop(
    epfd: RawFd,
    wake: RawFd,
    rx: std::sync::mpsc::Receiver<Box<Recv>>,
    totals: Arc<Totals>,
    stop: Arc<AtomicBool>,
    base: Instant,
) -> Histogram<u64> {
    let hist = RefCell::new(new_hist());
    let mut conns: Vec<Option<Box<Recv>>> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while !stop.load(Relaxed) {
        // SAFETY: epoll_wait into a buffer of the given length.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 50) };
        let mut batch = 0u64;
        for e in &events[..n.max(0) as usize] {
            let key = e.u64;
            // Read to EAGAIN only when the peer may have closed: otherwise a
            // short read means the socket is empty, and any later arrival
            // raises a new edge (this saves a recv per message).
            let to_eagain = e.events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            if key == u64::MAX {
                let mut v = [0u8; 8];
                // SAFETY: 8-byte read from our eventfd.
                unsafe { libc::read(wake, v.as_mut_ptr().cast(), 8) };
                while let Ok(r) = rx.try_recv() {
                    let idx = conns.len();
                    let mut ev = libc::epoll_event {
                        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                        u64: idx as u64,
                    };
                    // SAFETY: registering a descriptor we own.
                    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, r.fd, &mut ev) };
                    conns.push(Some(r));
                    // It may hold, or have missed the edge of, data already.
                    batch += service(&mut conns[idx], true, &totals, &hist, base);
                }
            } else if let Some(slot) = conns.get_mut(key as usize) {
                batch += service(slot, to_eagain, &totals, &hist, base);
            }
        }
        if batch > 0 {
            totals.received.fetch_add(batch, Relaxed);
        }
        // Interrupt coalescing: a server spreads one broadcast over tens of
        // milliseconds, and waking per handful of sockets made context
        // switches the largest single cost here (a quarter of the thread's
        // samples). Letting events gather for a moment costs at most this
        // much added latency.
        if (n as usize) < events.len() / 16 {
            std::thread::sleep(COALESCE);
        }
    }
    for c in conns.iter_mut() {
        if let Some(r) = c.take() {
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD into an int, then closing the duplicate we own.
            unsafe {
                if libc::ioctl(r.fd, libc::FIONREAD, &mut unread) == 0 && unread > 0 {
                    totals.left_unread.fetch_add(1, Relaxed);
                    totals.left_unread_bytes.fetch_add(unread as u64, Relaxed);
                }
                libc::close(r.fd);
            }
        }
    }
    hist.into_inner()
}

/// Reads one subscriber and closes it if it ended; returns the payloads it
/// counted, for the shared total.
fn service(
    slot: &mut Option<Box<Recv>>,
    to_eagain: bool,
    totals: &Totals,
    hist: &RefCell<Histogram<u64>>,
    base: Instant,
) -> u64 {
    let Some(r) = slot.as_mut() else { return 0 };
    let alive = drain(r, to_eagain, totals, hist, base);
    let counted = std::mem::take(&mut r.track.unflushed);
    if !alive {
        close_recv(slot, totals);
    }
    counted
}

fn close_recv(slot: &mut Option<Box<Recv>>, totals: &Totals) {
    if let Some(r) = slot.take() {
        // SAFETY: closing the duplicate we own (this also leaves the epoll set).
        unsafe { libc::close(r.fd) };
        totals.closed.fetch_add(1, Relaxed);
    }
}

/// Reads `r` until a short read (or, with `to_eagain`, until EAGAIN) and
/// accounts what arrived; false when the connection closed.
fn drain(r: &mut Recv, to_eagain: bool, totals: &Totals, hist: &RefCell<Histogram<u64>>, base: Instant) -> bool {
    let mut empty = false;
    loop {
        let sink = Sink {
            totals,
            hist,
            now: now_ns(base),
        };
        let (used, alive) = if r.ws {
            let read = ws_messages(&r.buf[..r.have], r.generic, &mut r.track, &sink);
            for p in &read.pongs {
                // SAFETY: a small write on a descriptor we own; a full socket
                // buffer only loses a pong.
                unsafe {
                    libc::send(
                        r.fd,
                        p.as_ptr().cast(),
                        p.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
            }
            (read.used, !read.closed)
        } else {
            let track = &mut r.track;
            match tcp_frames(&r.buf[..r.have], |f| on_frame(f, track, &sink)) {
                Some(used) => (used, true),
                None => (0, false),
            }
        };
        r.buf.copy_within(used..r.have, 0);
        r.have -= used;
        if !alive {
            return false;
        }
        if empty {
            return true;
        }
        if r.have == r.buf.len() {
            r.buf.resize(r.buf.len() * 2, 0);
        }
        // SAFETY: recv into the unfilled part of our buffer.
        let n = unsafe {
            libc::recv(
                r.fd,
                r.buf[r.have..].as_mut_ptr().cast(),
                r.buf.len() - r.have,
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return false,
            n if n > 0 => {
                empty = !to_eagain && (n as usize) < r.buf.len() - r.have;
                r.have += n as usize;
            }
            _ => {
                let e = std::io::Error::last_os_error();
                return matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR));
            }
        }
    }
}
