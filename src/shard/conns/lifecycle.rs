//! Connection life cycle on a shard: a record is created at accept, marked
//! closing with a named reason (queueing the goodbye), and removed when its
//! driver ends; room membership changes in between; a drain tells each
//! connection to reconnect at its turn (`conns::drain` plans when).
//!
//! Runs on the owning shard only; nothing here awaits or touches a socket.
//!
//! Invariants:
//! - a `ConnRef` is unique per shard and never valid on another shard; a
//!   stale one (slot reused) fails the generation check and is ignored;
//! - the first close reason wins; once closing, a connection gets nothing
//!   queued but its op 6 goodbye and, on WebSocket, the close frame after it;
//! - a WebSocket connection whose upgrade is not answered yet
//!   (`Transport::WsUpgrading`) gets nothing framed: only the driver's HTTP
//!   answer;
//! - a version-1 connection is in at most one room (`Conn::room`), a
//!   version-2 one in up to `[client] max_rooms` (`V2Conn::rooms`); either
//!   way the record holds its position in each room's member list.
//!
//! ```text
//! accept ─> new_conn ──op 7 ok──> authed ──op 6 / EOF / error / timeout──> closing ─> remove_conn
//!              └──── any other frame, bad auth, timeout ──────────────────────┘
//! ```

