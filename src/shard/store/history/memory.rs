//! Keeping room logs under the shard's share of `[history] memory`: idle
//! logs queued and dropped first (least recently used), then the oldest
//! stored messages of any room (the bounded store's `shed`).
//!
//! Pure, on the room's owner shard, as the rest of `history` (module doc
//! there: what counts and in which order things go).

use super::{queue_idle, Logs, EVICT_SCAN};
use std::sync::Arc;

impl Logs {
    /// Queues `room` as an idle-log candidate if it stores nothing and is
    /// not queued yet.
    pub(in crate::shard) fn maybe_idle(&mut self, room: &Arc<str>) {
        if let Some(log) = self.rooms.get_mut(room) {
            queue_idle(&mut self.idle, room, log);
        }
    }

    /// Drops idle logs — nothing stored, nobody in the room, not touched
    /// since queued — least recently used first, until everything counted
    /// is at most `target` (or `EVICT_SCAN` candidates were looked at).
    pub(in crate::shard) fn evict_idle(&mut self, target: usize) {
        let mut looked = 0;
        while self.charged() > target && looked < EVICT_SCAN {
            let Some((room, queued_at)) = self.idle.pop_front() else {
                return;
            };
            looked += 1;
            let Some(log) = self.rooms.get_mut(&room) else { continue };
            log.queued = false;
            if !log.entries.is_empty() {
                // Queued again when its last message goes.
                continue;
            }
            if log.touched > queued_at || (self.in_use.0)(&room) {
                log.queued = true;
                self.idle.push_back((room, log.touched));
                continue;
            }
            self.rooms.remove(&room);
            self.rooms_evicted += 1;
        }
    }

    /// Under the cap again: idle logs first, then the oldest stored
    /// messages of any room.
    pub(in crate::shard) fn enforce_cap(&mut self) {
        if self.charged() > self.rooms.cap() {
            self.evict_idle(self.rooms.cap());
        }
        let idle = &mut self.idle;
        self.rooms.shed(|room, log| queue_idle(idle, room, log));
    }
}
