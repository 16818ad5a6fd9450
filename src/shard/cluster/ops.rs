//! The shard's side of Redis operations as values (`redis::ops`):
//! emitting them into the queue the driver takes from, and handing each
//! answer to what it is for (`state::Then`).
//!
//! Runs on every shard of a node in cluster mode; the queue is
//! `ShardCluster::ops`, drained by the shard's `redis::driver::drive` task.
//!
//! Invariants: an operation is emitted only in cluster mode; each `Then`
//! is paired with the one `Call` that answers it (`emit` is the only way
//! in), so an answer of another kind is a bug, logged and dropped.

use crate::metrics::ShardStats;
use crate::proto::v2::ErrorCode;
use crate::redis::link::RedisError;
use crate::redis::ops::{Call, Ops, RedisAnswer, RedisOp};
use crate::redis::room;
use crate::shard::cluster::state::Then;
use crate::shard::mesh::{Answer, Published};
use crate::shard::state::Shard;
use std::task::{Context, Poll};

impl Shard {
    /// Queues `call` on `instance` for the driver, its answer for `then`.
    /// Nothing in single-node mode.
    pub(in crate::shard) fn emit(&mut self, instance: usize, call: Call, then: Then) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.ops.push(RedisOp { instance, call, then });
    }
}

impl Ops for Shard {
    type Then = Then;

    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<RedisOp<Then>> {
        let Some(c) = self.cluster.as_mut() else {
            return Poll::Pending;
        };
        c.ops.poll(cx)
    }

    fn answered(&mut self, then: Then, answer: RedisAnswer, now_us: u32) {
        self.set_clock(now_us);
        if let Some(e) = answer.error() {
            let s = self.stats();
            let counter = match e {
                RedisError::Down(..) => &s.cluster_redis_down,
                RedisError::Busy(_) => &s.cluster_redis_busy,
                RedisError::Server(_) => &s.cluster_redis_error_replies,
                RedisError::Unexpected(_) => &s.cluster_redis_unexpected,
            };
            ShardStats::add(counter, 1);
        }
        match (then, answer) {
            (Then::Mark { r, seq, room }, RedisAnswer::Mark(got)) => match got {
                Ok(mark) => self.mark_reply(r, seq, &room, mark),
                Err(e) => self.v2_error(r, seq, ErrorCode::Unavailable, &e.to_string()),
            },
            (Then::Unread { reply }, RedisAnswer::Unread(got)) => {
                if let Ok(marks) = got {
                    reply.send(marks);
                }
            }
            (Then::Published { room, reply }, RedisAnswer::Publish(got)) => self.published(&room, reply, got),
            (Then::Sent { what }, RedisAnswer::Sent(got)) => {
                if let Err(e) = got {
                    ShardStats::add(&self.stats().cluster_publish_failed, 1);
                    tracing::warn!(error = %e, "{what} not sent");
                }
            }
            (Then::History { room, limit, reply }, RedisAnswer::History(got)) => {
                if let Ok(page) = got {
                    reply.send(self.history_of(&room, limit, page));
                }
            }
            (Then::Logged { what }, RedisAnswer::Done(Err(e)) | RedisAnswer::Sent(Err(e))) => {
                tracing::debug!(error = %e, "{what} not recorded");
            }
            (Then::Logged { .. }, RedisAnswer::Done(Ok(())) | RedisAnswer::Sent(Ok(_))) => {}
            (Then::Owed, RedisAnswer::Owed(got)) => self.owed_from_redis(got.unwrap_or_default()),
            (Then::Alive { instance, listening }, RedisAnswer::Alive(got)) => {
                if let Ok(gone) = got {
                    self.alive(instance, listening, gone);
                }
            }
            (Then::Queue { instance }, RedisAnswer::Queue(got)) => {
                if let Ok(queued) = got {
                    self.queue_taken(instance, queued);
                }
            }
            (Then::JoinMarked { room, j }, RedisAnswer::MarkOf(got)) => self.join_marked(room, j, got),
            (Then::JoinRange { room, j, from, through }, RedisAnswer::Range(got)) => {
                self.join_with(room, j, from, through, got)
            }
            (Then::Synced { room, gen }, RedisAnswer::Sync(got)) => self.synced(room, gen, got),
            (Then::Filled { room, gen, want, at }, RedisAnswer::Range(got)) => self.filled(room, gen, want, at, got),
            (Then::Counted { now, connects }, RedisAnswer::Counts(got)) => self.counted(now, connects, got),
            (Then::Asked { q }, RedisAnswer::Sent(got)) => self.asked(q, got.ok()),
            (Then::AskWaited { q }, RedisAnswer::Waited) => self.ask_done(q, true),
            (_, answer) => tracing::error!(?answer, "a Redis answer of another kind than asked: dropped"),
        }
    }
}

impl Shard {
    /// A room publish's answer from Redis, to whoever published.
    fn published(&mut self, room: &str, reply: Answer, got: Result<room::Published, RedisError>) {
        let got = got
            .map(|p| Published {
                offset: p.offset,
                epoch: p.epoch,
                duplicate: p.duplicate,
            })
            .map_err(|e| {
                ShardStats::add(&self.stats().cluster_publish_failed, 1);
                e.to_string()
            });
        if got.as_ref().is_ok_and(|p| p.duplicate) {
            ShardStats::add(&self.stats().publish_duplicates, 1);
        }
        match reply {
            Answer::None => {}
            Answer::Api(r) => r.send(got),
            Answer::Client { at, seq } => self.client_published(at.conn, seq, room, got),
        }
    }
}
