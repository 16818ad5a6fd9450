//! `PatternIndex`: the shard-local index from room pattern to the
//! connections of this shard subscribed to it, and the lookup every room
//! message makes in it (which subscribers does room R reach?).
//!
//! Pure data structure (sans-IO), owned by one shard and touched only by it.
//! A trie over the patterns' segments (`proto::pattern`): a node per
//! segment, with literal children in a hash map and one child for `*`;
//! subscribers sit at the node where their pattern ends, or in the node's
//! `rest` list when the pattern ends in `>`. A lookup walks the room's
//! segments, following at each level the literal child and the `*` child:
//! its cost grows with the room's depth and the number of `*` branches the
//! patterns have on the way, not with how many patterns there are.
//!
//! With patterns within `proto::pattern`'s bounds, one lookup visits at
//! most `pattern::MAX_VISITS` nodes whatever the index holds; what the index
//! holds is counted (`bytes`: its nodes as allocated) so that the shard can
//! bound it (`[client] pattern_memory`). A node's literal children sit in a
//! small vector (one allocation of exactly what they need) until there are
//! `FEW` of them, then in a hash map: most nodes of a pattern chain have one
//! child, and a map would allocate room for several.
//!
//! Invariants: a node exists iff some pattern passes through or ends at it
//! (removal prunes empty nodes); a subscriber is listed once per
//! (pattern, subscriber) inserted; `bytes` is `NODE_BYTES` per node plus
//! every node's segment and subscriber slots.

use fnv::FnvHashMap;

/// Literal children a node keeps in a vector before it moves them to a map.
const FEW: usize = 8;

/// Bytes a node costs besides its segment and subscribers: its slot in its
/// parent (vector or map, with growth headroom) and its own fields.
const NODE_BYTES: usize = 2 * std::mem::size_of::<(Box<str>, Node<u64>)>();

/// Pattern → subscribers, for one shard.
#[derive(Debug)]
pub struct PatternIndex<M> {
    root: Node<M>,
    len: usize,
    /// What the nodes cost, as allocated (module doc).
    bytes: usize,
}

/// A node's literal children.
#[derive(Debug)]
enum Children<M> {
    /// Up to `FEW`, searched in order.
    Few(Vec<(Box<str>, Node<M>)>),
    /// More.
    Many(FnvHashMap<Box<str>, Node<M>>),
}

#[derive(Debug)]
struct Node<M> {
    lit: Children<M>,
    star: Option<Box<Node<M>>>,
    /// Patterns that end here.
    here: Vec<M>,
    /// Patterns that end here with a `>`: one or more segments follow.
    rest: Vec<M>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            lit: Children::Few(Vec::new()),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<M> Children<M> {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(m) => m.is_empty(),
        }
    }

    fn get(&self, seg: &str) -> Option<&Node<M>> {
        match self {
            Children::Few(v) => v.iter().find(|(k, _)| &**k == seg).map(|(_, n)| n),
            Children::Many(m) => m.get(seg),
        }
    }

    fn get_mut(&mut self, seg: &str) -> Option<&mut Node<M>> {
        match self {
            Children::Few(v) => v.iter_mut().find(|(k, _)| &**k == seg).map(|(_, n)| n),
            Children::Many(m) => m.get_mut(seg),
        }
    }

    /// The child for `seg`, created if missing; `true` when created.
    fn entry(&mut self, seg: &str) -> (&mut Node<M>, bool) {
        let created = self.get(seg).is_none();
        if created {
            match self {
                Children::Few(v) if v.len() < FEW => {
                    v.reserve_exact(1);
                    v.push((seg.into(), Node::default()));
                }
                Children::Few(v) => {
                    let mut m: FnvHashMap<Box<str>, Node<M>> = std::mem::take(v).into_iter().collect();
                    m.insert(seg.into(), Node::default());
                    *self = Children::Many(m);
                }
                Children::Many(m) => {
                    m.insert(seg.into(), Node::default());
                }
            }
        }
        (self.get_mut(seg).expect("present or just added"), created)
    }

    fn remove(&mut self, seg: &str) {
        match self {
            Children::Few(v) => v.retain(|(k, _)| &**k != seg),
            Children::Many(m) => {
                m.remove(seg);
            }
        }
    }
}

impl<M> Node<M> {
    fn is_empty(&self) -> bool {
        self.lit.is_empty() && self.star.is_none() && self.here.is_empty() && self.rest.is_empty()
    }
}

/// What a node for segment `seg` costs (module doc).
fn node_bytes(seg: &str) -> usize {
    NODE_BYTES + seg.len()
}

