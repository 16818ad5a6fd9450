//! `ShardMsg`: every message one shard (or the API on any shard) can send
//! another through the mesh (`shard::mesh`), and what travels with them:
//! publications, who waits for a publish's offset (`Answer`), pages of
//! history and presence, who a room frame is for (`Reach`).
//!
//! Pure data, sent by any shard and handled by `Shard::handle`
//! (`shard::state`), one line per variant.

use super::addr::{ConnRef, GlobalConn};
use super::history::{Entry, Resumed};
use super::members::{Changes, Member};
use super::reply::Reply;
use crate::proto::close::CloseReason;
use crate::proto::v2::Resume;
use crate::proto::wire::{Frames, Wire};
use bytes::Bytes;
use std::sync::Arc;

/// A message published to a room, as it travels to the room's owner (which
/// gives it an offset and encodes it).
#[derive(Debug, Clone)]
pub struct Publication {
    /// Business operation code.
    pub op: u32,
    /// The publisher's message id, if it gave one (≤ `v2::MAX_ID_LEN`).
    pub id: Option<Arc<str>>,
    /// The payload.
    pub payload: Bytes,
    /// Seconds the message stays in history (the room's limits still apply).
    pub ttl: Option<u32>,
    /// Cluster mode: the pattern publish it comes from, whose every node
    /// publishes it to the rooms it knows (Redis keeps the first per room).
    pub token: Option<u64>,
}

/// What a room publish's waiter is told: what it got, or why Redis did not
/// take it (cluster mode).
pub type PublishOutcome = Result<Published, String>;

/// What a push to users got from each owner: kept (`Ok`), or why it was not
/// pushed (the durable store could not keep it).
pub type Kept = Result<(), String>;

/// What a room publish got, as its owner answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's offset in the room.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: u64,
    /// A retry of a message id already published within the dedup window:
    /// nothing was published now, and `offset` is the first one's.
    pub duplicate: bool,
}

/// A page of a room's history, for `GET /v1/history`.
#[derive(Debug)]
pub struct HistoryPage {
    /// The room's epoch.
    pub epoch: u64,
    /// Its newest offset.
    pub last: u64,
    /// Stored messages after the requested offset, oldest first.
    pub entries: Vec<Entry>,
}

/// Where a shard's members of a room go (`ShardMsg::PresenceReq`).
#[derive(Debug)]
pub enum MembersTo {
    /// The API route, waiting on another thread.
    Api(Reply<(usize, Vec<Member>)>),
    /// A shard gathering the node's members (in a cluster, the room's owner
    /// answering another node's question), as `ShardMsg::PresencePart`.
    Gather {
        /// The gathering shard.
        shard: usize,
        /// Its number for the gathering.
        id: u64,
    },
}

