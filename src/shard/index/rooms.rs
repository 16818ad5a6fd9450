//! `RoomTable`: the shard-local index from room key to the connections of this
//! shard that are in the room.
//!
//! Pure data structure (sans-IO), owned by one shard and touched only by it.
//! Join and leave are O(1): each room keeps a dense `Vec` of members, and the
//! caller keeps, per connection, the position its member sits at. `leave`
//! swap-removes and reports which member moved into the hole so the caller can
//! update that member's stored position.
//!
//! Invariants:
//! - a room exists in the table iff it has at least one member;
//! - `members(room)[pos] == m` for every `(m, pos)` handed out by `join` or
//!   reported as moved by `leave`, until that member leaves.
//!
//! The room name is stored once, as an `Rc<str>` shared with every member's
//! connection record, so a million members of one room cost one name.

use fnv::FnvHashMap;
use std::rc::Rc;

/// Room key → members, for one shard.
#[derive(Debug)]
pub struct RoomTable<M> {
    rooms: FnvHashMap<Rc<str>, Vec<M>>,
    /// Set whenever membership changes; the shard clears it when it publishes
    /// the per-room counts, so an idle shard publishes nothing.
    dirty: bool,
}

impl<M: Copy + PartialEq> Default for RoomTable<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Copy + PartialEq> RoomTable<M> {
    /// An empty table.
    pub fn new() -> Self {
        RoomTable {
            rooms: FnvHashMap::default(),
            dirty: false,
        }
    }

    /// Adds `m` to `room`; returns the shared room name and `m`'s position.
    pub fn join(&mut self, room: &str, m: M) -> (Rc<str>, usize) {
        self.dirty = true;
        if let Some((name, _)) = self.rooms.get_key_value(room) {
            let name = name.clone();
            let members = self.rooms.get_mut(room).expect("looked up just above");
            members.push(m);
            return (name, members.len() - 1);
        }
        let name: Rc<str> = Rc::from(room);
        self.rooms.insert(name.clone(), vec![m]);
        (name, 0)
    }

    /// Removes the member at `pos` of `room`. Returns the member that moved
    /// into `pos` (and now sits there), if any.
    ///
    /// # Panics
    /// If `room` has no member at `pos`: positions come from `join`/`leave`
    /// only, so this is a broken internal invariant, not bad input.
    pub fn leave(&mut self, room: &str, pos: usize) -> Option<M> {
        self.dirty = true;
        let members = self.rooms.get_mut(room).expect("leave: room not in table");
        assert!(pos < members.len(), "leave: position {pos} out of range");
        members.swap_remove(pos);
        if members.is_empty() {
            self.rooms.remove(room);
            return None;
        }
        members.get(pos).copied()
    }

    /// The members of `room` (empty if the room has none on this shard).
    pub fn members(&self, room: &str) -> &[M] {
        self.rooms.get(room).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Members of `room` on this shard.
    pub fn count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, Vec::len)
    }

    /// Rooms with at least one member on this shard.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room has a member.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Every room with its member count.
    pub fn counts(&self) -> impl Iterator<Item = (&Rc<str>, usize)> {
        self.rooms.iter().map(|(k, v)| (k, v.len()))
    }

    /// Returns whether membership changed since the last call, and clears it.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::replace(&mut self.dirty, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The deliberately naive oracle: room → set of members.
    #[derive(Default)]
    struct Naive(BTreeMap<String, BTreeSet<u32>>);

    #[derive(Debug, Clone)]
    enum Step {
        Join(u8, u32),
        Leave(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..4, 0u32..20).prop_map(|(r, m)| Step::Join(r, m)),
            (0u32..20).prop_map(Step::Leave),
        ]
    }

    proptest! {
        #[test]
        fn matches_naive(steps in proptest::collection::vec(step(), 0..200)) {
            let mut real = RoomTable::<u32>::new();
            let mut naive = Naive::default();
            // What the shard keeps per connection: its room and position.
            let mut pos: BTreeMap<u32, (String, usize)> = BTreeMap::new();
            for s in steps {
                match s {
                    Step::Join(r, m) => {
                        if pos.contains_key(&m) { continue; }
                        let room = format!("live://{r}");
                        let (name, p) = real.join(&room, m);
                        prop_assert_eq!(&*name, room.as_str());
                        pos.insert(m, (room.clone(), p));
                        naive.0.entry(room).or_default().insert(m);
                    }
                    Step::Leave(m) => {
                        let Some((room, p)) = pos.remove(&m) else { continue };
                        if let Some(moved) = real.leave(&room, p) {
                            pos.get_mut(&moved).unwrap().1 = p;
                        }
                        let set = naive.0.get_mut(&room).unwrap();
                        set.remove(&m);
                        if set.is_empty() { naive.0.remove(&room); }
                    }
                }
                prop_assert_eq!(real.len(), naive.0.len());
                for (room, set) in &naive.0 {
                    let got: BTreeSet<u32> = real.members(room).iter().copied().collect();
                    prop_assert_eq!(&got, set);
                    prop_assert_eq!(real.count(room), set.len());
                }
                for (m, (room, p)) in &pos {
                    prop_assert_eq!(real.members(room)[*p], *m);
                }
            }
        }
    }

    #[test]
    fn dirty_flag() {
        let mut t = RoomTable::<u8>::new();
        assert!(!t.take_dirty());
        t.join("a", 1);
        assert!(t.take_dirty());
        assert!(!t.take_dirty());
        assert_eq!(t.leave("a", 0), None);
        assert!(t.take_dirty());
        assert!(t.is_empty());
    }
}