use crate::metrics::ShardStats;
use crate::proto::binary::{self, op};
use crate::proto::close::CloseReason;
use crate::proto::ws;
use crate::shard::conns::drain::Plan;
use crate::shard::conns::{Conn, Session, Transport};
use crate::shard::mesh::{owner_of_mid, owner_of_str, ConnRef, GlobalConn, ShardMsg};
use crate::shard::outbound::Outbound;
use crate::shard::state::Shard;
use crate::shard::token::Token;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl Shard {
    /// A TCP publisher connection opened (`fd`) on this shard.
    pub fn publisher_opened(&mut self, fd: RawFd) {
        self.conns.publishers.insert(fd);
        ShardStats::add(&self.stats().publishers, 1);
    }

    /// A TCP publisher connection closed; its descriptor is about to close.
    pub fn publisher_closed(&mut self, fd: RawFd) {
        if self.conns.publishers.remove(&fd) {
            self.stats().publishers.fetch_sub(1, Relaxed);
        }
    }

    /// The open publisher sockets (shutdown shuts their read sides).
    pub fn publisher_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.conns.publishers.iter().copied()
    }

    /// Registers a freshly accepted connection (its socket `fd`, which the
    /// flusher writes to; -1 for none); it must auth before the handshake
    /// deadline.
    pub fn new_conn(&mut self, ip: IpAddr, transport: Transport, fd: RawFd) -> ConnRef {
        let gen = self.conns.next_gen;
        // 31 bits: the readiness ring (`conn::ring`) keeps a slot and its
        // generation in one 64-bit tag beside one bit of its own.
        self.conns.next_gen = ((self.conns.next_gen + 1) & 0x7fff_ffff).max(1);
        let deadline = self.deadline_in(self.cfg().client.handshake_timeout_secs);
        let idx = self.conns.slab.insert(Conn {
            gen,
            out: Outbound::default(),
            authed: false,
            ver: binary::VERSION_GOIM,
            key: None,
            mid: 0,
            session: Session::default(),
            deadline,
            wheel_at: 0,
            close: None,
            ip,
            transport,
            pinged: false,
            blocked: false,
            token: None,
            fd,
        });
        let r = ConnRef { idx: idx as u32, gen };
        self.schedule(r);
        *self.conns.ips.entry(ip).or_default() += 1;
        self.conns.ips_dirty = true;
        ShardStats::add(&self.stats().conns, 1);
        ShardStats::add(&self.stats().accepted, 1);
        self.admit(r);
        r
    }

    /// The record of a live connection.
    pub fn conn_mut(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns.slab.get_mut(r.idx as usize).filter(|c| c.gen == r.gen)
    }

    /// The record of a live connection and this shard's counters, at once
    /// (the driver writes from the one and counts in the other).
    pub fn conn_and_stats(&mut self, r: ConnRef) -> Option<(&mut Conn, &ShardStats)> {
        let stats = &self.shared.stats[self.id];
        let c = self.conns.slab.get_mut(r.idx as usize).filter(|c| c.gen == r.gen)?;
        Some((c, stats))
    }

    /// The record of a live connection, to read.
    pub fn conn(&self, r: ConnRef) -> Option<&Conn> {
        self.conns.slab.get(r.idx as usize).filter(|c| c.gen == r.gen)
    }

    /// `r` is gone or closing: nothing more is read from it.
    pub fn is_closing(&self, r: ConnRef) -> bool {
        self.conn(r).is_none_or(Conn::closing)
    }

    /// Live connections on this shard.
    pub fn nr_conns(&self) -> usize {
        self.conns.slab.len()
    }

    /// Every live connection, with its record.
    pub(in crate::shard) fn conn_refs(&self) -> impl Iterator<Item = (ConnRef, &Conn)> {
        self.conns.slab.iter().map(|(i, c)| {
            (
                ConnRef {
                    idx: i as u32,
                    gen: c.gen,
                },
                c,
            )
        })
    }

    /// Forgets a connection whose driver has ended: leaves its room, tells the
    /// directory owners, counts the close.
    pub fn remove_conn(&mut self, r: ConnRef) {
        if self.conn(r).is_none() {
            return;
        }
        // Presence reports the leave with the record still there to name it
        // (nothing to do, and nothing collected, while no room is watched).
        if self.presence_in_use() {
            let rooms: Vec<Rc<str>> = match &self.conns.slab[r.idx as usize].session {
                Session::V1 { room, .. } => room.iter().map(|(n, _)| n.clone()).collect(),
                Session::V2(v2) => v2.rooms.iter().map(|(n, _)| n.clone()).collect(),
            };
            for room in &rooms {
                self.presence_change(r, room, false);
                self.unwatch(r, room);
            }
        }
        let c = self.conns.slab.remove(r.idx as usize);
        self.uncharged(c.charge());
        self.shared.admission.release(c.ip, self.clock.unix, c.authed);
        let reason = c.close.unwrap_or(CloseReason::PeerClosed);
        match &c.session {
            Session::V1 {
                room: Some((room, pos)),
                ..
            } => self.leave_room(room.clone(), *pos),
            Session::V1 { room: None, .. } => {}
            Session::V2(v2) => {
                for (room, pos) in &v2.rooms {
                    self.leave_room(room.clone(), *pos);
                }
                for p in &v2.patterns {
                    self.index.patterns.remove(p, r);
                    self.pattern_interest(p, -1);
                }
            }
        }
        if c.authed {
            let at = GlobalConn {
                shard: self.id as u16,
                conn: r,
            };
            self.announce(at, c.key.clone(), c.mid, false);
            self.stats().authed.fetch_sub(1, Relaxed);
        }
        if let Some(n) = self.conns.ips.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.conns.ips.remove(&c.ip);
                self.conns.ips_dirty = true;
            }
        }
        self.stats().conns.fetch_sub(1, Relaxed);
        self.stats().close(reason);
        tracing::debug!(shard = self.id, conn = r.idx, reason = reason.name(), "closed");
    }

    /// `r` passed auth as user `mid` holding `key` (`None`: its assigned
    /// one), speaking version `ver` with `session`: its heartbeat deadline
    /// starts, and its IP's handshake count no longer includes it.
    pub(in crate::shard) fn set_authed(
        &mut self,
        r: ConnRef,
        ver: u16,
        (mid, key, token): (i64, Option<Arc<str>>, Option<Box<Token>>),
        session: Session,
    ) {
        let Some(c) = self.conn_mut(r) else { return };
        c.authed = true;
        c.ver = ver;
        c.mid = mid;
        c.key = key;
        c.token = token;
        c.session = session;
        let ip = c.ip;
        self.shared.admission.authenticated(ip);
        self.renew(r);
        ShardStats::add(&self.stats().authed, 1);
    }

    /// Tells the owners of `key` and `mid` that the connection at `at`
    /// authenticated (`up`) or went away.
    pub(in crate::shard) fn announce(&mut self, at: GlobalConn, key: Option<Arc<str>>, mid: i64, up: bool) {
        let v2 = self.conn(at.conn).is_some_and(|c| c.ver == binary::VERSION_NATIVE);
        let msg = |key, mid| {
            if up {
                ShardMsg::Register { key, mid, at, v2 }
            } else {
                ShardMsg::Unregister { key, mid, at }
            }
        };
        if let Some(key) = key {
            let owner = owner_of_str(&key, self.nr());
            self.route(owner, msg(Some(key), mid));
        }
        if mid != 0 {
            let owner = owner_of_mid(mid, self.nr());
            self.route(owner, msg(None, mid));
        }
    }

    /// On a connection's shard: closes it (for `Replaced`, only if it has
    /// authenticated — a key names authenticated connections only — and,
    /// when found by decoding an assigned key, only if its key is assigned).
    pub(in crate::shard) fn kick(&mut self, conn: ConnRef, reason: CloseReason, assigned_only: bool) {
        let detail = if reason == CloseReason::Replaced {
            if !self
                .conn(conn)
                .is_some_and(|c| c.authed && (!assigned_only || c.key.is_none()))
            {
                return;
            }
            "another connection authenticated with this key"
        } else if reason == CloseReason::UserConnLimit {
            "the user has [limits] max_conns_per_user connections"
        } else if reason == CloseReason::KeyInUse {
            "a connection of another user holds this key"
        } else {
            ""
        };
        self.close(conn, reason, detail);
    }

    /// Takes the member at `pos` out of `room`, fixing the position of the
    /// member that moved into its place (a version-1 connection's one room,
    /// or the matching room of a version-2 one).
    pub(in crate::shard) fn leave_room(&mut self, room: Rc<str>, pos: usize) {
        if let Some(moved) = self.index.rooms.leave(&room, pos) {
            if let Some(m) = self.conn_mut(moved) {
                let at = match &mut m.session {
                    Session::V1 { room, .. } => room.as_mut(),
                    Session::V2(v2) => v2.rooms.iter_mut().find(|(r, _)| Rc::ptr_eq(r, &room)),
                };
                if let Some((_, p)) = at {
                    *p = pos;
                }
            }
        }
    }

    /// Moves `r` to `room` (empty: out of any room); staying is a no-op.
    pub(in crate::shard) fn change_room(&mut self, r: ConnRef, room: &str) {
        let Some(Conn {
            session: Session::V1 { room: current, .. },
            ..
        }) = self.conn_mut(r)
        else {
            return;
        };
        if let Some((old, pos)) = current.take() {
            if &*old == room {
                *current = Some((old, pos));
                return;
            }
            self.presence_change(r, &old, false);
            self.leave_room(old, pos);
        }
        if room.is_empty() {
            return;
        }
        self.presence_change(r, room, true);
        let (name, pos) = self.index.rooms.join(room, r);
        if pos == 0 {
            self.first_member(room);
        }
        if let Some(Conn {
            session: Session::V1 { room: current, .. },
            ..
        }) = self.conn_mut(r)
        {
            *current = Some((name, pos));
        }
    }

    /// Marks `r` as closing with `reason` (first reason wins) and wakes its
    /// driver. Where the reason is for the client, an op 6 frame carrying
    /// `"<reason>: <detail>"` is queued as the last thing it will receive.
    pub fn close(&mut self, r: ConnRef, reason: CloseReason, detail: &str) {
        self.close_with_code(r, reason, detail, None);
    }

    /// `close`, naming the WebSocket close code (otherwise the reason's).
    /// WebSocket connections get the op 6 frame (protocol endpoint) and then
    /// a close frame with the same text.
    pub fn close_with_code(&mut self, r: ConnRef, reason: CloseReason, detail: &str, ws_code: Option<u16>) {
        let (id, now) = (self.id, self.clock.now);
        let flush_by = self.conns.wheel.now() + crate::shard::heartbeat::CLOSE_FLUSH_SECS;
        if self.conn(r).is_none_or(|c| c.close.is_some()) {
            return;
        }
        let dropped = self
            .requeue(r, |c| {
                if c.transport == Transport::WsUpgrading {
                    if let Some(status) = reason.http_status() {
                        // Refused before its upgrade: told in HTTP, the only
                        // thing it can read yet.
                        c.out
                            .push_unbounded(ws::refusal(status, &reason.goodbye(detail)), usize::MAX, now);
                    }
                }
                c.close = Some(reason);
                c.deadline = flush_by;
                let dropped = if reason == CloseReason::SlowConsumer {
                    c.clear_queued()
                } else {
                    0
                };
                let goodbye = reason.notifies_client()
                    && matches!(c.transport, Transport::Tcp | Transport::Ws | Transport::WsDeflate);
                let close_code = if c.transport.websocket_open() {
                    ws_code.or_else(|| reason.ws_close_code())
                } else {
                    None
                };
                if goodbye || close_code.is_some() {
                    let text = reason.goodbye(detail);
                    if goodbye {
                        c.out.push_unbounded(
                            c.transport.frame(c.ver, op::DISCONNECT, 0, text.as_bytes()),
                            usize::MAX,
                            now,
                        );
                    }
                    if let Some(code) = close_code {
                        c.out.push_unbounded(ws::close_frame(code, &text), usize::MAX, now);
                    }
                }
                dropped
            })
            .unwrap_or(0);
        self.wake_conn(r);
        self.schedule(r);
        ShardStats::add(&self.stats().dropped, dropped as u64);
        let name = reason.name();
        if reason.is_quiet() {
            tracing::debug!(shard = id, conn = r.idx, reason = name, detail, "closing connection");
        } else {
            tracing::info!(shard = id, conn = r.idx, reason = name, detail, "closing connection");
        }
    }

    /// Stops accepting and closes every connection, telling each to
    /// reconnect.
    pub(in crate::shard) fn shutdown(&mut self) {
        self.shutting_down = true;
        let all: Vec<ConnRef> = self.conn_refs().map(|(r, _)| r).collect();
        for r in all {
            self.close(r, CloseReason::Shutdown, "server shutting down, reconnect");
        }
    }

    /// The HTTP upgrade of `r` was answered: from now on it speaks
    /// WebSocket frames. Echo connections skip auth and live until their
    /// heartbeat deadline, which nothing renews (the endpoint is for
    /// conformance runs, not for holding connections).
    pub fn ws_upgraded(&mut self, r: ConnRef, echo: bool, compressed_sends: bool) {
        let heartbeat = self.cfg().client.heartbeat_timeout_secs;
        let now = self.conns.wheel.now();
        let Some(c) = self.conn_mut(r) else { return };
        if echo {
            c.transport = Transport::WsEcho;
            c.deadline = now + heartbeat;
            self.schedule(r);
        } else if compressed_sends {
            c.transport = Transport::WsDeflate;
        } else {
            c.transport = Transport::Ws;
        }
    }
}