/// What travels between shards.
#[derive(Debug)]
pub enum ShardMsg {
    /// To a room's owner: a message published to the room.
    PublishRoom {
        /// Room key.
        room: Arc<str>,
        /// The message.
        msg: Publication,
        /// Where to say which offset it got (or, for a retry of a message
        /// id seen within `[api] dedup_window_secs`, which it got then).
        reply: Answer,
    },
    /// To every shard: a message published to a room pattern; each shard
    /// publishes it to the rooms it owns that match (`Shard::publish_pattern`).
    PublishPattern {
        /// The pattern.
        pattern: Arc<str>,
        /// The message.
        msg: Publication,
    },
    /// From a room's owner to a connection that published to the room
    /// (op 52): what the publish got.
    ClientPublished {
        /// The connection.
        conn: ConnRef,
        /// The publish request's sequence.
        seq: u32,
        /// Room key.
        room: Arc<str>,
        /// Offset, epoch, duplicate; or why it was not published.
        published: PublishOutcome,
    },
    /// To a room's owner: one more (+1) or one fewer (-1) shard has
    /// connections watching the room's presence.
    Watch {
        /// Room key.
        room: Arc<str>,
        /// +1 or -1.
        delta: i32,
    },
    /// From a room's owner to every shard: the room is (no longer) watched,
    /// so its joins and leaves are (no longer) reported.
    Watching {
        /// Room key.
        room: Arc<str>,
        /// Watched.
        on: bool,
    },
    /// To a room's owner: a shard's joins and leaves of the room in the last
    /// second.
    PresenceDelta {
        /// Room key.
        room: Arc<str>,
        /// What changed.
        changes: Changes,
    },
    /// From a room's owner to every shard: a presence event for the room's
    /// local watchers.
    PresenceFrame {
        /// Room key.
        room: Arc<str>,
        /// The op 58 frame.
        wire: Wire,
    },
    /// To every shard: its members of a room, for `GET /v1/presence`.
    PresenceReq {
        /// Room key.
        room: Arc<str>,
        /// Most members to list.
        limit: usize,
        /// Where (members on the shard, the first `limit` of them) go.
        to: MembersTo,
    },
    /// A shard's members of a room, back to the shard gathering them
    /// (`MembersTo::Gather`).
    PresencePart {
        /// The gathering's number on that shard.
        id: u64,
        /// Members on the sending shard.
        count: usize,
        /// The first of them, at most the asked limit.
        members: Vec<Member>,
    },
    /// Cluster mode, to shard 0 (which hears the node's channel): ask
    /// every node for its members of a room, for `GET /v1/presence`.
    PresenceAsk {
        /// Room key.
        room: Arc<str>,
        /// Most members to list.
        limit: usize,
        /// `None` when the room's Redis instance is unreachable.
        reply: Reply<Option<NodesPage>>,
    },
    /// From a room's owner to every shard: deliver to local members, in
    /// offset order (one producer, one FIFO queue per receiving shard).
    RoomFrame {
        /// Room key.
        room: Arc<str>,
        /// The message with its offset, encoded, shared.
        frames: Frames,
        /// Who gets it.
        reach: Reach,
    },
    /// Cluster mode, to the owner of a pattern's channel glob
    /// (`redis::room::RoomKeys::glob_of`): one more (+1) or one fewer
    /// (-1) shard has subscribers of patterns with that glob.
    GlobInterest {
        /// The glob.
        glob: Arc<str>,
        /// +1 or -1.
        delta: i32,
    },
    /// Cluster mode, to a room's owner: a message of the room heard through
    /// a pattern's glob, for this node's pattern subscribers.
    Matched {
        /// Room key.
        room: Arc<str>,
        /// The message as published.
        message: crate::redis::room::Message,
    },
    /// To a key owner: deliver to these keys (accepts-filtered by `op`).
    PushKeys {
        /// Connection keys owned by the receiving shard.
        keys: Vec<Arc<str>>,
        /// Business operation code.
        op: u32,
        /// Encoded push.
        frames: Frames,
        /// The publisher's message id: a key that had a push with it within
        /// the dedup window gets nothing.
        dedup: Option<Arc<str>>,
    },
    /// To a user owner: deliver to every connection of these users, and
    /// keep it in their inboxes (`Shard::push_mids` says when).
    PushMids {
        /// User ids owned by the receiving shard.
        mids: Vec<i64>,
        /// Business operation code.
        op: u32,
        /// Encoded push (its version-2 envelope carries `id`).
        frames: Frames,
        /// The push's process-unique id, what clients acknowledge.
        id: u64,
        /// The publisher's TTL, seconds.
        ttl: Option<u32>,
        /// The publisher's message id (see `PushKeys`).
        dedup: Option<Arc<str>>,
        /// Answered once the push is kept where it waits (the durable
        /// store: on disk), or with why it was not pushed.
        kept: Option<Reply<Kept>>,
    },
    /// From a user's owner to a connection of the user that just
    /// authenticated: the pushes waiting in the inbox, oldest first, to be
    /// queued before any later push.
    Owed {
        /// The connection.
        conn: ConnRef,
        /// (business op, frames) per waiting push.
        pushes: Vec<(u32, Frames)>,
    },
    /// To a user's owner: a version-2 connection of the user acknowledged
    /// these pushes.
    Ack {
        /// The user.
        mid: i64,
        /// Push ids.
        ids: Vec<u64>,
        /// The acknowledging connection and its request's sequence, answered
        /// (op 47) once the acknowledgement is kept.
        from: Option<(GlobalConn, u32)>,
    },
    /// From a user's owner to the connection that acknowledged: op 47.
    AckReply {
        /// The connection.
        conn: ConnRef,
        /// Its request's sequence.
        seq: u32,
        /// Ids it sent.
        count: usize,
    },
    /// To a connection's shard: deliver to exactly these connections.
    Deliver {
        /// Local connections.
        conns: Vec<ConnRef>,
        /// Only to those whose key is server-assigned (the targets were found
        /// by decoding an assigned key, not through the directory).
        assigned_only: bool,
        /// Business operation code (accepts filter).
        op: u32,
        /// Encoded push.
        frames: Frames,
    },
    /// To every shard: deliver to every local connection accepting `op`.
    All {
        /// Business operation code.
        op: u32,
        /// Encoded push.
        frames: Frames,
        /// The publisher's message id (see `PushKeys`).
        dedup: Option<Arc<str>>,
    },
    /// To a room's owner: a version-2 connection asks to join, maybe
    /// resuming (see `shard::session::resume`).
    JoinReq {
        /// Room key.
        room: Arc<str>,
        /// The connection.
        at: GlobalConn,
        /// The join request's sequence, for the reply.
        seq: u32,
        /// Where the client left off, if it resumes.
        resume: Option<Resume>,
        /// The connection's user (0: none), for its unread count.
        mid: i64,
        /// It asked for presence events (echoed in the reply).
        presence: bool,
    },
    /// From a room's owner to the joining connection's shard.
    JoinReply {
        /// The connection.
        conn: ConnRef,
        /// The join request's sequence.
        seq: u32,
        /// Room key.
        room: Arc<str>,
        /// Whether the client asked to resume.
        asked: bool,
        /// The room's position and, for a resume, what to replay.
        resumed: Resumed,
        /// It asked for presence events.
        presence: bool,
    },
    /// To a room's owner: a version-2 connection's user read the room up to
    /// `offset`.
    MarkReq {
        /// Room key.
        room: Arc<str>,
        /// The connection.
        at: GlobalConn,
        /// The request's sequence.
        seq: u32,
        /// The user.
        mid: i64,
        /// Read up to here.
        offset: u64,
    },
    /// From a room's owner to the marking connection's shard: the mark now
    /// and the room's newest offset (`None`: refused, `[history] max_marks`).
    MarkReply {
        /// The connection.
        conn: ConnRef,
        /// The request's sequence.
        seq: u32,
        /// Room key.
        room: Arc<str>,
        /// (mark, newest offset).
        mark: Option<(u64, u64)>,
    },
    /// To a room's owner: a user's read marks and the rooms' newest offsets
    /// (`None` for a room without a log), for `GET /v1/unread`.
    UnreadReq {
        /// The user.
        mid: i64,
        /// Rooms this shard owns.
        rooms: Vec<Arc<str>>,
        /// Where the answer goes: per room, (mark, newest offset).
        reply: Reply<Vec<Option<(u64, u64)>>>,
    },
    /// To a room's owner: a page of its history.
    HistoryReq {
        /// Room key.
        room: Arc<str>,
        /// Messages after this offset.
        since: u64,
        /// At most this many.
        limit: usize,
        /// Where the answer goes (`None`: the room has no log).
        reply: Reply<Option<HistoryPage>>,
    },
    /// To a key's or a user's owner: a connection authenticated.
    Register {
        /// Connection key, if this message is for the key owner (`None`:
        /// for the user owner).
        key: Option<Arc<str>>,
        /// The connection's user (0 = none): the user to register at the
        /// user's owner; at the key's owner, whose the key is.
        mid: i64,
        /// Where the connection lives.
        at: GlobalConn,
        /// It speaks protocol version 2.
        v2: bool,
    },
    /// To the same owners: that connection closed.
    Unregister {
        /// As in `Register`.
        key: Option<Arc<str>>,
        /// As in `Register`.
        mid: i64,
        /// As in `Register`.
        at: GlobalConn,
    },
    /// To a connection's shard: close it (for `Replaced`, only if it has
    /// authenticated: a key names authenticated connections only).
    Kick {
        /// The connection.
        conn: ConnRef,
        /// Why.
        reason: CloseReason,
        /// Only if its key is server-assigned (found by decoding the key).
        assigned_only: bool,
    },
    /// Cluster mode, to a key's owner: another node got a connection with
    /// this client-chosen key; this node's connection with it is replaced.
    KeyTaken {
        /// The key.
        key: Arc<str>,
    },
    /// Cluster mode, from a room's owner to every shard: the node missed
    /// messages of `room` that the room's Stream no longer holds; its
    /// version-2 members are closed as `lagged`, so that they resume and
    /// are told (version 1 has no resume: its members just miss them).
    RoomGap {
        /// Room key.
        room: Arc<str>,
    },
    /// Cluster mode, from shard 0 to every shard: the node was taken for
    /// dead on Redis instance `instance` and dropped from registry entries
    /// there; each shard adds its users and keys there again.
    Reregister {
        /// Index into `[redis] urls`.
        instance: usize,
    },
    /// Cluster mode, to a room's owner: the sending shard has its first
    /// member of the room (`Shard::first_member`).
    Interest {
        /// Room key.
        room: Arc<str>,
    },
    /// Cluster mode, from a room's owner to a joining connection's shard:
    /// the join cannot be answered (Redis unreachable).
    JoinFailed {
        /// The connection.
        conn: ConnRef,
        /// The join request's sequence.
        seq: u32,
        /// Room key.
        room: Arc<str>,
        /// Why.
        why: String,
    },
    /// Begin draining: tell every client connection to reconnect, spread
    /// over `over_ms` (`shard::conns::drain`).
    Drain {
        /// The window.
        over_ms: u64,
        /// Order and jitter (one per shard, so shards differ).
        seed: u64,
    },
    /// Stop accepting, tell every client, close, and end the shard.
    Shutdown,
    /// Run this on the shard's runtime, with the shard (the upgrade
    /// hand-off's steps, which touch what the runtime owns: acceptors,
    /// drivers, the readiness ring).
    Run(RunOnShard),
    /// End the shard at once without a word to anyone or a touch to any
    /// socket: its connections were handed to the next process, which
    /// serves them now.
    LetGo,
}

