//! Subscribers for the `churn` and `inbox` modes: plain threads, each with
//! a private fd table (`unshare(CLONE_FILES)`, as `worker` explains),
//! driving its share of the connections through one level-triggered epoll:
//! connect (and upgrade, over WebSocket: `link`), auth, then either follow
//! the room (`mix`: a version-2 join resuming after the last offset seen
//! once the connection has been up, a version-2 pattern that matches the
//! room, or a version-1 auth naming it) or nothing (inbox: pushes to the
//! user arrive on auth and are acknowledged). Version-2 connections also
//! acknowledge every push to their user (`session`).
//!
//! Each connection keeps what it has seen across reconnects: the room's
//! epoch and last offset (so a reconnect resumes exactly there), the next
//! payload sequence it expects, and its counts. A push whose offset is not
//! the last plus one is a gap (or, at or below it, a duplicate); a payload
//! sequence above the expected one is lost messages, below it a duplicate.
//! A resume the server answers `"recovered": false` is counted: that is a
//! loss the server owned up to.
//!
//! A version-1 or pattern subscriber has no offsets to resume with; its
//! payload sequence alone tells loss and duplicates. Every room delivery
//! also times the pause since the connection's previous one.
//!
//! Churn: while `Shared::churning` is set, every `period` each thread closes
//! `pct` percent of its live connections (round robin) and reconnects them
//! at once, resuming.

mod link;
pub mod mix;
mod session;
mod shared;

pub use shared::Shared;

use crate::stats::new_hist;
use crate::worker::source_addr;
use hdrhistogram::Histogram;
use link::Link;
use mix::Kind;
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every connection does after auth.
#[derive(Clone, Debug)]
pub enum Role {
    /// Join this room and follow it, resuming on every reconnect.
    Room(String),
    /// Stay, acknowledging every push to the user; done after `expect`.
    Inbox {
        /// Pushes each user should receive.
        expect: u64,
    },
}

/// What a thread hands back when it ends.
pub struct Outcome {
    /// Publish-to-receive latency, ns.
    pub hist: Histogram<u64>,
    /// Per connection, the next payload sequence it expected (room role):
    /// everything below it was received once, in order.
    pub next_seq: Vec<u64>,
    /// The pauses between a connection's consecutive room deliveries, ns.
    pub pauses: Histogram<u64>,
    /// Room delivery latency by second of the run (when received), µs.
    pub by_sec: Vec<Option<Histogram<u64>>>,
}

/// A histogram for one second's latencies, µs: two significant figures
/// keep a few hundred of them small.
pub fn sec_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Authing,
    Joining,
    Live,
    /// Inbox with `max_open`: everything received, closed for good.
    Finished,
}

struct Conn {
    index: usize,
    kind: Kind,
    /// Over WebSocket.
    ws: bool,
    link: Link,
    fd: RawFd,
    phase: Phase,
    buf: Vec<u8>,
    have: usize,
    /// Joined (or authenticated, inbox) at least once.
    was_live: bool,
    epoch: Option<String>,
    last_offset: u64,
    next_seq: u64,
    got: u64,
    /// Acknowledgements sent and not yet answered (op 47).
    acks_pending: u32,
    /// When the next heartbeat is due (once live, while the broadcast runs).
    heartbeat_due: Option<Instant>,
    /// When the last room delivery arrived (ns of the run; 0: none yet).
    last_room_ns: u64,
    /// Payload sequences of the user pushes received.
    user_seqs: HashSet<u64>,
}

/// Runs connections `indices` (global numbering) until `shared.stop`.
pub fn spawn(shared: Arc<Shared>, indices: Vec<usize>, threads: usize) -> std::thread::JoinHandle<Outcome> {
    std::thread::spawn(move || {
        // SAFETY: plain syscall; from here this thread's descriptors are its own.
        if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
            panic!("unshare(CLONE_FILES): {}", std::io::Error::last_os_error());
        }
        Driver::new(shared, threads).run(indices)
    })
}

