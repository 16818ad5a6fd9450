//! The cross-core mesh: one lock-free inbox per shard, and which shard
//! owns a room, key or user. What travels is `shard::msg`, answers come
//! back through `shard::reply` (both re-exported here).
//!
//! Any thread may send; only the owning shard receives. An inbox is a
//! crossbeam `SegQueue` (MPMC, FIFO per producer) plus an `AtomicWaker` for the
//! shard's inbox task; waking from a foreign thread is safe in glommio (the
//! wake is queued to the owning executor). Sends never block and never fail:
//! the queue is unbounded, and what bounds it is upstream — the HTTP API
//! bounds request bodies, the TCP publisher stops reading while any inbox's
//! `backlog` is high, and every connection's outbound queue is bounded.
//!
//! Payloads travel as `bytes::Bytes`: a frame is encoded once and the same
//! allocation is queued to every connection on every shard.
//!
//! Invariants: messages from one producer to one shard arrive in send order
//! (so a register always precedes its unregister); `Shutdown` is the last
//! message a shard acts on.

use atomic_waker::AtomicWaker;
use crossbeam_queue::SegQueue;
use std::task::{Context, Poll};

pub use super::addr::{ConnRef, GlobalConn};
pub use super::msg::{
    Answer, HistoryPage, Kept, MembersTo, NodesPage, Publication, PublishOutcome, Published, Reach, ShardMsg,
};
pub use super::reply::{Reply, ReplyWait};

struct Inbox {
    queue: SegQueue<ShardMsg>,
    waker: AtomicWaker,
}

/// All shards' inboxes.
pub struct Mesh {
    inboxes: Vec<Inbox>,
}

impl Mesh {
    /// A mesh for `nr_shards` shards.
    pub fn new(nr_shards: usize) -> Self {
        Mesh {
            inboxes: (0..nr_shards)
                .map(|_| Inbox {
                    queue: SegQueue::new(),
                    waker: AtomicWaker::new(),
                })
                .collect(),
        }
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Queues `msg` for shard `to` and wakes it.
    ///
    /// # Panics
    /// If `to` is not a shard index (an internal routing bug).
    pub fn send(&self, to: usize, msg: ShardMsg) {
        let inbox = &self.inboxes[to];
        inbox.queue.push(msg);
        inbox.waker.wake();
    }

    /// Takes the next message for shard `me`, or registers the caller's waker.
    pub fn poll_recv(&self, me: usize, cx: &mut Context<'_>) -> Poll<ShardMsg> {
        let inbox = &self.inboxes[me];
        if let Some(m) = inbox.queue.pop() {
            return Poll::Ready(m);
        }
        inbox.waker.register(cx.waker());
        // A send between the pop and the register would otherwise be missed.
        match inbox.queue.pop() {
            Some(m) => Poll::Ready(m),
            None => Poll::Pending,
        }
    }

    /// Messages queued for shard `to` and not yet taken. Publishers that can
    /// outrun the fan-out (the TCP publisher) wait while this is high, which
    /// is what keeps the unbounded queue bounded.
    pub fn backlog(&self, to: usize) -> usize {
        self.inboxes[to].queue.len()
    }

    /// Takes the next message without waiting.
    pub fn try_recv(&self, me: usize) -> Option<ShardMsg> {
        self.inboxes[me].queue.pop()
    }
}

/// The owner shard of a string key (room, connection key).
pub fn owner_of_str(s: &str, nr_shards: usize) -> usize {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(s.as_bytes());
    (h.finish() % nr_shards as u64) as usize
}

/// The owner shard of a user id.
pub fn owner_of_mid(mid: i64, nr_shards: usize) -> usize {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write_i64(mid);
    (h.finish() % nr_shards as u64) as usize
}