/// What a subscriber's slot costs in a node's list (with growth headroom).
fn member_bytes<M>() -> usize {
    2 * std::mem::size_of::<M>()
}

impl<M: Copy + PartialEq> Default for PatternIndex<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Copy + PartialEq> PatternIndex<M> {
    /// An empty index.
    pub fn new() -> Self {
        PatternIndex {
            root: Node::default(),
            len: 0,
            bytes: 0,
        }
    }

    /// What the index's nodes and subscriber lists cost, as allocated.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What inserting `pattern` would add to `bytes` at most (if no node of
    /// it exists yet).
    pub fn cost_of(pattern: &str) -> usize {
        pattern.split('/').map(node_bytes).sum::<usize>() + member_bytes::<M>()
    }

    /// Subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `m` to `pattern` (a valid pattern, `proto::pattern::kind`).
    pub fn insert(&mut self, pattern: &str, m: M) {
        let mut node = &mut self.root;
        let mut added = member_bytes::<M>();
        let mut segs = pattern.split('/').peekable();
        while let Some(s) = segs.next() {
            if s == ">" && segs.peek().is_none() {
                node.rest.push(m);
                self.len += 1;
                self.bytes += added;
                return;
            }
            node = if s == "*" {
                if node.star.is_none() {
                    added += node_bytes(s);
                }
                node.star.get_or_insert_with(Box::default)
            } else {
                let (child, created) = node.lit.entry(s);
                if created {
                    added += node_bytes(s);
                }
                child
            };
        }
        node.here.push(m);
        self.len += 1;
        self.bytes += added;
    }

    /// Unsubscribes `m` from `pattern`; returns whether it was subscribed.
    pub fn remove(&mut self, pattern: &str, m: M) -> bool {
        let segs: Vec<&str> = pattern.split('/').collect();
        let mut freed = 0;
        let found = remove_at(&mut self.root, &segs, m, &mut freed);
        if found {
            self.len -= 1;
            self.bytes -= freed + member_bytes::<M>();
        }
        found
    }

    /// Appends the subscribers whose pattern matches `room` to `out` (a
    /// subscriber of two matching patterns appears twice).
    pub fn lookup(&self, room: &str, out: &mut Vec<M>) {
        if self.len == 0 {
            return;
        }
        let segs: Vec<&str> = room.split('/').collect();
        walk(&self.root, &segs, out);
    }
}

fn walk<M: Copy>(node: &Node<M>, segs: &[&str], out: &mut Vec<M>) {
    let Some((first, rest)) = segs.split_first() else {
        out.extend_from_slice(&node.here);
        return;
    };
    out.extend_from_slice(&node.rest);
    if let Some(next) = node.lit.get(first) {
        walk(next, rest, out);
    }
    if let Some(next) = &node.star {
        walk(next, rest, out);
    }
}

