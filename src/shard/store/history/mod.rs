//! Room logs: for every room this shard owns, the last offset it gave out,
//! the room's epoch, and its history — the latest messages, each stored
//! once as the frames fan-out sent (shared `Bytes`, no copy).
//!
//! Pure data on the room's owner shard (sans-IO): time arrives as the
//! shard's tick (seconds), publications as already-encoded frames. The
//! owner calls `publish` for every room message, `resume`/`page` to read,
//! `expire` once a tick, and `gc` now and then. A log also holds the room's
//! read marks (per user, the offset read up to: `mark`, `unread`), which
//! live as long as the log.
//!
//! Limits, per room from its `Policy` (the longest matching prefix of
//! `[history] overrides`, else the `[history]` defaults): at most `messages`
//! entries, `bytes` of them, none older than `max_age` seconds; and across
//! the shard at most `cap` bytes of everything kept — messages, and each
//! log's own bookkeeping and read marks, counted as allocated (`cost`).
//! Past the cap, idle logs go first (no message stored, nobody in the room
//! as `in_use` tells, not touched since queued; least recently used first:
//! a client that joins ever-new rooms pushes out its own old ones, not
//! others' history), then the oldest stored message of any room. A
//! message's own TTL removes it too. A read mark never creates a log: a
//! room without one has nothing to be read up to.
//!
//! The messages are kept by the shard's one bounded store
//! (`store::bounded`: per-room FIFO, limits, cap, expiry heap, evictions);
//! a `RoomLog` is the room's slot there. Files: `mod.rs` the logs and
//! publishing, `memory.rs` idle logs and the cap, `reads.rs` resumes, marks
//! and pages, `cache.rs` cluster mode's cache of Redis offsets,
//! `restore.rs` what the durable store writes down and reads back.
//!
//! Invariants:
//! - offsets of a room are 1, 2, 3, ... in publish order; `last` is the
//!   newest; entries are in offset order;
//! - `lost_through` is the highest offset that can no longer be replayed for
//!   a reason other than its own TTL (a limit, the memory cap, history off):
//!   a client that has every offset up to `o` can resume without a gap iff
//!   `o >= lost_through` (messages that outlived their TTL are skipped, not
//!   lost — the publisher said they stop mattering);
//! - an epoch is random and non-zero, chosen when the room's log is created:
//!   a log that is dropped (server restart, idle room without history) comes
//!   back with another, so a client can always tell lost history from none.

use crate::proto::wire::Wire;
use crate::shard::cost;
use crate::shard::store::bounded::{self, Bounded, Cause, Item, Queue, Slot};
use crate::shard::store::due::Mark;
use fnv::FnvHashMap;
use std::collections::VecDeque;
use std::sync::Arc;

/// Ticks a log without history and without activity is kept.
pub const IDLE_TICKS: u32 = 600;

/// Idle-log candidates one eviction looks at, at most (a candidate in use
/// goes to the back of the queue; the cap is then met by messages).
const EVICT_SCAN: usize = 256;

/// Bytes a stored message costs beyond its frames: its place in the
/// shard's eviction order (its slot in the room's deque is the log's).
const ENTRY_COST: usize = cost::queue_slot::<(Arc<str>, u64)>();

/// Bytes a log costs before its name, deque and marks: its map slot, and
/// its places in the idle queue and the due heap.
const LOG_COST: usize = cost::map_slot::<Arc<str>, RoomLog>()
    + cost::queue_slot::<(Arc<str>, u32)>()
    + cost::queue_slot::<Mark<Arc<str>>>();

/// Bytes a read mark costs per unit of its room's map capacity: a bucket of
/// user id and offset (16 bytes and a control byte), 8 buckets for every 7
/// of capacity.
const MARK_COST: usize = (17 * 8usize).div_ceil(7);

pub use crate::config::HistoryPolicy as Policy;

