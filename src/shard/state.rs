//! `Shard`: everything one core owns, and the dispatch of mesh messages.
//!
//! The fields live here; what the shard does with them is spread by
//! responsibility over sibling files, each an `impl Shard` block:
//! `lifecycle` (records, closes, rooms), `heartbeat` (deadlines, sweep),
//! `deliver` (queues, fan-out), `resume` (version-2 joins, history reads),
//! `session`, `v1` and `v2` (client frames), `access` (tokens, limits,
//! client publish), `presence`.
//!
//! Runs on exactly one glommio executor thread and is shared by that
//! executor's tasks through `Rc<RefCell<Shard>>`. No method awaits, reads a
//! clock or touches a socket: time arrives as `sweep` ticks and `set_clock`
//! stamps, bytes as `feed`, and what connections are sent accumulates in
//! their records' queues. That is what lets the simulated-time harness
//! (`sim`) drive it without sockets.
//!
//! Routing: `route(to, msg)` handles a message inline when `to` is this
//! shard and sends it over the mesh otherwise (seastar's `invoke_on`).

use super::conns::Conn;
use super::dedup::{Dedup, Outcome};
use super::directory::{Directory, KeyRule};
use super::history::Logs;
use super::inbox::{Inboxes, Policy as InboxPolicy};
use super::members::Watched;
use super::mesh::{ConnRef, GlobalConn, MembersTo, ShardMsg};
use super::patterns::PatternIndex;
use super::rooms::RoomTable;
use super::view::Shared;
use super::wheel::Wheel;
use super::worklist::Worklist;
use crate::config::{AuthMode, Config};
use crate::metrics::ShardStats;
use crate::proto::close::CloseReason;
use fnv::{FnvHashMap, FnvHashSet};
use slab::Slab;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

/// One core's state.
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Cross-shard state.
    pub shared: Arc<Shared>,
    /// Local connections.
    pub(super) conns: Slab<Conn>,
    /// Next generation to hand out.
    pub(super) next_gen: u32,
    /// Local room memberships.
    pub(super) rooms: RoomTable<ConnRef>,
    /// This shard's slice of the key and user directory.
    pub(super) dir: Directory,
    /// Heartbeat / handshake deadlines, one slot per second.
    pub(super) wheel: Wheel<ConnRef>,
    /// Offsets, epochs and history of the rooms this shard owns.
    pub(super) logs: Logs,
    /// Inboxes of the users this shard owns.
    pub(super) inbox: Inboxes,
    /// Pushes to users that entered the process at this shard (their ids).
    pub(super) push_seq: u64,
    /// Client IPs on this shard with their connection counts.
    pub(super) ips: FnvHashMap<IpAddr, u32>,
    /// IP set changed since the last published view.
    pub(super) ips_dirty: bool,
    /// The clock frames are stamped with when queued (µs, wrapping), as
    /// last set by whoever drives the shard (`set_clock`).
    pub(super) now: u32,
    /// Open TCP publisher sockets, so shutdown can end their reads at once.
    pub(super) publishers: FnvHashSet<RawFd>,
    /// Set by `Shutdown`: accept loops stop, new connections are refused.
    pub shutting_down: bool,
    /// Publisher message ids seen lately, of what this shard acted on first
    /// (`dedup`).
    pub(super) dedup: Dedup,
    /// Sum of every local connection's `Conn::charge`: what their output
    /// costs in memory (kept by each change to a queue, see `deliver`).
    pub(super) queued: usize,
    /// This shard's share of `[limits] outbound_budget` (`usize::MAX` when
    /// the configuration left it unresolved, as the simulated-time harness
    /// does).
    pub(super) budget: usize,
    /// Above this, the next queued frame sheds the largest queues
    /// (`Shard::shed`): `high_water`, or more while what keeps the shard
    /// over it cannot be shed yet.
    pub(super) shed_above: usize,
    /// Unix seconds, as last set by whoever drives the shard (`set_unix`):
    /// what token expiry and the per-IP attempt window are measured with.
    pub(super) unix_now: u64,
    /// Local version-2 connections' pattern subscriptions.
    pub(super) patterns: PatternIndex<ConnRef>,
    /// Rooms whose members' joins and leaves someone watches (`presence`).
    pub(super) watched: Watched<ConnRef>,
    /// Connections whose queue went from empty to non-empty since the
    /// flusher last ran (`Shard::mark_dirty`).
    pub(super) dirty: Worklist,
    /// Connections whose driver must run: closes, and the flusher handing
    /// a queue over (`Shard::wake_conn`), for the reactor (`conn::reactor`).
    pub(super) woken: Worklist,
    /// Cluster mode: links, subscribers, subscribed rooms (`None`: single
    /// node).
    pub cluster: Option<super::cluster::state::ShardCluster>,
}

