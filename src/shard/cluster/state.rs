//! A shard's cluster state, as data: its links and subscribers to the
//! Redis instances, where each room it owns stands in its subscription
//! (`RoomSync`), the waiting version-2 joins, shard 0's open presence
//! questions to the other nodes (`Ask`), the bookkeeping of the counts
//! report and the registry, and the Redis operations emitted and what each
//! answer is for (`Then`, handled in `shard::cluster::ops`). What the shard
//! does with it is the rest of
//! `shard::cluster`; this file is apart so that `Shard` can hold it without
//! the two depending on each other.
//!
//! Owned by one shard (`Shard::cluster`, `None` on a single node); never
//! shared across threads.

use crate::proto::v2::Resume;
use crate::redis::link::Link;
use crate::redis::ops::{Marks, OpQueue};
use crate::redis::registry;
use crate::redis::room::Message;
use crate::redis::subscriber::Subscriber;
use crate::redis::{instance_of, RedisUrl};
use crate::shard::mesh::{Answer, ConnRef, GlobalConn, HistoryPage, NodesPage, Reply};
use fnv::FnvHashMap;
use std::sync::Arc;

/// Seconds a room stays subscribed after the node's last member left (and
/// the shards' published views, a second late, say so): a member coming
/// back soon finds it live.
pub(in crate::shard) const LINGER_SECS: u32 = 5;
/// Most channel messages kept for a room while its position is read.
pub(in crate::shard) const MAX_HELD: usize = 65_536;
/// Seconds a pattern publish's token is remembered per room.
pub(in crate::shard) const PATTERN_DEDUP_SECS: u32 = 60;

/// One of this node's questions, on shard 0, gathering answers.
pub struct Ask {
    /// Most members listed.
    pub(in crate::shard) limit: usize,
    /// How many nodes heard the question (unknown until PUBLISH answers).
    pub(in crate::shard) want: Option<u64>,
    /// Answers so far, and what they hold.
    pub(in crate::shard) got: u64,
    pub(in crate::shard) page: NodesPage,
    pub(in crate::shard) reply: Reply<Option<NodesPage>>,
}

/// Another node's question, on the room's owner, gathering the members of
/// this node's shards (`ShardMsg::PresencePart`) before it is answered.
pub struct Gather {
    /// The asking node's id (its channel gets the answer).
    pub(in crate::shard) asker: String,
    /// The asker's number for the question.
    pub(in crate::shard) q: u64,
    /// Most members listed.
    pub(in crate::shard) limit: usize,
    /// The room's instance (where the answer is published).
    pub(in crate::shard) instance: usize,
    /// Shards yet to answer.
    pub(in crate::shard) left: usize,
    /// What the shards that answered hold.
    pub(in crate::shard) page: NodesPage,
}

/// A shard's cluster state (see the module doc).
pub struct ShardCluster {
    /// Per instance, the shard's command link.
    pub(in crate::shard) links: Vec<Link>,
    /// Per instance, the shard's pub/sub connection.
    pub(in crate::shard) subs: Vec<Subscriber>,
    /// Rooms this shard owns with members on this node.
    pub(in crate::shard) rooms: FnvHashMap<Arc<str>, RoomSync>,
    /// Shard 0: the node's room counts as last reported to Redis.
    pub(in crate::shard) reported: FnvHashMap<Arc<str>, u64>,
    /// Shard 0: the first link's connects as of the last report (another
    /// value: Redis may have lost the node's counts, report them whole).
    pub(in crate::shard) reported_connects: u64,
    /// Shard 0: a report is on its way.
    pub(in crate::shard) reporting: bool,
    /// This node's id in the registry (`redis::registry::node_id`).
    pub(in crate::shard) node: String,
    /// Shard 0, per instance: the node's queue there is to be taken
    /// (`redis::registry::take_queue`): its channel was subscribed again
    /// and the queue not yet read.
    pub(in crate::shard) queued: Vec<bool>,
    /// Shard 0: the node's channel on the first instance is subscribed (so
    /// the node has joined once it is listed among the nodes there).
    pub(in crate::shard) listening: bool,
    /// This node's channel (`redis::registry::channel`), made once: every
    /// channel message is compared with it.
    pub(in crate::shard) node_channel: String,
    /// Per instance, the link's connects as of this shard's last
    /// registration of its users and keys there.
    pub(in crate::shard) registered: Vec<u64>,
    /// Shard 0: this node's presence questions waiting for answers
    /// (`shard::cluster::presence`), by number.
    pub(in crate::shard) asks: FnvHashMap<u64, Ask>,
    /// Shard 0: the last question's number.
    pub(in crate::shard) next_ask: u64,
    /// Other nodes' questions about rooms this shard owns, gathering the
    /// shards' members, by number.
    pub(in crate::shard) gathers: FnvHashMap<u64, Gather>,
    /// The last gathering's number.
    pub(in crate::shard) next_gather: u64,
    /// This shard's pattern subscriptions, by their channel glob
    /// (`shard::cluster::patterns`).
    pub(in crate::shard) local_globs: FnvHashMap<Arc<str>, u32>,
    /// Globs this shard owns: how many shards have subscriptions with them.
    pub(in crate::shard) globs: FnvHashMap<Arc<str>, u32>,
    /// Rooms this shard owns whose messages reached the node's pattern
    /// subscribers through a glob: the last such message.
    pub(in crate::shard) matched: FnvHashMap<Arc<str>, Seen>,
    /// Operations emitted and not yet taken by the driver
    /// (`shard::cluster::ops`).
    pub(in crate::shard) ops: OpQueue<Then>,
}

