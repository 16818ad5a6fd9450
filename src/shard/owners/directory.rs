//! `Directory`: one shard's slice of "where does the connection with key K
//! live" and "where are user U's connections".
//!
//! A key belongs to `owner_of_str(key)` and a user id to `owner_of_mid(mid)`;
//! the owner's slice is the one truth for "same key replaces" and for user
//! pushes. Connections announce themselves to the owners when they
//! authenticate and when they go; pushes to keys and users go to the owners,
//! which look the targets up here and forward them to the holding shards.
//!
//! Who may take a key over (`KeyRule`): with auth off anyone who names it
//! (goim's behaviour: the auth body names the user too); with tokens only a
//! connection of the same user, so one user can neither close another's
//! connection nor receive its key pushes by naming its key (the token's
//! `keys` claim is checked before, at auth; this is the owner's check).
//!
//! Pure data, owned by one shard (the mesh message handlers in `state` call
//! it). Invariants: a connection's register always precedes its unregister
//! (mesh order per producer); an unregister removes only the entry it
//! registered, so a newer holder of the same key is left alone.
//! Server-assigned keys have no entry: the key is the address
//! (`GlobalConn::from_assigned_key`).

use crate::proto::close::CloseReason;
use crate::shard::addr::KeyMaker;
use crate::shard::mesh::{ConnRef, GlobalConn};
use fnv::FnvHashMap;
use std::sync::Arc;

/// Targets found, by the shard that holds them.
pub type ByShard = FnvHashMap<u16, Vec<ConnRef>>;

/// One shard's slice of the directory.
#[derive(Debug, Default)]
pub struct Directory {
    /// Client-chosen keys owned by this shard → where the connection is,
    /// and its user (which, with tokens, alone may take the key over).
    keys: FnvHashMap<Arc<str>, (GlobalConn, i64)>,
    /// Users owned by this shard → their connections, each with whether it
    /// speaks version 2 (which decides whether a push is kept in the user's
    /// inbox: see `Shard::push_mids`).
    mids: FnvHashMap<i64, Vec<(GlobalConn, bool)>>,
}

/// A connection to close because of a key: its earlier holder, replaced;
/// or the newcomer, refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kick {
    /// The connection to close.
    pub at: GlobalConn,
    /// It was found by decoding an assigned key (not by an entry): close it
    /// only if its key really is server-assigned.
    pub assigned_only: bool,
    /// `Replaced` (the earlier holder) or `KeyInUse` (the newcomer).
    pub reason: CloseReason,
}

/// Who may take a key from its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRule {
    /// Anyone who names it (auth off: the auth body names the user too,
    /// as in goim).
    Anyone,
    /// Only a connection of the same user (tokens: a user cannot take
    /// another user's connection, or its key pushes).
    SameUser,
}

/// Client-chosen keys with their holder and the holder's user.
pub type KeyEntries = Vec<(Arc<str>, GlobalConn, i64)>;
/// Users with their connections (each: whether it speaks version 2).
pub type UserEntries = Vec<(i64, Vec<(GlobalConn, bool)>)>;

impl Directory {
    /// Every entry: keys with their holder and its user, users with their
    /// connections (what an upgrade hands to the next process).
    pub fn all(&self) -> (KeyEntries, UserEntries) {
        let keys = self.keys.iter().map(|(k, &(at, mid))| (k.clone(), at, mid)).collect();
        let mids = self.mids.iter().map(|(&m, v)| (m, v.clone())).collect();
        (keys, mids)
    }

    /// A directory of exactly these entries (`all` of another process's).
    pub fn restore(keys: KeyEntries, mids: UserEntries) -> Directory {
        Directory {
            keys: keys.into_iter().map(|(k, at, mid)| (k, (at, mid))).collect(),
            mids: mids.into_iter().collect(),
        }
    }

    /// Records that `at`, a connection of user `mid` (0: none), holds
    /// `key`. Returns the connection to close over it, if any: the key's
    /// earlier holder in this process (`keys`, `nr_shards`), replaced; or,
    /// when `rule` does not let `at` take the key from it, `at` itself.
    pub fn register_key(
        &mut self,
        key: Arc<str>,
        mid: i64,
        at: GlobalConn,
        (keys, nr_shards): (&KeyMaker, usize),
        rule: KeyRule,
    ) -> Option<Kick> {
        let refused = Some(Kick {
            at,
            assigned_only: false,
            reason: CloseReason::KeyInUse,
        });
        let replace = |old: GlobalConn, assigned_only| {
            (old != at && usize::from(old.shard) < nr_shards).then_some(Kick {
                at: old,
                assigned_only,
                reason: CloseReason::Replaced,
            })
        };
        match self.keys.get(&key) {
            Some(&(_, holder)) if rule == KeyRule::SameUser && holder != mid => refused,
            Some(_) => self
                .keys
                .insert(key, (at, mid))
                .and_then(|(old, _)| replace(old, false)),
            None => match GlobalConn::from_assigned_key(&key, keys) {
                // Whose connection an assigned key names is not known here.
                Some(_) if rule == KeyRule::SameUser => refused,
                assigned => {
                    self.keys.insert(key, (at, mid));
                    assigned.and_then(|old| replace(old, true))
                }
            },
        }
    }

