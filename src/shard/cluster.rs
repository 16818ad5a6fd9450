//! Cluster mode on a shard: room messages, pattern publishes, key / user /
//! everyone pushes and online counts through Redis (SPEC section 5,
//! docs/CLUSTER.md).
//!
//! Acts on the shard's cluster state (`shard::cluster_state`): its link and
//! subscriber to each Redis instance (`cluster::link`,
//! `cluster::subscriber`), the subscriptions of the rooms this shard owns
//! that have members on this node, the user / key registry entries of its
//! users and keys (`cluster::registry`), read marks and history pages read
//! from Redis; on shard 0 also the node's channel (pattern publishes, key /
//! user / everyone pushes, notes to this node) with its queue of what was
//! sent while it was not subscribed, and the node's counts report
//! (`cluster::counts`).
//!
//! Runs on every shard of a node with `[redis] urls`. Every Redis call is
//! emitted as an operation (`Shard::emit`, `shard::cluster_ops`) that the
//! shard's `cluster::ops::drive` task runs; its answer comes back through
//! `Ops::answered` to the functions here: nothing here awaits, spawns or
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

use super::cluster_state::{Join, RoomSync, ShardCluster, State, Then, LINGER_SECS, MAX_HELD, PATTERN_DEDUP_SECS};
use super::history::Entry;
use super::mesh::{owner_of_str, Answer, ConnRef, HistoryPage, Publication, Reply, ShardMsg};
use super::state::Shard;
use crate::cluster::counts::{Counts, Report};
use crate::cluster::instance_of;
use crate::cluster::link::RedisError;
use crate::cluster::ops::{Call, Page};
use crate::cluster::presence;
use crate::cluster::push::{decode_push, encode_push, Push};
use crate::cluster::registry;
use crate::cluster::room::{self, Dedup, Message, RoomKeys, Stored};
use crate::cluster::subscriber::Event;
use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::publish::Target;
use crate::proto::v2::{Envelope, ErrorCode, Kind, Resume, Unrecovered};
use crate::proto::wire::{Frames, Wire};
use bytes::Bytes;
use fnv::FnvHashMap;
use std::sync::Arc;

