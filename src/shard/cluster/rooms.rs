//! Cluster mode's subscription machine, per room this shard owns with
//! members on this node:
//!
//! ```text
//! want_room ─SUBSCRIBE─> Subscribing ─Subscribed─> Syncing (messages held) ─position─> Live
//!                        ▲   Down (joins told why)      │ missed? Range from the Stream ─> filled ─┘
//!                        └──────────────────────────────┤ gap past history: tell_gap (lagged)
//!                                                       └ read failed: Failed(tick) ─sweep─> Syncing
//! ```
//!
//! Joins wait for `Live`; a live room's messages go into the node's cache
//! and to its members (`apply`).

use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::v2::{Envelope, ErrorCode, Kind, Resume, Unrecovered};
use crate::proto::wire::{Frames, Wire};
use crate::redis::instance_of;
use crate::redis::link::RedisError;
use crate::redis::ops::Call;
use crate::redis::room::{self, Message, RoomKeys, Stored};
use crate::shard::cluster::state::{Join, RoomSync, State, Then};
use crate::shard::mesh::{ConnRef, ShardMsg};
use crate::shard::state::Shard;
use std::sync::Arc;

impl Shard {
    /// On a room's owner: the node has (or is about to have) a member of
    /// `room`: subscribes to its channel unless it is already.
    pub(in crate::shard) fn want_room(&mut self, room: &Arc<str>) {
        let tick = self.conns.wheel.now();
        let Some(c) = self.cluster.as_mut() else { return };
        if let Some(s) = c.rooms.get_mut(room) {
            s.touched = tick;
            return;
        }
        let i = instance_of(room.as_bytes(), c.subs.len());
        c.subs[i].subscribe(&RoomKeys::of(room).channel);
        c.rooms.insert(
            room.clone(),
            RoomSync {
                state: State::Subscribing,
                joins: Vec::new(),
                held: Vec::new(),
                touched: tick,
                sync: 0,
            },
        );
        self.count_cluster();
    }

    /// On a room's owner, cluster mode: a version-2 join, answered once
    /// the room is live (at once if it is).
    pub(in crate::shard) fn cluster_join(&mut self, room: Arc<str>, j: Join) {
        self.want_room(&room);
        let Some(c) = self.cluster.as_mut() else { return };
        let i = instance_of(room.as_bytes(), c.subs.len());
        let down = c.subs[i].down_reason();
        let Some(s) = c.rooms.get_mut(&room) else { return };
        match (s.state, down) {
            (State::Live, _) => self.join_live(room, j),
            (_, Some(why)) => self.join_failed(&room, &j, &why),
            _ => s.joins.push(j),
        }
    }

    /// A live room's join: from the node's cache when it reaches back far
    /// enough, else the missing part is read from the room's Stream first;
    /// a user's read mark (for the reply's unread count) is read from
    /// Redis into the node's log before anything.
    pub(super) fn join_live(&mut self, room: Arc<str>, j: Join) {
        let policy = self.cfg().history.policy(&room);
        if j.mid != 0 && !j.marked {
            let Some(i) = self.cluster_instance(&room) else { return };
            let call = Call::MarkOf {
                room: room.clone(),
                mid: j.mid,
            };
            return self.emit(i, call, Then::JoinMarked { room, j });
        }
        let Some(log) = self.store.logs.get(&room) else {
            return self.join_req(room, j.at, j.seq, (j.resume, j.mid, j.presence));
        };
        let from_redis =
            j.resume.and_then(|r| {
                let through = log.lost_through;
                (r.epoch == log.epoch && r.offset < through && through - r.offset <= policy.messages as u64)
                    .then_some((r.offset + 1, through, log.epoch))
            });
        let Some((from, through, epoch)) = from_redis else {
            return self.join_req(room, j.at, j.seq, (j.resume, j.mid, j.presence));
        };
        let Some(i) = self.cluster_instance(&room) else { return };
        let call = Call::Range {
            room: room.clone(),
            epoch,
            from,
            through,
        };
        self.emit(i, call, Then::JoinRange { room, j, from, through });
    }

