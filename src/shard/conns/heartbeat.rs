//! Deadlines of the shard's connections: the handshake timeout, the
//! heartbeat deadline, and on WebSocket the ping that stands in for op 2.
//!
//! Runs on the owning shard; `sweep` is its clock (one tick per call, once a
//! second from `shard::run`, directly from the simulated-time harness), and
//! after the deadlines it gives each component its tick (the store's
//! expiry, shedding, the published view, presence, cluster mode). The data
//! structure is `wheel::Wheel`; this module is the policy:
//!
//! ```text
//! deadline passed ── closing (goodbye not taken in CLOSE_FLUSH_SECS) ──> queue discarded, driver ends
//!                 ├─ WebSocket, authed, not pinged ──> ping "volley", deadline += grace
//!                 └─ otherwise ─> close: handshake_timeout (never authed) | heartbeat_timeout
//!                                 (authed, or echo: one deadline, never renewed)
//! op 2, pong ──> pinged = false, deadline = now + heartbeat_timeout_secs + 1 (never early: `deadline_in`)
//! token due (JWT) ─ version 2, refresh_at ──> op 56 (once)   ─ expire_at ──> close: token_expired
//! ```
//!
//! A connection with a token is looked at by the sooner of its deadline and
//! its token's next step (`Conn::next_check`, `access`).
//!
//! Invariant: every live connection has exactly one live wheel entry.

use crate::metrics::ShardStats;
use crate::proto::close::CloseReason;
use crate::proto::ws;
use crate::shard::conns::Conn;
use crate::shard::mesh::ConnRef;
use crate::shard::state::Shard;
use crate::shard::view::ShardView;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Seconds a WebSocket connection has to answer the server's ping once its
/// heartbeat deadline passed (capped by the heartbeat timeout).
pub const WS_PING_GRACE_SECS: u32 = 30;

/// Seconds a closing connection has to take its goodbye (and whatever is
/// queued before it) before it is given up: a client that stopped reading
/// must not hold its socket for ever.
pub const CLOSE_FLUSH_SECS: u32 = 5;

impl Shard {
    /// Makes sure the wheel looks at `r` by its recorded deadline.
    pub(in crate::shard) fn schedule(&mut self, r: ConnRef) {
        let Some(c) = self.conns.slab.get_mut(r.idx as usize).filter(|c| c.gen == r.gen) else {
            return;
        };
        c.wheel_at = self.conns.wheel.schedule(r, c.next_check(), c.wheel_at);
    }

    /// The first tick at least `secs` from now. The tick in force began up
    /// to a second ago, so `now + secs` could come up to a second early; a
    /// client given T seconds is closed between T and T+1 s later, never
    /// before (docs/PROTOCOL.md, *Session*).
    pub(in crate::shard) fn deadline_in(&self, secs: u32) -> u32 {
        self.conns.wheel.now() + secs + 1
    }

    /// A sign of life (op 2, a pong): the heartbeat deadline starts again.
    pub(in crate::shard) fn renew(&mut self, r: ConnRef) {
        let deadline = self.deadline_in(self.cfg().client.heartbeat_timeout_secs);
        let Some(c) = self.conn_mut(r) else { return };
        c.pinged = false;
        c.deadline = deadline;
        self.schedule(r);
    }

    /// A WebSocket pong: the connection's heartbeat deadline starts again
    /// (only past auth: a pong is not auth, and an echo connection lives
    /// its one deadline whatever it answers).
    pub fn ws_pong(&mut self, r: ConnRef) {
        if self.conn(r).is_some_and(|c| c.authed) {
            self.renew(r);
        }
    }

    /// The current tick (seconds since the shard started).
    pub fn tick(&self) -> u32 {
        self.conns.wheel.now()
    }

    /// Advances the clock one second: acts on connections past their
    /// deadline and publishes this shard's view if it changed.
    pub fn sweep(&mut self) {
        let (tick, due) = self.conns.wheel.advance();
        let ping_grace = WS_PING_GRACE_SECS.min(self.cfg().client.heartbeat_timeout_secs);
        for r in due {
            let Some(c) = self.conn_mut(r) else { continue };
            if c.wheel_at != tick {
                continue;
            }
            if c.close.is_none() {
                if let Some(step) = c.token_due(tick) {
                    self.token_step(r, step);
                    if self.is_closing(r) {
                        continue;
                    }
                }
            }
            let Some(c) = self.conn_mut(r) else { continue };
            if c.deadline > tick {
                self.schedule(r);
                continue;
            }
            if c.close.is_some() {
                let dropped = self.requeue(r, Conn::discard_queued).unwrap_or(0);
                self.wake_conn(r);
                ShardStats::add(&self.stats().dropped, dropped as u64);
                continue;
            }
            if c.transport.websocket_open() && !c.pinged && c.authed {
                // The WebSocket heartbeat alternative: a client that answers
                // pings stays, op 2 or not.
                c.pinged = true;
                c.deadline = tick + ping_grace;
                self.enqueue_bytes(r, ws::session::heartbeat_ping());
                self.schedule(r);
            } else if c.authed_or_echo() {
                self.close(r, CloseReason::HeartbeatTimeout, "no heartbeat within the deadline");
            } else {
                self.close(
                    r,
                    CloseReason::HandshakeTimeout,
                    "no auth frame within the handshake timeout",
                );
            }
        }
        self.store.sweep(tick, &self.shared.stats[self.id]);
        self.maybe_checkpoint();
        if self.out.queued > self.high_water() {
            // Still over a second after whatever passed it.
            self.shed(true);
        }
        self.stats().outbound_queued.store(self.out.queued as u64, Relaxed);
        let (compressed, inflated) = crate::proto::ws::deflate::take_counts();
        ShardStats::add(&self.stats().ws_compressed, compressed);
        ShardStats::add(&self.stats().ws_inflated, inflated);
        self.stats()
            .pattern_bytes
            .store(self.index.patterns.bytes() as u64, Relaxed);
        self.publish_view();
        self.presence_sweep();
        self.cluster_sweep();
        if self.id == 0 {
            self.shared.admission.forget_idle(tick as usize, self.clock.unix);
        }
    }

    /// Replaces this shard's published view if its rooms or IPs changed.
    pub(in crate::shard) fn publish_view(&mut self) {
        let rooms_dirty = self.index.rooms.take_dirty();
        if !rooms_dirty && !self.conns.ips_dirty {
            return;
        }
        self.conns.ips_dirty = false;
        let view = ShardView {
            rooms: self
                .index
                .rooms
                .counts()
                .map(|(k, n)| (Arc::from(&**k), n as u32))
                .collect(),
            ips: self.conns.ips.keys().copied().collect(),
        };
        self.stats().rooms.store(self.index.rooms.len() as u64, Relaxed);
        self.shared.views[self.id].store(Arc::new(view));
    }
}
