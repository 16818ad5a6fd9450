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
//! the shard at most `cap` bytes, evicting the oldest stored message of any
//! room first. A message's own TTL removes it too.
//!
//! Invariants:
//! - offsets of a room are 1, 2, 3, ... in publish order; `last` is the
//!   newest; entries are in offset order;
//! - `lost_through` is the highest offset that can no longer be replayed for
//!   a reason other than its own TTL (a limit, the memory cap, history off):
//!   a client that has every offset up to `o` can resume without a gap iff
//!   `o >= lost_through` (messages that outlived their TTL are skipped, not
//!   lost — the publisher said they stop mattering);
//! - `bytes` is the sum of the entries' `cost` over all rooms;
//! - an epoch is random and non-zero, chosen when the room's log is created:
//!   a log that is dropped (server restart, idle room without history) comes
//!   back with another, so a client can always tell lost history from none.

use crate::proto::wire::Wire;
use fnv::FnvHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

/// Bytes charged per stored message beyond its frames: the entry, its
/// deque slot, and its place in the shard's eviction order.
pub const ENTRY_OVERHEAD: usize = 96;
/// Ticks a log without history and without activity is kept.
pub const IDLE_TICKS: u32 = 600;

pub use crate::config::HistoryPolicy as Policy;

/// One stored message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its offset in the room.
    pub offset: u64,
    /// The version-2 push frame, as sent live (shared).
    pub wire: Wire,
    /// Tick it was stored at.
    pub at: u32,
    /// Tick its TTL ends (`u32::MAX`: none).
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

    /// The tick this entry is due to leave (age limit or TTL).
    fn due(&self, p: Policy) -> u32 {
        self.at.saturating_add(p.max_age).min(self.ttl_end)
    }
}

/// Drops the due messages at the front of `log` (aged: a gap for resumes;
/// TTL over: not), keeping the byte counts.
fn trim(log: &mut RoomLog, now: u32, total: &mut (usize, usize), evicted: &mut Evicted) {
    while let Some(e) = log.entries.front() {
        let aged = e.aged(log.policy, now);
        if !aged && !e.ttl_over(now) {
            return;
        }
        let e = log.entries.pop_front().expect("front checked");
        log.bytes -= e.cost;
        total.0 -= e.cost;
        total.1 -= 1;
        if aged {
            log.lost_through = log.lost_through.max(e.offset);
            evicted.limit += 1;
        } else {
            evicted.ttl += 1;
        }
    }
}

/// One room's log.
#[derive(Debug)]
pub struct RoomLog {
    /// The room's epoch (see module doc).
    pub epoch: u64,
    /// Newest offset given out (0: none yet).
    pub last: u64,
    /// See module invariants.
    pub lost_through: u64,
    policy: Policy,
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Tick of the last publish, join or mark.
    touched: u32,
    /// Per user, the offset read up to (in this epoch).
    marks: FnvHashMap<i64, u64>,
    /// The earliest tick this room has a mark for in `due`.
    scheduled: u32,
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

    /// When the front changed: the tick to mark in `due` if the room has
    /// no mark that early yet.
    fn reschedule(&mut self) -> Option<u32> {
        let when = self.entries.front()?.due(self.policy);
        (when < self.scheduled).then(|| {
            self.scheduled = when;
            when
        })
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
}

/// Every room log this shard owns.
#[derive(Debug)]
pub struct Logs {
    rooms: FnvHashMap<Arc<str>, RoomLog>,
    /// Sum of every entry's cost.
    bytes: usize,
    /// Entries stored, all rooms.
    count: usize,
    /// This shard's share of `[history] memory`.
    cap: usize,
    /// Stored messages across rooms in the order they were stored: the
    /// memory cap evicts from the front. Entries already gone are skipped.
    order: VecDeque<(Arc<str>, u64)>,
    /// (tick, room) at which a room's oldest entry may be due; at most a
    /// few per room, re-checked when popped.
    due: BinaryHeap<Reverse<(u32, Arc<str>)>>,
    /// Evictions not yet collected into the stats.
    evicted: Evicted,
}

impl Logs {
    /// Logs holding at most `cap` bytes of history.
    pub fn new(cap: usize) -> Self {
        Logs {
            rooms: FnvHashMap::default(),
            bytes: 0,
            count: 0,
            cap,
            order: VecDeque::new(),
            due: BinaryHeap::new(),
            evicted: Evicted::default(),
        }
    }

    /// Bytes of history stored.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages stored, all rooms.
    pub fn messages(&self) -> usize {
        self.count
    }

    /// Rooms with a log.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
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
        std::mem::take(&mut self.evicted)
    }

    /// The log of `room`, created (new epoch, no offset yet) if missing.
    pub fn open(&mut self, room: &Arc<str>, policy: Policy, now: u32) -> &mut RoomLog {
        let log = self.rooms.entry(room.clone()).or_insert_with(|| RoomLog {
            epoch: fastrand::u64(1..),
            last: 0,
            lost_through: 0,
            policy,
            entries: VecDeque::new(),
            bytes: 0,
            touched: now,
            marks: FnvHashMap::default(),
            scheduled: u32::MAX,
        });
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
        self.append(room, now, offset, ttl, wire.clone());
        (offset, epoch, wire)
    }

