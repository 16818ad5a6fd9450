//! `Directory`: one shard's slice of "where does the connection with key K
//! live" and "where are user U's connections".
//!
//! A key belongs to `owner_of_str(key)` and a user id to `owner_of_mid(mid)`;
//! the owner's slice is the one truth for "same key replaces" and for user
//! pushes. Connections announce themselves to the owners when they
//! authenticate and when they go; pushes to keys and users go to the owners,
//! which look the targets up here and forward them to the holding shards.
//!
//! Pure data, owned by one shard (the mesh message handlers in `state` call
//! it). Invariants: a connection's register always precedes its unregister
//! (mesh order per producer); an unregister removes only the entry it
//! registered, so a newer holder of the same key is left alone.
//! Server-assigned keys have no entry: the key is the address
//! (`GlobalConn::from_assigned_key`).

use super::mesh::{ConnRef, GlobalConn};
use fnv::FnvHashMap;
use std::sync::Arc;

/// Targets found, by the shard that holds them.
pub type ByShard = FnvHashMap<u16, Vec<ConnRef>>;

/// One shard's slice of the directory.
#[derive(Debug, Default)]
pub struct Directory {
    /// Client-chosen keys owned by this shard → where the connection is.
    keys: FnvHashMap<Arc<str>, GlobalConn>,
    /// Users owned by this shard → their connections, each with whether it
    /// speaks version 2 (which decides whether a push is kept in the user's
    /// inbox: see `Shard::push_mids`).
    mids: FnvHashMap<i64, Vec<(GlobalConn, bool)>>,
}

/// A connection to close because another took its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replaced {
    /// The earlier holder.
    pub at: GlobalConn,
    /// It was found by decoding an assigned key (not by an entry): close it
    /// only if its key really is server-assigned.
    pub assigned_only: bool,
}

impl Directory {
    /// Records that `at` (of protocol version 2 if `v2`) holds `key` and/or
    /// belongs to user `mid` (0: none). Returns the key's earlier holder, if
    /// another connection of this process (`node_tag`, `nr_shards`) had it.
    pub fn register(
        &mut self,
        key: Option<Arc<str>>,
        mid: i64,
        at: GlobalConn,
        v2: bool,
        (node_tag, nr_shards): (u64, usize),
    ) -> Option<Replaced> {
        let mut replaced = None;
        if let Some(key) = key {
            // The key's previous holder: a directory entry, or the
            // connection whose assigned key this client chose.
            let assigned = GlobalConn::from_assigned_key(&key, node_tag);
            let old = match self.keys.insert(key, at) {
                Some(old) => Some((old, false)),
                None => assigned.map(|a| (a, true)),
            };
            replaced = old
                .filter(|&(old, _)| old != at && usize::from(old.shard) < nr_shards)
                .map(|(at, assigned_only)| Replaced { at, assigned_only });
        }
        if mid != 0 {
            self.mids.entry(mid).or_default().push((at, v2));
        }
        replaced
    }

    /// Forgets what `at` registered under `key` and/or `mid`. Returns
    /// whether the key's entry went, and whether the user has no
    /// connection left.
    pub fn unregister(&mut self, key: Option<&str>, mid: i64, at: GlobalConn) -> (bool, bool) {
        let mut gone = (false, false);
        if let Some(key) = key {
            if self.keys.get(key) == Some(&at) {
                self.keys.remove(key);
                gone.0 = true;
            }
        }
        if mid != 0 {
            if let Some(v) = self.mids.get_mut(&mid) {
                v.retain(|x| x.0 != at);
                if v.is_empty() {
                    self.mids.remove(&mid);
                    gone.1 = true;
                }
            }
        }
        gone
    }

    /// Every user with a connection, and every client-chosen key held.
    pub fn entries(&self) -> (impl Iterator<Item = i64> + '_, impl Iterator<Item = &Arc<str>> + '_) {
        (self.mids.keys().copied(), self.keys.keys())
    }

    /// Where the connections with these keys are: through entries, and
    /// (second map) through keys that decode as this process's assigned
    /// keys.
    pub fn lookup_keys(&self, keys: &[Arc<str>], node_tag: u64, nr_shards: usize) -> (ByShard, ByShard) {
        let mut by_entry = ByShard::default();
        let mut assigned = ByShard::default();
        for k in keys {
            if let Some(at) = self.keys.get(k) {
                by_entry.entry(at.shard).or_default().push(at.conn);
            } else if let Some(at) = GlobalConn::from_assigned_key(k, node_tag) {
                if usize::from(at.shard) < nr_shards {
                    assigned.entry(at.shard).or_default().push(at.conn);
                }
            }
        }
        (by_entry, assigned)
    }

    /// The connections of user `mid`, each with whether it is version 2.
    pub fn user(&self, mid: i64) -> &[(GlobalConn, bool)] {
        self.mids.get(&mid).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(shard: u16, idx: u32) -> GlobalConn {
        GlobalConn {
            shard,
            conn: ConnRef { idx, gen: 1 },
        }
    }

    #[test]
    fn same_key_replaces_and_a_late_unregister_spares_the_new_holder() {
        let mut d = Directory::default();
        let k: Arc<str> = "k".into();
        assert_eq!(d.register(Some(k.clone()), 0, at(0, 1), false, (7, 2)), None);
        assert_eq!(
            d.register(Some(k.clone()), 0, at(1, 2), false, (7, 2)),
            Some(Replaced {
                at: at(0, 1),
                assigned_only: false
            })
        );
        d.unregister(Some("k"), 0, at(0, 1));
        let (by, assigned) = d.lookup_keys(std::slice::from_ref(&k), 7, 2);
        assert_eq!(by.get(&1), Some(&vec![at(1, 2).conn]));
        assert!(assigned.is_empty());
        d.unregister(Some("k"), 0, at(1, 2));
        assert!(d.lookup_keys(&[k], 7, 2).0.is_empty());
    }

    #[test]
    fn users_gather_connections_across_shards_and_assigned_keys_decode() {
        let mut d = Directory::default();
        d.register(None, 42, at(0, 1), false, (7, 2));
        d.register(None, 42, at(1, 5), false, (7, 2));
        d.register(None, 43, at(1, 6), false, (7, 2));
        assert_eq!(d.user(42).len(), 2);
        assert!(d.user(99).is_empty());
        d.unregister(None, 42, at(0, 1));
        assert_eq!(d.user(42), &[(at(1, 5), false)]);

        let key: Arc<str> = at(1, 9).assigned_key(7).into();
        let (by, assigned) = d.lookup_keys(std::slice::from_ref(&key), 7, 2);
        assert!(by.is_empty());
        assert_eq!(assigned[&1], vec![at(1, 9).conn]);
        assert!(
            d.lookup_keys(std::slice::from_ref(&key), 7, 1).1.is_empty(),
            "no such shard"
        );
        // Choosing another connection's assigned key replaces it, carefully.
        assert_eq!(
            d.register(Some(key), 0, at(0, 3), false, (7, 2)),
            Some(Replaced {
                at: at(1, 9),
                assigned_only: true
            })
        );
    }
}
