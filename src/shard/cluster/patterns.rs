//! Pattern subscribers across a cluster: a node with subscribers of
//! `live://*` gets the messages of every matching room published anywhere,
//! whether or not it has members of that room.
//!
//! Each pattern maps to a channel glob (`RoomKeys::glob_of`, `vly:{live://*`);
//! the shard owning the glob (`owner_of_str(glob)`) `PSUBSCRIBE`s it on
//! every instance while some shard of the node has subscribers of a pattern
//! with that glob, so a glob is subscribed once per node. What the glob
//! brings goes to the room's owner, which hands it to the node's pattern
//! subscribers unless the room's own subscription brought it already:
//!
//! ```text
//! op 40 pattern (first of its glob on a shard) ─GlobInterest +1─> glob owner: PSUBSCRIBE vly:{live://* (each instance)
//! pmessage vly:{live://1} ─Matched─> owner of live://1: delivered already (its log, its last Matched)?
//!                                   no: RoomFrame{Patterns} to every shard; its Seen remembered
//! the room's own subscription, message X: RoomFrame{Members} if Seen >= X, else {All}
//! ```
//!
//! Runs on the glob's owner (subscription) and on the room's owner (the
//! choice of path); never awaits.
//!
//! Invariants: a message reaches each pattern subscriber of the node once,
//! by whichever path brought it first (both paths deliver a room's messages
//! in order: each comes from one channel of one connection, through one
//! owner); what a glob brings that no pattern of the node matches goes
//! nowhere (`PatternIndex::lookup` finds no one); a room's `Seen` is
//! forgotten `MATCHED_SECS` after its last message.

use crate::metrics::ShardStats;
use crate::redis::presence;
use crate::redis::room::{self, Message, RoomKeys};
use crate::shard::cluster::room_frames;
use crate::shard::cluster::state::Seen;
use crate::shard::mesh::{owner_of_str, Reach, ShardMsg};
use crate::shard::state::Shard;
use bytes::Bytes;
use std::sync::Arc;

/// Seconds a room's last glob-delivered message is remembered.
pub const MATCHED_SECS: u32 = 60;

impl Shard {
    /// Cluster mode: a connection of this shard subscribed (+1) to room
    /// pattern `pattern`, or no longer is (-1).
    pub(in crate::shard) fn pattern_interest(&mut self, pattern: &str, delta: i32) {
        let Some(c) = self.cluster.as_mut() else { return };
        let glob: Arc<str> = Arc::from(RoomKeys::glob_of(pattern));
        let n = c.local_globs.entry(glob.clone()).or_default();
        let before = *n;
        *n = n.saturating_add_signed(delta);
        let after = *n;
        if after == 0 {
            c.local_globs.remove(&glob);
        }
        if (before == 0) != (after == 0) {
            let owner = owner_of_str(&glob, self.nr());
            let delta = if after > 0 { 1 } else { -1 };
            self.route(owner, ShardMsg::GlobInterest { glob, delta });
        }
    }

    /// On a glob's owner: one more (or one fewer) shard has subscribers of
    /// patterns with `glob`; the node subscribes to it while any does.
    pub(in crate::shard) fn on_glob_interest(&mut self, glob: Arc<str>, delta: i32) {
        let Some(c) = self.cluster.as_mut() else { return };
        let n = c.globs.entry(glob.clone()).or_default();
        let before = *n;
        *n = n.saturating_add_signed(delta);
        let after = *n;
        if after == 0 {
            c.globs.remove(&glob);
        }
        if before == 0 && after > 0 {
            c.subs.iter().for_each(|s| s.psubscribe(&glob));
        } else if before > 0 && after == 0 {
            c.subs.iter().for_each(|s| s.punsubscribe(&glob));
        }
    }

    /// On a glob's owner: a message on `channel`, heard through a glob;
    /// a room message goes to the room's owner.
    pub(in crate::shard) fn on_glob_message(&mut self, channel: &Bytes, payload: &Bytes) {
        let Some(name) = RoomKeys::room_of(channel) else {
            return;
        };
        if presence::is_note(payload) {
            return;
        }
        let message = match room::decode_message(payload) {
            Ok(m) => m,
            Err(e) => {
                ShardStats::add(&self.stats().cluster_bad_messages, 1);
                tracing::warn!(channel = %String::from_utf8_lossy(channel), error = %e, "cluster message refused");
                return;
            }
        };
        let owner = owner_of_str(name, self.nr());
        self.route(
            owner,
            ShardMsg::Matched {
                room: Arc::from(name),
                message,
            },
        );
    }

    /// On a room's owner: a message of the room heard through a glob, for
    /// the node's pattern subscribers if the room's own subscription did
    /// not bring it first.
    pub(in crate::shard) fn on_matched(&mut self, room: Arc<str>, m: Message) {
        let now = self.conns.wheel.now();
        if self
            .store
            .logs
            .get(&room)
            .is_some_and(|l| l.epoch == m.epoch && l.last >= m.offset)
        {
            return;
        }
        let Some(c) = self.cluster.as_mut() else { return };
        let seen = c.matched.get(&room);
        if seen.is_some_and(|s| s.epoch == m.epoch && s.offset >= m.offset) {
            return;
        }
        c.matched.insert(
            room.clone(),
            Seen {
                epoch: m.epoch,
                offset: m.offset,
                at: now,
            },
        );
        let frames = room_frames(&room, &m);
        self.fan_out_room(&room, &frames, Reach::Patterns);
    }

    /// On a room's owner, for a message its own subscription brought: who
    /// still needs it (the pattern subscribers may have had it through
    /// their glob).
    pub(in crate::shard) fn reach_of(&self, room: &str, m: &Message) -> Reach {
        let seen = self.cluster.as_ref().and_then(|c| c.matched.get(room));
        match seen {
            Some(s) if s.epoch == m.epoch && s.offset >= m.offset => Reach::Members,
            _ => Reach::All,
        }
    }

    /// Once a sweep: forgets rooms whose last glob-delivered message is
    /// older than `MATCHED_SECS`.
    pub(in crate::shard) fn forget_matched(&mut self) {
        let now = self.conns.wheel.now();
        if let Some(c) = self.cluster.as_mut() {
            c.matched.retain(|_, s| now.saturating_sub(s.at) <= MATCHED_SECS);
        }
    }
}