    /// Cluster mode: a message of `room` with the offset and epoch Redis
    /// gave it, as this node's cache keeps it. Returns false (and stores
    /// nothing) for an offset the cache has already passed. Another epoch
    /// starts the log over (the room's history was lost in Redis); an
    /// offset past the next one leaves a gap no resume is served across.
    pub fn store(
        &mut self,
        room: &Arc<str>,
        policy: Policy,
        now: u32,
        (offset, epoch): (u64, u64),
        ttl: Option<u32>,
        wire: Wire,
    ) -> bool {
        let log = self.open_at(room, policy, now, epoch);
        if log.epoch != epoch {
            self.restart(room, epoch, offset - 1);
        }
        let log = self.rooms.get_mut(room).expect("opened just above");
        if offset <= log.last {
            return false;
        }
        if offset > log.last.saturating_add(1) {
            log.lost_through = offset - 1;
        }
        self.append(room, now, offset, ttl, wire);
        true
    }

    /// Cluster mode: Redis says `room` is at `offset` in `epoch` (as of a
    /// moment after this node's subscription to it was confirmed). A cache
    /// of another epoch, or one that missed messages, starts over at
    /// `offset`: the node can serve resumes from there on (older offsets
    /// are read from Redis).
    pub fn sync(&mut self, room: &Arc<str>, policy: Policy, now: u32, epoch: u64, offset: u64) {
        let log = self.open_at(room, policy, now, epoch);
        if log.epoch != epoch || log.last != offset {
            self.restart(room, epoch, offset);
        }
    }

    /// The log of `room`, created with `epoch` and nothing known before
    /// now if missing.
    fn open_at(&mut self, room: &Arc<str>, policy: Policy, now: u32, epoch: u64) -> &mut RoomLog {
        if !self.rooms.contains_key(room) {
            let log = self.open(room, policy, now);
            (log.epoch, log.last, log.lost_through) = (epoch, 0, 0);
        }
        self.open(room, policy, now)
    }

    /// Empties `room`'s log (which exists) and sets it at `offset` of
    /// `epoch`, nothing older replayable; its read marks go with another
    /// epoch.
    fn restart(&mut self, room: &Arc<str>, epoch: u64, offset: u64) {
        let log = self.rooms.get_mut(room).expect("restart of an open log");
        for e in log.entries.drain(..) {
            self.bytes -= e.cost;
            self.count -= 1;
        }
        log.bytes = 0;
        if log.epoch != epoch {
            log.marks.clear();
        }
        (log.epoch, log.last, log.lost_through) = (epoch, offset, offset);
    }

    /// Stores `wire` as `room`'s message `offset` (the next one after
    /// `last`, or past a gap the caller has marked), enforcing the room's
    /// limits and the shard's cap.
    fn append(&mut self, room: &Arc<str>, now: u32, offset: u64, ttl: Option<u32>, wire: Wire) {
        let log = self.rooms.get_mut(room).expect("append to an open log");
        log.last = offset;
        let p = log.policy;
        if p.messages == 0 {
            log.lost_through = offset;
            return;
        }
        let cost = wire.tcp.len() + wire.ws.len() + ENTRY_OVERHEAD;
        log.entries.push_back(Entry {
            offset,
            wire,
            at: now,
            ttl_end: ttl.map_or(u32::MAX, |t| now.saturating_add(t)),
            cost,
        });
        log.bytes += cost;
        self.bytes += cost;
        self.count += 1;
        let mut limit = 0;
        while log.entries.len() > p.messages || log.bytes > p.bytes {
            let e = log.entries.pop_front().expect("over a limit, so not empty");
            log.bytes -= e.cost;
            self.bytes -= e.cost;
            self.count -= 1;
            log.lost_through = log.lost_through.max(e.offset);
            limit += 1;
        }
        self.evicted.limit += limit;
        self.order.push_back((room.clone(), offset));
        if let Some(when) = log.reschedule() {
            self.due.push(Reverse((when, room.clone())));
        }
        self.enforce_cap();
    }

    /// Evicts the oldest stored messages of any room until under the cap.
    fn enforce_cap(&mut self) {
        while self.bytes > self.cap {
            let Some((room, offset)) = self.order.pop_front() else {
                return;
            };
            let Some(log) = self.rooms.get_mut(&room) else { continue };
            if log.entries.front().is_some_and(|e| e.offset == offset) {
                let e = log.entries.pop_front().expect("front checked");
                log.bytes -= e.cost;
                self.bytes -= e.cost;
                self.count -= 1;
                log.lost_through = log.lost_through.max(e.offset);
                self.evicted.memory += 1;
                if let Some(when) = log.reschedule() {
                    self.due.push(Reverse((when, room)));
                }
            }
        }
        // Keep the order queue from outgrowing what it indexes.
        if self.order.len() > 2 * self.messages_hint() + 1024 {
            let rooms = &self.rooms;
            self.order.retain(|(r, o)| {
                rooms
                    .get(r)
                    .and_then(|l| l.entries.front())
                    .is_some_and(|f| f.offset <= *o)
            });
        }
    }

