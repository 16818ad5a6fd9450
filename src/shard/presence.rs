//! Presence: who is in a room (`GET /v1/presence`, answered by every shard
//! from its own members) and the join/leave events version-2 members ask
//! for (`"presence": true` on their join), coalesced per room per second.
//!
//! Runs on every shard (members, watchers, pending changes) and on each
//! room's owner (the room's watcher count and the one event per second it
//! sends); never awaits.
//!
//! ```text
//! member shard S                            owner O of room R
//! watcher joins R (first on S) ─ Watch +1 ─> watchers[R] 0 → 1: Watching{R, on} to every shard
//! every shard: member joins/leaves R ─> pending[R]   (details up to [client] presence_limit)
//! sweep: pending[R] ─────────── PresenceDelta ─> changes[R]
//!                                             sweep: one op 58 frame per changed room
//! watchers of R on S <──── PresenceFrame ───── {"room","count","joins","leaves"} or,
//!                                              past the limit, {"room","count","coalesced":true}
//! ```
//!
//! Why coalesced: in a room of 100,000 members one event per join would be
//! a fan-out per join to every watcher; here a room costs its watchers at
//! most one frame per second, whatever its churn, and the details stop at
//! `presence_limit` changes per second (then only the count).
//!
//! The data (members, changes, who watches what) is `members`; this file
//! is what the shards do with it.
//!
//! In a cluster the owner also carries the room's changes between nodes
//! (`shard::cluster::presence`): a room watched on another node counts as
//! watched here (`Owned::remote_until`), this node's changes of each second
//! are published for the other nodes, and theirs join this node's event.
//!
//! Invariants: a shard reports changes only for rooms some shard (or, in
//! a cluster, some node) watches (told by the owner), so unwatched rooms
//! cost nothing per join; events are best-effort (a change racing the
//! owner's `Watching` may go unreported; the count in the next event is
//! right).

use super::conns::Conn;
use super::members::{Changes, Member};
use super::mesh::{owner_of_str, ConnRef, GlobalConn, ShardMsg};
use super::state::Shard;
use crate::proto::binary::VERSION_NATIVE;
use crate::proto::v2::op;
use crate::proto::wire::Wire;
use crate::redis::presence::{WATCH_EVERY, WATCH_TTL_MS};
use std::sync::Arc;

/// Seconds a heard watch lasts without being heard again.
const WATCH_TTL_SECS: u32 = (WATCH_TTL_MS / 1000) as u32;

/// This node's changes as the other nodes read them
/// (`shard::cluster::presence` adds the node).
fn presence_note(c: &Changes) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(c).expect("changes serialize")
}

impl Shard {
    /// What presence shows of connection `c` at `r`.
    pub(super) fn member_of(&self, r: ConnRef, c: &Conn) -> Member {
        let key = c.key.as_deref().map_or_else(
            || {
                GlobalConn {
                    shard: self.id as u16,
                    conn: r,
                }
                .assigned_key(&self.shared.keys)
            },
            str::to_string,
        );
        let info = c
            .token
            .as_ref()
            .and_then(|t| t.grant.info.as_deref())
            .and_then(|i| serde_json::value::RawValue::from_string(i.to_string()).ok());
        Member { mid: c.mid, key, info }
    }

    /// `r` joined (or left) `room` on this shard: noted if the room is
    /// watched.
    pub(super) fn presence_change(&mut self, r: ConnRef, room: &str, joined: bool) {
        if !self.index.watched.pending.contains_key(room) {
            return;
        }
        let Some(c) = self.conn(r) else { return };
        let m = self.member_of(r, c);
        let limit = self.cfg().client.presence_limit;
        if let Some(p) = self.index.watched.pending.get_mut(room) {
            p.add(m, joined, limit);
        }
    }

    /// Whether any room is watched anywhere or by a local connection.
    pub(super) fn presence_in_use(&self) -> bool {
        !self.index.watched.pending.is_empty() || !self.index.watched.mine.is_empty()
    }

    /// `r` (a version-2 member of `room`) asked for presence events.
    pub(super) fn watch(&mut self, r: ConnRef, room: &Arc<str>) {
        let list = self.index.watched.mine.entry(room.clone()).or_default();
        list.push(r);
        if list.len() == 1 {
            let owner = owner_of_str(room, self.nr());
            self.route(
                owner,
                ShardMsg::Watch {
                    room: room.clone(),
                    delta: 1,
                },
            );
        }
    }

    /// `r` left `room` or closed: no more events for it.
    pub(super) fn unwatch(&mut self, r: ConnRef, room: &str) {
        let Some(list) = self.index.watched.mine.get_mut(room) else {
            return;
        };
        let Some(i) = list.iter().position(|x| *x == r) else {
            return;
        };
        list.swap_remove(i);
        if list.is_empty() {
            let (room, _) = self.index.watched.mine.remove_entry(room).expect("present just above");
            let owner = owner_of_str(&room, self.nr());
            self.route(owner, ShardMsg::Watch { room, delta: -1 });
        }
    }

    /// On the owner: one more (or one fewer) shard has watchers of `room`.
    pub(super) fn on_watch(&mut self, room: Arc<str>, delta: i32) {
        let now = self.conns.wheel.now();
        let e = self.index.watched.owned.entry(room.clone()).or_default();
        let before = e.watched(now);
        e.shards = e.shards.saturating_add_signed(delta);
        if e.shards == 0 {
            e.announced = None;
        }
        let announce = e.shards > 0 && e.announced.is_none();
        self.owned_changed(&room, before);
        if announce {
            self.announce_watch(&room);
        }
    }

