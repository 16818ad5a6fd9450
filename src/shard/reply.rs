//! `Reply` / `ReplyWait`: a one-shot answer from one shard to a task
//! waiting on another thread or shard (the API asking a room's owner).
//!
//! Shared across threads (`Arc`); the answer is taken once.

use atomic_waker::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The sending half of a one-shot answer from one shard to a task waiting
/// on another (the API asking a room's owner). Dropping it unsent wakes the
/// waiter with `None`.
pub struct Reply<T> {
    slot: Arc<Slot<T>>,
}

struct Slot<T> {
    value: Mutex<Option<T>>,
    done: AtomicBool,
    waker: AtomicWaker,
}

/// The waiting half of a `Reply`: a future of the answer.
pub struct ReplyWait<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Reply<T> {
    /// A reply slot and the future that waits on it.
    pub fn pair() -> (Reply<T>, ReplyWait<T>) {
        let slot = Arc::new(Slot {
            value: Mutex::new(None),
            done: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        (Reply { slot: slot.clone() }, ReplyWait { slot })
    }

    /// Answers.
    pub fn send(self, v: T) {
        if let Ok(mut g) = self.slot.value.lock() {
            *g = Some(v);
        }
        // `Drop` marks it done and wakes the waiter.
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        self.slot.done.store(true, Ordering::Release);
        self.slot.waker.wake();
    }
}

impl<T> std::fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl<T> Future for ReplyWait<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let slot = &self.slot;
        if !slot.done.load(Ordering::Acquire) {
            slot.waker.register(cx.waker());
            if !slot.done.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        Poll::Ready(slot.value.lock().ok().and_then(|mut g| g.take()))
    }
}
