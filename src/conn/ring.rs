//! The shard's readiness ring and its reactor: one io_uring of our own on
//! which every client connection keeps a multishot `POLLIN` request, and a
//! connection whose socket is full a one-shot `POLLOUT`, instead of a
//! glommio task, stream and poll `Source` per connection.
//!
//! Runs on each shard's executor: the ring is thread-local to the shard's
//! thread, `reactor` is one task in the default queue (the control queue's
//! inbox, API and flusher go first). The ring posts to an
//! eventfd, which the reactor reads through glommio (a buffered-file read,
//! which glommio's own ring completes when the counter is non-zero), so the
//! executor parks as before and wakes for our completions. Each completion
//! names its connection (`ConnRef`) and what it is for; the reactor runs
//! that connection's driver (`conn::driver`), which reads or writes until
//! `EAGAIN`, and so it does for connections the shard woke
//! (`Shard::wake_conn`: closes, queues the flusher hands over).
//!
//! Invariants: a multishot poll posts a completion for every arrival after
//! it is armed (and one at once if data is already there), so a driver that
//! reads until `EAGAIN` never misses data; one that stops early is run
//! again after the others (`Step::Again`). At most one `POLLOUT` per
//! connection is outstanding (`armed`). Requests are queued here and
//! submitted when the reactor next runs (one `io_uring_enter` for a burst of
//! accepts, closes or full sockets); a completion for a connection that is
//! gone, or whose slot has a new generation, is ignored. A connection's
//! requests are removed when it is forgotten (`forget`); the kernel holds
//! its own reference to the socket until then, so closing the descriptor at
//! once is safe. The reactor yields every `BATCH` completions or runs.

use super::driver::{self, Step};
use crate::proto::close::CloseReason;
use crate::shard::mesh::ConnRef;
use crate::shard::Shard;
use fnv::FnvHashSet;
use glommio::io::BufferedFile;
use io_uring::{cqueue, opcode, types, IoUring};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Submission queue depth: requests queued between two reactor runs beyond
/// this are submitted at once to make room.
const SQ_DEPTH: u32 = 4096;
/// Completion queue depth. A burst of arrivals on tens of thousands of
/// connections fits; past it the kernel keeps completions on its overflow
/// list (`IORING_FEAT_NODROP`) and may end a multishot request, which the
/// reactor arms again.
const CQ_DEPTH: u32 = 65536;
/// Completions handled between yields.
const BATCH: usize = 1024;

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
    /// The eventfd the ring posts to (the reactor's read owns a duplicate).
    eventfd: OwnedFd,
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
            eventfd,
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

/// Submits what was queued, and runs the drivers whose sockets became
/// readable or writable or whose connections were woken
/// (`Shard::wake_conn`), until the executor ends.
pub async fn reactor(shard: Rc<RefCell<Shard>>) {
    let Some(efd) = with(|ring| ring.eventfd.try_clone()) else {
        return;
    };
    let efd = match efd {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "readiness ring: cannot duplicate its eventfd");
            return;
        }
    };
    // SAFETY: a descriptor of our own, handed over to glommio, which reads
    // it (an eventfd ignores the offset) and closes it on drop.
    let file = unsafe { BufferedFile::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(efd)) };
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(BATCH);
    let mut todo: Vec<ConnRef> = Vec::new();
    loop {
        let mut signal = std::pin::pin!(file.read_at(0, 8));
        std::future::poll_fn(|cx| {
            submit();
            let completions = with(|ring| {
                if !ring.reactor.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    ring.reactor = Some(cx.waker().clone());
                }
                !ring.ring.completion().is_empty()
            });
            let mut sh = shard.borrow_mut();
            sh.woken().set_task(cx.waker());
            if completions == Some(true) || !sh.woken().is_empty() {
                return Poll::Ready(());
            }
            drop(sh);
            match signal.as_mut().poll(cx) {
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "readiness ring: eventfd read failed");
                    Poll::Ready(())
                }
                Poll::Ready(Ok(_)) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        loop {
            done.clear();
            with(|ring| {
                done.extend(
                    ring.ring
                        .completion()
                        .take(BATCH)
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                )
            });
            todo.clear();
            dispatch(&shard, &done, &mut todo);
            {
                let mut sh = shard.borrow_mut();
                let room = BATCH.saturating_sub(todo.len()).max(1);
                if !sh.woken().is_empty() {
                    let mut woken = sh.woken().take();
                    if woken.len() > room {
                        for &r in &woken[room..] {
                            sh.wake_conn(r);
                        }
                        woken.truncate(room);
                    }
                    todo.extend(woken);
                }
            }
            if todo.is_empty() && done.is_empty() {
                break;
            }
            // A connection named twice in one batch runs once.
            todo.sort_unstable_by_key(|r| (r.idx, r.gen));
            todo.dedup();
            for &r in &todo {
                if driver::run(&shard, r) == Step::Again {
                    shard.borrow_mut().wake_conn(r);
                }
            }
            submit();
            glommio::executor().yield_if_needed().await;
        }
    }
}

/// Submits the requests queued since the last call.
fn submit() {
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
fn dispatch(shard: &Rc<RefCell<Shard>>, done: &[(u64, i32, u32)], todo: &mut Vec<ConnRef>) {
    let mut sh = shard.borrow_mut();
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