    /// On the owner, in a cluster: another node watches `room` (it said so,
    /// or the room's watch key did when this node subscribed).
    pub(super) fn remote_watch(&mut self, room: &Arc<str>) {
        let now = self.conns.wheel.now();
        let e = self.index.watched.owned.entry(room.clone()).or_default();
        let before = e.watched(now);
        e.remote_until = now.saturating_add(WATCH_TTL_SECS);
        self.owned_changed(room, before);
    }

    /// On the owner, after `room`'s watchers changed (it was watched
    /// `before`): every shard is told when that flips.
    fn owned_changed(&mut self, room: &Arc<str>, before: bool) {
        let now = self.conns.wheel.now();
        let after = self.index.watched.owned.get(room).is_some_and(|e| e.watched(now));
        if !after {
            self.index.watched.owned.remove(room);
        }
        if before != after {
            for s in 0..self.nr() {
                self.route(
                    s,
                    ShardMsg::Watching {
                        room: room.clone(),
                        on: after,
                    },
                );
            }
        }
    }

    /// On every shard: `room` is (or is no longer) watched somewhere.
    pub(super) fn on_watching(&mut self, room: Arc<str>, on: bool) {
        if on {
            self.index.watched.pending.entry(room).or_default();
        } else {
            self.index.watched.pending.remove(&room);
        }
    }

    /// On the owner: a shard's changes to `room` in the last second.
    pub(super) fn on_presence_delta(&mut self, room: &str, changes: Changes) {
        let limit = self.cfg().client.presence_limit;
        if let Some(e) = self.index.watched.owned.get_mut(room) {
            e.changes.merge(changes, limit);
        }
    }

    /// On the owner, in a cluster: another node's changes to `room` in its
    /// last second, for this node's watchers.
    pub(super) fn on_presence_heard(&mut self, room: &str, changes: Changes) {
        let limit = self.cfg().client.presence_limit;
        if let Some(e) = self.index.watched.owned.get_mut(room).filter(|e| e.shards > 0) {
            e.heard.merge(changes, limit);
        }
    }

    /// On a shard: an event for the local watchers of `room`.
    pub(super) fn on_presence_frame(&mut self, room: &str, wire: &Wire) {
        let targets = self.index.watched.mine.get(room).cloned().unwrap_or_default();
        for r in targets {
            let Some(transport) = self.conn(r).map(|c| c.transport) else {
                continue;
            };
            self.enqueue_bytes(r, wire.for_transport(transport.form()).clone());
        }
    }

    /// Once a second: local changes go to the rooms' owners; owned rooms
    /// that changed send their event.
    pub(super) fn presence_sweep(&mut self) {
        let changed: Vec<(Arc<str>, Changes)> = self
            .index
            .watched
            .pending
            .iter_mut()
            .filter(|(_, c)| !c.is_empty())
            .map(|(room, c)| (room.clone(), std::mem::take(c)))
            .collect();
        for (room, changes) in changed {
            let owner = owner_of_str(&room, self.nr());
            self.route(owner, ShardMsg::PresenceDelta { room, changes });
        }
        let now = self.conns.wheel.now();
        let expired: Vec<Arc<str>> = (self.index.watched.owned.iter())
            .filter(|(_, e)| e.remote_until != 0 && e.remote_until <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room in expired {
            if let Some(e) = self.index.watched.owned.get_mut(&room) {
                e.remote_until = 0;
            }
            self.owned_changed(&room, true);
        }
        // In a cluster this node's changes go to the other nodes when one
        // of them watches, and its own watch is announced again now and
        // then; the event for its watchers has every node's changes.
        let limit = self.cfg().client.presence_limit;
        let clustered = self.clustered();
        let (mut events, mut publish, mut announce) = (Vec::new(), Vec::new(), Vec::new());
        for (room, e) in &mut self.index.watched.owned {
            let mut c = std::mem::take(&mut e.changes);
            let heard = std::mem::take(&mut e.heard);
            if clustered && e.remote_until > now && !c.is_empty() {
                publish.push((room.clone(), presence_note(&c)));
            }
            if e.shards == 0 {
                continue;
            }
            if e.announced.is_some_and(|at| now.saturating_sub(at) >= WATCH_EVERY) {
                announce.push(room.clone());
            }
            c.merge(heard, limit);
            if !c.is_empty() {
                events.push((room.clone(), c));
            }
        }
        for (room, changes) in publish {
            self.publish_presence_changes(&room, changes);
        }
        for room in announce {
            self.announce_watch(&room);
        }
        for (room, c) in events {
            let count = self
                .shared
                .online_room(&room, Some((self.id, self.index.rooms.count(&room))));
            let body = if c.more > 0 {
                serde_json::json!({"room": &*room, "count": count, "coalesced": true})
            } else {
                serde_json::json!({"room": &*room, "count": count, "joins": c.joins, "leaves": c.leaves})
            };
            let wire = Wire::encode(VERSION_NATIVE, op::PRESENCE, 0, body.to_string().as_bytes());
            for s in 0..self.nr() {
                self.route(
                    s,
                    ShardMsg::PresenceFrame {
                        room: room.clone(),
                        wire: wire.clone(),
                    },
                );
            }
        }
    }

    /// This shard's members of `room`: how many, and the first `limit`.
    pub(super) fn presence_page(&self, room: &str, limit: usize) -> (usize, Vec<Member>) {
        let members = self.index.rooms.members(room);
        let list = members
            .iter()
            .take(limit)
            .filter_map(|&r| self.conn(r).map(|c| self.member_of(r, c)))
            .collect();
        (members.len(), list)
    }
}