impl Shard {
    /// Whether this node is part of a cluster.
    pub fn clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// Cluster mode: why a push to `target` would fail now, a link it
    /// needs being down (a room's instance; a user's or client-chosen
    /// key's registry instance; the first instance for patterns, everyone
    /// and assigned keys); so that a publisher that gets no answer per
    /// message (the TCP publisher, fire-and-forget routes) is refused
    /// instead of told "routed".
    pub fn cluster_refuses(&self, target: &Target) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let first = || c.links[0].down_reason();
        match target {
            Target::Room(r) if crate::proto::pattern::kind(r) != crate::proto::pattern::Kind::Pattern => {
                c.link_for(r).down_reason()
            }
            Target::Room(_) | Target::All => first(),
            Target::Mids(mids) => mids
                .iter()
                .find_map(|&m| c.link_for(&registry::user_entry(m)).down_reason()),
            Target::Keys(keys) => keys.iter().find_map(|k| match registry::node_of_assigned_key(k) {
                Some(_) => first(),
                None => c.link_for(&registry::key_entry(k)).down_reason(),
            }),
        }
    }

    /// Cluster mode, on any shard: publishes a room message through
    /// Redis and tells `reply` what it got (or why not).
    pub(super) fn cluster_publish(&mut self, room: Arc<str>, msg: Publication, reply: Answer) {
        let Some(instance) = self.cluster_instance(&room) else {
            return;
        };
        let history = self.cfg().history.policy(&room).messages.clamp(1, u32::MAX as usize) as u32;
        let keys = RoomKeys::of(&room);
        let dedup = match (&msg.id, msg.token) {
            (Some(id), _) => Some(Dedup {
                key: keys.dedup(id),
                secs: self.cfg().api.dedup_window_secs,
            }),
            (None, Some(t)) => Some(Dedup {
                key: keys.pattern_dedup(t),
                secs: PATTERN_DEDUP_SECS,
            }),
            (None, None) => None,
        };
        let call = Call::Publish {
            room: room.clone(),
            msg: message_of(&msg),
            history,
            dedup,
        };
        self.emit(instance, call, Then::Published { room, reply });
    }

    /// Cluster mode, on any shard: a pattern publish goes to every live
    /// node's channel (`registry::to_nodes`: one command); each publishes it
    /// to the matching rooms it knows (`pattern_message`).
    pub fn cluster_publish_pattern(&mut self, pattern: &str, msg: &Publication) {
        if self.cluster.is_none() {
            return;
        }
        let body = room::encode_pattern(pattern, fastrand::u64(1..), &message_of(msg));
        let call = Call::ToNodes {
            body: body.into(),
            nodes: Vec::new(),
        };
        self.emit(
            0,
            call,
            Then::Sent {
                what: "pattern publish",
            },
        );
    }

    /// Cluster mode, on any shard: a push to everyone goes to every live
    /// node's channel; a push to users or keys to the nodes that hold them
    /// (`cluster::registry`: one command per instance of their entries; a
    /// server-assigned key names its node). Each node routes it to what it
    /// holds (`on_redis`); a node not subscribed at the time finds it in its
    /// queue when it is again.
    pub fn cluster_push(&mut self, target: Target, op: u32, payload: &[u8], id: Option<&str>, ttl: Option<u32>) {
        let Some(c) = self.cluster.as_ref() else { return };
        let id = id.unwrap_or("").to_string();
        let ttl = ttl.unwrap_or(0);
        let payload = Bytes::copy_from_slice(payload);
        // (nodes, push) to send to those nodes (none named: every node).
        let mut direct: Vec<(Vec<String>, Push)> = Vec::new();
        // Per instance, the targets to route through the registry.
        let n = c.links.len();
        let mut routed: Vec<Vec<Target>> = vec![Vec::new(); n];
        let push = |target| Push {
            target,
            op,
            ttl,
            id: id.clone(),
            payload: payload.clone(),
        };
        match target {
            Target::Room(_) => return,
            Target::All => direct.push((Vec::new(), push(Target::All))),
            Target::Mids(mids) => {
                let mut by: Vec<Vec<i64>> = vec![Vec::new(); n];
                for m in mids {
                    by[instance_of(registry::user_entry(m).as_bytes(), n)].push(m);
                }
                for (i, m) in by.into_iter().enumerate().filter(|(_, m)| !m.is_empty()) {
                    routed[i].push(Target::Mids(m));
                }
            }
            Target::Keys(keys) => {
                let mut by: Vec<Vec<String>> = vec![Vec::new(); n];
                let mut nodes: FnvHashMap<String, Vec<String>> = FnvHashMap::default();
                for k in keys {
                    match registry::node_of_assigned_key(&k) {
                        Some(node) => nodes.entry(node).or_default().push(k),
                        None => by[instance_of(registry::key_entry(&k).as_bytes(), n)].push(k),
                    }
                }
                for (i, k) in by.into_iter().enumerate().filter(|(_, k)| !k.is_empty()) {
                    routed[i].push(Target::Keys(k));
                }
                for (node, k) in nodes {
                    direct.push((vec![node], push(Target::Keys(k))));
                }
            }
        }
        let head = format!("{op} {ttl} {} {id}", id.len());
        let ib = &self.shared.config.inbox;
        let inbox = registry::InboxLimits {
            messages: ib.messages,
            secs: if ttl > 0 { ttl } else { ib.ttl_secs },
        };
        for (i, targets) in routed.into_iter().enumerate() {
            for target in targets {
                let (head, payload) = (head.clone(), payload.clone());
                let call = Call::Route {
                    target,
                    head,
                    payload,
                    inbox,
                };
                self.emit(i, call, Then::Sent { what: "push" });
            }
        }
        for (nodes, p) in direct {
            let Some(body) = encode_push(&p) else { continue };
            let call = Call::ToNodes {
                body: body.into(),
                nodes,
            };
            self.emit(0, call, Then::Sent { what: "push" });
        }
    }

    /// A push heard from Redis goes to this node's targets as a single
    /// node routes it (the form's empty id and zero TTL mean none).
    fn route_cluster_push(&mut self, p: Push) {
        let id = (!p.id.is_empty()).then_some(p.id.as_str());
        let ttl = (p.ttl > 0).then_some(p.ttl);
        self.route_push(p.target, p.op, &p.payload, id, ttl);
    }

    /// On a user's or key's owner, cluster mode: this node got its first
    /// connection of user `mid` / with key `key` (`on`), or its last went;
    /// the registry hears of it (client-chosen keys only: an assigned key
    /// names its node).
    pub(super) fn registry_change(&mut self, key: Option<&str>, mid: Option<i64>, on: bool) {
        if self.cluster.is_none() {
            return;
        }
        if let (false, Some(mid)) = (on, mid) {
            self.user_leaves(mid);
        }
        let Some(node) = self.cluster.as_ref().map(|c| c.node.clone()) else {
            return;
        };
        // A lost add is mended by the registration after the link
        // reconnects (`register_all`); a lost remove only costs the node a
        // push it does not deliver.
        if let Some(key) = key.filter(|k| registry::node_of_assigned_key(k).is_none()) {
            let entry = registry::key_entry(key);
            let Some(i) = self.cluster_instance(&entry) else { return };
            let (call, what) = if on {
                (
                    Call::Claim {
                        key: key.to_string(),
                        node: node.clone(),
                    },
                    "key claim",
                )
            } else {
                (
                    Call::Remove {
                        entry,
                        node: node.clone(),
                    },
                    "key removal",
                )
            };
            self.emit(i, call, Then::Logged { what });
        }
        if let (true, Some(mid)) = (on, mid) {
            // What waits for the user in Redis (pushes while no node held
            // them) comes with the add.
            let e = registry::user_entry(mid);
            let Some(i) = self.cluster_instance(&e) else { return };
            self.join_registry(i, vec![e], node);
        }
    }

    /// Adds this node to registry `entries` (all on instance `i`) and
    /// pushes what the users among them are owed (`registry::add`) to
    /// their connections here, oldest first.
    fn join_registry(&mut self, i: usize, entries: Vec<String>, node: String) {
        let now = self.unix_now;
        self.emit(i, Call::Add { entries, node, now }, Then::Owed);
    }

    /// What users were owed, read from Redis as this node joined their
    /// entries: to their connections here, oldest first.
    pub(super) fn owed_from_redis(&mut self, owed: crate::cluster::registry::Owed) {
        for (mid, pushes) in owed {
            ShardStats::add(&self.stats().inbox_owed, pushes.len() as u64);
            for p in pushes {
                self.route_cluster_push(Push {
                    target: Target::Mids(vec![mid]),
                    ..p
                });
            }
        }
    }

    /// This node's last connection of user `mid` went: the node leaves the
    /// user's registry entry, and what the user did not acknowledge here
    /// leaves the node's inbox for the user's inbox in Redis (unless another
    /// node holds the user), so that it follows the user to the next node.
    fn user_leaves(&mut self, mid: i64) {
        let tick = self.wheel.now();
        let owed: Vec<(Push, u64)> = (self.inbox.take(mid, tick).iter())
            .filter_map(|e| {
                let tcp = e.frames.v2.for_transport(false);
                let env = crate::proto::v2::decode_push(tcp.get(binary::HEADER_LEN..)?).ok()?;
                let left = e.ttl_end.saturating_sub(tick);
                let push = Push {
                    target: Target::Mids(vec![mid]),
                    op: env.op,
                    ttl: left,
                    id: env.id.to_string(),
                    payload: Bytes::copy_from_slice(env.payload),
                };
                Some((push, u64::from(left)))
            })
            .collect();
        self.count_inbox();
        let Some(c) = self.cluster.as_ref() else { return };
        let ib = &self.shared.config.inbox;
        let limits = registry::InboxLimits {
            messages: ib.messages,
            secs: owed.iter().map(|(_, left)| *left as u32).max().unwrap_or(1),
        };
        let (node, now) = (c.node.clone(), self.unix_now);
        let Some(i) = self.cluster_instance(&registry::user_entry(mid)) else {
            return;
        };
        let call = Call::Leave {
            mid,
            node,
            owed,
            inbox: limits,
            now,
        };
        // A lost leave only costs a push the node does not deliver (the
        // entry) and the owed pushes (kept nowhere).
        self.emit(i, call, Then::Logged { what: "user's leave" });
    }

    /// Once a sweep: on every instance whose link has (re)connected since
    /// this shard last did, or where the node was taken for dead, registers
    /// all its users and keys again (Redis may have lost them), a thousand
    /// entries a command, delivering what the users were owed meanwhile.
    /// Shard 0 also marks the node alive on every instance, and takes the
    /// node's queue where it is still to be taken.
    fn register_all(&mut self) {
        let Some(c) = self.cluster.as_ref() else { return };
        let n = c.links.len();
        let stale: Vec<usize> = (0..n)
            .filter(|&i| c.links[i].is_up() && c.links[i].connects() != c.registered[i])
            .collect();
        if self.id == 0 {
            let up: Vec<usize> = (0..n).filter(|&i| c.links[i].is_up()).collect();
            for i in up {
                self.mark_alive(i);
            }
            let Some(c) = self.cluster.as_ref() else { return };
            let queued: Vec<usize> = (0..n).filter(|&i| c.queued[i]).collect();
            for i in queued {
                self.take_queue(i);
            }
        }
        if stale.is_empty() {
            return;
        }
        let mut by: Vec<Vec<String>> = vec![Vec::new(); n];
        let (mids, keys) = self.dir.entries();
        let keys = keys
            .filter(|k| registry::node_of_assigned_key(k).is_none())
            .map(|k| registry::key_entry(k));
        for e in mids.map(registry::user_entry).chain(keys) {
            let i = instance_of(e.as_bytes(), n);
            if stale.contains(&i) {
                by[i].push(e);
            }
        }
        let Some(c) = self.cluster.as_mut() else { return };
        for &i in &stale {
            c.registered[i] = c.links[i].connects();
        }
        let node = c.node.clone();
        for (i, entries) in by.into_iter().enumerate() {
            for chunk in entries.chunks(1000) {
                self.join_registry(i, chunk.to_vec(), node.clone());
            }
        }
    }

    /// Shard 0: marks the node alive on instance `i` (on the first, lists
    /// it among the nodes, and the node has joined once its channel there
    /// is subscribed); if it had been taken for dead there, every shard
    /// registers its users and keys there again.
    fn mark_alive(&mut self, i: usize) {
        let Some(c) = self.cluster.as_ref() else { return };
        let (node, listening) = (c.node.clone(), c.listening);
        let call = Call::Alive { node, first: i == 0 };
        self.emit(i, call, Then::Alive { instance: i, listening });
    }

    /// Shard 0: the node is marked alive on instance `i`; `gone`: it had
    /// been taken for dead there.
    pub(super) fn alive(&mut self, i: usize, listening: bool, gone: bool) {
        if i == 0 && listening {
            if let Some(h) = &self.shared.cluster {
                h.set_joined();
            }
        }
        if gone {
            tracing::warn!(instance = i, "this node was taken for dead; registering again");
            for s in 0..self.nr() {
                self.route(s, ShardMsg::Reregister { instance: i });
            }
        }
    }

    /// The node was taken for dead on instance `i`: this shard's users and
    /// keys there are registered again at the next sweep.
    pub(super) fn reregister(&mut self, i: usize) {
        if let Some(r) = self.cluster.as_mut().and_then(|c| c.registered.get_mut(i)) {
            *r = u64::MAX;
        }
    }

    /// Shard 0: takes the node's queue on instance `i` (what was sent on its
    /// channel there while it was not subscribed) and handles it as heard;
    /// tried again each sweep until it is read.
    fn take_queue(&mut self, i: usize) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.queued[i] = true;
        if !c.links[i].is_up() {
            return;
        }
        let node = c.node.clone();
        self.emit(i, Call::TakeQueue { node }, Then::Queue { instance: i });
    }

    /// Shard 0: the node's queue on instance `i` was read: handled as
    /// heard, in order.
    pub(super) fn queue_taken(&mut self, i: usize, queued: Vec<Bytes>) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.queued[i] = false;
        let channel = Bytes::from(c.node_channel.clone());
        ShardStats::add(&self.stats().cluster_queued, queued.len() as u64);
        for payload in queued {
            let channel = channel.clone();
            self.on_redis(i, Event::Message { channel, payload });
        }
    }

    /// On any shard: `room` got its first member on this shard; in
    /// cluster mode its owner makes sure the node is subscribed to it.
    pub(super) fn first_member(&mut self, room: &str) {
        if self.cluster.is_some() {
            let owner = owner_of_str(room, self.nr());
            self.route(owner, ShardMsg::Interest { room: Arc::from(room) });
        }
    }

    /// On a room's owner: the node has (or is about to have) a member of
    /// `room`: subscribes to its channel unless it is already.
    pub(super) fn want_room(&mut self, room: &Arc<str>) {
        let tick = self.wheel.now();
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
    pub(super) fn cluster_join(&mut self, room: Arc<str>, j: Join) {
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
    fn join_live(&mut self, room: Arc<str>, j: Join) {
        let policy = self.cfg().history.policy(&room);
        if j.mid != 0 && !j.marked {
            let Some(i) = self.cluster_instance(&room) else { return };
            let call = Call::MarkOf {
                room: room.clone(),
                mid: j.mid,
            };
            return self.emit(i, call, Then::JoinMarked { room, j });
        }
        let Some(log) = self.logs.get(&room) else {
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
    pub(super) fn join_marked(&mut self, room: Arc<str>, mut j: Join, got: Result<u64, RedisError>) {
        match got {
            Ok(mark) => {
                let (now, max) = (self.wheel.now(), self.cfg().history.max_marks);
                // The node's copy only ever holds what Redis said.
                self.logs.mark(&room, now, j.mid, mark, max);
                j.marked = true;
                self.join_live(room, j);
            }
            Err(e) => self.join_failed(&room, &j, &e.to_string()),
        }
    }

    /// A resume's missing part, `from..=through`, as read from the Stream:
    /// replayed before what the cache holds after `through`, if every
    /// offset is there (expired ones skipped, as in the cache).
    pub(super) fn join_with(
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
        let unix = self.unix_now;
        let gapless = entries.len() as u64 == (through - from).saturating_add(1)
            && entries.iter().zip(from..).all(|(s, o)| s.msg.offset == o)
            && entries
                .iter()
                .all(|s| s.at.saturating_add(u64::from(policy.max_age)) > unix);
        // The cache goes on from `through` (if it still does).
        let mut resumed = self.logs.resume(
            &room,
            policy,
            self.wheel.now(),
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
        self.count_history();
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
    fn join_failed(&mut self, room: &Arc<str>, j: &Join, why: &str) {
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

    /// Cluster mode, on the marking connection's shard: records a read mark
    /// in Redis (op 48) and answers with it, or `unavailable`.
    pub(super) fn cluster_mark(&mut self, r: ConnRef, seq: u32, room: Arc<str>, mid: i64, offset: u64) {
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
    pub(super) fn history_of(&self, room: &str, limit: usize, page: Page) -> Option<HistoryPage> {
        let ((last, epoch), stored) = page?;
        let policy = self.cfg().history.policy(room);
        let (unix, tick) = (self.unix_now, self.wheel.now());
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

    /// The instance (index into `[redis] urls`) of `room`'s keys; `None`
    /// on a single node.
    pub fn cluster_instance(&self, room: &str) -> Option<usize> {
        let c = self.cluster.as_ref()?;
        Some(instance_of(room.as_bytes(), c.links.len()))
    }

    /// On the joining connection's shard: its join failed.
    pub(super) fn on_join_failed(&mut self, r: ConnRef, seq: u32, room: &str, why: &str) {
        let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) else {
            return;
        };
        let Some(i) = v2.joining.iter().position(|j| &**j == room) else {
            return;
        };
        v2.joining.swap_remove(i);
        self.v2_error(r, seq, ErrorCode::Unavailable, why);
    }

    /// What this shard's subscriber to instance `i` heard.
    pub fn on_redis(&mut self, i: usize, e: Event) {
        let direct = |channel: &[u8], c: Option<&ShardCluster>| c.is_some_and(|c| c.node_channel.as_bytes() == channel);
        match e {
            Event::Message { channel, payload } if direct(&channel, self.cluster.as_ref()) => {
                if presence::is_note(&payload) {
                    return self.on_node_note(&channel, &payload);
                }
                if let Some(key) = registry::read_replace(&payload) {
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
                if presence::is_note(&payload) {
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

    /// A subscribed room by name: its shared name and its state.
    fn cluster_room(&mut self, name: &str) -> Option<(Arc<str>, &mut RoomSync)> {
        let rooms = &mut self.cluster.as_mut()?.rooms;
        let room = rooms.get_key_value(name)?.0.clone();
        let s = rooms.get_mut(name)?;
        Some((room, s))
    }

    fn bad_channel_message(&mut self, channel: &[u8], e: room::BadMessage) {
        ShardStats::add(&self.stats().cluster_bad_messages, 1);
        tracing::warn!(channel = %String::from_utf8_lossy(channel), error = %e, "cluster message refused");
    }

    /// Reads a subscribed room's position (`room::sync`).
    fn start_sync(&mut self, room: Arc<str>) {
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
    pub(super) fn synced(&mut self, room: Arc<str>, gen: u32, got: Result<room::Position, RedisError>) {
        let tick = self.wheel.now();
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
            .logs
            .get(&room)
            .map(|l| if l.epoch == epoch { l.last.saturating_add(1) } else { 1 })
            .filter(|&from| from <= offset);
        let Some(want) = missed else {
            self.logs.sync(&room, policy, tick, epoch, offset);
            return self.go_live(&room);
        };
        if keep == 0 {
            // A room without history: nothing to read back.
            self.tell_gap(&room);
            self.logs.sync(&room, policy, tick, epoch, offset);
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
    fn tell_gap(&mut self, room: &Arc<str>) {
        tracing::warn!(%room, "messages missed while unsubscribed are gone from Redis; version-2 members resume");
        for s in 0..self.nr() {
            self.route(s, ShardMsg::RoomGap { room: room.clone() });
        }
    }

    /// On any shard: closes the version-2 connections here that get
    /// `room`'s messages (members, and pattern subscribers it matches) as
    /// `lagged` (`tell_gap`).
    pub(super) fn room_gap(&mut self, room: &str) {
        let members = self.receivers(room, super::mesh::Reach::All);
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
    pub(super) fn filled(
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
        let unix = self.unix_now;
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
        self.logs.sync(&room, policy, self.wheel.now(), epoch, offset);
        self.go_live(&room);
    }

    /// A synced room: what the channel brought meanwhile is applied, and the
    /// waiting joins are answered.
    fn go_live(&mut self, room: &Arc<str>) {
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
    fn sync_failed(&mut self, room: &Arc<str>, why: &str) {
        let tick = self.wheel.now();
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
    fn apply(&mut self, room: &Arc<str>, m: Message) {
        let policy = self.cfg().history.policy(room);
        let now = self.wheel.now();
        let frames = room_frames(room, &m);
        let ttl = (m.ttl > 0).then_some(m.ttl);
        if self
            .logs
            .store(room, policy, now, (m.offset, m.epoch), ttl, frames.v2.clone())
        {
            self.count_history();
            let reach = self.reach_of(room, &m);
            self.fan_out_room(room, &frames, reach);
        }
    }

    /// A pattern publish from the node's channel (on shard 0): every shard
    /// publishes it to the matching rooms it owns and knows.
    fn pattern_message(&mut self, pattern: String, token: u64, m: Message) {
        if crate::proto::pattern::kind(&pattern) != crate::proto::pattern::Kind::Pattern {
            let channel = self
                .cluster
                .as_ref()
                .map(|c| c.node_channel.clone())
                .unwrap_or_default();
            return self.bad_channel_message(channel.as_bytes(), room::BadMessage("not a pattern"));
        }
        let msg = Publication {
            op: m.op,
            id: (!m.id.is_empty()).then(|| Arc::from(m.id.as_str())),
            payload: m.payload,
            ttl: (m.ttl > 0).then_some(m.ttl),
            token: Some(token),
        };
        let pattern: Arc<str> = Arc::from(pattern);
        for s in 0..self.nr() {
            self.route(
                s,
                ShardMsg::PublishPattern {
                    pattern: pattern.clone(),
                    msg: msg.clone(),
                },
            );
        }
    }

    /// Once a sweep, on shard 0: reports the node's counts to Redis and
    /// keeps the cluster's (`cluster::counts`) for the node's readers. Only
    /// what changed since the last report goes, unless the first link has
    /// reconnected since (or every `FULL_REPORT_EVERY` sweeps).
    fn report_counts(&mut self) {
        const FULL_REPORT_EVERY: u32 = 30;
        let tick = self.wheel.now();
        let (ips, conns) = self.shared.online_totals();
        let mut now: FnvHashMap<Arc<str>, u64> = FnvHashMap::default();
        for v in &self.shared.views {
            for (room, n) in &v.load().rooms {
                *now.entry(room.clone()).or_default() += u64::from(*n);
            }
        }
        let Some(c) = self.cluster.as_mut() else { return };
        let link = c.links[0].clone();
        if c.reporting || !link.is_up() {
            return;
        }
        let connects = link.connects();
        let full = connects != c.reported_connects || tick % FULL_REPORT_EVERY == 0;
        let rooms: Vec<(Arc<str>, u64)> = if full {
            now.iter().map(|(r, n)| (r.clone(), *n)).collect()
        } else {
            let gone = c
                .reported
                .keys()
                .filter(|r| !now.contains_key(*r))
                .map(|r| (r.clone(), 0));
            let changed = now
                .iter()
                .filter(|(r, n)| c.reported.get(*r) != Some(*n))
                .map(|(r, n)| (r.clone(), *n));
            gone.chain(changed).collect()
        };
        let report = Report {
            full,
            conns,
            ips: ips as u64,
            rooms,
        };
        c.reporting = true;
        // The registry's spelling: the ids in `vly:nodes` must be one per node.
        let node = c.node.clone();
        self.emit(0, Call::Counts { node, report }, Then::Counted { now, connects });
    }

    /// Shard 0: the counts report's answer, the cluster's sums.
    pub(super) fn counted(&mut self, now: FnvHashMap<Arc<str>, u64>, connects: u64, got: Result<Counts, RedisError>) {
        let shared = self.shared.clone();
        let Some(c) = self.cluster.as_mut() else { return };
        c.reporting = false;
        match got {
            Ok(counts) => {
                c.reported = now;
                c.reported_connects = connects;
                shared.cluster_counts.store(Arc::new(counts));
            }
            // Reported whole next time.
            Err(e) => {
                c.reported_connects = u64::MAX;
                tracing::debug!(error = %e, "counts not reported");
            }
        }
    }

    /// Once a sweep, on each shard: retries failed syncs, and unsubscribes
    /// from rooms the node has had no member of for `LINGER_SECS` (shard
    /// 0 also reports the node's counts).
    pub(super) fn cluster_sweep(&mut self) {
        if self.id == 0 {
            self.report_counts();
        }
        self.register_all();
        self.forget_matched();
        let tick = self.wheel.now();
        let Some(c) = self.cluster.as_ref() else { return };
        let mut retry = Vec::new();
        let mut idle = Vec::new();
        for (room, s) in &c.rooms {
            match s.state {
                State::Failed(at) if tick > at => retry.push(room.clone()),
                _ if s.joins.is_empty()
                    && tick.saturating_sub(s.touched) > LINGER_SECS
                    && self.shared.room_count(room, Some((self.id, self.rooms.count(room)))) == 0 =>
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

    /// Publishes the number of subscribed rooms into the shard's stats.
    fn count_cluster(&self) {
        if let Some(c) = &self.cluster {
            self.stats()
                .cluster_rooms
                .store(c.rooms.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A publication as Redis takes it (its offset and epoch are Redis's to
/// give).
fn message_of(msg: &Publication) -> Message {
    Message {
        offset: 0,
        epoch: 1,
        op: msg.op,
        ttl: msg.ttl.unwrap_or(0),
        id: msg.id.as_deref().unwrap_or("").to_string(),
        payload: msg.payload.clone(),
    }
}

/// A room message's frames: version 1 (the payload) and the version-2
/// envelope with its offset and epoch.
pub(super) fn room_frames(room: &str, m: &Message) -> Frames {
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
