//! Keeping room logs under the shard's share of `[history] memory`: each
//! log's own cost kept current, idle logs queued and dropped first (least
//! recently used), then the oldest stored messages of any room.
//!
//! Pure, on the room's owner shard, as the rest of `history` (module doc
//! there: what counts and in which order things go).

use super::{Logs, EVICT_SCAN};
use crate::shard::store::due;
use std::sync::Arc;

impl Logs {
    /// Recounts `room`'s own cost after its deque or marks changed.
    pub(in crate::shard) fn recharge(&mut self, room: &str) {
        if let Some(log) = self.rooms.get_mut(room) {
            let c = log.cost(room);
            self.overhead = self.overhead - log.charged + c;
            log.charged = c;
        }
    }

    /// Queues `room` as an idle-log candidate if it stores nothing and is
    /// not queued yet.
    pub(in crate::shard) fn maybe_idle(&mut self, room: &Arc<str>) {
        if let Some(log) = self.rooms.get_mut(room) {
            if log.entries.is_empty() && !log.queued {
                log.queued = true;
                self.idle.push_back((room.clone(), log.touched));
            }
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
            self.overhead -= log.charged;
            self.rooms.remove(&room);
            self.evicted.rooms += 1;
        }
    }

    /// Under the cap again: idle logs first, then the oldest stored
    /// messages of any room.
    pub(in crate::shard) fn enforce_cap(&mut self) {
        if self.charged() > self.cap {
            self.evict_idle(self.cap);
        }
        while self.charged() > self.cap {
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
                    self.due.mark(when, room.clone());
                }
                self.maybe_idle(&room);
            }
        }
        // Keep the order queue from outgrowing what it indexes.
        let (rooms, hint) = (&self.rooms, self.messages_hint());
        due::compact(&mut self.order, hint, |(r, o)| {
            rooms
                .get(r)
                .and_then(|l| l.entries.front())
                .is_some_and(|f| f.offset <= *o)
        });
        // And the due heap (a dropped log's marks stay until due).
        self.due.compact(rooms.len(), |r| rooms.contains_key(r));
    }

    pub(in crate::shard) fn messages_hint(&self) -> usize {
        self.count
    }
}
