//! `Shared`: what every shard (and the API on any shard) reads — the
//! configuration, the mesh, each shard's counters and its last published
//! `ShardView` — and the online figures computed from the views.
//!
//! Written once at start-up except for the views and the cluster's health: each
//! shard replaces its own view (an `ArcSwap`, lock-free for readers) when its
//! rooms or client IPs changed, at most once per sweep (a second), and its
//! Redis links write their own slots of `cluster::Health`. Readers on any
//! thread see a count that may lag a join or leave by up to that second.
//!
//! Invariants: `views[i]` is written only by shard i; every count read from
//! the views is a sum over all shards, with the caller's own live count in
//! place of its published one when it has it (`room_count`).

use crate::config::Config;
use crate::metrics::ShardStats;
use crate::proto::ws;
use arc_swap::ArcSwap;
use fnv::{FnvHashMap, FnvHashSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::admission::Admission;
use super::mesh::Mesh;
use crate::auth::jwt::Verifier;

/// What each shard publishes for the others: room counts and client IPs.
#[derive(Debug, Default)]
pub struct ShardView {
    /// Room key → members on that shard.
    pub rooms: FnvHashMap<Arc<str>, u32>,
    /// Distinct client IPs on that shard.
    pub ips: FnvHashSet<IpAddr>,
}

/// State shared read-only (or lock-free) by all shards.
pub struct Shared {
    /// The configuration, validated, with bound addresses resolved.
    pub config: Config,
    /// Cross-shard inboxes.
    pub mesh: Mesh,
    /// Counters, one block per shard.
    pub stats: Vec<ShardStats>,
    /// Latest published `ShardView` of each shard.
    pub views: Vec<ArcSwap<ShardView>>,
    /// Random per-process prefix for server-assigned keys.
    pub node_tag: u64,
    /// WebSocket upgrade rules: path 0 is the protocol endpoint, path 1 the
    /// echo endpoint when enabled.
    pub ws_rules: ws::UpgradeRules,
    /// Connection counts behind `[limits] max_conns`, `max_conns_per_ip`
    /// and `conn_rate_per_ip`.
    pub admission: Admission,
    /// The token verifier (`[auth] mode = "jwt"`); set by the server once
    /// it has read the keys. `None` with auth on refuses every token.
    pub verifier: Option<Verifier>,
    /// What each shard's Redis links report (`[redis] urls`); `None` on a
    /// single node.
    pub cluster: Option<Arc<crate::cluster::Health>>,
}

impl Shared {
    /// Shared state for `config.nr_shards()` shards.
    pub fn new(config: Config) -> Self {
        let n = config.nr_shards();
        Shared {
            mesh: Mesh::new(n),
            stats: (0..n).map(|_| ShardStats::default()).collect(),
            views: (0..n).map(|_| ArcSwap::from_pointee(ShardView::default())).collect(),
            node_tag: fastrand::u64(..),
            ws_rules: ws::UpgradeRules {
                paths: std::iter::once(config.ws.path.clone())
                    .chain(config.ws.echo.then(|| config.ws.echo_path.clone()))
                    .collect(),
                origins: config.ws.origins.clone(),
            },
            admission: Admission::default(),
            verifier: None,
            cluster: (!config.redis.urls.is_empty())
                .then(|| Arc::new(crate::cluster::Health::new(n, config.redis.urls.len()))),
            config,
        }
    }

    /// Members of `room` across all shards, as last published; `local`
    /// replaces one shard's published count with its live one.
    pub fn room_count(&self, room: &str, local: Option<(usize, usize)>) -> u64 {
        self.views
            .iter()
            .enumerate()
            .map(|(i, v)| match local {
                Some((shard, live)) if shard == i => live as u64,
                _ => u64::from(v.load().rooms.get(room).copied().unwrap_or(0)),
            })
            .sum()
    }

    /// Distinct client IPs and authenticated connections, all shards.
    pub fn online_totals(&self) -> (usize, u64) {
        let mut ips = FnvHashSet::default();
        for v in &self.views {
            ips.extend(v.load().ips.iter().copied());
        }
        let conns = self.stats.iter().map(|s| s.authed.load(Relaxed)).sum();
        (ips.len(), conns)
    }

    /// Rooms whose key starts with `prefix`, largest first (ties by name), at
    /// most `limit`.
    pub fn top_rooms(&self, prefix: &str, limit: usize) -> Vec<(String, u64)> {
        let mut counts: FnvHashMap<Arc<str>, u64> = FnvHashMap::default();
        for v in &self.views {
            for (room, n) in &v.load().rooms {
                if room.starts_with(prefix) {
                    *counts.entry(room.clone()).or_default() += u64::from(*n);
                }
            }
        }
        let mut v: Vec<(String, u64)> = counts.into_iter().map(|(r, n)| (r.to_string(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        v
    }
}
