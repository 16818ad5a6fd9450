//! What the durable store reads back into room logs at start (`restore*`)
//! and what its checkpoints write down (`RoomLog::entries_after`, a room
//! over several turns, and `RoomLog::marks`).
//!
//! Pure, on the room's owner shard, as the rest of `history`. Replay may
//! meet a record twice (a checkpoint repeats what the log around it says):
//! restoring is idempotent, and an offset the log has passed is skipped.

use super::{Entry, Logs, Policy, RoomLog};
use crate::proto::wire::Wire;
use std::sync::Arc;

impl Logs {
    /// A room's position as written down: `room` is at `last` in `epoch`,
    /// nothing up to `lost_through` replayable. Another epoch than the
    /// log's starts it over (the room's log was dropped and made again).
    pub fn restore_head(
        &mut self,
        room: &Arc<str>,
        policy: Policy,
        now: u32,
        epoch: u64,
        last: u64,
        lost_through: u64,
    ) {
        let log = self.open_at(room, policy, now, epoch);
        if log.epoch != epoch {
            self.restart(room, epoch, last);
        }
        let log = self.rooms.get_mut(room).expect("opened just above");
        log.last = log.last.max(last);
        log.told = log.last;
        log.lost_through = log.lost_through.max(lost_through).min(log.last);
    }

    /// A room message as written down: `wire` is `room`'s message `offset`
    /// of `epoch`, stored at tick `at`, kept until tick `ttl_end`. Returns
    /// false (and stores nothing) for an offset the log has passed. A
    /// message due by now only moves the log's position (past its age
    /// limit it counts as lost for resumes; past its TTL, as skipped).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        room: &Arc<str>,
        policy: Policy,
        now: u32,
        at: u32,
        ttl_end: u32,
        (offset, epoch): (u64, u64),
        wire: Wire,
    ) -> bool {
        if !self.place(room, policy, now, (offset, epoch)) {
            return false;
        }
        let log = self.rooms.get_mut(room).expect("placed just above");
        let aged = at.saturating_add(policy.max_age) <= now;
        if policy.messages == 0 || aged {
            (log.last, log.told, log.lost_through) = (offset, offset, offset);
        } else if ttl_end <= now {
            (log.last, log.told) = (offset, offset);
        } else {
            self.append(room, at, offset, ttl_end, wire);
            self.tell(room, offset);
        }
        true
    }

    /// Every log, for a checkpoint.
    pub fn each(&self) -> impl Iterator<Item = (&Arc<str>, &RoomLog)> {
        self.rooms.iter()
    }
}

impl RoomLog {
    /// Its stored messages, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Its stored messages after `offset`, oldest first.
    pub fn entries_after(&self, offset: u64) -> impl Iterator<Item = &Entry> {
        self.entries.after(move |e| e.offset <= offset)
    }

    /// Its read marks: (user, offset read up to).
    pub fn marks(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.marks.iter().map(|(&m, &o)| (m, o))
    }
}