/// Takes `m` off the pattern `segs` below `node`, pruning the nodes left
/// empty and adding what they cost to `freed`.
fn remove_at<M: PartialEq>(node: &mut Node<M>, segs: &[&str], m: M, freed: &mut usize) -> bool {
    let take = |v: &mut Vec<M>| match v.iter().position(|x| *x == m) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    };
    match segs {
        [] => take(&mut node.here),
        [">"] => take(&mut node.rest),
        [first, rest @ ..] => {
            if *first == "*" {
                let Some(child) = node.star.as_deref_mut() else {
                    return false;
                };
                let found = remove_at(child, rest, m, freed);
                if child.is_empty() {
                    node.star = None;
                    *freed += node_bytes(first);
                }
                found
            } else {
                let Some(child) = node.lit.get_mut(first) else {
                    return false;
                };
                let found = remove_at(child, rest, m, freed);
                if child.is_empty() {
                    node.lit.remove(first);
                    *freed += node_bytes(first);
                }
                found
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::pattern::{self, Kind};
    use proptest::prelude::*;

    fn name(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(vec!["a", "b", "", "*", ">"]), 1..max)
            .prop_map(|v| v.join("/"))
            .prop_filter("valid pattern", |p| pattern::kind(p) == Kind::Pattern)
    }

    fn room() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(vec!["a", "b", ""]), 1..6).prop_map(|v| v.join("/"))
    }

    #[derive(Debug, Clone)]
    enum Step {
        Sub(String, u8),
        Unsub(usize),
        Look(String),
    }

    proptest! {
        /// Against the naive oracle: every subscription checked with
        /// `pattern::matches`, one by one.
        #[test]
        fn matches_naive(steps in proptest::collection::vec(prop_oneof![
            (name(5), 0u8..8).prop_map(|(p, m)| Step::Sub(p, m)),
            (0usize..64).prop_map(Step::Unsub),
            room().prop_map(Step::Look),
        ], 0..120)) {
            let mut idx = PatternIndex::<u8>::new();
            let mut naive: Vec<(String, u8)> = Vec::new();
            for s in steps {
                match s {
                    Step::Sub(p, m) => {
                        idx.insert(&p, m);
                        naive.push((p, m));
                    }
                    Step::Unsub(i) => {
                        if naive.is_empty() { continue; }
                        let (p, m) = naive.swap_remove(i % naive.len());
                        prop_assert!(idx.remove(&p, m));
                    }
                    Step::Look(room) => {
                        let mut got = Vec::new();
                        idx.lookup(&room, &mut got);
                        got.sort_unstable();
                        let mut want: Vec<u8> = naive.iter().filter(|(p, _)| pattern::matches(p, &room)).map(|x| x.1).collect();
                        want.sort_unstable();
                        prop_assert_eq!(got, want, "room {:?}", room);
                    }
                }
                prop_assert_eq!(idx.len(), naive.len());
            }
            for (p, m) in naive {
                prop_assert!(idx.remove(&p, m));
            }
            prop_assert!(idx.root.is_empty(), "every node pruned");
            prop_assert_eq!(idx.bytes(), 0, "every byte counted back");
        }
    }

    /// Nodes a lookup of `room` visits (what `walk` does, counted).
    fn visits<M>(node: &Node<M>, segs: &[&str]) -> usize {
        let Some((first, rest)) = segs.split_first() else {
            return 1;
        };
        1 + node.lit.get(first).map_or(0, |n| visits(n, rest)) + node.star.as_deref().map_or(0, |n| visits(n, rest))
    }

    /// Every pattern within the bounds that matches a deep room: the
    /// worst index one room can meet costs `MAX_VISITS` visits, and
    /// `bytes` counts it all and gives it all back.
    #[test]
    fn the_worst_index_within_the_bounds_costs_max_visits() {
        let room: Vec<&str> = vec!["a"; 100];
        let mut idx = PatternIndex::<u32>::new();
        let mut all = Vec::new();
        // Each subset of at most 3 of the 16 positions becomes `*`.
        for mask in 0u32..1 << pattern::MAX_SEGMENTS {
            // No `*`: a room, not a pattern.
            if mask == 0 || mask.count_ones() as usize > pattern::MAX_WILDCARDS {
                continue;
            }
            let p: Vec<&str> = (0..pattern::MAX_SEGMENTS)
                .map(|i| if mask & (1 << i) != 0 { "*" } else { "a" })
                .collect();
            let p = p.join("/");
            assert_eq!(pattern::kind(&p), Kind::Pattern, "{p}");
            idx.insert(&p, mask);
            all.push((p, mask));
        }
        // All but the one all-literal path 16 deep, which no pattern
        // within the bounds passes through.
        assert_eq!(visits(&idx.root, &room), pattern::MAX_VISITS - 1);
        let mut got = Vec::new();
        idx.lookup(&room[..16].join("/"), &mut got);
        assert_eq!(got.len(), all.len(), "every one matches the 16-segment room");
        let bytes = idx.bytes();
        assert!(bytes >= (pattern::MAX_VISITS - 1) * NODE_BYTES, "{bytes}");
        for (p, m) in all {
            assert!(idx.remove(&p, m));
        }
        assert_eq!((idx.bytes(), idx.len()), (0, 0));
        assert!(idx.root.is_empty());
    }

    #[test]
    fn children_move_to_a_map_past_few_and_back_out_cleanly() {
        let mut idx = PatternIndex::<u8>::new();
        for i in 0..20u8 {
            idx.insert(&format!("r/{i}/*"), i);
        }
        let mut got = Vec::new();
        idx.lookup("r/7/x", &mut got);
        assert_eq!(got, vec![7]);
        for i in 0..20u8 {
            assert!(idx.remove(&format!("r/{i}/*"), i));
        }
        assert_eq!(idx.bytes(), 0);
        assert!(idx.root.is_empty());
    }

    #[test]
    fn removing_what_is_not_there() {
        let mut idx = PatternIndex::<u8>::new();
        idx.insert("a/*", 1);
        assert!(!idx.remove("a/*", 2));
        assert!(!idx.remove("a/>", 1));
        assert!(!idx.remove("b/*", 1));
        assert!(idx.remove("a/*", 1));
        assert!(idx.is_empty());
    }
}