struct Driver {
    shared: Arc<Shared>,
    epfd: RawFd,
    conns: Vec<Conn>,
    hist: Histogram<u64>,
    pauses: Histogram<u64>,
    by_sec: Vec<Option<Histogram<u64>>>,
    threads: usize,
    /// Slots whose connect could not even start, and when to try again.
    retry: Vec<(Instant, usize)>,
    /// Connections open now.
    open_now: usize,
    /// When heartbeats are next looked at.
    heartbeat_scan: Instant,
}

impl Driver {
    fn new(shared: Arc<Shared>, threads: usize) -> Self {
        // SAFETY: plain syscall creating a descriptor this thread owns.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        Driver {
            shared,
            epfd,
            conns: Vec::new(),
            hist: new_hist(),
            pauses: new_hist(),
            by_sec: Vec::new(),
            threads,
            retry: Vec::new(),
            open_now: 0,
            heartbeat_scan: Instant::now(),
        }
    }

    fn run(mut self, indices: Vec<usize>) -> Outcome {
        let per_sec = (self.shared.rate as f64 / self.threads as f64).max(1.0);
        let max_open = match self.shared.max_open {
            0 => usize::MAX,
            m => m.div_ceil(self.threads),
        };
        // A token bucket holding at most 10 ms of connects, so that room
        // made under `max_open` does not turn into a burst.
        let mut tokens = 1.0f64;
        let mut tick = Instant::now();
        let mut opened = 0usize;
        let mut next_churn = Instant::now();
        let mut cursor = 0usize;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            if self.shared.stop.load(Relaxed) {
                break;
            }
            // The paced ramp.
            let now = Instant::now();
            tokens = (tokens + now.duration_since(tick).as_secs_f64() * per_sec).min((per_sec / 100.0).max(1.0));
            tick = now;
            while tokens >= 1.0 && opened < indices.len() && self.open_now < max_open {
                tokens -= 1.0;
                let index = indices[opened];
                let ws = self.shared.mix.ws(index);
                self.conns.push(Conn {
                    index,
                    kind: self.shared.mix.kind(index),
                    ws,
                    link: Link::Tcp,
                    fd: -1,
                    phase: Phase::Connecting,
                    buf: vec![0; 4096],
                    have: 0,
                    was_live: false,
                    epoch: None,
                    last_offset: 0,
                    next_seq: 0,
                    got: 0,
                    acks_pending: 0,
                    heartbeat_due: None,
                    last_room_ns: 0,
                    user_seqs: HashSet::new(),
                });
                let slot = self.conns.len() - 1;
                self.connect(slot);
                opened += 1;
            }
            let now = Instant::now();
            let (ready, wait): (Vec<_>, Vec<_>) = self.retry.drain(..).partition(|&(at, _)| at <= now);
            self.retry = wait;
            for (_, slot) in ready {
                self.connect(slot);
            }
            if self.shared.churning.load(Relaxed) && Instant::now() >= next_churn {
                next_churn = Instant::now() + self.shared.churn_period;
                let live = self.conns.iter().filter(|c| c.phase == Phase::Live).count();
                let mut k = (live as u64 * self.shared.churn_pct).div_ceil(100) as usize;
                let n = self.conns.len();
                let mut looked = 0;
                while k > 0 && looked < n {
                    let slot = cursor % n;
                    cursor += 1;
                    looked += 1;
                    if self.conns[slot].phase == Phase::Live {
                        self.shared.reconnects.fetch_add(1, Relaxed);
                        self.reconnect(slot);
                        k -= 1;
                    }
                }
            }
            self.heartbeats();
            // SAFETY: `events` is a valid buffer of its length.
            let n = unsafe { libc::epoll_wait(self.epfd, events.as_mut_ptr(), events.len() as i32, 10) };
            for e in events.iter().take(n.max(0) as usize) {
                let (slot, ev) = (e.u64 as usize, e.events);
                self.event(slot, ev);
            }
        }
        for c in &self.conns {
            if c.fd >= 0 {
                // SAFETY: closing a descriptor this thread owns.
                unsafe { libc::close(c.fd) };
            }
        }
        // SAFETY: as above.
        unsafe { libc::close(self.epfd) };
        let mut next_seq = vec![0; self.conns.len()];
        for (i, c) in self.conns.iter().enumerate() {
            next_seq[i] = c.next_seq;
        }
        Outcome {
            hist: self.hist,
            next_seq,
            pauses: self.pauses,
            by_sec: self.by_sec,
        }
    }

    /// Starts a non-blocking connect for `slot`.
    fn connect(&mut self, slot: usize) {
        let sh = &self.shared;
        let index = self.conns[slot].index;
        let target = match self.conns[slot].ws {
            true => sh.mix.ws_targets[index % sh.mix.ws_targets.len()],
            false => sh.targets[index % sh.targets.len()],
        };
        let source = (sh.sources > 0).then(|| source_addr(index / sh.targets.len() % sh.sources));
        let fd = match link::open(source, target) {
            Ok(fd) => fd,
            Err(_) => {
                sh.connect_failed.fetch_add(1, Relaxed);
                self.conns[slot].fd = -1;
                self.conns[slot].phase = Phase::Connecting;
                self.retry.push((Instant::now() + Duration::from_millis(100), slot));
                return;
            }
        };
        self.open_now += 1;
        let c = &mut self.conns[slot];
        c.fd = fd;
        c.phase = Phase::Connecting;
        c.have = 0;
        c.link = if c.ws { Link::Upgrading } else { Link::Tcp };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT) as u32,
            u64: slot as u64,
        };
        // SAFETY: valid descriptors and event.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }

    /// Closes `slot`'s socket and connects again (resuming after auth).
    fn reconnect(&mut self, slot: usize) {
        self.drop_socket(slot);
        self.connect(slot);
    }

    /// Closes `slot`'s socket, if it has one.
    fn drop_socket(&mut self, slot: usize) {
        let fd = self.conns[slot].fd;
        if fd >= 0 {
            // SAFETY: closing a descriptor this thread owns (it leaves the epoll set).
            unsafe { libc::close(fd) };
            self.open_now -= 1;
        }
        self.conns[slot].fd = -1;
    }

    fn event(&mut self, slot: usize, ev: u32) {
        let fd = self.conns[slot].fd;
        if fd < 0 {
            return;
        }
        if self.conns[slot].phase == Phase::Connecting {
            if ev & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                return;
            }
            if link::so_error(fd) != 0 {
                self.shared.connect_failed.fetch_add(1, Relaxed);
                self.reconnect(slot);
                return;
            }
            let mut e = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: slot as u64,
            };
            // SAFETY: valid descriptors and event.
            unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_MOD, fd, &mut e) };
            if self.conns[slot].link == Link::Upgrading {
                let host = self.shared.mix.ws_targets[0].to_string();
                let request = link::upgrade_request(&self.shared.mix.ws_path, &host);
                if self.write(slot, &request) {
                    // Waiting for the answer; the auth follows it.
                    self.conns[slot].phase = Phase::Authing;
                }
            } else {
                self.authenticate(slot);
            }
            return;
        }
        // Readable (or closed): read what there is.
        let c = &mut self.conns[slot];
        if c.have == c.buf.len() {
            c.buf.resize(c.buf.len() * 2, 0);
        }
        // SAFETY: reading into the unused tail of our buffer.
        let n = unsafe { libc::read(fd, c.buf[c.have..].as_mut_ptr().cast(), c.buf.len() - c.have) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock) {
            self.shared.server_closed();
            self.reconnect(slot);
            return;
        }
        if n < 0 {
            return;
        }
        c.have += n as usize;
        let read = link::take(&mut c.link, &mut c.buf, &mut c.have);
        for pong in &read.pongs {
            if !self.write(slot, pong) {
                return;
            }
        }
        if read.upgraded {
            self.authenticate(slot);
        }
        for (op, body) in read.frames {
            if self.conns[slot].fd != fd {
                return; // reconnected while handling an earlier frame
            }
            self.frame(slot, op, &body);
        }
        if read.closed && self.conns[slot].fd == fd {
            self.shared.server_closed();
            self.reconnect(slot);
        }
    }
}
