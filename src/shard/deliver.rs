//! Delivery and fan-out: queueing a frame to one connection, and the mesh
//! messages that deliver a push to a room's, the directory's or every
//! connection of this shard.
//!
//! Runs on the owning shard, inside the mesh inbox task (or inline when a
//! publish arrives on the shard that owns its target). Nothing is written
//! here: frames go into each connection's `Outbound`, and a queue's empty →
//! non-empty edge puts the connection on the shard's dirty list, which the
//! shard's flusher task (`conn::flush`) writes out after the burst — one
//! task wake per burst, not one per connection.
//!
//! Invariants: one record lookup per delivery; a frame is never copied per
//! connection (every queue holds a clone of the same `Bytes`, in the form
//! for the connection's protocol version and transport); a queue over its
//! limit closes its connection as a slow consumer, never grows; a version-1
//! connection is only ever given version-1 frames.
//!
//! ```text
//! publish room R ─> owner_of(R): PublishRoom ─> offset, history ─> RoomFrame to every shard ─> each member's queue
//! push keys/mids ─> owners: directory lookup ─> Deliver to the holding shards ─> those queues
//! push all ─────> All to every shard ─> every authenticated connection accepting the op
//! ```
//!
//! The accepts filter (key, user and global pushes) is version 1's; a
//! version-2 connection gets every push addressed to it.

use super::conns::{Conn, Session, Transport};
use super::dedup::Outcome;
use super::mesh::{owner_of_mid, owner_of_str, Answer, ConnRef, Publication, Published, Reach, ShardMsg};
use super::outbound::{PushError, ENTRY_OVERHEAD};
use super::state::Shard;
use super::worklist::Worklist;
use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::pattern;
use crate::proto::publish::Target;
use crate::proto::v2::{Envelope, Kind};
use crate::proto::wire::{Frames, Wire};
use bytes::Bytes;
use fnv::{FnvHashMap, FnvHashSet};
use std::sync::Arc;

/// What a version-2 slow consumer's goodbye adds: how to get back what it
/// missed.
const RESUME_HINT: &str = "; rejoin each room with its last offset to resume";

impl Shard {
    /// Queues a push to `r` in the form for its protocol version and
    /// transport, enforcing its byte limit. The push is being queued to
    /// `among` connections of this shard, which share its bytes in the
    /// outbound budget (`Outbound::mem`).
    pub(super) fn enqueue(&mut self, r: ConnRef, frames: &Frames, among: usize) {
        self.enqueue_with(r, among, |c| {
            frames.for_conn(c.ver, c.transport == Transport::Ws).clone()
        });
    }

    /// Queues a replayed history frame in `r`'s transport form; what does
    /// not fit under its limit is held behind its queue (`Outbound`).
    pub(super) fn enqueue_replay(&mut self, r: ConnRef, wire: &Wire) {
        let (now, cap) = (self.now, self.cfg().limits.replay_limit);
        let limit = self.cfg().limits.outbound_limit;
        let Some((c, stats)) = self.conn_and_stats(r) else {
            return;
        };
        if c.close.is_some() {
            return;
        }
        let frame = wire.for_transport(c.transport == Transport::Ws).clone();
        let Session::V2(v2) = &mut c.session else { return };
        let into_queue =
            v2.held.is_empty() && (c.out.is_empty() || c.out.cost() + frame.len() + ENTRY_OVERHEAD <= limit);
        let pushed = if into_queue {
            // History keeps the frame's bytes (and counts them).
            Ok(c.out.push_unbounded(frame, 0, now))
        } else {
            v2.held.push(frame, cap).map(|()| false)
        };
        match pushed {
            Ok(was_empty) => {
                ShardStats::add(&stats.deliveries, 1);
                self.charged(ENTRY_OVERHEAD);
                if was_empty {
                    self.mark_dirty(r);
                }
            }
            Err(PushError::OverLimit { queued }) => {
                let detail = format!("{queued} bytes of replay waiting, limit {cap}");
                self.close(r, CloseReason::SlowConsumer, &detail);
            }
        }
    }

    /// Queues bytes already in `r`'s wire format (a pong, an echo, the
    /// upgrade answer), enforcing its byte limit.
    pub fn enqueue_bytes(&mut self, r: ConnRef, frame: Bytes) {
        self.enqueue_with(r, 1, |_| frame);
    }

