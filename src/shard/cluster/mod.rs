//! Cluster mode on a shard: room messages, pattern publishes, key / user /
//! everyone pushes and online counts through Redis (SPEC section 5,
//! docs/CLUSTER.md).
//!
//! Acts on the shard's cluster state (`shard::cluster::state`): its link and
//! subscriber to each Redis instance (`redis::link`,
//! `redis::subscriber`), the subscriptions of the rooms this shard owns
//! that have members on this node, the user / key registry entries of its
//! users and keys (`redis::registry`), read marks and history pages read
//! from Redis; on shard 0 also the node's channel (pattern publishes, key /
//! user / everyone pushes, notes to this node) with its queue of what was
//! sent while it was not subscribed, and the node's counts report
//! (`redis::counts`).
//!
//! Runs on every shard of a node with `[redis] urls`. Every Redis call is
//! emitted as an operation (`Shard::emit`, `shard::cluster::ops`) that the
//! shard's `redis::driver::drive` task runs; its answer comes back through
//! `Ops::answered` to the functions of these files: none awaits, spawns or
//! reads a clock. Nothing here runs in single-node mode (`Shard::cluster`
//! is `None`).
//!
//! ```text
//! publish R (any shard) ──EVALSHA publish──> Redis: offset, Stream, PUBLISH vly:{R}
//!                                                               │
//! first member of R on a shard ─Interest─> owner_of(R) ─SUBSCRIBE┘ (once per node)
//! owner: Subscribed ─> sync (epoch, newest offset) ─> Live ─> each message: cache, RoomFrame to every shard
//! ```
//!
//! Invariants: a room message reaches this node's members only from the
//! channel, in the order Redis published it, and gets its offset and epoch
//! from Redis only; a room is `Live` only after its subscription was
//! confirmed and its position read after that, so every message past the
//! position arrives on the channel (messages at or before it are dropped:
//! for a room the node had before, what its members missed up to the
//! position is read back from the Stream first); a join is answered only
//! once the room is `Live`; a publish is answered a success only when Redis
//! took it.
//!
//! Files, by role: `state` (the data), `ops` (operations emitted as values
//! and each answer to what it is for), `publish`, `rooms` (the
//! subscription machine), `registry`, `reads`, `counts`, `patterns`,
//! `presence`. Here: the mode, the hooks single-node code calls, the
//! dispatch of what the subscribers hear, the sweep, and an upgrade in
//! place: the subscriptions paused before the hand-off, each room's
//! position handed over, so the next process reads what it missed from
//! the Streams as after a reconnect.

mod counts;
pub mod ops;
mod patterns;
pub mod presence;
mod publish;
mod reads;
mod registry;
mod rooms;
pub mod state;

pub(in crate::shard) use rooms::room_frames;

use crate::metrics::ShardStats;
use crate::redis::instance_of;
use crate::redis::push::decode_push;
use crate::redis::room::{self, RoomKeys};
use crate::redis::subscriber::Event;
use crate::shard::cluster::state::{ShardCluster, State, LINGER_SECS, MAX_HELD};
use crate::shard::mesh::{owner_of_str, ShardMsg};
use crate::shard::state::Shard;
use std::sync::Arc;

impl Shard {
    /// Whether this node is part of a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// On any shard: `room` got its first member on this shard; in
    /// cluster mode its owner makes sure the node is subscribed to it.
    pub(in crate::shard) fn first_member(&mut self, room: &str) {
        if self.cluster.is_some() {
            let owner = owner_of_str(room, self.nr());
            self.route(owner, ShardMsg::Interest { room: Arc::from(room) });
        }
    }

    /// The instance (index into `[redis] urls`) of `room`'s keys; `None`
    /// on a single node.
    pub fn cluster_instance(&self, room: &str) -> Option<usize> {
        let c = self.cluster.as_ref()?;
        Some(instance_of(room.as_bytes(), c.links.len()))
    }

    /// An upgrade in place begins (`handoff::local`): this shard's
    /// subscribers unsubscribe from everything (`Subscriber::pause`), so
    /// that what is published meanwhile waits in Redis — room messages in
    /// their Streams, what is sent to the node in its queue — for the next
    /// process, instead of reaching this one as it lets go.
    pub fn pause_cluster(&mut self) {
        if let Some(c) = &self.cluster {
            c.subs.iter().for_each(|s| s.pause());
        }
    }