    /// Records that `at` (of protocol version 2 if `v2`) belongs to user
    /// `mid` (0: nothing to record).
    pub fn register_user(&mut self, mid: i64, at: GlobalConn, v2: bool) {
        if mid != 0 {
            self.mids.entry(mid).or_default().push((at, v2));
        }
    }

    /// Forgets what `at` registered under `key` and/or `mid`. Returns
    /// whether the key's entry went, and whether the user has no
    /// connection left.
    pub fn unregister(&mut self, key: Option<&str>, mid: i64, at: GlobalConn) -> (bool, bool) {
        let mut gone = (false, false);
        if let Some(key) = key {
            if self.keys.get(key).is_some_and(|e| e.0 == at) {
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
    pub fn lookup_keys(&self, keys: &[Arc<str>], maker: &KeyMaker, nr_shards: usize) -> (ByShard, ByShard) {
        let mut by_entry = ByShard::default();
        let mut assigned = ByShard::default();
        for k in keys {
            if let Some(&(at, _)) = self.keys.get(k) {
                by_entry.entry(at.shard).or_default().push(at.conn);
            } else if let Some(at) = GlobalConn::from_assigned_key(k, maker) {
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

    fn maker() -> KeyMaker {
        KeyMaker::with_secret(7, b"test")
    }

    #[test]
    fn same_key_replaces_and_a_late_unregister_spares_the_new_holder() {
        let mut d = Directory::default();
        let k: Arc<str> = "k".into();
        let m = maker();
        let reg = |d: &mut Directory, who, mid| d.register_key(k.clone(), mid, who, (&m, 2), KeyRule::Anyone);
        assert_eq!(reg(&mut d, at(0, 1), 0), None);
        assert_eq!(
            reg(&mut d, at(1, 2), 5),
            Some(Kick {
                at: at(0, 1),
                assigned_only: false,
                reason: CloseReason::Replaced
            }),
            "auth off: another user takes the key over, as in goim"
        );
        d.unregister(Some("k"), 0, at(0, 1));
        let (by, assigned) = d.lookup_keys(std::slice::from_ref(&k), &m, 2);
        assert_eq!(by.get(&1), Some(&vec![at(1, 2).conn]));
        assert!(assigned.is_empty());
        d.unregister(Some("k"), 0, at(1, 2));
        assert!(d.lookup_keys(&[k], &m, 2).0.is_empty());
    }

    #[test]
    fn with_tokens_only_the_same_user_takes_a_key_over() {
        let mut d = Directory::default();
        let (k, m): (Arc<str>, _) = ("device-101-phone".into(), maker());
        let reg = |d: &mut Directory, who, mid| d.register_key(k.clone(), mid, who, (&m, 2), KeyRule::SameUser);
        assert_eq!(reg(&mut d, at(0, 1), 101), None);
        assert_eq!(
            reg(&mut d, at(1, 2), 200),
            Some(Kick {
                at: at(1, 2),
                assigned_only: false,
                reason: CloseReason::KeyInUse
            }),
            "another user is refused; the holder stays"
        );
        let (by, _) = d.lookup_keys(std::slice::from_ref(&k), &m, 2);
        assert_eq!(by.get(&0), Some(&vec![at(0, 1).conn]), "pushes still reach the holder");
        d.unregister(Some(&k), 200, at(1, 2));
        assert_eq!(
            reg(&mut d, at(1, 3), 101).map(|x| x.reason),
            Some(CloseReason::Replaced)
        );
        // An assigned key, whose user is not known here, cannot be taken.
        let assigned: Arc<str> = at(1, 9).assigned_key(&m).into();
        let kick = d.register_key(assigned, 101, at(0, 4), (&m, 2), KeyRule::SameUser);
        assert_eq!(kick.map(|x| (x.at, x.reason)), Some((at(0, 4), CloseReason::KeyInUse)));
    }

    #[test]
    fn users_gather_connections_across_shards_and_assigned_keys_decode() {
        let mut d = Directory::default();
        let m = maker();
        d.register_user(42, at(0, 1), false);
        d.register_user(42, at(1, 5), false);
        d.register_user(43, at(1, 6), false);
        assert_eq!(d.user(42).len(), 2);
        assert!(d.user(99).is_empty());
        d.unregister(None, 42, at(0, 1));
        assert_eq!(d.user(42), &[(at(1, 5), false)]);

        let key: Arc<str> = at(1, 9).assigned_key(&m).into();
        let (by, assigned) = d.lookup_keys(std::slice::from_ref(&key), &m, 2);
        assert!(by.is_empty());
        assert_eq!(assigned[&1], vec![at(1, 9).conn]);
        assert!(
            d.lookup_keys(std::slice::from_ref(&key), &m, 1).1.is_empty(),
            "no such shard"
        );
        // Choosing another connection's assigned key replaces it, carefully.
        assert_eq!(
            d.register_key(key, 0, at(0, 3), (&m, 2), KeyRule::Anyone),
            Some(Kick {
                at: at(1, 9),
                assigned_only: true,
                reason: CloseReason::Replaced
            })
        );
    }
}
