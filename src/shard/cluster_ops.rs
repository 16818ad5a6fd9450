//! The shard's side of Redis operations as values (`cluster::ops`): what
//! each operation's answer is for (`Then`), the queue of operations waiting
//! for the driver, and the handling of answers.
//!
//! Runs on every shard of a node in cluster mode; the queue is
//! `ShardCluster::ops`, drained by the shard's `cluster::ops::drive` task.
//!
//! Invariants: an operation is emitted only in cluster mode; each `Then`
//! is paired with the one `Call` that answers it (`emit` is the only way
//! in), so an answer of another kind is a bug, logged and dropped.

use super::mesh::{ConnRef, Reply};
use super::state::Shard;
use crate::cluster::ops::{Answer, Call, Marks, Ops, RedisOp};
use crate::proto::v2::ErrorCode;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What an operation's answer is for.
pub enum Then {
    /// Op 48 of connection `r`: answer it with op 49 (or an error).
    Mark {
        /// The marking connection.
        r: ConnRef,
        /// Its op 48's sequence.
        seq: u32,
        /// The room marked.
        room: Arc<str>,
    },
    /// `GET /v1/unread`, waiting on another thread; dropped unanswered
    /// when Redis cannot say.
    Unread {
        /// Where the API route waits.
        reply: Reply<Marks>,
    },
}

impl Shard {
    /// Queues `call` on `instance` for the driver, its answer for `then`.
    /// Nothing in single-node mode.
    pub(super) fn emit(&mut self, instance: usize, call: Call, then: Then) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.ops.push_back(RedisOp { instance, call, then });
        if let Some(w) = c.ops_waker.take() {
            w.wake();
        }
    }
}

impl Ops for Shard {
    type Then = Then;

    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<RedisOp<Then>> {
        let Some(c) = self.cluster.as_mut() else {
            return Poll::Pending;
        };
        match c.ops.pop_front() {
            Some(op) => Poll::Ready(op),
            None => {
                c.ops_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn answered(&mut self, then: Then, answer: Answer, now_us: u32) {
        self.set_clock(now_us);
        match (then, answer) {
            (Then::Mark { r, seq, room }, Answer::Mark(got)) => match got {
                Ok(mark) => self.mark_reply(r, seq, &room, mark),
                Err(e) => self.v2_error(r, seq, ErrorCode::Unavailable, &e.to_string()),
            },
            (Then::Unread { reply }, Answer::Unread(got)) => {
                if let Ok(marks) = got {
                    reply.send(marks);
                }
            }
            (_, answer) => tracing::error!(?answer, "a Redis answer of another kind than asked: dropped"),
        }
    }
}