    /// Whether nothing can come from Redis any more after `pause_cluster`
    /// (always, on a single node).
    pub fn cluster_quiet(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.subs.iter().all(|s| s.is_quiet()))
    }

    /// The upgrade did not happen: subscribed again, rooms read what they
    /// missed from their Streams and the node its queue, as after a
    /// reconnect.
    pub fn resume_cluster(&mut self) {
        if let Some(c) = &self.cluster {
            c.subs.iter().for_each(|s| s.resume());
        }
    }

    /// For the next process: the rooms this shard owns with members on
    /// the node, with the epoch and the last offset its cache (and so its
    /// members) got.
    pub(in crate::shard) fn cluster_positions(&self) -> Vec<(String, u64, u64)> {
        let Some(c) = &self.cluster else { return Vec::new() };
        let mut rooms: Vec<_> = (c.rooms.keys())
            .filter_map(|room| {
                let log = self.store.logs.get(room)?;
                Some((room.to_string(), log.epoch, log.last))
            })
            .collect();
        rooms.sort();
        rooms
    }

    /// In the next process, before its members' rooms are subscribed: the
    /// cache of each room the previous process had stands where it was, so
    /// the room's sync reads what came after from the Stream.
    pub(in crate::shard) fn set_cluster_positions(&mut self, rooms: Vec<(String, u64, u64)>) {
        if self.cluster.is_none() {
            return;
        }
        let now = self.conns.wheel.now();
        for (room, epoch, last) in rooms {
            let room: Arc<str> = Arc::from(room);
            let policy = self.cfg().history.policy(&room);
            self.store.logs.sync(&room, policy, now, epoch, last);
        }
    }

    /// What this shard's subscriber to instance `i` heard.
    pub fn on_redis(&mut self, i: usize, e: Event) {
        let direct = |channel: &[u8], c: Option<&ShardCluster>| c.is_some_and(|c| c.node_channel.as_bytes() == channel);
        match e {
            Event::Message { channel, payload } if direct(&channel, self.cluster.as_ref()) => {
                if crate::redis::presence::is_note(&payload) {
                    return self.on_node_note(&channel, &payload);
                }
                if let Some(key) = crate::redis::registry::read_replace(&payload) {
                    // Another node got a connection with this key.
                    let owner = owner_of_str(key, self.nr());
                    return self.route(owner, ShardMsg::KeyTaken { key: Arc::from(key) });
                }
                if room::is_pattern(&payload) {
                    return match room::decode_pattern(&payload) {
                        Ok((pattern, token, m)) => self.pattern_message(pattern, token, m),
                        Err(e) => self.bad_channel_message(&channel, e),
                    };
                }
                match decode_push(&payload) {
                    Ok(p) => self.route_cluster_push(p),
                    Err(e) => self.bad_channel_message(&channel, e),
                }
            }
            Event::Message { channel, payload } => {
                let Some(name) = RoomKeys::room_of(&channel) else {
                    return;
                };
                if crate::redis::presence::is_note(&payload) {
                    return self.on_room_note(&channel, name, &payload);
                }
                let m = match room::decode_message(&payload) {
                    Ok(m) => m,
                    Err(e) => return self.bad_channel_message(&channel, e),
                };
                let Some((room, s)) = self.cluster_room(name) else {
                    return;
                };
                match s.state {
                    State::Live => self.apply(&room, m),
                    State::Syncing if s.held.len() < MAX_HELD => s.held.push(m),
                    _ => {}
                }
            }
            Event::Matched { channel, payload } => self.on_glob_message(&channel, &payload),
            Event::Subscribed(channel) if direct(&channel, self.cluster.as_ref()) => {
                // From here on the channel gets what is sent to the node;
                // what was sent before waits in the node's queue.
                self.take_queue(i);
                if i == 0 {
                    if let Some(c) = self.cluster.as_mut() {
                        c.listening = true;
                    }
                    self.mark_alive(0);
                }
            }
            Event::Subscribed(channel) => {
                let Some(name) = RoomKeys::room_of(&channel) else {
                    return;
                };
                let Some((room, s)) = self.cluster_room(name) else {
                    return;
                };
                if s.state == State::Subscribing {
                    self.start_sync(room);
                }
            }
            Event::Down => {
                let Some(c) = self.cluster.as_mut() else { return };
                if i == 0 {
                    c.listening = false;
                }
                let n = c.subs.len();
                let mut failed = Vec::new();
                for (room, s) in &mut c.rooms {
                    if instance_of(room.as_bytes(), n) == i {
                        s.state = State::Subscribing;
                        s.held.clear();
                        failed.extend(s.joins.drain(..).map(|j| (room.clone(), j)));
                    }
                }
                let why = c.subs[i].down_reason().unwrap_or_default();
                for (room, j) in failed {
                    self.join_failed(&room, &j, &why);
                }
            }
        }
    }

    pub(super) fn bad_channel_message(&mut self, channel: &[u8], e: room::BadMessage) {
        ShardStats::add(&self.stats().cluster_bad_messages, 1);
        tracing::warn!(channel = %String::from_utf8_lossy(channel), error = %e, "cluster message refused");
    }

    /// Once a sweep, on each shard: retries failed syncs, and unsubscribes
    /// from rooms the node has had no member of for `LINGER_SECS` (shard
    /// 0 also reports the node's counts).
    pub(in crate::shard) fn cluster_sweep(&mut self) {
        if self.id == 0 {
            self.report_counts();
        }
        self.register_all();
        self.forget_matched();
        let tick = self.conns.wheel.now();
        let Some(c) = self.cluster.as_ref() else { return };
        let mut retry = Vec::new();
        let mut idle = Vec::new();
        for (room, s) in &c.rooms {
            match s.state {
                State::Failed(at) if tick > at => retry.push(room.clone()),
                _ if s.joins.is_empty()
                    && tick.saturating_sub(s.touched) > LINGER_SECS
                    && self
                        .shared
                        .room_count(room, Some((self.id, self.index.rooms.count(room))))
                        == 0 =>
                {
                    idle.push(room.clone());
                }
                _ => {}
            }
        }
        for room in retry {
            self.start_sync(room);
        }
        if let Some(c) = self.cluster.as_mut() {
            let n = c.subs.len();
            for room in &idle {
                c.rooms.remove(room);
                c.subs[instance_of(room.as_bytes(), n)].unsubscribe(&RoomKeys::of(room).channel);
            }
        }
        self.count_cluster();
    }
}