/// The first tick at which a message stored during tick `now` with a TTL
/// of `ttl` seconds may leave: ticks are whole seconds, so tick `now + ttl`
/// can begin less than `ttl` seconds after the message came; one tick later
/// never does ("seconds a message stays" is a promise, docs/API.md).
pub fn ttl_end(now: u32, ttl: u32) -> u32 {
    now.saturating_add(ttl).saturating_add(1)
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its offset in the room.
    pub offset: u64,
    /// The version-2 push frame, as sent live (shared).
    pub wire: Wire,
    /// Tick it was stored at.
    pub at: u32,
    /// Tick its TTL ends (`ttl_end`; `u32::MAX`: none).
    pub ttl_end: u32,
    /// Bytes charged for it.
    pub cost: usize,
}

impl Entry {
    fn ttl_over(&self, now: u32) -> bool {
        self.ttl_end <= now
    }

    fn aged(&self, p: Policy, now: u32) -> bool {
        self.at.saturating_add(p.max_age) <= now
    }
}

impl Item for Entry {
    fn cost(&self) -> usize {
        self.cost
    }
}

/// One room's log: its slot in the shard's bounded store.
#[derive(Debug)]
pub struct RoomLog {
    /// The room's epoch (see module doc).
    pub epoch: u64,
    /// Newest offset given out (0: none yet).
    pub last: u64,
    /// Newest offset anyone was told of (answered, sent, replayed): `last`,
    /// unless the durable store holds newer ones back until they are kept
    /// (`Logs::tell`); resumes and reads see no further.
    pub told: u64,
    /// See module invariants.
    pub lost_through: u64,
    policy: Policy,
    entries: Queue<Entry>,
    /// Tick of the last publish, join or mark.
    touched: u32,
    /// Per user, the offset read up to (in this epoch).
    marks: FnvHashMap<i64, u64>,
    /// It is in `Logs::idle`.
    queued: bool,
}

impl RoomLog {
    /// Stored messages.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no message is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Slot<Arc<str>> for RoomLog {
    type Entry = Entry;
    /// A log outlives its messages: it holds the room's epoch, newest
    /// offset and read marks.
    const KEEP_EMPTY: bool = true;

    fn queue(&self) -> &Queue<Entry> {
        &self.entries
    }

    fn queue_mut(&mut self) -> &mut Queue<Entry> {
        &mut self.entries
    }

    fn own_cost(&self, name: &Arc<str>) -> usize {
        LOG_COST + cost::arc_str(name.len()) + self.entries.buffer_cost() + self.marks.capacity() * MARK_COST
    }

    fn due(&self, e: &Entry) -> u32 {
        e.at.saturating_add(self.policy.max_age).min(e.ttl_end)
    }

    /// Aged is a gap for resumes (a limit); a TTL over is not.
    fn due_cause(&self, e: &Entry, now: u32) -> Option<Cause> {
        if e.aged(self.policy, now) {
            Some(Cause::Limit)
        } else {
            e.ttl_over(now).then_some(Cause::Ttl)
        }
    }

    fn left(&mut self, e: &Entry, cause: Cause) {
        if cause != Cause::Ttl {
            self.lost_through = self.lost_through.max(e.offset);
        }
    }
}

/// The outcome of a resume request.
#[derive(Debug, Clone)]
pub struct Resumed {
    /// The room's epoch now.
    pub epoch: u64,
    /// The room's newest offset now.
    pub last: u64,
    /// The joining user's read mark (`None`: no user).
    pub mark: Option<u64>,
    /// `Ok(entries)`: every message after the client's offset, in order
    /// (expired ones skipped). `Err`: why that is not possible.
    pub replay: Result<Vec<Wire>, crate::proto::v2::Unrecovered>,
}

/// Counts of what left history and why (added to the shard's stats).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// By a room's message, byte or age limit.
    pub limit: u64,
    /// By the shard's memory cap (oldest first, any room).
    pub memory: u64,
    /// By the message's own TTL.
    pub ttl: u64,
    /// Idle logs dropped because the shard's memory was full.
    pub rooms: u64,
}

