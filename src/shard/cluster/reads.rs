//! Cluster mode's reads from Redis: read marks (op 48), unread counts and
//! history pages for the API.
//!
//! Runs on the shard the request entered.

use crate::redis::ops::{Call, Page};
use crate::shard::cluster::state::Then;
use crate::shard::history::Entry;
use crate::shard::mesh::{ConnRef, HistoryPage, Reply};
use crate::shard::state::Shard;
use std::sync::Arc;

use super::room_frames;

impl Shard {
    /// Cluster mode, on the marking connection's shard: records a read mark
    /// in Redis (op 48) and answers with it, or `unavailable`.
    pub(in crate::shard) fn cluster_mark(&mut self, r: ConnRef, seq: u32, room: Arc<str>, mid: i64, offset: u64) {
        let max_marks = self.cfg().history.max_marks;
        let Some(instance) = self.cluster_instance(&room) else {
            return;
        };
        let call = Call::Mark {
            room: room.clone(),
            mid,
            offset,
            max_marks,
        };
        self.emit(instance, call, Then::Mark { r, seq, room });
    }

    /// Cluster mode, for `GET /v1/unread`: user `mid`'s marks in `rooms`
    /// (all on one instance) and their newest offsets, from Redis; `reply`
    /// is dropped unanswered when Redis cannot say.
    pub fn cluster_unread(&mut self, mid: i64, rooms: Vec<Arc<str>>, reply: Reply<Vec<Option<(u64, u64)>>>) {
        let Some(instance) = rooms.first().and_then(|first| self.cluster_instance(first)) else {
            return;
        };
        self.emit(instance, Call::Unread { rooms, mid }, Then::Unread { reply });
    }

    /// Cluster mode, for `GET /v1/history`: a page of `room`'s history
    /// from its Stream (messages past their TTL or the room's age limit
    /// left out); `reply` is dropped unanswered when Redis cannot say.
    pub fn cluster_history(&mut self, room: Arc<str>, since: u64, limit: usize, reply: Reply<Option<HistoryPage>>) {
        let Some(instance) = self.cluster_instance(&room) else {
            return;
        };
        // Room for what the filters leave out, within one read.
        let count = (limit as u64).saturating_mul(2);
        let call = Call::History {
            room: room.clone(),
            since,
            count,
        };
        self.emit(instance, call, Then::History { room, limit, reply });
    }

    /// A history page read from Redis, without what is past its TTL or the
    /// room's age limit, at most `limit` messages.
    pub(in crate::shard) fn history_of(&self, room: &str, limit: usize, page: Page) -> Option<HistoryPage> {
        let ((last, epoch), stored) = page?;
        let policy = self.cfg().history.policy(room);
        let (unix, tick) = (self.clock.unix, self.conns.wheel.now());
        let entries = stored
            .into_iter()
            .filter(|s| s.at.saturating_add(u64::from(policy.max_age)) > unix)
            .filter(|s| !s.ttl_over(unix))
            .take(limit)
            .map(|s| {
                let wire = room_frames(room, &s.msg).v2;
                Entry {
                    offset: s.msg.offset,
                    cost: wire.tcp.len() + wire.ws.len(),
                    wire,
                    at: tick,
                    ttl_end: u32::MAX,
                }
            })
            .collect();
        Some(HistoryPage { epoch, last, entries })
    }
}
