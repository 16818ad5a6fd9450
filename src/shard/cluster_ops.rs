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

use super::cluster::room_frames;
use super::cluster_state::Join;
use super::history::Entry;
use super::mesh::{Answer, ConnRef, HistoryPage, Published, Reply};
use super::state::Shard;
use crate::cluster::link::RedisError;
use crate::cluster::ops::{Call, Marks, Ops, Page, RedisAnswer, RedisOp};
use crate::cluster::room;
use crate::metrics::ShardStats;
use crate::proto::v2::ErrorCode;
use fnv::FnvHashMap;
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
    /// A room publish: tell whoever published.
    Published {
        /// The room.
        room: Arc<str>,
        /// The publisher (API, client, or nobody to tell).
        reply: Answer,
    },
    /// A push or pattern publish sent on: only a failure is news.
    Sent {
        /// What was sent, for the log.
        what: &'static str,
    },
    /// A registry change, a user's leave or a presence note: a failure is
    /// only logged (a lost add is mended by the next registration, a lost
    /// remove costs a push the node does not deliver, a lost note a
    /// second of presence changes).
    Logged {
        /// What was asked, for the log.
        what: &'static str,
    },
    /// Registry entries added: push what their users were owed to their
    /// connections here, oldest first.
    Owed,
    /// Shard 0: the node marked alive on instance `instance`; `listening`:
    /// its channel there was subscribed when asked.
    Alive {
        /// Index into `[redis] urls`.
        instance: usize,
        /// The node's channel was subscribed.
        listening: bool,
    },
    /// Shard 0: the node's queue on instance `instance`, to handle as heard.
    Queue {
        /// Index into `[redis] urls`.
        instance: usize,
    },
    /// A version-2 join waiting for its user's read mark in the room.
    JoinMarked {
        /// The room.
        room: Arc<str>,
        /// The join.
        j: Join,
    },
    /// A resuming join waiting for the part of the room its cache lacks,
    /// `from..=through`.
    JoinRange {
        /// The room.
        room: Arc<str>,
        /// The join.
        j: Join,
        /// First offset read.
        from: u64,
        /// Last offset read.
        through: u64,
    },
    /// A subscribed room's position, read for sync generation `gen`.
    Synced {
        /// The room.
        room: Arc<str>,
        /// The sync it answers (a later one makes it stale).
        gen: u32,
    },
    /// What a room's members missed while the node was not subscribed.
    Filled {
        /// The room.
        room: Arc<str>,
        /// The sync it belongs to.
        gen: u32,
        /// The first offset missed, and the first read (history reaches
        /// no further back).
        want: (u64, u64),
        /// The position the sync read: (epoch, offset).
        at: (u64, u64),
    },
    /// Shard 0: the node's counts report, with what it reported.
    Counted {
        /// The room counts reported.
        now: FnvHashMap<Arc<str>, u64>,
        /// The first link's connects when reported.
        connects: u64,
    },
    /// `GET /v1/history`: the page, filtered by the room's policy now.
    History {
        /// The room.
        room: Arc<str>,
        /// Most messages in the page.
        limit: usize,
        /// Where the API route waits; dropped unanswered when Redis cannot
        /// say.
        reply: Reply<Option<HistoryPage>>,
    },
}

impl Shard {
    /// Queues `call` on `instance` for the driver, its answer for `then`.
    /// Nothing in single-node mode.
    pub(super) fn emit(&mut self, instance: usize, call: Call, then: Then) {
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
            Answer::Client { at, seq } => match got {
                Ok(p) => self.client_published(at.conn, seq, room, p),
                Err(e) => self.v2_error(at.conn, seq, ErrorCode::Unavailable, &e),
            },
        }
    }

    /// A history page read from Redis, without what is past its TTL or the
    /// room's age limit, at most `limit` messages.
    fn history_of(&self, room: &str, limit: usize, page: Page) -> Option<HistoryPage> {
        let ((last, epoch), stored) = page?;
        let policy = self.cfg().history.policy(room);
        let (unix, tick) = (self.unix_now, self.wheel.now());
        let entries = stored
            .into_iter()
            .filter(|s| s.at.saturating_add(u64::from(policy.max_age)) > unix)
            .filter(|s| !s.ttl_over(unix))
            .take(limit)
            .map(|s| {
                let wire = room_frames(room, &s.msg).v2;
                Entry {
                    offset: s.msg.offset,
                    cost: wire.tcp.len() + wire.ws.len(),
                    wire,
                    at: tick,
                    ttl_end: u32::MAX,
                }
            })
            .collect();
        Some(HistoryPage { epoch, last, entries })
    }
}