/// A drain's goodbye detail: what a client should do.
const DRAIN_DETAIL: &str = "the server is draining: reconnect (version 2: resume from your offsets)";

/// Draining (`volley drain`, `conns::drain`).
impl Shard {
    /// Begins draining this shard's client connections over `over_ms` from
    /// `now_ms` (the driver's monotonic clock); a second drain while one
    /// runs changes nothing. Returns when the first is due (`None`: no
    /// connection to tell).
    pub fn drain_begin(&mut self, now_ms: u64, over_ms: u64, seed: u64) -> Option<u64> {
        if self.conns.drain.is_none() {
            let conns: Vec<ConnRef> = self
                .conn_refs()
                .filter(|(_, c)| c.close.is_none())
                .map(|(r, _)| r)
                .collect();
            let progress = &self.shared.drain;
            progress.planned.fetch_add(conns.len() as u64, Relaxed);
            progress.shards_started.fetch_add(1, Relaxed);
            self.conns.drain = Some(Plan::new(conns, now_ms, over_ms, seed));
        }
        self.conns.drain.as_ref().and_then(Plan::next_due)
    }

    /// Tells the connections due at `now_ms` to reconnect; returns when
    /// the next is due, `None` once the plan is spent (or none runs).
    pub fn drain_due(&mut self, now_ms: u64) -> Option<u64> {
        let due = self.conns.drain.as_mut()?.take_due(now_ms);
        self.shared.drain.told.fetch_add(due.len() as u64, Relaxed);
        for r in due {
            if self.conn(r).is_some_and(|c| c.close.is_none()) {
                self.close(r, CloseReason::Restart, DRAIN_DETAIL);
            }
        }
        self.conns.drain.as_ref().and_then(Plan::next_due)
    }
}