impl Shard {
    /// A new, empty shard.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        let nr = shared.mesh.nr_shards().max(1);
        let history_cap = shared.config.history.memory / nr;
        let budget = match shared.config.limits.outbound_budget {
            0 => usize::MAX,
            b => (b / nr).max(1),
        };
        let dedup = Dedup::new(shared.config.api.dedup_window_secs, shared.config.api.dedup_max / nr);
        let ib = &shared.config.inbox;
        let inbox = Inboxes::new(
            InboxPolicy {
                messages: ib.messages,
                bytes: ib.bytes,
                ttl: ib.ttl_secs,
            },
            ib.memory / nr,
        );
        let mut logs = Logs::new(history_cap);
        let views = shared.clone();
        logs.set_in_use(move |room| views.room_count(room, None) > 0);
        Shard {
            id,
            shared,
            conns: Slab::new(),
            next_gen: 1,
            rooms: RoomTable::new(),
            dir: Directory::default(),
            wheel: Wheel::new(),
            logs,
            inbox,
            push_seq: 0,
            ips: FnvHashMap::default(),
            ips_dirty: false,
            now: 0,
            publishers: FnvHashSet::default(),
            shutting_down: false,
            dedup,
            queued: 0,
            budget,
            shed_above: budget - budget / 4,
            unix_now: 0,
            patterns: PatternIndex::new(),
            watched: Watched::default(),
            dirty: Worklist::default(),
            woken: Worklist::default(),
            cluster: None,
        }
    }

    pub(super) fn cfg(&self) -> &Config {
        &self.shared.config
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.shared.mesh.nr_shards()
    }

    pub(super) fn nr(&self) -> usize {
        self.nr_shards()
    }

    /// Sets the clock that frames queued from now on are stamped with (µs
    /// on any monotonic clock, wrapping); the driver compares against the
    /// same clock when it writes them (queue-wait metric).
    pub fn set_clock(&mut self, now_us: u32) {
        self.now = now_us;
    }

    /// Sets the wall-clock time (Unix seconds) tokens and per-IP windows
    /// are checked against.
    pub fn set_unix(&mut self, secs: u64) {
        self.unix_now = secs;
    }

    /// A TCP publisher connection opened (`fd`) on this shard.
    pub fn publisher_opened(&mut self, fd: RawFd) {
        self.publishers.insert(fd);
        ShardStats::add(&self.stats().publishers, 1);
    }

    /// A TCP publisher connection closed; its descriptor is about to close.
    pub fn publisher_closed(&mut self, fd: RawFd) {
        if self.publishers.remove(&fd) {
            self.stats()
                .publishers
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The open publisher sockets (shutdown shuts their read sides).
    pub fn publisher_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.publishers.iter().copied()
    }

    /// Sends `msg` to shard `to`, or handles it inline when `to` is this shard.
    pub fn route(&mut self, to: usize, msg: ShardMsg) {
        if to == self.id {
            self.handle(msg);
        } else {
            self.shared.mesh.send(to, msg);
        }
    }

    /// Of `targets` of a push with publisher message id `id`, those that
    /// have not had a push with that id within the dedup window (all of
    /// them when there is no id); remembers the id for each. `key` names a
    /// target in this shard's dedup set.
    pub(super) fn first_seen<T>(&mut self, targets: Vec<T>, id: Option<&str>, key: impl Fn(&T) -> String) -> Vec<T> {
        let Some(id) = id else { return targets };
        let now = self.wheel.now();
        let before = targets.len();
        let fresh: Vec<T> = targets
            .into_iter()
            .filter(|t| {
                let k = format!("{}\0{id}", key(t));
                if self.dedup.seen(&k, now).is_some() {
                    return false;
                }
                self.dedup.record(&k, Outcome::Direct, now);
                true
            })
            .collect();
        ShardStats::add(&self.stats().publish_duplicates, (before - fresh.len()) as u64);
        fresh
    }

    /// Acts on one mesh message.
    pub fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::PublishRoom { room, msg, reply } => self.publish_room(room, msg, reply),
            ShardMsg::PublishPattern { pattern, msg } => self.publish_pattern(&pattern, msg),
            ShardMsg::ClientPublished {
                conn,
                seq,
                room,
                published,
            } => self.client_published(conn, seq, &room, published),
            ShardMsg::Watch { room, delta } => self.on_watch(room, delta),
            ShardMsg::Watching { room, on } => self.on_watching(room, on),
            ShardMsg::PresenceDelta { room, changes } => self.on_presence_delta(&room, changes),
            ShardMsg::PresenceFrame { room, wire } => self.on_presence_frame(&room, &wire),
            ShardMsg::PresenceReq { room, limit, to } => {
                let (count, members) = self.presence_page(&room, limit);
                match to {
                    MembersTo::Api(reply) => reply.send((count, members)),
                    MembersTo::Gather { shard, id } => {
                        self.route(shard, ShardMsg::PresencePart { id, count, members });
                    }
                }
            }
            ShardMsg::PresencePart { id, count, members } => self.presence_part(id, count, members),
            ShardMsg::PresenceAsk { room, limit, reply } => self.cluster_presence(room, limit, reply),
            ShardMsg::RoomFrame { room, frames, reach } => self.deliver_room(&room, &frames, reach),
            ShardMsg::GlobInterest { glob, delta } => self.on_glob_interest(glob, delta),
            ShardMsg::Matched { room, message } => self.on_matched(room, message),
            ShardMsg::PushKeys {
                keys,
                op,
                frames,
                dedup,
            } => {
                let keys = self.first_seen(keys, dedup.as_deref(), |k| format!("k\0{k}"));
                let (by_entry, assigned) = self.dir.lookup_keys(&keys, &self.shared.keys, self.nr());
                self.forward(by_entry, op, &frames, false);
                self.forward(assigned, op, &frames, true);
            }
            ShardMsg::PushMids {
                mids,
                op,
                frames,
                id,
                ttl,
                dedup,
            } => {
                let mids = self.first_seen(mids, dedup.as_deref(), |m| format!("u\0{m}"));
                self.push_mids(&mids, op, &frames, id, ttl);
            }
            ShardMsg::Owed { conn, pushes } => self.deliver_owed(conn, pushes),
            ShardMsg::Ack { mid, ids } => self.ack(mid, &ids),
            ShardMsg::Deliver {
                conns,
                assigned_only,
                op,
                frames,
            } => self.deliver_to(conns, assigned_only, op, &frames),
            ShardMsg::All { op, frames, dedup } => {
                if !self
                    .first_seen(vec![()], dedup.as_deref(), |()| "a".to_string())
                    .is_empty()
                {
                    self.deliver_all(op, &frames);
                }
            }
            ShardMsg::JoinReq {
                room,
                at,
                seq,
                resume,
                mid,
                presence,
            } => {
                self.join_at_owner(room, at, seq, (resume, mid, presence));
            }
            ShardMsg::MarkReq {
                room,
                at,
                seq,
                mid,
                offset,
            } => self.mark_req(room, at, seq, mid, offset),
            ShardMsg::MarkReply { conn, seq, room, mark } => self.mark_reply(conn, seq, &room, mark),
            ShardMsg::UnreadReq { mid, rooms, reply } => {
                reply.send(rooms.iter().map(|r| self.logs.unread(r, mid)).collect());
            }
            ShardMsg::JoinReply {
                conn,
                seq,
                room,
                asked,
                resumed,
                presence,
            } => self.join_reply(conn, seq, room, (asked, presence), resumed),
            ShardMsg::HistoryReq {
                room,
                since,
                limit,
                reply,
            } => reply.send(self.history_page(&room, since, limit)),
            ShardMsg::Register { key, mid, at, v2 } => self.register(key, mid, at, v2),
            ShardMsg::Unregister { key, mid, at } => {
                // A key's message names the user only to say whose it is.
                let mid = if key.is_some() { 0 } else { mid };
                let (key_gone, user_gone) = self.dir.unregister(key.as_deref(), mid, at);
                self.registry_change(key.as_deref().filter(|_| key_gone), user_gone.then_some(mid), false);
            }
            ShardMsg::Kick {
                conn,
                reason,
                assigned_only,
            } => self.kick(conn, reason, assigned_only),
            ShardMsg::Interest { room } => self.want_room(&room),
            ShardMsg::Reregister { instance } => self.reregister(instance),
            ShardMsg::RoomGap { room } => self.room_gap(&room),
            ShardMsg::KeyTaken { key } => {
                let (held, _) = self.dir.lookup_keys(&[key], &self.shared.keys, self.nr());
                for (shard, conns) in held {
                    for conn in conns {
                        let reason = crate::proto::close::CloseReason::Replaced;
                        let kick = ShardMsg::Kick {
                            conn,
                            reason,
                            assigned_only: false,
                        };
                        self.route(usize::from(shard), kick);
                    }
                }
            }
            ShardMsg::JoinFailed { conn, seq, room, why } => self.on_join_failed(conn, seq, &room, &why),
            ShardMsg::Shutdown => self.shutdown(),
        }
    }

    /// On a key's or user's owner: records where the connection lives; a key
    /// already held elsewhere has its previous holder kicked as `replaced`;
    /// a user's new connection is sent what waits in the user's inbox.
    fn register(&mut self, key: Option<Arc<str>>, mid: i64, at: GlobalConn, v2: bool) {
        let n = self.nr();
        let rule = match self.cfg().auth.mode {
            AuthMode::Off => KeyRule::Anyone,
            AuthMode::Jwt => KeyRule::SameUser,
        };
        let (kick, mid) = match key {
            Some(key) => {
                let kick = self
                    .dir
                    .register_key(key.clone(), mid, at, (&self.shared.keys, n), rule);
                let refused = kick.is_some_and(|k| k.reason == CloseReason::KeyInUse);
                self.registry_change(Some(&*key).filter(|_| !refused), None, true);
                (kick, 0)
            }
            None => {
                let first = mid != 0 && self.dir.user(mid).is_empty();
                self.dir.register_user(mid, at, v2);
                self.registry_change(None, first.then_some(mid), true);
                (None, mid)
            }
        };
        if mid != 0 {
            let over = self.user_over_limit(mid, at);
            if let Some(gone) = over {
                // Out of the directory now, so that the user's next
                // connection does not count it (its own unregister, later,
                // finds nothing).
                // The user keeps `at`, so stays registered.
                let _ = self.dir.unregister(None, mid, gone);
                self.route(
                    usize::from(gone.shard),
                    ShardMsg::Kick {
                        conn: gone.conn,
                        reason: CloseReason::UserConnLimit,
                        assigned_only: false,
                    },
                );
            }
            if over != Some(at) {
                self.send_owed(mid, at, v2);
            }
        }
        if let Some(k) = kick {
            self.route(
                usize::from(k.at.shard),
                ShardMsg::Kick {
                    conn: k.at.conn,
                    reason: k.reason,
                    assigned_only: k.assigned_only,
                },
            );
        }
    }
}