/// A shard as its runtime holds it.
pub type ShardCell = std::rc::Rc<std::cell::RefCell<super::state::Shard>>;

/// A step run on a shard's runtime (`ShardMsg::Run`).
pub struct RunOnShard(pub Box<dyn FnOnce(&ShardCell) + Send>);

impl std::fmt::Debug for RunOnShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunOnShard(..)")
    }
}

/// Who waits for a room publish's offset.
#[derive(Debug)]
pub enum Answer {
    /// Nobody.
    None,
    /// An API request.
    Api(Reply<PublishOutcome>),
    /// A version-2 connection's publish (op 52), answered with op 53.
    Client {
        /// The connection.
        at: GlobalConn,
        /// Its request's sequence.
        seq: u32,
    },
}

/// Who a `RoomFrame` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The room's members and its pattern subscribers.
    All,
    /// Its members only (in a cluster: the pattern subscribers had the
    /// message through their glob already).
    Members,
    /// Its pattern subscribers only (in a cluster: heard through their
    /// glob, the node not being subscribed to the room).
    Patterns,
}

/// The members of a room across the nodes of a cluster, as `GET
/// /v1/presence` shows them.
#[derive(Debug, Default)]
pub struct NodesPage {
    /// Members on the nodes that answered.
    pub count: usize,
    /// The first `limit` of them.
    pub members: Vec<Member>,
    /// Every node with members (as Redis counted them) answered in time.
    pub complete: bool,
}

impl NodesPage {
    /// Adds one answer: `count` members, `members` the first of them;
    /// at most `limit` stay listed.
    pub fn add(&mut self, count: usize, members: Vec<Member>, limit: usize) {
        self.count = self.count.saturating_add(count);
        let room = limit.saturating_sub(self.members.len());
        self.members.extend(members.into_iter().take(room));
    }
}

impl ShardMsg {
    /// A message that queues frames to many local connections (its handling
    /// time is the shard's fan-out time).
    pub fn is_fan_out(&self) -> bool {
        matches!(
            self,
            ShardMsg::RoomFrame { .. }
                | ShardMsg::Deliver { .. }
                | ShardMsg::All { .. }
                | ShardMsg::Owed { .. }
                | ShardMsg::PresenceFrame { .. }
        )
    }
}
