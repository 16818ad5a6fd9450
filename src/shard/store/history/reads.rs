//! Reading room logs: a resume's replay, read marks and unread counts, and
//! pages of history for the API.
//!
//! Pure, on the room's owner shard, as the rest of `history`.

use super::{Entry, Logs, Policy, Resumed};
use std::sync::Arc;

impl Logs {
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
        // What is due but not yet swept is gone already.
        self.rooms.trim(room, now);
        let log = self.rooms.get_mut(room).expect("opened just above");
        let (epoch, last) = (log.epoch, log.told);
        let mark = (mid != 0).then(|| log.marks.get(&mid).copied().unwrap_or(0));
        let replay = match resume {
            None => Ok(Vec::new()),
            Some(r) if r.epoch != epoch => Err(Unrecovered::EpochChanged),
            Some(r) if r.offset > last => Err(Unrecovered::OffsetAhead),
            Some(r) if r.offset < log.lost_through => Err(Unrecovered::HistoryGone),
            Some(r) => Ok(log
                .entries
                .iter()
                .filter(|e| e.offset > r.offset && e.offset <= last && !e.ttl_over(now))
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
    /// A room without a log gets none: nothing was published in it that a
    /// mark could be up to, so the answer is (0, 0) and nothing is kept.
    pub fn mark(&mut self, room: &Arc<str>, now: u32, mid: i64, offset: u64, max_marks: usize) -> Option<(u64, u64)> {
        let Some(log) = self.rooms.get_mut(room) else {
            return Some((0, 0));
        };
        log.touched = now;
        if log.marks.len() >= max_marks && !log.marks.contains_key(&mid) {
            return None;
        }
        let m = log.marks.entry(mid).or_default();
        *m = (*m).max(offset.min(log.told));
        let answer = (*m, log.told);
        self.rooms.recharge(room);
        self.enforce_cap();
        Some(answer)
    }

    /// `mid`'s read mark in `room` and the room's newest offset; `None` if
    /// the room has no log.
    pub fn unread(&self, room: &str, mid: i64) -> Option<(u64, u64)> {
        let log = self.rooms.get(room)?;
        Some((log.marks.get(&mid).copied().unwrap_or(0), log.told))
    }

    /// Up to `limit` stored messages of `room` after `since`, oldest first,
    /// with the room's epoch and newest offset; `None` if the room has no log.
    pub fn page(&self, room: &str, since: u64, limit: usize, now: u32) -> Option<(u64, u64, Vec<Entry>)> {
        let log = self.rooms.get(room)?;
        let entries = log
            .entries
            .iter()
            .filter(|e| e.offset > since && e.offset <= log.told && !e.ttl_over(now) && !e.aged(log.policy, now))
            .take(limit)
            .cloned()
            .collect();
        Some((log.epoch, log.told, entries))
    }
}
