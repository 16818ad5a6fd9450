//! Cluster mode: a room log as the node's cache of what Redis holds — the
//! offsets and epoch Redis gave, the messages since this node subscribed,
//! and where the cache starts (older offsets are read from Redis).
//!
//! Pure, on the room's owner shard, as the rest of `history`.

use super::{Logs, Policy, RoomLog};
use crate::proto::wire::Wire;
use std::sync::Arc;

impl Logs {
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
        if !self.place(room, policy, now, (offset, epoch)) {
            return false;
        }
        self.append(
            room,
            now,
            offset,
            ttl.map_or(u32::MAX, |t| super::ttl_end(now, t)),
            wire,
        );
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

    /// Makes way in `room`'s log for message `offset` of `epoch` given from
    /// outside (Redis, or the durable store's replay): another epoch starts
    /// the log over; an offset past the next one leaves a gap no resume is
    /// served across. False for an offset the log has already passed.
    pub(super) fn place(&mut self, room: &Arc<str>, policy: Policy, now: u32, (offset, epoch): (u64, u64)) -> bool {
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
        true
    }

    /// The log of `room`, created with `epoch` and nothing known before
    /// now if missing.
    pub(super) fn open_at(&mut self, room: &Arc<str>, policy: Policy, now: u32, epoch: u64) -> &mut RoomLog {
        if !self.rooms.contains(room) {
            let log = self.open(room, policy, now);
            (log.epoch, log.last, log.told, log.lost_through) = (epoch, 0, 0, 0);
        }
        self.open(room, policy, now)
    }

    /// Empties `room`'s log (which exists) and sets it at `offset` of
    /// `epoch`, nothing older replayable; its read marks go with another
    /// epoch.
    pub(super) fn restart(&mut self, room: &Arc<str>, epoch: u64, offset: u64) {
        self.rooms.clear(room);
        let log = self.rooms.get_mut(room).expect("restart of an open log");
        if log.epoch != epoch {
            log.marks.clear();
        }
        (log.epoch, log.last, log.told, log.lost_through) = (epoch, offset, offset, offset);
        self.maybe_idle(room);
    }
}
