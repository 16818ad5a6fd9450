//! The shard's readiness ring: one io_uring of our own on which every
//! client connection keeps a multishot `POLLIN` request, and a connection
//! whose socket is full a one-shot `POLLOUT`, instead of a glommio task,
//! stream and poll `Source` per connection.
//!
//! Thread-local to each shard's thread; the shard's reactor
//! (`conn::reactor`) submits what is queued here, waits on the ring's
//! eventfd, and turns each completion into a driver run (`dispatch`). Each
//! request's tag names its connection (`ConnRef`) and what it is for.
//!
//! Invariants: a multishot poll posts a completion for every arrival after
//! it is armed (and one at once if data is already there), so a driver that
//! reads until `EAGAIN` never misses data. At most one `POLLOUT` per
//! connection is outstanding (`armed`). Requests are queued here and
//! submitted when the reactor next runs (one `io_uring_enter` for a burst of
//! accepts, closes or full sockets); a completion for a connection that is
//! gone, or whose slot has a new generation, is ignored; a multishot request
//! the kernel ended (CQ overflow) is armed again while its connection
//! lives. A connection's requests are removed when it is forgotten
//! (`forget`); the kernel holds its own reference to the socket until then,
//! so closing the descriptor at once is safe.

use crate::proto::close::CloseReason;
use crate::shard::mesh::ConnRef;
use crate::shard::Shard;
use fnv::FnvHashSet;
use io_uring::{cqueue, opcode, types, IoUring};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;

/// Submission queue depth: requests queued between two reactor runs beyond
/// this are submitted at once to make room.
const SQ_DEPTH: u32 = 4096;
/// Completion queue depth. A burst of arrivals on tens of thousands of
/// connections fits; past it the kernel keeps completions on its overflow
/// list (`IORING_FEAT_NODROP`) and may end a multishot request, which the
/// reactor arms again.
const CQ_DEPTH: u32 = 65536;
/// What a completion is for, in the top bits of its user data.
const READ: u64 = 0;
const WRITE: u64 = 1;

thread_local! {
    static RING: RefCell<Option<Ring>> = const { RefCell::new(None) };
}

struct Ring {
    ring: IoUring,
    /// Requests queued and not yet submitted.
    unsubmitted: usize,
    /// Connections with a `POLLOUT` outstanding.
    armed: FnvHashSet<ConnRef>,
    /// The reactor, to be woken when requests wait for submission.
    reactor: Option<Waker>,
    /// The eventfd the ring posts to, until the reactor takes it.
    eventfd: Option<OwnedFd>,
}

fn tag(r: ConnRef, what: u64) -> u64 {
    // Generations have 31 bits (`Shard::new_conn`); the top bit says read
    // or write.
    (what << 63) | (u64::from(r.gen) << 32) | u64::from(r.idx)
}

fn untag(t: u64) -> (ConnRef, u64) {
    (
        ConnRef {
            idx: t as u32,
            gen: ((t >> 32) & 0x7fff_ffff) as u32,
        },
        t >> 63,
    )
}

impl Ring {
    fn push(&mut self, sqe: io_uring::squeue::Entry) {
        // SAFETY: poll requests carry no pointers into our memory.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            if let Err(e) = self.ring.submit() {
                tracing::error!(error = %e, "readiness ring submit failed");
            }
            self.unsubmitted = 0;
        }
        self.unsubmitted += 1;
        if self.unsubmitted == 1 {
            if let Some(w) = &self.reactor {
                w.wake_by_ref();
            }
        }
    }
}

/// Creates this shard's ring; call once on the shard's thread before any
/// connection is accepted. Fails on kernels without io_uring multishot
/// polls (before 5.13).
pub fn install() -> io::Result<()> {
    let ring = IoUring::builder().setup_cqsize(CQ_DEPTH).build(SQ_DEPTH)?;
    // SAFETY: plain syscall; the descriptor is checked below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nothing else.
    let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    RING.with(|r| {
        *r.borrow_mut() = Some(Ring {
            ring,
            unsubmitted: 0,
            armed: FnvHashSet::default(),
            reactor: None,
            eventfd: Some(eventfd),
        })
    });
    Ok(())
}