    /// A join's user's read mark in `room`, as Redis has it: copied into
    /// the node's log, then the join goes on.
    pub(in crate::shard) fn join_marked(&mut self, room: Arc<str>, mut j: Join, got: Result<u64, RedisError>) {
        match got {
            Ok(mark) => {
                let (now, max) = (self.conns.wheel.now(), self.cfg().history.max_marks);
                // The node's copy only ever holds what Redis said.
                self.store.logs.mark(&room, now, j.mid, mark, max);
                j.marked = true;
                self.join_live(room, j);
            }
            Err(e) => self.join_failed(&room, &j, &e.to_string()),
        }
    }

    /// A resume's missing part, `from..=through`, as read from the Stream:
    /// replayed before what the cache holds after `through`, if every
    /// offset is there (expired ones skipped, as in the cache).
    pub(in crate::shard) fn join_with(
        &mut self,
        room: Arc<str>,
        j: Join,
        from: u64,
        through: u64,
        got: Result<Vec<Stored>, RedisError>,
    ) {
        let Some(resume) = j.resume else { return };
        let entries = match got {
            Ok(e) => e,
            Err(e) => return self.join_failed(&room, &j, &e.to_string()),
        };
        let policy = self.cfg().history.policy(&room);
        let unix = self.clock.unix;
        let gapless = entries.len() as u64 == (through - from).saturating_add(1)
            && entries.iter().zip(from..).all(|(s, o)| s.msg.offset == o)
            && entries
                .iter()
                .all(|s| s.at.saturating_add(u64::from(policy.max_age)) > unix);
        // The cache goes on from `through` (if it still does).
        let mut resumed = self.store.logs.resume(
            &room,
            policy,
            self.conns.wheel.now(),
            Some(Resume {
                offset: through,
                epoch: resume.epoch,
            }),
            j.mid,
        );
        resumed.replay = match resumed.replay {
            Ok(rest) if gapless => {
                let mut all: Vec<Wire> = entries
                    .iter()
                    .filter(|s| !s.ttl_over(unix))
                    .map(|s| room_frames(&room, &s.msg).v2)
                    .collect();
                all.extend(rest);
                Ok(all)
            }
            Ok(_) => Err(Unrecovered::HistoryGone),
            Err(e) => Err(e),
        };
        self.store.count_history(&self.shared.stats[self.id]);
        self.route(
            usize::from(j.at.shard),
            ShardMsg::JoinReply {
                conn: j.at.conn,
                seq: j.seq,
                room,
                asked: true,
                resumed,
                presence: j.presence,
            },
        );
    }

    /// A join that cannot be answered (Redis unreachable): its connection
    /// is told so and may try again.
    pub(super) fn join_failed(&mut self, room: &Arc<str>, j: &Join, why: &str) {
        self.route(
            usize::from(j.at.shard),
            ShardMsg::JoinFailed {
                conn: j.at.conn,
                seq: j.seq,
                room: room.clone(),
                why: why.into(),
            },
        );
    }