/// The last message of a room delivered to pattern subscribers through a
/// glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::shard) struct Seen {
    pub epoch: u64,
    pub offset: u64,
    /// Tick it came at (forgotten after `MATCHED_SECS`).
    pub at: u32,
}

/// Where a room's subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::shard) enum State {
    /// SUBSCRIBE sent (or to be sent when the subscriber reconnects).
    Subscribing,
    /// Subscribed; its position is being read.
    Syncing,
    /// The read failed at this tick; tried again at the next sweep.
    Failed(u32),
    /// Every message past the position arrives on the channel.
    Live,
}

/// A room this shard owns with members on this node: its subscription.
pub(in crate::shard) struct RoomSync {
    pub(in crate::shard) state: State,
    /// Version-2 joins waiting for `Live`.
    pub(in crate::shard) joins: Vec<Join>,
    /// Channel messages that arrived while `Syncing`.
    pub(in crate::shard) held: Vec<Message>,
    /// Tick of the last sign of a member (a join, a first member on a
    /// shard).
    pub(in crate::shard) touched: u32,
    /// Which read of the position is the current one (an answer to an
    /// earlier one, overtaken by a lost subscription, is ignored).
    pub(in crate::shard) sync: u32,
}

/// A version-2 join as its owner received it.
#[derive(Debug, Clone)]
pub struct Join {
    /// The joining connection.
    pub at: GlobalConn,
    /// Its request's sequence.
    pub seq: u32,
    /// Where it left off, if it resumes.
    pub resume: Option<Resume>,
    /// Its user (0: none).
    pub mid: i64,
    /// It asked for presence events.
    pub presence: bool,
    /// The user's read mark was read from Redis into the node's log.
    pub marked: bool,
}

impl ShardCluster {
    /// The links and subscribers of shard `id` to `urls` (not connected:
    /// `connections` gives what to run). Shard 0 also
    /// listens on the node's channel for pattern publishes and for key,
    /// user and everyone pushes.
    pub fn new(id: usize, urls: &[RedisUrl], node_tag: u64) -> ShardCluster {
        let subs: Vec<Subscriber> = urls.iter().cloned().map(Subscriber::new).collect();
        let node = registry::node_id(node_tag);
        let node_channel = registry::channel(&node);
        if id == 0 {
            // The route script publishes on the instance of the entries.
            for s in &subs {
                s.subscribe(&node_channel);
            }
        }
        ShardCluster {
            links: urls.iter().cloned().map(Link::new).collect(),
            subs,
            rooms: FnvHashMap::default(),
            reported: FnvHashMap::default(),
            reported_connects: 0,
            reporting: false,
            node,
            node_channel,
            registered: vec![0; urls.len()],
            queued: vec![false; urls.len()],
            listening: false,
            asks: FnvHashMap::default(),
            next_ask: 0,
            gathers: FnvHashMap::default(),
            next_gather: 0,
            local_globs: FnvHashMap::default(),
            globs: FnvHashMap::default(),
            matched: FnvHashMap::default(),
            ops: OpQueue::default(),
        }
    }

    /// The links and subscribers, per instance, for their tasks to run.
    pub fn connections(&self) -> (Vec<Link>, Vec<Subscriber>) {
        (self.links.clone(), self.subs.clone())
    }

    /// The link to the instance that holds `name`'s keys.
    pub(in crate::shard) fn link_for(&self, name: &str) -> Link {
        self.links[instance_of(name.as_bytes(), self.links.len())].clone()
    }
}

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
    /// Shard 0: question `q` was published; the answer is how many nodes
    /// heard it.
    Asked {
        /// The question.
        q: u64,
    },
    /// Shard 0: question `q` has waited long enough.
    AskWaited {
        /// The question.
        q: u64,
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
