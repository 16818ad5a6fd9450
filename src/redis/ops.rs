//! Redis operations as values: what a shard asks of Redis (`Call`), on
//! which instance, the continuation it wants the answer handed to
//! (`RedisOp::then`, opaque here), what Redis answered (`RedisAnswer`), and
//! the queue between the shard and the driver that runs them
//! (`redis::driver`). The shard emits operations and handles their
//! answers; it never awaits Redis itself, so its cluster behaviour can be
//! driven by a simulated Redis (`shard::sim::redis`) as well as by the
//! links.
//!
//! Pure data, used on every shard of a node with `[redis] urls`.
//!
//! ```text
//! shard: emit(RedisOp) ──poll_op──> driver::drive ──Call::run on links[instance]──> Redis
//! shard: answered(then, RedisAnswer, now_us) <──────────────────────────────────┘
//! ```
//!
//! A shard's one wait that is not Redis's, a presence question's 2 s
//! (`shard::cluster::presence`), is a `Call::Wait` too: the driver owns the
//! timer as it owns the links, and the shard never sleeps.

use super::counts::{Counts, Report};
use super::link::RedisError;
use super::push::Push;
use super::registry::{InboxLimits, Owed};
use super::room::{Dedup, Message, Position, Published, Stored};
use crate::proto::publish::Target;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// One operation: `call` on instance `instance`, its answer for `then`.
#[derive(Debug)]
pub struct RedisOp<T> {
    /// Index into `[redis] urls`.
    pub instance: usize,
    /// What to ask.
    pub call: Call,
    /// What the answer is for (the shard's).
    pub then: T,
}

/// A shard's operations waiting for the driver, and the driver's waker
/// while there are none: what `Ops::poll_op` serves from.
pub struct OpQueue<T> {
    ops: VecDeque<RedisOp<T>>,
    waker: Option<Waker>,
}

impl<T> Default for OpQueue<T> {
    fn default() -> Self {
        OpQueue {
            ops: VecDeque::new(),
            waker: None,
        }
    }
}

