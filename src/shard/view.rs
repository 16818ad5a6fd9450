//! `Shared`: what every shard (and the API on any shard) reads — the
//! configuration, the mesh, each shard's counters and its last published
//! `ShardView` — and the online figures computed from the views.
//!
//! Written once at start-up except for the views and the cluster's health
//! and counts: each shard replaces its own view (an `ArcSwap`, lock-free
//! for readers) when its rooms or client IPs changed, at most once per
//! sweep (a second), its Redis links write their own slots of
//! `redis::Health`, and in cluster mode shard 0 replaces the cluster's
//! counts after each report (`redis::counts`). Readers on any thread see
//! a count that may lag a join or leave by up to that second (two in a
//! cluster).
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
    /// Server-assigned keys: this process's random tag (also its node id in
    /// a cluster) and the secret that signs them.
    pub keys: super::addr::KeyMaker,
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
    pub cluster: Option<Arc<crate::redis::Health>>,
    /// Cluster mode: the cluster's online counts as of shard 0's last
    /// report (`redis::counts`), read instead of the views' by the
    /// online routes and the heartbeat reply.
    pub cluster_counts: ArcSwap<crate::redis::counts::Counts>,
    /// The durable store's start: what is left to read back (`/healthz`
    /// answers 503 "recovering" until every shard is done).
    pub recovery: Recovery,
    /// The highest push sequence (an id without its shard bits) given out
    /// or read back from the durable store: ids go on above it, so none is
    /// given twice, and checkpoints keep it.
    pub push_floor: std::sync::atomic::AtomicU64,
    /// `volley drain`: whether one began, and how far it got.
    pub drain: DrainProgress,
}

/// A drain across shards (`/v1/drain`, `/healthz`).
#[derive(Debug, Default)]
pub struct DrainProgress {
    /// Set when a drain begins; never unset (a drained node stays
    /// drained: `/healthz` keeps answering 503).
    pub begun: std::sync::atomic::AtomicBool,
    /// When it began (Unix ms) and its window (ms).
    pub began_ms: std::sync::atomic::AtomicU64,
    /// The window (ms).
    pub over_ms: std::sync::atomic::AtomicU64,
    /// Client connections to tell, added by each shard as it begins.
    pub planned: std::sync::atomic::AtomicU64,
    /// Told so far (or gone before their turn).
    pub told: std::sync::atomic::AtomicU64,
    /// Shards that have begun.
    pub shards_started: std::sync::atomic::AtomicUsize,
}

/// Progress of the durable store's start, across shards.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Shards still reading their journal back.
    pub shards_left: std::sync::atomic::AtomicUsize,
    /// Bytes of segments to read, all shards.
    pub bytes_total: std::sync::atomic::AtomicU64,
    /// Bytes read so far.
    pub bytes_read: std::sync::atomic::AtomicU64,
    /// Records applied so far.
    pub records: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Shared state for `config.nr_shards()` shards.
    pub fn new(config: Config) -> Self {
        let n = config.nr_shards();
        Shared {
            mesh: Mesh::new(n),
            stats: (0..n).map(|_| ShardStats::default()).collect(),
            views: (0..n).map(|_| ArcSwap::from_pointee(ShardView::default())).collect(),
            keys: super::addr::KeyMaker::new(fastrand::u64(..)),
            ws_rules: ws::UpgradeRules {
                paths: std::iter::once(config.ws.path.clone())
                    .chain(config.ws.echo.then(|| config.ws.echo_path.clone()))
                    .collect(),
                origins: config.ws.origins.clone(),
                compression: {
                    let on = config.ws.compression == crate::config::WsCompression::On;
                    crate::proto::wire::set_compress_min(on.then_some(config.ws.compression_min_bytes));
                    on
                },
            },
            admission: Admission::default(),
            verifier: None,
            cluster_counts: ArcSwap::from_pointee(crate::redis::counts::Counts::default()),
            cluster: (!config.redis.urls.is_empty())
                .then(|| Arc::new(crate::redis::Health::new(n, config.redis.urls.len()))),
            recovery: Recovery::default(),
            push_floor: Default::default(),
            drain: DrainProgress::default(),
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

    /// Members of `room` on every node of the cluster (as of the last
    /// report, but never fewer than this node has), or on this node when it
    /// is not in one (`room_count`).
    pub fn online_room(&self, room: &str, local: Option<(usize, usize)>) -> u64 {
        let here = self.room_count(room, local);
        if self.cluster.is_none() {
            return here;
        }
        self.cluster_counts
            .load()
            .rooms
            .get(room)
            .copied()
            .unwrap_or(0)
            .max(here)
    }

    /// Client IPs and authenticated connections, all nodes of the cluster
    /// (IPs summed over nodes), or all shards of this one.
    pub fn online(&self) -> (u64, u64) {
        let (ips, conns) = self.online_totals();
        if self.cluster.is_none() {
            return (ips as u64, conns);
        }
        let c = self.cluster_counts.load();
        (c.ips.max(ips as u64), c.conns.max(conns))
    }

    /// `top_rooms` over the cluster's counts in cluster mode.
    pub fn online_top(&self, prefix: &str, limit: usize) -> Vec<(String, u64)> {
        if self.cluster.is_none() {
            return self.top_rooms(prefix, limit);
        }
        let c = self.cluster_counts.load();
        let mut v: Vec<(String, u64)> = c
            .rooms
            .iter()
            .filter(|(r, _)| r.starts_with(prefix))
            .map(|(r, n)| (r.to_string(), *n))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        v
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
