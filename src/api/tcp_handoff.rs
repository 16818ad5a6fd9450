//! TCP publishers in a hand-off (`volley upgrade`): each publisher's task
//! parks between two reads, its replies written and what it published
//! kept, so its connection can move to the next process with its session
//! and the bytes it read and has not handled; the next process's task goes
//! on from there (`api::tcp::adopt`). The publisher sees a pause, not a
//! close.
//!
//! Runs on each shard's thread (the registry is thread-local, one per
//! shard), driven by `handoff::local` and by the publishers' tasks:
//!
//! ```text
//! quiet   park_all: every publisher task stops at its next read — a read
//!         waiting for bytes is dropped, which takes none (glommio reads
//!         only once the socket is readable, within the task's own poll) —
//!         and registers what it holds (`park`)
//! export  every open publisher connection parked: `exported` gives their
//!         records and sockets (lent: the tasks still own them)
//! resume  unpark_all: each task reads on where it stopped
//! let go  the process ends; the parked tasks never run again
//! ```
//!
//! Invariants: a task parks only at the top of its loop (every frame read
//! handled, every reply written, every wait for the store over); the
//! registry holds one waker per task at most, so its size is the number of
//! publisher connections.

use crate::shard::handoff::PublisherState;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::task::{Poll, Waker};

thread_local! {
    static PARK: Park = Park::default();
}

#[derive(Default)]
struct Park {
    /// A hand-off has begun: tasks park.
    on: Cell<bool>,
    /// Tasks waiting for `on` to change, by their socket.
    wakers: RefCell<fnv::FnvHashMap<RawFd, Waker>>,
    /// The parked tasks' records, by their socket.
    parked: RefCell<std::collections::BTreeMap<RawFd, PublisherState>>,
}

impl Park {
    fn wake_all(&self) {
        for (_, w) in self.wakers.borrow_mut().drain() {
            w.wake();
        }
    }
}

/// A hand-off begins: every publisher task parks at its next read.
pub fn park_all() {
    PARK.with(|p| {
        p.on.set(true);
        p.wake_all();
    });
}

/// The hand-off did not happen: every parked task reads on.
pub fn unpark_all() {
    PARK.with(|p| {
        p.on.set(false);
        p.wake_all();
    });
}

/// Whether tasks are to park now.
pub(super) fn parking_now() -> bool {
    PARK.with(|p| p.on.get())
}

/// How many tasks are parked.
pub fn parked() -> usize {
    PARK.with(|p| p.parked.borrow().len())
}

/// The parked publishers' records and their sockets, in the same order.
pub fn exported() -> (Vec<PublisherState>, Vec<RawFd>) {
    PARK.with(|p| {
        let parked = p.parked.borrow();
        let fds = parked.keys().copied().collect();
        (parked.values().cloned().collect(), fds)
    })
}

/// Completes once a hand-off begins (at once if one has): the task on
/// socket `fd` should park.
pub(super) async fn hand_off_begun(fd: RawFd) {
    poll_fn(|cx| {
        PARK.with(|p| {
            if p.on.get() {
                Poll::Ready(())
            } else {
                p.wakers.borrow_mut().insert(fd, cx.waker().clone());
                Poll::Pending
            }
        })
    })
    .await
}

/// Parks the task on socket `fd` with `state` until the hand-off is
/// called off (if it happens, the process ends first).
pub(super) async fn park(fd: RawFd, state: PublisherState) {
    PARK.with(|p| p.parked.borrow_mut().insert(fd, state));
    poll_fn(|cx| {
        PARK.with(|p| {
            if p.on.get() {
                p.wakers.borrow_mut().insert(fd, cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    })
    .await;
    PARK.with(|p| p.parked.borrow_mut().remove(&fd));
}

/// The task on socket `fd` ends: forget its waker.
pub(super) fn forget(fd: RawFd) {
    PARK.with(|p| {
        p.wakers.borrow_mut().remove(&fd);
        p.parked.borrow_mut().remove(&fd);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::pin::pin;

    fn state(n: u8) -> PublisherState {
        PublisherState {
            authed: true,
            opened: 1,
            last_heard: 2,
            unparsed: vec![n],
        }
    }

    #[test]
    fn tasks_park_once_a_hand_off_begins_and_read_on_when_it_is_called_off() {
        let mut begun = pin!(hand_off_begun(7));
        assert!(future::block_on(future::poll_once(&mut begun)).is_none());
        park_all();
        assert!(future::block_on(future::poll_once(&mut begun)).is_some());
        let mut a = pin!(park(7, state(1)));
        let mut b = pin!(park(9, state(2)));
        assert!(future::block_on(future::poll_once(&mut a)).is_none());
        assert!(future::block_on(future::poll_once(&mut b)).is_none());
        assert_eq!(parked(), 2);
        assert_eq!(exported(), (vec![state(1), state(2)], vec![7, 9]));
        unpark_all();
        assert!(future::block_on(future::poll_once(&mut a)).is_some());
        assert!(future::block_on(future::poll_once(&mut b)).is_some());
        assert_eq!(parked(), 0);
        forget(7);
        forget(9);
        PARK.with(|p| assert!(p.wakers.borrow().is_empty()));
    }

    #[test]
    fn a_task_that_reads_often_leaves_one_waker() {
        for _ in 0..1000 {
            let mut begun = pin!(hand_off_begun(3));
            assert!(future::block_on(future::poll_once(&mut begun)).is_none());
        }
        PARK.with(|p| assert_eq!(p.wakers.borrow().len(), 1));
        forget(3);
    }
}