fn with<T>(f: impl FnOnce(&mut Ring) -> T) -> Option<T> {
    // `try_with`: drivers dropped with the thread's other locals may find
    // the ring gone.
    RING.try_with(|r| r.borrow_mut().as_mut().map(f)).ok().flatten()
}

/// Starts watching `fd` for arrivals on behalf of connection `r`.
pub fn watch(fd: RawFd, r: ConnRef) {
    with(|ring| {
        let mask = (libc::POLLIN | libc::POLLRDHUP) as u32;
        ring.push(
            opcode::PollAdd::new(types::Fd(fd), mask)
                .multi(true)
                .build()
                .user_data(tag(r, READ)),
        );
    });
}

/// Asks to be woken once `fd` takes writes again (its socket was full);
/// nothing if `r` already waits for that.
pub fn want_write(fd: RawFd, r: ConnRef) {
    with(|ring| {
        if ring.armed.insert(r) {
            let mask = libc::POLLOUT as u32;
            ring.push(
                opcode::PollAdd::new(types::Fd(fd), mask)
                    .build()
                    .user_data(tag(r, WRITE)),
            );
        }
    });
}

/// Removes `r`'s requests: its connection is finished.
pub fn forget(r: ConnRef) {
    with(|ring| {
        ring.push(opcode::PollRemove::new(tag(r, READ)).build().user_data(u64::MAX));
        if ring.armed.remove(&r) {
            ring.push(opcode::PollRemove::new(tag(r, WRITE)).build().user_data(u64::MAX));
        }
    });
}

/// The ring's eventfd, for the reactor to read (once; the ring keeps its
/// own reference to the eventfd it posts to).
pub fn take_eventfd() -> Option<OwnedFd> {
    with(|ring| ring.eventfd.take()).flatten()
}

/// Records the reactor's waker (requests waiting for submission wake it);
/// returns whether completions wait.
pub fn poll_completions(w: &Waker) -> bool {
    with(|ring| {
        if !ring.reactor.as_ref().is_some_and(|r| r.will_wake(w)) {
            ring.reactor = Some(w.clone());
        }
        !ring.ring.completion().is_empty()
    })
    .unwrap_or(false)
}

/// Moves up to `max` completions into `done`, as (tag, result, flags).
pub fn take_completions(done: &mut Vec<(u64, i32, u32)>, max: usize) {
    with(|ring| {
        done.extend(
            ring.ring
                .completion()
                .take(max)
                .map(|c| (c.user_data(), c.result(), c.flags())),
        )
    });
}

/// Submits the requests queued since the last call.
pub fn submit() {
    with(|ring| {
        if ring.unsubmitted > 0 {
            if let Err(e) = ring.ring.submit() {
                tracing::error!(error = %e, "readiness ring submit failed");
            }
            ring.unsubmitted = 0;
        }
    });
}

/// Collects the connections the completions name into `todo`; arms again
/// a multishot request the kernel ended while its connection lives.
pub fn dispatch(sh: &mut Shard, done: &[(u64, i32, u32)], todo: &mut Vec<ConnRef>) {
    for &(t, res, flags) in done {
        if t == u64::MAX {
            continue;
        }
        let (r, what) = untag(t);
        if what == WRITE {
            with(|ring| ring.armed.remove(&r));
        }
        let Some(c) = sh.conn(r) else { continue };
        let (fd, closing) = (c.fd, c.closing());
        todo.push(r);
        if what == READ && !cqueue::more(flags) && !closing {
            if res < 0 && res != -libc::ECANCELED {
                sh.close(r, CloseReason::IoError, "");
            } else {
                watch(fd, r);
            }
        }
    }
}