    /// Queues a reply frame to `r` in its wire form. Replies bypass nothing:
    /// a client that floods requests without reading replies is a slow
    /// consumer like any other.
    pub(super) fn reply(&mut self, r: ConnRef, ver: u16, op: u32, seq: u32, body: &[u8]) {
        self.enqueue_with(r, 1, |c| c.transport.frame(ver, op, seq, body));
    }

    /// The one place frames are queued: a single record lookup per delivery;
    /// `frame` picks the connection's form and is not built for a
    /// connection that is already closing.
    fn enqueue_with(&mut self, r: ConnRef, among: usize, frame: impl FnOnce(&Conn) -> Bytes) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(r.idx as usize).filter(|c| c.gen == r.gen) else {
            return;
        };
        let stats = &self.shared.stats[self.id];
        if c.close.is_some() {
            ShardStats::add(&stats.dropped, 1);
            return;
        }
        let limit = c.transport.outbound_limit(&self.shared.config);
        let bytes = frame(c);
        let v2 = c.ver == binary::VERSION_NATIVE;
        let share = bytes.len().div_ceil(among.max(1));
        let (pushed, charge) = match &mut c.session {
            // Behind frames held for a replay, to keep order.
            Session::V2(h) if !h.held.is_empty() => (
                h.held
                    .push(bytes, self.shared.config.limits.replay_limit)
                    .map(|()| false),
                ENTRY_OVERHEAD,
            ),
            _ => (c.out.push(bytes, share, limit, now), share + ENTRY_OVERHEAD),
        };
        match pushed {
            Ok(was_empty) => {
                ShardStats::add(&stats.deliveries, 1);
                self.charged(charge);
                if was_empty {
                    self.mark_dirty(r);
                }
            }
            Err(PushError::OverLimit { queued }) => {
                ShardStats::add(&stats.dropped, 1);
                let mut detail = format!("{queued} bytes queued, limit {limit}");
                if v2 {
                    detail.push_str(RESUME_HINT);
                }
                self.close(r, CloseReason::SlowConsumer, &detail);
            }
        }
    }

    /// `r`'s queue went from empty to non-empty: it is written by the
    /// shard's flusher (`conn::flush`), which is woken on the list's empty →
    /// non-empty edge, so one task runs per burst of deliveries instead of a
    /// driver run per connection. The flusher also puts back a connection
    /// whose write budget ran out with frames left.
    pub fn mark_dirty(&mut self, r: ConnRef) {
        self.dirty.push(r);
    }

    /// `r`'s driver must run (it is closing, or the flusher hands its queue
    /// over): the shard's reactor (`conn::reactor`) runs it, woken on the
    /// list's empty → non-empty edge.
    pub fn wake_conn(&mut self, r: ConnRef) {
        self.woken.push(r);
    }

    /// The connections whose queues wait for the flusher (`mark_dirty`).
    pub fn dirty(&mut self) -> &mut Worklist {
        &mut self.dirty
    }

    /// The connections whose drivers wait for the reactor (`wake_conn`).
    pub fn woken(&mut self) -> &mut Worklist {
        &mut self.woken
    }

    /// `r`'s driver wrote `n` bytes at time `now` (`Conn::written`).
    pub fn written(&mut self, r: ConnRef, n: usize, now: u32) {
        self.requeue(r, |c| {
            c.blocked = false;
            c.written(n, now)
        });
    }

    /// `r`'s socket took nothing: its peer is not reading.
    pub fn write_blocked(&mut self, r: ConnRef) {
        if let Some(c) = self.conn_mut(r) {
            c.blocked = true;
        }
    }

    /// Runs `f` on `r`'s record and keeps the shard's total of queued bytes
    /// (`queued`) true to whatever `f` did to its queue. Never sheds: what
    /// grows here (a goodbye, held frames moving into the queue) is not new
    /// output, and closes run through here.
    pub(super) fn requeue<T>(&mut self, r: ConnRef, f: impl FnOnce(&mut Conn) -> T) -> Option<T> {
        let c = self.conns.get_mut(r.idx as usize).filter(|c| c.gen == r.gen)?;
        let before = c.charge();
        let out = f(c);
        let after = c.charge();
        if after >= before {
            self.queued += after - before;
        } else {
            self.uncharged(before - after);
        }
        Some(out)
    }

    /// `n` more bytes queued on this shard; past three quarters of its
    /// share of the outbound budget, the largest stalled queues go.
    fn charged(&mut self, n: usize) {
        self.queued += n;
        if self.queued > self.shed_above {
            self.shed(false);
        }
    }

    /// `n` fewer bytes queued on this shard.
    pub(super) fn uncharged(&mut self, n: usize) {
        // Exact by construction (the simulated-time harness checks it after
        // every step); a drift must not take a shard down in production.
        debug_assert!(self.queued >= n, "queued {} < {n}", self.queued);
        self.queued = self.queued.saturating_sub(n);
        if self.queued <= self.high_water() {
            self.shed_above = self.high_water();
        }
    }

    /// Where shedding starts: three quarters of this shard's share of
    /// `[limits] outbound_budget`. The last quarter is headroom for what
    /// accounting does not see (a burst fanned out faster than it is
    /// written, the allocator's own overhead), so that the process stays
    /// under the budget, not only the count.
    pub(super) fn high_water(&self) -> usize {
        self.budget - self.budget / 4
    }

    /// This shard's queues passed `high_water`: closes the connections with
    /// the largest queues as slow consumers until the total is under five
    /// eighths of the share (closing drops a slow consumer's unstarted
    /// frames at once).
    ///
    /// Connections whose socket is full (`Conn::blocked`: the peer is not
    /// reading) go first, largest first. The others are about to be
    /// written (the shard has fanned out a burst faster than its drivers
    /// have run): they go too, largest first, but only when `persistent`
    /// (the shard is still over `high_water` at a sweep, a second later: it
    /// is behind on writing to everyone, not stalled by a few). Queues charged
    /// no more than three frames' handles are left: closing one frees about
    /// what its goodbye costs. Connections already closing are left too:
    /// what they hold (a partly written frame, a goodbye) goes when they
    /// flush or are given up, within seconds. While only such queues keep
    /// the shard over its share, the next shed waits for another eighth of
    /// it (or the next sweep), so the connections are not rescanned for
    /// every frame.
    pub(super) fn shed(&mut self, persistent: bool) {
        let target = self.budget / 2 + self.budget / 8;
        let mut largest: Vec<(bool, usize, ConnRef)> = self
            .conn_refs()
            .filter(|(_, c)| c.close.is_none() && (persistent || c.blocked))
            .map(|(r, c)| (c.blocked, c.charge(), r))
            .filter(|&(_, q, _)| q > 3 * ENTRY_OVERHEAD)
            .collect();
        largest.sort_unstable_by_key(|&(blocked, q, _)| std::cmp::Reverse((blocked, q)));
        let (share, mut closed) = (self.budget, 0);
        for (_, q, r) in largest {
            if self.queued <= target {
                break;
            }
            let mut detail = format!(
                "{q} bytes queued, the largest while the server's outbound budget was full \
                 ({} bytes on this shard, its share {share})",
                self.queued
            );
            if self.conn(r).is_some_and(|c| c.ver == binary::VERSION_NATIVE) {
                detail.push_str(RESUME_HINT);
            }
            self.close(r, CloseReason::SlowConsumer, &detail);
            closed += 1;
        }
        ShardStats::add(&self.stats().budget_closes, closed);
        self.shed_above = self.high_water().max(self.queued + self.budget / 8);
    }

    /// On a room's owner: the message gets the room's next offset and a
    /// place in its history, is encoded once per version, and leaves as one
    /// `RoomFrame` per shard (sent in offset order: this shard is the only
    /// one that sends the room's frames).
    ///
    /// A message whose publisher id this shard saw for the same room within
    /// `[api] dedup_window_secs` is not published again: `reply` gets the
    /// first one's offset, marked as a duplicate.
    pub(super) fn publish_room(&mut self, room: Arc<str>, msg: Publication, reply: Answer) {
        let policy = self.cfg().history.policy(&room);
        let now = self.wheel.now();
        let key = msg.id.as_deref().map(|id| format!("r\0{room}\0{id}"));
        if let Some(Outcome::Room { offset, epoch }) = key.as_deref().and_then(|k| self.dedup.seen(k, now)) {
            ShardStats::add(&self.stats().publish_duplicates, 1);
            let p = Published {
                offset,
                epoch,
                duplicate: true,
            };
            return self.answer(reply, &room, p);
        }
        let id = msg.id.as_deref().unwrap_or("");
        let (offset, epoch, v2) = self.logs.publish(&room, policy, now, msg.ttl, |offset, epoch| {
            Wire::from_tcp(
                Envelope {
                    op: msg.op,
                    kind: Kind::Room,
                    room: &room,
                    offset,
                    epoch,
                    id,
                    payload: &msg.payload,
                }
                .frame(),
            )
        });
        self.count_history();
        if let Some(k) = key {
            self.dedup.record(&k, Outcome::Room { offset, epoch }, now);
        }
        let p = Published {
            offset,
            epoch,
            duplicate: false,
        };
        self.answer(reply, &room, p);
        let frames = Frames {
            v1: Wire::encode(binary::VERSION_GOIM, msg.op, 0, &msg.payload),
            v2,
        };
        self.fan_out_room(&room, &frames, Reach::All);
    }

    /// On a room's owner: a message with its offset, to every shard's
    /// members (in offset order: only the owner sends a room's frames).
    pub(super) fn fan_out_room(&mut self, room: &Arc<str>, frames: &Frames, reach: Reach) {
        for s in 0..self.nr() {
            self.route(
                s,
                ShardMsg::RoomFrame {
                    room: room.clone(),
                    frames: frames.clone(),
                    reach,
                },
            );
        }
    }

    /// A push to keys, users or everyone (never a room), as it enters this
    /// node: encoded once per form, then routed to the key and user owners,
    /// or to every shard.
    pub fn route_push(&mut self, target: Target, op: u32, payload: &[u8], id: Option<&str>, ttl: Option<u32>) {
        let n = self.nr();
        let dedup: Option<Arc<str>> = id.map(Arc::from);
        let direct = || {
            Frames::new(&Envelope {
                op,
                kind: Kind::Direct,
                room: "",
                offset: 0,
                epoch: 0,
                id: id.unwrap_or(""),
                payload,
            })
        };
        match target {
            Target::Room(_) => {}
            Target::All => {
                let frames = direct();
                for s in 0..n {
                    self.route(
                        s,
                        ShardMsg::All {
                            op,
                            frames: frames.clone(),
                            dedup: dedup.clone(),
                        },
                    );
                }
            }
            Target::Keys(keys) => {
                let frames = direct();
                let mut by: FnvHashMap<usize, Vec<Arc<str>>> = FnvHashMap::default();
                for k in keys {
                    by.entry(owner_of_str(&k, n)).or_default().push(Arc::from(k));
                }
                for (s, keys) in by {
                    self.route(
                        s,
                        ShardMsg::PushKeys {
                            keys,
                            op,
                            frames: frames.clone(),
                            dedup: dedup.clone(),
                        },
                    );
                }
            }
            Target::Mids(mids) => {
                let push = self.next_push_id();
                let frames = Frames::new(&Envelope {
                    op,
                    kind: Kind::User,
                    room: "",
                    offset: push,
                    epoch: 0,
                    id: id.unwrap_or(""),
                    payload,
                });
                let mut by: FnvHashMap<usize, Vec<i64>> = FnvHashMap::default();
                for m in mids {
                    by.entry(owner_of_mid(m, n)).or_default().push(m);
                }
                for (s, mids) in by {
                    self.route(
                        s,
                        ShardMsg::PushMids {
                            mids,
                            op,
                            frames: frames.clone(),
                            id: push,
                            ttl,
                            dedup: dedup.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Tells whoever waits what a room publish got.
    fn answer(&mut self, reply: Answer, room: &Arc<str>, p: Published) {
        match reply {
            Answer::None => {}
            Answer::Api(r) => r.send(Ok(p)),
            Answer::Client { at, seq } => self.route(
                usize::from(at.shard),
                ShardMsg::ClientPublished {
                    conn: at.conn,
                    seq,
                    room: room.clone(),
                    published: p,
                },
            ),
        }
    }

    /// An API publish to `pattern`: published, each with its own offset, to
    /// every room this shard owns that matches and exists — has a log here,
    /// or members on some shard as of the last published views (counted in
    /// `pattern_publishes`). Costs a pass over those rooms' names.
    pub(super) fn publish_pattern(&mut self, pattern: &str, msg: Publication) {
        let (me, n) = (self.id, self.nr());
        let mut rooms: FnvHashSet<Arc<str>> = self
            .logs
            .names()
            .filter(|r| pattern::matches(pattern, r))
            .cloned()
            .collect();
        for v in &self.shared.views {
            let v = v.load();
            rooms.extend(
                v.rooms
                    .keys()
                    .filter(|r| owner_of_str(r, n) == me && pattern::matches(pattern, r))
                    .cloned(),
            );
        }
        let count = rooms.len();
        ShardStats::add(&self.stats().pattern_publishes, count as u64);
        for room in rooms {
            // This shard owns them: on a single node published here, in a
            // cluster through Redis (each node publishes it, a token makes
            // it once).
            self.publish_room_in(room, msg.clone(), Answer::None);
        }
    }

    /// Every local member of `room`, and every local subscriber of a
    /// pattern it matches, gets `frames` (in its version's form), once.
    pub(super) fn deliver_room(&mut self, room: &str, frames: &Frames, reach: Reach) {
        // Collect first: enqueue may close a slow member, which edits the
        // member list we would be iterating.
        let members = self.receivers(room, reach);
        let among = members.len();
        for m in members {
            self.enqueue(m, frames, among);
        }
    }

    /// The local connections that get `room`'s messages as `reach` says:
    /// its members, the subscribers of patterns it matches, each once.
    pub(super) fn receivers(&self, room: &str, reach: Reach) -> Vec<ConnRef> {
        let mut members: Vec<ConnRef> = match reach {
            Reach::All | Reach::Members => self.rooms.members(room).to_vec(),
            Reach::Patterns => Vec::new(),
        };
        let direct = members.len();
        if reach != Reach::Members {
            self.patterns.lookup(room, &mut members);
        }
        if members.len() > direct {
            // A member of the room may also hold a matching pattern, or two.
            members.sort_unstable_by_key(|r| (r.idx, r.gen));
            members.dedup();
        }
        members
    }

    /// These local connections get `frames` if authenticated and, on
    /// version 1, accepting `op` (and, for targets found by decoding an
    /// assigned key, only if their key is server-assigned).
    pub(super) fn deliver_to(&mut self, conns: Vec<ConnRef>, assigned_only: bool, op: u32, frames: &Frames) {
        let among = conns.len();
        for r in conns {
            if self
                .conn(r)
                .is_some_and(|c| wants(c, op) && (!assigned_only || c.key.is_none()))
            {
                self.enqueue(r, frames, among);
            }
        }
    }

    /// Every authenticated local connection accepting `op` (version 1) and
    /// every version-2 one gets `frames`.
    pub(super) fn deliver_all(&mut self, op: u32, frames: &Frames) {
        let targets: Vec<ConnRef> = self.conn_refs().filter(|(_, c)| wants(c, op)).map(|(r, _)| r).collect();
        let among = targets.len();
        for r in targets {
            self.enqueue(r, frames, among);
        }
    }

    /// Sends each holding shard the directory hits that live there.
    pub(super) fn forward(
        &mut self,
        by_shard: FnvHashMap<u16, Vec<ConnRef>>,
        op: u32,
        frames: &Frames,
        assigned_only: bool,
    ) {
        for (s, conns) in by_shard {
            self.route(
                usize::from(s),
                ShardMsg::Deliver {
                    conns,
                    assigned_only,
                    op,
                    frames: frames.clone(),
                },
            );
        }
    }
}

/// Whether an authenticated connection takes a key, user or global push of
/// `op`: version 2 always, version 1 if it accepts the op (goim's rule).
pub(super) fn wants(c: &Conn, op: u32) -> bool {
    c.authed
        && match &c.session {
            Session::V1 { accepts, .. } => accepts.binary_search(&op).is_ok(),
            Session::V2(_) => true,
        }
}
