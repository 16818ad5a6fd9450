//! `Worklist`: connections waiting for one of the shard's I/O tasks — the
//! flusher (queues to write, `conn::flush`) or the reactor (drivers to run,
//! `conn::reactor`) — and that task's waker.
//!
//! Plain data in the shard (`Shard::dirty`, `Shard::woken`); the task is
//! woken only on the list's empty → non-empty edge, so a burst of thousands
//! of connections costs one wake. Invariant: entries may repeat or name
//! connections gone since; the task checks each.

use crate::shard::mesh::ConnRef;
use std::task::Waker;

/// Connections waiting for one task, and its waker.
#[derive(Debug, Default)]
pub struct Worklist {
    items: Vec<ConnRef>,
    task: Option<Waker>,
}

// `push` is `#[inline]` for the reason given in `outbound.rs`.
impl Worklist {
    /// Adds `r` (it may already be there) and wakes the task on the first.
    #[inline]
    pub fn push(&mut self, r: ConnRef) {
        self.items.push(r);
        if self.items.len() == 1 {
            if let Some(w) = &self.task {
                w.wake_by_ref();
            }
        }
    }

    /// Moves the list into `into` (cleared first; a connection may appear
    /// twice or be gone by now). The two vectors trade places, so neither
    /// the list nor the task's buffer is allocated again per burst.
    pub fn take_into(&mut self, into: &mut Vec<ConnRef>) {
        into.clear();
        std::mem::swap(&mut self.items, into);
    }

    /// What waits now, without taking it.
    pub fn items(&self) -> &[ConnRef] {
        &self.items
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The task to wake.
    pub fn set_task(&mut self, w: &Waker) {
        if !self.task.as_ref().is_some_and(|f| f.will_wake(w)) {
            self.task = Some(w.clone());
        }
    }
}