/// Whether a room has members anywhere (idle logs of rooms in use stay).
pub struct InUse(Box<dyn Fn(&str) -> bool>);

impl std::fmt::Debug for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InUse(..)")
    }
}

/// Every room log this shard owns.
#[derive(Debug)]
pub struct Logs {
    /// The logs and their messages, under this shard's share of
    /// `[history] memory`.
    rooms: Bounded<Arc<str>, RoomLog>,
    /// Logs with no message stored, each with its `touched` when queued:
    /// the memory cap's first candidates, least recently used first
    /// (re-checked when popped).
    idle: VecDeque<(Arc<str>, u32)>,
    /// Whether a room has members (`set_in_use`; none until set).
    in_use: InUse,
    /// Idle logs dropped for memory, not yet collected into the stats.
    rooms_evicted: u64,
    /// New offsets are told only through `tell` (the durable store holds
    /// them until kept).
    hold_told: bool,
}

impl Logs {
    /// Logs holding at most `cap` bytes of history.
    pub fn new(cap: usize) -> Self {
        Logs {
            rooms: Bounded::new(cap),
            idle: VecDeque::new(),
            in_use: InUse(Box::new(|_| false)),
            rooms_evicted: 0,
            hold_told: false,
        }
    }

    /// Tells the logs how to find out whether a room has members (the
    /// owner's view of every shard): an idle log of a room in use is not
    /// dropped for memory.
    pub fn set_in_use(&mut self, f: impl Fn(&str) -> bool + 'static) {
        self.in_use = InUse(Box::new(f));
    }

    /// From now on new offsets are told only through `tell` (the durable
    /// store holds them until they are kept).
    pub fn hold_told(&mut self) {
        self.hold_told = true;
    }

    /// `room`'s offsets up to `offset` may be told (they are kept).
    pub fn tell(&mut self, room: &str, offset: u64) {
        if let Some(log) = self.rooms.get_mut(room) {
            log.told = log.told.max(offset.min(log.last));
        }
    }

    /// Bytes of stored messages.
    pub fn bytes(&self) -> usize {
        self.rooms.bytes()
    }

    /// Everything counted against the cap: messages, and the logs' own
    /// bookkeeping and read marks.
    pub fn charged(&self) -> usize {
        self.rooms.charged()
    }

    /// Messages stored, all rooms.
    pub fn messages(&self) -> usize {
        self.rooms.count()
    }

    /// Rooms with a log.
    pub fn rooms(&self) -> usize {
        self.rooms.slots()
    }