    /// On the joining connection's shard: its join failed.
    pub(in crate::shard) fn on_join_failed(&mut self, r: ConnRef, seq: u32, room: &str, why: &str) {
        let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) else {
            return;
        };
        let Some(i) = v2.joining.iter().position(|j| &**j == room) else {
            return;
        };
        v2.joining.swap_remove(i);
        self.v2_error(r, seq, ErrorCode::Unavailable, why);
    }

    /// A subscribed room by name: its shared name and its state.
    pub(super) fn cluster_room(&mut self, name: &str) -> Option<(Arc<str>, &mut RoomSync)> {
        let rooms = &mut self.cluster.as_mut()?.rooms;
        let room = rooms.get_key_value(name)?.0.clone();
        let s = rooms.get_mut(name)?;
        Some((room, s))
    }

    /// Reads a subscribed room's position (`room::sync`).
    pub(super) fn start_sync(&mut self, room: Arc<str>) {
        let Some(c) = self.cluster.as_mut() else { return };
        let Some(s) = c.rooms.get_mut(&room) else { return };
        s.state = State::Syncing;
        s.sync = s.sync.wrapping_add(1);
        let gen = s.sync;
        let Some(i) = self.cluster_instance(&room) else { return };
        self.emit(i, Call::Sync { room: room.clone() }, Then::Synced { room, gen });
    }

    /// A room's position as read after its subscription was confirmed:
    /// the cache is set there (after filling what it missed, if it was
    /// live before), then the room goes live.
    pub(in crate::shard) fn synced(&mut self, room: Arc<str>, gen: u32, got: Result<room::Position, RedisError>) {
        let tick = self.conns.wheel.now();
        let Some(s) = self.cluster.as_mut().and_then(|c| c.rooms.get_mut(&room)) else {
            return;
        };
        if s.state != State::Syncing || s.sync != gen {
            // The subscription went down meanwhile; it syncs again.
            return;
        }
        let (offset, epoch) = match got {
            Ok(p) => {
                if p.watched {
                    self.remote_watch(&room);
                }
                (p.offset, p.epoch)
            }
            Err(e) => return self.sync_failed(&room, &e.to_string()),
        };
        // The node had the room before (its subscription was lost, or Redis
        // restarted): what was published since the cache's last message
        // (in a new epoch: all of it) is read from the Stream and goes to
        // the members first, as far back as the room's history reaches.
        let policy = self.cfg().history.policy(&room);
        let keep = policy.messages as u64;
        let missed = self
            .store
            .logs
            .get(&room)
            .map(|l| if l.epoch == epoch { l.last.saturating_add(1) } else { 1 })
            .filter(|&from| from <= offset);
        let Some(want) = missed else {
            self.store.logs.sync(&room, policy, tick, epoch, offset);
            return self.go_live(&room);
        };
        if keep == 0 {
            // A room without history: nothing to read back.
            self.tell_gap(&room);
            self.store.logs.sync(&room, policy, tick, epoch, offset);
            return self.go_live(&room);
        }
        let from = want.max(offset.saturating_add(1).saturating_sub(keep));
        let Some(i) = self.cluster_instance(&room) else { return };
        let call = Call::Range {
            room: room.clone(),
            epoch,
            from,
            through: offset,
        };
        let then = Then::Filled {
            room,
            gen,
            want: (want, from),
            at: (epoch, offset),
        };
        self.emit(i, call, then);
    }

    /// On a room's owner: the node's members of `room` missed messages
    /// that are gone from Redis; every shard closes its version-2 members
    /// as `lagged` (they resume and are told `history_gone`).
    pub(super) fn tell_gap(&mut self, room: &Arc<str>) {
        tracing::warn!(%room, "messages missed while unsubscribed are gone from Redis; version-2 members resume");
        for s in 0..self.nr() {
            self.route(s, ShardMsg::RoomGap { room: room.clone() });
        }
    }

    /// On any shard: closes the version-2 connections here that get
    /// `room`'s messages (members, and pattern subscribers it matches) as
    /// `lagged` (`tell_gap`).
    pub(in crate::shard) fn room_gap(&mut self, room: &str) {
        let members = self.receivers(room, crate::shard::mesh::Reach::All);
        let detail = format!(
            "messages of {room} were missed and are gone from Redis; rejoin each room with its last offset to be told"
        );
        for r in members {
            if self.conn(r).is_some_and(|c| c.v2().is_some()) {
                self.close(r, crate::proto::close::CloseReason::Lagged, &detail);
            }
        }
    }

    /// What a room's members missed while the node was not subscribed
    /// (`want..=offset`), as read from the Stream (`from..=offset`, within
    /// the room's history): delivered in order, then the room goes live;
    /// what the Stream no longer holds is a gap the members are told of
    /// (`tell_gap`).
    pub(in crate::shard) fn filled(
        &mut self,
        room: Arc<str>,
        gen: u32,
        (want, from): (u64, u64),
        (epoch, offset): (u64, u64),
        got: Result<Vec<Stored>, RedisError>,
    ) {
        let current = self
            .cluster
            .as_ref()
            .and_then(|c| c.rooms.get(&room))
            .is_some_and(|s| s.state == State::Syncing && s.sync == gen);
        if !current {
            return;
        }
        let entries = match got {
            Ok(e) => e,
            Err(e) => return self.sync_failed(&room, &e.to_string()),
        };
        let unix = self.clock.unix;
        // Messages past their TTL are still in the Stream (skipped below,
        // on purpose); only a missing offset is a loss.
        let gapless = want == from
            && entries.len() as u64 == (offset - from).saturating_add(1)
            && entries.iter().zip(from..).all(|(s, o)| s.msg.offset == o);
        if !gapless {
            // Before what follows the gap, so that no member takes a later
            // offset for the last it has and resumes past the gap.
            self.tell_gap(&room);
        }
        ShardStats::add(&self.stats().cluster_filled, entries.len() as u64);
        for s in entries {
            if !s.ttl_over(unix) {
                self.apply(&room, s.msg);
            }
        }
        let policy = self.cfg().history.policy(&room);
        self.store
            .logs
            .sync(&room, policy, self.conns.wheel.now(), epoch, offset);
        self.go_live(&room);
    }

    /// A synced room: what the channel brought meanwhile is applied, and the
    /// waiting joins are answered.
    pub(super) fn go_live(&mut self, room: &Arc<str>) {
        let Some(s) = self.cluster.as_mut().and_then(|c| c.rooms.get_mut(room)) else {
            return;
        };
        s.state = State::Live;
        let held = std::mem::take(&mut s.held);
        let joins = std::mem::take(&mut s.joins);
        for m in held {
            self.apply(room, m);
        }
        for j in joins {
            self.join_live(room.clone(), j);
        }
    }

    /// Reading a room's position (or what it missed) failed: its joins are
    /// told why, and the sweep tries again.
    pub(super) fn sync_failed(&mut self, room: &Arc<str>, why: &str) {
        let tick = self.conns.wheel.now();
        let Some(s) = self.cluster.as_mut().and_then(|c| c.rooms.get_mut(room)) else {
            return;
        };
        s.state = State::Failed(tick);
        s.held.clear();
        let joins = std::mem::take(&mut s.joins);
        for j in &joins {
            self.join_failed(room, j, why);
        }
    }

    /// A live room's message from the channel: into the node's cache and
    /// to every member on the node (nothing for an offset the cache has
    /// passed).
    pub(super) fn apply(&mut self, room: &Arc<str>, m: Message) {
        let policy = self.cfg().history.policy(room);
        let now = self.conns.wheel.now();
        let frames = room_frames(room, &m);
        let ttl = (m.ttl > 0).then_some(m.ttl);
        if self
            .store
            .logs
            .store(room, policy, now, (m.offset, m.epoch), ttl, frames.v2.clone())
        {
            self.store.count_history(&self.shared.stats[self.id]);
            let reach = self.reach_of(room, &m);
            self.fan_out_room(room, &frames, reach);
        }
    }
}

/// A room message's frames: version 1 (the payload) and the version-2
/// envelope with its offset and epoch.
pub(in crate::shard) fn room_frames(room: &str, m: &Message) -> Frames {
    Frames {
        v1: Wire::encode(binary::VERSION_GOIM, m.op, 0, &m.payload),
        v2: Wire::from_tcp(
            Envelope {
                op: m.op,
                kind: Kind::Room,
                room,
                offset: m.offset,
                epoch: m.epoch,
                id: &m.id,
                payload: &m.payload,
            }
            .frame(),
        ),
    }
}
