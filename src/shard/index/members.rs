//! Presence data: `Member` (what presence shows of a connection),
//! `Changes` (joins and leaves of a room, detailed up to a limit, then
//! only counted) and `Watched` (one shard's view of which rooms are
//! watched, who watches locally, and what it owns).
//!
//! Pure data (sans-IO), owned by one shard; `presence` drives it, and
//! `Changes` and `Member` travel in mesh messages and, in a cluster, as
//! JSON between nodes (`redis::presence`).
//!
//! Invariant: a `Changes` never details more than the limit it is given;
//! past it only `more` grows, so a room's churn costs bounded memory per
//! second whatever its size.

use fnv::FnvHashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One member as presence shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// User id (0: anonymous).
    pub mid: i64,
    /// Connection key (client-chosen or server-assigned).
    pub key: String,
    /// The token's `info` claim, raw JSON (`null` without one).
    pub info: Option<Box<serde_json::value::RawValue>>,
}

/// Changes to a room's members, with details up to a limit.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// Members that joined.
    pub joins: Vec<Member>,
    /// Members that left.
    pub leaves: Vec<Member>,
    /// Changes beyond the limit (not detailed).
    pub more: u32,
}

impl Changes {
    /// One join (or leave), detailed while under `limit` changes.
    pub fn add(&mut self, m: Member, joined: bool, limit: usize) {
        if self.joins.len() + self.leaves.len() >= limit {
            self.more += 1;
        } else if joined {
            self.joins.push(m);
        } else {
            self.leaves.push(m);
        }
    }

    /// Another shard's changes added to these.
    pub fn merge(&mut self, other: Changes, limit: usize) {
        for m in other.joins {
            self.add(m, true, limit);
        }
        for m in other.leaves {
            self.add(m, false, limit);
        }
        self.more += other.more;
    }

    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty() && self.more == 0
    }
}

/// One shard's presence state; `M` is how the shard names a connection.
#[derive(Debug)]
pub struct Watched<M> {
    /// Rooms watched by someone, anywhere: their local changes since the
    /// last sweep.
    pub pending: FnvHashMap<Arc<str>, Changes>,
    /// Local watchers, by room.
    pub mine: FnvHashMap<Arc<str>, Vec<M>>,
    /// Owner side: rooms this shard owns that are watched.
    pub owned: FnvHashMap<Arc<str>, Owned>,
}

/// A watched room on its owner shard.
#[derive(Debug, Default)]
pub struct Owned {
    /// Shards of this node with watchers of the room.
    pub shards: u32,
    /// Cluster: the tick up to which another node is known to watch the
    /// room (0: none does).
    pub remote_until: u32,
    /// Cluster: the tick of this node's last announcement of its watch.
    pub announced: Option<u32>,
    /// This node's changes since the last event.
    pub changes: Changes,
    /// Other nodes' changes heard since the last event.
    pub heard: Changes,
}

impl Owned {
    /// Whether anyone (here, or on another node as of tick `now`) watches.
    pub fn watched(&self, now: u32) -> bool {
        self.shards > 0 || self.remote_until > now
    }
}

impl<M> Default for Watched<M> {
    fn default() -> Self {
        Watched {
            pending: FnvHashMap::default(),
            mine: FnvHashMap::default(),
            owned: FnvHashMap::default(),
        }
    }
}