impl<T> OpQueue<T> {
    /// Queues `op` and wakes the driver if it waits.
    pub fn push(&mut self, op: RedisOp<T>) {
        self.ops.push_back(op);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The oldest operation, if any (a driver without a waker: the
    /// simulated-time harness).
    pub fn pop(&mut self) -> Option<RedisOp<T>> {
        self.ops.pop_front()
    }

    /// The oldest operation, or `Pending` with `cx`'s waker kept.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RedisOp<T>> {
        match self.ops.pop_front() {
            Some(op) => Poll::Ready(op),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// What to ask Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `room::publish`: a room message, its Stream bounded to `history`
    /// entries, deduplicated by `dedup`.
    Publish {
        /// The room.
        room: Arc<str>,
        /// The message (offset and epoch: Redis's to give).
        msg: Message,
        /// `[history]` messages of the room.
        history: u32,
        /// The publisher's message id or the pattern publish's token.
        dedup: Option<Dedup>,
    },
    /// `registry::to_nodes`: `body` to the channels of `nodes` (none: of
    /// every node); on the first instance.
    ToNodes {
        /// A push or pattern publish in its channel form.
        body: Bytes,
        /// Node ids.
        nodes: Vec<String>,
    },
    /// `registry::route`: a user or key push to the nodes that hold its
    /// targets, and into the inboxes of users none holds.
    Route {
        /// Users or keys, all of them on this instance.
        target: Target,
        /// The push's head (`op ttl idlen id`).
        head: String,
        /// Its payload.
        payload: Bytes,
        /// How inboxes keep it.
        inbox: InboxLimits,
    },
    /// `registry::claim`: node `node` holds client-chosen key `key`.
    Claim {
        /// The key.
        key: String,
        /// This node's id.
        node: String,
    },
    /// `registry::remove`: node `node` no longer holds registry `entry`.
    Remove {
        /// A key's or user's entry.
        entry: String,
        /// This node's id.
        node: String,
    },
    /// `registry::add`: node `node` holds `entries` (all on this
    /// instance); answers what waits for the users among them.
    Add {
        /// Key and user entries.
        entries: Vec<String>,
        /// This node's id.
        node: String,
        /// Unix seconds.
        now: u64,
    },
    /// `registry::leave`: the node's last connection of user `mid` went;
    /// `owed`, with the seconds each has left, goes to the user's inbox.
    Leave {
        /// The user.
        mid: i64,
        /// This node's id.
        node: String,
        /// What the user did not acknowledge here.
        owed: Vec<(Push, u64)>,
        /// How the inbox keeps them.
        inbox: InboxLimits,
        /// Unix seconds.
        now: u64,
    },
    /// `registry::alive`: node `node` is alive on this instance (`first`:
    /// the first, where the node list is); answers whether it had been
    /// taken for dead.
    Alive {
        /// This node's id.
        node: String,
        /// Whether this is the first instance.
        first: bool,
    },
    /// `registry::take_queue`: what was sent on node `node`'s channel while
    /// it was not subscribed.
    TakeQueue {
        /// This node's id.
        node: String,
    },
    /// `presence::watch`: node `node` watches a room's presence (sets
    /// the room's watch key `key` and tells the room's `channel`).
    Watch {
        /// The room's watch key.
        key: String,
        /// The room's channel.
        channel: String,
        /// This node's id.
        node: String,
    },
    /// `presence::publish`: a presence note on `channel`.
    Note {
        /// A room's or node's channel.
        channel: String,
        /// The note, encoded.
        note: Vec<u8>,
    },
    /// `room::mark_of`: user `mid`'s read mark in `room`.
    MarkOf {
        /// The room.
        room: Arc<str>,
        /// The reader.
        mid: i64,
    },
    /// `room::range`: `room`'s stored messages `from..=through` of epoch
    /// `epoch`.
    Range {
        /// The room.
        room: Arc<str>,
        /// The epoch they must be of.
        epoch: u64,
        /// First offset.
        from: u64,
        /// Last offset.
        through: u64,
    },
    /// `room::sync`: a subscribed room's position.
    Sync {
        /// The room.
        room: Arc<str>,
    },
    /// `counts::report`: node `node`'s counts, and the cluster's sums back.
    Counts {
        /// This node's id.
        node: String,
        /// What changed (or all of it).
        report: Report,
    },
    /// A page of `room`'s history: its position, then up to `count`
    /// stored messages after offset `since` (`room::position`,
    /// `room::range_at_most`).
    History {
        /// The room.
        room: Arc<str>,
        /// Messages after this offset.
        since: u64,
        /// Most messages to read (0: only the position).
        count: u64,
    },
    /// `room::mark`: user `mid` has read `room` up to `offset`; refused
    /// where the room holds `max_marks` marks of other users.
    Mark {
        /// The room marked.
        room: Arc<str>,
        /// The reader.
        mid: i64,
        /// Read up to here.
        offset: u64,
        /// `[history] max_marks`.
        max_marks: usize,
    },
    /// `room::unread`: user `mid`'s marks in `rooms`, all on one instance.
    Unread {
        /// The rooms asked about.
        rooms: Vec<Arc<str>>,
        /// The reader.
        mid: i64,
    },
    /// Not Redis: answered once `ms` milliseconds have passed (on no
    /// instance; the driver's timer, so that the shard reads no clock).
    Wait {
        /// How long.
        ms: u32,
    },
}

/// Marks and newest offsets, per room asked.
pub type Marks = Vec<Option<(u64, u64)>>;

/// A room's position (newest offset, epoch; `None`: no log) and stored
/// messages read after it.
pub type Page = Option<((u64, u64), Vec<Stored>)>;

/// What Redis answered, one variant per `Call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAnswer {
    /// To `Call::Publish`.
    Publish(Result<Published, RedisError>),
    /// To `Call::ToNodes`, `Route` and `Note`: how many nodes it went to
    /// (or heard it).
    Sent(Result<u64, RedisError>),
    /// To `Call::History`.
    History(Result<Page, RedisError>),
    /// To `Call::Claim`, `Remove`, `Leave` and `Watch`: done or not.
    Done(Result<(), RedisError>),
    /// To `Call::Add`: what the users were owed.
    Owed(Result<Owed, RedisError>),
    /// To `Call::Alive`: whether the node had been taken for dead.
    Alive(Result<bool, RedisError>),
    /// To `Call::TakeQueue`: the queued channel messages, oldest first.
    Queue(Result<Vec<Bytes>, RedisError>),
    /// To `Call::MarkOf`.
    MarkOf(Result<u64, RedisError>),
    /// To `Call::Range`.
    Range(Result<Vec<Stored>, RedisError>),
    /// To `Call::Sync`.
    Sync(Result<Position, RedisError>),
    /// To `Call::Counts`: the cluster's sums.
    Counts(Result<Counts, RedisError>),
    /// To `Call::Mark`: (mark, newest offset), `None` when refused.
    Mark(Result<Option<(u64, u64)>, RedisError>),
    /// To `Call::Unread`.
    Unread(Result<Marks, RedisError>),
    /// To `Call::Wait`: the time has passed.
    Waited,
}

impl RedisAnswer {
    /// Why the operation failed, if it did.
    pub fn error(&self) -> Option<&RedisError> {
        match self {
            RedisAnswer::Publish(Err(e))
            | RedisAnswer::Sent(Err(e))
            | RedisAnswer::History(Err(e))
            | RedisAnswer::Done(Err(e))
            | RedisAnswer::Owed(Err(e))
            | RedisAnswer::Alive(Err(e))
            | RedisAnswer::Queue(Err(e))
            | RedisAnswer::MarkOf(Err(e))
            | RedisAnswer::Range(Err(e))
            | RedisAnswer::Sync(Err(e))
            | RedisAnswer::Counts(Err(e))
            | RedisAnswer::Mark(Err(e))
            | RedisAnswer::Unread(Err(e)) => Some(e),
            _ => None,
        }
    }
}

impl Call {
    /// The answer of a call that could not be made.
    pub fn failed(&self, e: RedisError) -> RedisAnswer {
        match self {
            Call::Mark { .. } => RedisAnswer::Mark(Err(e)),
            Call::Unread { .. } => RedisAnswer::Unread(Err(e)),
            Call::Publish { .. } => RedisAnswer::Publish(Err(e)),
            Call::ToNodes { .. } | Call::Route { .. } => RedisAnswer::Sent(Err(e)),
            Call::History { .. } => RedisAnswer::History(Err(e)),
            Call::Claim { .. } | Call::Remove { .. } | Call::Leave { .. } | Call::Watch { .. } => {
                RedisAnswer::Done(Err(e))
            }
            Call::Note { .. } => RedisAnswer::Sent(Err(e)),
            Call::Add { .. } => RedisAnswer::Owed(Err(e)),
            Call::Alive { .. } => RedisAnswer::Alive(Err(e)),
            Call::TakeQueue { .. } => RedisAnswer::Queue(Err(e)),
            Call::MarkOf { .. } => RedisAnswer::MarkOf(Err(e)),
            Call::Range { .. } => RedisAnswer::Range(Err(e)),
            Call::Sync { .. } => RedisAnswer::Sync(Err(e)),
            Call::Counts { .. } => RedisAnswer::Counts(Err(e)),
            // A wait asks nothing of Redis, so nothing can refuse it.
            Call::Wait { .. } => RedisAnswer::Waited,
        }
    }
}

/// What `drive` runs operations for: a shard.
pub trait Ops {
    /// The shard's continuations.
    type Then: 'static;
    /// The next operation, or `Pending` with `cx`'s waker kept for when
    /// one is emitted.
    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<RedisOp<Self::Then>>;
    /// An operation's answer, at `now_us` (`metrics::clock_us`, wrapping).
    fn answered(&mut self, then: Self::Then, answer: RedisAnswer, now_us: u32);
}
