//! Cluster mode's online counts: shard 0 reports the node's counts once a
//! sweep and keeps the cluster's sums for the node's readers
//! (`redis::counts`).

use crate::redis::counts::{Counts, Report};
use crate::redis::link::RedisError;
use crate::redis::ops::Call;
use crate::shard::cluster::state::Then;
use crate::shard::state::Shard;
use fnv::FnvHashMap;
use std::sync::Arc;

impl Shard {
    /// Once a sweep, on shard 0: reports the node's counts to Redis and
    /// keeps the cluster's (`redis::counts`) for the node's readers. Only
    /// what changed since the last report goes, unless the first link has
    /// reconnected since (or every `FULL_REPORT_EVERY` sweeps).
    pub(super) fn report_counts(&mut self) {
        const FULL_REPORT_EVERY: u32 = 30;
        let tick = self.conns.wheel.now();
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
    pub(in crate::shard) fn counted(
        &mut self,
        now: FnvHashMap<Arc<str>, u64>,
        connects: u64,
        got: Result<Counts, RedisError>,
    ) {
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

    /// Publishes the number of subscribed rooms into the shard's stats.
    pub(super) fn count_cluster(&self) {
        if let Some(c) = &self.cluster {
            self.stats()
                .cluster_rooms
                .store(c.rooms.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