    /// Every room with a log.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.rooms.keys()
    }

    /// The log of `room`, if it has one.
    pub fn get(&self, room: &str) -> Option<&RoomLog> {
        self.rooms.get(room)
    }

    /// What was evicted since the last call.
    pub fn take_evicted(&mut self) -> Evicted {
        let bounded::Evicted { limit, memory, ttl } = self.rooms.take_evicted();
        Evicted {
            limit,
            memory,
            ttl,
            rooms: std::mem::take(&mut self.rooms_evicted),
        }
    }

    /// The log of `room`, created (new epoch, no offset yet) if missing;
    /// a new one first makes room under the cap among idle logs.
    pub fn open(&mut self, room: &Arc<str>, policy: Policy, now: u32) -> &mut RoomLog {
        if !self.rooms.contains(room) {
            let log = RoomLog {
                epoch: fastrand::u64(1..),
                last: 0,
                told: 0,
                lost_through: 0,
                policy,
                entries: Queue::default(),
                touched: now,
                marks: FnvHashMap::default(),
                queued: true,
            };
            self.evict_idle(self.rooms.cap().saturating_sub(log.own_cost(room)));
            self.idle.push_back((room.clone(), now));
            self.rooms.insert(room.clone(), log);
        }
        let log = self.rooms.get_mut(room).expect("inserted just above");
        log.touched = now;
        log
    }

    /// Gives the next offset of `room` to a message and stores it as
    /// `frame(offset, epoch)` builds it; returns (offset, epoch).
    pub fn publish(
        &mut self,
        room: &Arc<str>,
        policy: Policy,
        now: u32,
        ttl: Option<u32>,
        frame: impl FnOnce(u64, u64) -> Wire,
    ) -> (u64, u64, Wire) {
        let log = self.open(room, policy, now);
        let (offset, epoch) = (log.last + 1, log.epoch);
        let wire = frame(offset, epoch);
        let end = ttl.map_or(u32::MAX, |t| ttl_end(now, t));
        self.append(room, now, offset, end, wire.clone());
        (offset, epoch, wire)
    }

    /// Stores `wire` as `room`'s message `offset` (the next one after
    /// `last`, or past a gap the caller has marked), stored at tick `at`
    /// and kept until `ttl_end` (`u32::MAX`: no TTL of its own), enforcing
    /// the room's limits and the shard's cap.
    fn append(&mut self, room: &Arc<str>, at: u32, offset: u64, ttl_end: u32, wire: Wire) {
        let log = self.rooms.get_mut(room).expect("append to an open log");
        log.last = offset;
        if !self.hold_told {
            log.told = offset;
        }
        let p = log.policy;
        if p.messages == 0 {
            log.lost_through = offset;
            return;
        }
        let cost = cost::wire(&wire) + ENTRY_COST;
        let e = Entry {
            offset,
            wire,
            at,
            ttl_end,
            cost,
        };
        self.rooms.push(room, e, p.messages, p.bytes);
        self.enforce_cap();
    }

    /// Drops every message past its room's age limit or its own TTL, as of
    /// tick `now` (from the front of each room; a message whose TTL ends
    /// while older ones stay is skipped by readers until it reaches the front).
    pub fn expire(&mut self, now: u32) {
        let idle = &mut self.idle;
        self.rooms.expire(now, |room, log| queue_idle(idle, room, log));
        // Logs opened since the last tick may have passed the cap.
        if self.charged() > self.rooms.cap() {
            self.evict_idle(self.rooms.cap());
        }
    }

    /// Drops logs with nothing stored, untouched for `IDLE_TICKS`, and whose
    /// room nobody is in.
    pub fn gc(&mut self, now: u32) {
        let in_use = &self.in_use.0;
        self.rooms.retain(|room, log| {
            !log.entries.is_empty() || now.saturating_sub(log.touched) < IDLE_TICKS || in_use(room)
        });
        // The idle queue forgets dropped logs as it meets them; keep it
        // from outgrowing what it indexes.
        if self.idle.len() > 2 * self.rooms.slots() + 1024 {
            let rooms = &self.rooms;
            self.idle.retain(|(r, _)| rooms.get(r).is_some_and(|l| l.queued));
        }
    }
}

/// Queues `room` as an idle-log candidate if it stores nothing and is not
/// queued yet.
fn queue_idle(idle: &mut VecDeque<(Arc<str>, u32)>, room: &Arc<str>, log: &mut RoomLog) {
    if log.entries.is_empty() && !log.queued {
        log.queued = true;
        idle.push_back((room.clone(), log.touched));
    }
}

mod cache;
mod memory;
mod reads;
mod restore;

#[cfg(test)]
impl Logs {
    /// What `charged` should be, counted from scratch.
    fn recount(&self) -> usize {
        let entries: usize = self
            .rooms
            .iter()
            .flat_map(|(_, l)| l.entries.iter())
            .map(|e| e.cost)
            .sum();
        let logs: usize = self.rooms.iter().map(|(r, l)| l.own_cost(r)).sum();
        entries + logs
    }
}

#[cfg(test)]
mod tests;
