//! Pushes to users, on the user's owner shard: live delivery to every
//! connection of the user, the user's inbox (`inbox`), what a user's new
//! connection is owed, and acknowledgements.
//!
//! Runs on the user's owner (`owner_of_mid`) inside its mesh inbox task,
//! except `deliver_owed`, which runs on the connection's shard; never awaits.
//!
//! When a push is kept in the inbox (until a version-2 connection of the
//! user acknowledges it, or it expires or is evicted):
//!
//! ```text
//! the user's connections now      kept?   delivered live to
//! none                             yes     —
//! some version 2 (any others too)  yes     all of them
//! only version 1                   no      all of them (at most once, as goim)
//! ```
//!
//! In cluster mode (`shard::cluster`) a user push reaches only the nodes
//! holding the user, and a node keeps it only for a user with a version-2
//! connection on it; a push to a user no node holds waits in Redis and is
//! pushed again by the first node the user connects to
//! (`redis::registry`).
//!
//! A connection of the user that authenticates is sent what the inbox holds
//! before any later push to the user (the owner sends both, in that order,
//! through the connection shard's FIFO inbox). A version-2 one keeps it owed
//! until acknowledged; a version-1 one, with no version-2 connection of the
//! user up, consumes it (it cannot acknowledge: at most once).

use crate::disk::record::{Record, MAX_ACKS, MAX_MIDS};
use crate::metrics::ShardStats;
use crate::proto::wire::Frames;
use crate::shard::directory::ByShard;
use crate::shard::history;
use crate::shard::mesh::{ConnRef, GlobalConn, ShardMsg};
use crate::shard::publish::wants;
use crate::shard::state::Shard;
use crate::shard::store::durable::checkpoint::envelope;
use crate::shard::store::durable::Held;

impl Shard {
    /// An id for a push to users entering the process here: unique (the
    /// shard in the top 16 bits), never 0, and above every id given out
    /// before, in this process or (the durable store keeps the highest,
    /// `Shared::push_floor`) an earlier one.
    pub fn next_push_id(&mut self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let floor = self.shared.push_floor.load(Relaxed);
        self.owners.push_seq = self.owners.push_seq.max(floor) + 1;
        if self.durable() {
            // Only checkpoints read it: a shared line written per push is
            // paid only where it is kept.
            self.shared.push_floor.fetch_max(self.owners.push_seq, Relaxed);
        }
        ((self.id as u64) << 48) | self.owners.push_seq
    }

    /// On the users' owner: delivers push `id` to every connection of
    /// `mids` and keeps it where the module doc says.
    pub(in crate::shard) fn push_mids(&mut self, mids: &[i64], op: u32, frames: &Frames, id: u64, ttl: Option<u32>) {
        let now = self.conns.wheel.now();
        let mut by = ByShard::default();
        // In a cluster every node hears every user push, and an inbox here
        // is this node's: only a user with a version-2 connection here
        // (which acknowledges here) has it kept here.
        let offline_kept = !self.clustered();
        let mut kept = Vec::new();
        for &m in mids {
            let conns = self.owners.dir.user(m);
            let keep = (offline_kept && conns.is_empty()) || conns.iter().any(|&(_, v2)| v2);
            for (at, _) in conns {
                by.entry(at.shard).or_default().push(at.conn);
            }
            if keep && self.store.inbox.enabled() {
                self.store.inbox.store(m, id, op, frames, now, ttl);
                ShardStats::add(&self.stats().inbox_stored, 1);
                kept.push(m);
            }
        }
        self.store.count_inbox(&self.shared.stats[self.id]);
        self.log_push(kept, id, op, frames, ttl);
        self.forward(by, op, frames, false);
    }

    /// Writes push `id` kept for `mids` to the journal, if there is one.
    fn log_push(&mut self, mids: Vec<i64>, id: u64, op: u32, frames: &Frames, ttl: Option<u32>) {
        if !self.durable() || mids.is_empty() {
            return;
        }
        let Some(env) = envelope(&frames.v2.tcp) else { return };
        let d = self.disk_now();
        let end = history::ttl_end(d.tick, ttl.unwrap_or(self.cfg().inbox.ttl_secs));
        for mids in mids.chunks(MAX_MIDS) {
            self.log(&Record::Push {
                mids: mids.to_vec(),
                push: id,
                op,
                at: d.unix,
                ttl_end: d.unix_end(end),
                id: env.id,
                payload: env.payload,
            });
        }
    }

    /// On the user's owner, when a connection of `mid` registers: sends it
    /// what waits in the inbox (consumed if it is version 1 and no
    /// version-2 connection of the user is up).
    pub(in crate::shard) fn send_owed(&mut self, mid: i64, at: GlobalConn, v2: bool) {
        let now = self.conns.wheel.now();
        let keep = v2 || self.owners.dir.user(mid).iter().any(|&(_, v2)| v2);
        let owed = if keep {
            self.store.inbox.pending(mid, now)
        } else {
            let taken = self.store.inbox.take(mid, now);
            if self.durable() && !taken.is_empty() {
                // Consumed by a version-1 connection: gone as if acknowledged.
                let pushes = taken.iter().map(|e| e.id).collect();
                self.log(&Record::Ack { mid, pushes });
            }
            taken
        };
        if owed.is_empty() {
            return;
        }
        ShardStats::add(&self.stats().inbox_owed, owed.len() as u64);
        self.store.count_inbox(&self.shared.stats[self.id]);
        let pushes = owed.into_iter().map(|e| (e.op, e.frames)).collect();
        self.route(usize::from(at.shard), ShardMsg::Owed { conn: at.conn, pushes });
    }

    /// On the connection's shard: queues what it is owed, in order (version
    /// 1's accepts filter applies, as to any user push).
    pub(in crate::shard) fn deliver_owed(&mut self, conn: ConnRef, pushes: Vec<(u32, Frames)>) {
        for (op, frames) in pushes {
            if self.conn(conn).is_some_and(|c| wants(c, op)) {
                self.enqueue(conn, &frames, 1);
            }
        }
    }

    /// On the user's owner: a version-2 connection of `mid` acknowledged
    /// `ids`; `from` (the connection and its request) is answered once
    /// that is kept.
    pub(in crate::shard) fn ack(&mut self, mid: i64, ids: &[u64], from: Option<(GlobalConn, u32)>) {
        let n = self.store.inbox.ack(mid, ids);
        ShardStats::add(&self.stats().inbox_acked, n as u64);
        self.store.count_inbox(&self.shared.stats[self.id]);
        if n > 0 && self.durable() {
            self.log(&Record::Ack {
                mid,
                pushes: ids.iter().take(MAX_ACKS).copied().collect(),
            });
        }
        if let Some((at, seq)) = from {
            let reply = ShardMsg::AckReply {
                conn: at.conn,
                seq,
                count: ids.len(),
            };
            self.after_kept(Held::Route(usize::from(at.shard), reply));
        }
    }
}
