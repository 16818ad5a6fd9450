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

use crate::metrics::ShardStats;
use crate::proto::wire::Frames;
use crate::shard::directory::ByShard;
use crate::shard::mesh::{ConnRef, GlobalConn, ShardMsg};
use crate::shard::publish::wants;
use crate::shard::state::Shard;

impl Shard {
    /// An id for a push to users entering the process here: unique in the
    /// process (the shard in the top 16 bits), never 0, and above every id
    /// the durable store read back (`Shared::push_floor`).
    pub fn next_push_id(&mut self) -> u64 {
        let floor = self.shared.push_floor.load(std::sync::atomic::Ordering::Relaxed);
        self.owners.push_seq = self.owners.push_seq.max(floor) + 1;
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
        for &m in mids {
            let conns = self.owners.dir.user(m);
            let keep = (offline_kept && conns.is_empty()) || conns.iter().any(|&(_, v2)| v2);
            for (at, _) in conns {
                by.entry(at.shard).or_default().push(at.conn);
            }
            if keep && self.store.inbox.enabled() {
                self.store.inbox.store(m, id, op, frames, now, ttl);
                ShardStats::add(&self.stats().inbox_stored, 1);
            }
        }
        self.store.count_inbox(&self.shared.stats[self.id]);
        self.forward(by, op, frames, false);
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
            self.store.inbox.take(mid, now)
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
    /// `ids`.
    pub(in crate::shard) fn ack(&mut self, mid: i64, ids: &[u64]) {
        let n = self.store.inbox.ack(mid, ids);
        ShardStats::add(&self.stats().inbox_acked, n as u64);
        self.store.count_inbox(&self.shared.stats[self.id]);
    }
}