    fn messages_hint(&self) -> usize {
        // Cheap bound: bytes / smallest possible cost.
        self.bytes / ENTRY_OVERHEAD
    }

    /// Drops every message past its room's age limit or its own TTL, as of
    /// tick `now` (from the front of each room; a message whose TTL ends
    /// while older ones stay is skipped by readers until it reaches the front).
    pub fn expire(&mut self, now: u32) {
        while let Some(Reverse((when, _))) = self.due.peek() {
            if *when > now {
                return;
            }
            let Reverse((when, room)) = self.due.pop().expect("peeked");
            let Some(log) = self.rooms.get_mut(&room) else { continue };
            if when == log.scheduled {
                log.scheduled = u32::MAX;
            }
            let mut total = (self.bytes, self.count);
            trim(log, now, &mut total, &mut self.evicted);
            (self.bytes, self.count) = total;
            if let Some(when) = log.reschedule() {
                self.due.push(Reverse((when, room)));
            }
        }
    }

    /// A client of `room` has every message up to `resume.offset` of
    /// `resume.epoch`: what it missed, or why that cannot be told; without
    /// `resume`, just the room's position. Creates the log if missing (so
    /// the epoch the answer names stays).
    pub fn resume(
        &mut self,
        room: &Arc<str>,
        policy: Policy,
        now: u32,
        resume: Option<crate::proto::v2::Resume>,
        mid: i64,
    ) -> Resumed {
        use crate::proto::v2::Unrecovered;
        self.open(room, policy, now);
        let log = self.rooms.get_mut(room).expect("opened just above");
        // What is due but not yet swept is gone already.
        let mut total = (self.bytes, self.count);
        trim(log, now, &mut total, &mut self.evicted);
        (self.bytes, self.count) = total;
        let (epoch, last) = (log.epoch, log.last);
        let mark = (mid != 0).then(|| log.marks.get(&mid).copied().unwrap_or(0));
        let replay = match resume {
            None => Ok(Vec::new()),
            Some(r) if r.epoch != epoch => Err(Unrecovered::EpochChanged),
            Some(r) if r.offset > last => Err(Unrecovered::OffsetAhead),
            Some(r) if r.offset < log.lost_through => Err(Unrecovered::HistoryGone),
            Some(r) => Ok(log
                .entries
                .iter()
                .filter(|e| e.offset > r.offset && !e.ttl_over(now))
                .map(|e| e.wire.clone())
                .collect()),
        };
        Resumed {
            epoch,
            last,
            mark,
            replay,
        }
    }

    /// User `mid` has read `room` up to `offset` (clamped to the room's
    /// newest; a mark never moves back). Returns (mark, newest offset), or
    /// `None` when the room already has `max_marks` marks of other users.
    pub fn mark(
        &mut self,
        room: &Arc<str>,
        policy: Policy,
        now: u32,
        mid: i64,
        offset: u64,
        max_marks: usize,
    ) -> Option<(u64, u64)> {
        self.open(room, policy, now);
        let log = self.rooms.get_mut(room).expect("opened just above");
        if log.marks.len() >= max_marks && !log.marks.contains_key(&mid) {
            return None;
        }
        let m = log.marks.entry(mid).or_default();
        *m = (*m).max(offset.min(log.last));
        Some((*m, log.last))
    }

    /// `mid`'s read mark in `room` and the room's newest offset; `None` if
    /// the room has no log.
    pub fn unread(&self, room: &str, mid: i64) -> Option<(u64, u64)> {
        let log = self.rooms.get(room)?;
        Some((log.marks.get(&mid).copied().unwrap_or(0), log.last))
    }

    /// Up to `limit` stored messages of `room` after `since`, oldest first,
    /// with the room's epoch and newest offset; `None` if the room has no log.
    pub fn page(&self, room: &str, since: u64, limit: usize, now: u32) -> Option<(u64, u64, Vec<Entry>)> {
        let log = self.rooms.get(room)?;
        let entries = log
            .entries
            .iter()
            .filter(|e| e.offset > since && !e.ttl_over(now) && !e.aged(log.policy, now))
            .take(limit)
            .cloned()
            .collect();
        Some((log.epoch, log.last, entries))
    }

    /// Drops logs with nothing stored, untouched for `IDLE_TICKS`, and whose
    /// room `in_use` says nobody is in.
    pub fn gc(&mut self, now: u32, in_use: impl Fn(&str) -> bool) {
        self.rooms.retain(|room, log| {
            !log.entries.is_empty() || now.saturating_sub(log.touched) < IDLE_TICKS || in_use(room)
        });
    }
}

#[cfg(test)]
mod tests;
