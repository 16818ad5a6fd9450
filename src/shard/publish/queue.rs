//! Step 4 of the publish path. One connection's queue: a frame is queued in
//! the form for the connection's version and transport, charged to the
//! shard's outbound budget, and the connection goes on the dirty list for
//! the flusher (`conn::flush`) on its queue's empty → non-empty edge; a
//! queue over its limit closes its connection as a slow consumer; past the
//! budget's high water the largest queues are shed.
//!
//! Runs on the connection's shard. Invariants: one record lookup per
//! delivery; a frame is never copied per connection; the shard's count of
//! queued bytes equals what its connections' queues hold.

use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::wire::{Frames, Wire};
use crate::shard::conns::{Conn, Session};
use crate::shard::mesh::ConnRef;
use crate::shard::outbound::{PushError, ENTRY_OVERHEAD};
use crate::shard::state::Shard;
use crate::shard::worklist::Worklist;
use bytes::Bytes;

/// What a version-2 slow consumer's goodbye adds: how to get back what it
/// missed.
const RESUME_HINT: &str = "; rejoin each room with its last offset to resume";

impl Shard {
    /// Queues a push to `r` in the form for its protocol version and
    /// transport, enforcing its byte limit. The push is being queued to
    /// `among` connections of this shard, which share its bytes in the
    /// outbound budget (`Outbound::mem`).
    pub(in crate::shard) fn enqueue(&mut self, r: ConnRef, frames: &Frames, among: usize) {
        self.enqueue_with(r, among, |c| frames.for_conn(c.ver, c.transport.form()).clone());
    }

    /// Queues a replayed history frame in `r`'s transport form; what does
    /// not fit under its limit is held behind its queue (`Outbound`).
    pub(in crate::shard) fn enqueue_replay(&mut self, r: ConnRef, wire: &Wire) {
        let (now, cap) = (self.clock.now, self.cfg().limits.replay_limit);
        let limit = self.cfg().limits.outbound_limit;
        let Some((c, stats)) = self.conn_and_stats(r) else {
            return;
        };
        if c.close.is_some() {
            return;
        }
        let frame = wire.for_transport(c.transport.form()).clone();
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
    pub(in crate::shard) fn reply(&mut self, r: ConnRef, ver: u16, op: u32, seq: u32, body: &[u8]) {
        self.enqueue_with(r, 1, |c| c.transport.frame(ver, op, seq, body));
    }

    /// The one place frames are queued: a single record lookup per delivery;
    /// `frame` picks the connection's form and is not built for a
    /// connection that is already closing.
    pub(super) fn enqueue_with(&mut self, r: ConnRef, among: usize, frame: impl FnOnce(&Conn) -> Bytes) {
        let now = self.clock.now;
        let Some(c) = self.conns.slab.get_mut(r.idx as usize).filter(|c| c.gen == r.gen) else {
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
        self.out.dirty.push(r);
    }

    /// `r`'s driver must run (it is closing, or the flusher hands its queue
    /// over): the shard's reactor (`conn::reactor`) runs it, woken on the
    /// list's empty → non-empty edge.
    pub fn wake_conn(&mut self, r: ConnRef) {
        self.out.woken.push(r);
    }

    /// The connections whose queues wait for the flusher (`mark_dirty`).
    pub fn dirty(&mut self) -> &mut Worklist {
        &mut self.out.dirty
    }

    /// The connections whose drivers wait for the reactor (`wake_conn`).
    pub fn woken(&mut self) -> &mut Worklist {
        &mut self.out.woken
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
    pub(in crate::shard) fn requeue<T>(&mut self, r: ConnRef, f: impl FnOnce(&mut Conn) -> T) -> Option<T> {
        let c = self.conns.slab.get_mut(r.idx as usize).filter(|c| c.gen == r.gen)?;
        let before = c.charge();
        let out = f(c);
        let after = c.charge();
        if after >= before {
            self.out.queued += after - before;
        } else {
            self.uncharged(before - after);
        }
        Some(out)
    }

    /// `n` more bytes queued on this shard; past three quarters of its
    /// share of the outbound budget, the largest stalled queues go.
    pub(super) fn charged(&mut self, n: usize) {
        self.out.queued += n;
        if self.out.queued > self.out.shed_above {
            self.shed(false);
        }
    }

    /// `n` fewer bytes queued on this shard.
    pub(in crate::shard) fn uncharged(&mut self, n: usize) {
        // Exact by construction (the simulated-time harness checks it after
        // every step); a drift must not take a shard down in production.
        debug_assert!(self.out.queued >= n, "queued {} < {n}", self.out.queued);
        self.out.queued = self.out.queued.saturating_sub(n);
        if self.out.queued <= self.high_water() {
            self.out.shed_above = self.high_water();
        }
    }

    /// Where shedding starts: three quarters of this shard's share of
    /// `[limits] outbound_budget`. The last quarter is headroom for what
    /// accounting does not see (a burst fanned out faster than it is
    /// written, the allocator's own overhead), so that the process stays
    /// under the budget, not only the count.
    pub(in crate::shard) fn high_water(&self) -> usize {
        self.out.budget - self.out.budget / 4
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
    pub(in crate::shard) fn shed(&mut self, persistent: bool) {
        let target = self.out.budget / 2 + self.out.budget / 8;
        let mut largest: Vec<(bool, usize, ConnRef)> = self
            .conn_refs()
            .filter(|(_, c)| c.close.is_none() && (persistent || c.blocked))
            .map(|(r, c)| (c.blocked, c.charge(), r))
            .filter(|&(_, q, _)| q > 3 * ENTRY_OVERHEAD)
            .collect();
        largest.sort_unstable_by_key(|&(blocked, q, _)| std::cmp::Reverse((blocked, q)));
        let (share, mut closed) = (self.out.budget, 0);
        for (_, q, r) in largest {
            if self.out.queued <= target {
                break;
            }
            let mut detail = format!(
                "{q} bytes queued, the largest while the server's outbound budget was full \
                 ({} bytes on this shard, its share {share})",
                self.out.queued
            );
            if self.conn(r).is_some_and(|c| c.ver == binary::VERSION_NATIVE) {
                detail.push_str(RESUME_HINT);
            }
            self.close(r, CloseReason::SlowConsumer, &detail);
            closed += 1;
        }
        ShardStats::add(&self.stats().budget_closes, closed);
        self.out.shed_above = self.high_water().max(self.out.queued + self.out.budget / 8);
    }
}
