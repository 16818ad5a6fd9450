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
//! Invariants: a node exists iff some pattern passes through or ends at it
//! (removal prunes empty nodes); a subscriber is listed once per
//! (pattern, subscriber) inserted.

use fnv::FnvHashMap;

/// Pattern → subscribers, for one shard.
#[derive(Debug)]
pub struct PatternIndex<M> {
    root: Node<M>,
    len: usize,
}

#[derive(Debug)]
struct Node<M> {
    lit: FnvHashMap<Box<str>, Node<M>>,
    star: Option<Box<Node<M>>>,
    /// Patterns that end here.
    here: Vec<M>,
    /// Patterns that end here with a `>`: one or more segments follow.
    rest: Vec<M>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            lit: FnvHashMap::default(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<M> Node<M> {
    fn is_empty(&self) -> bool {
        self.lit.is_empty() && self.star.is_none() && self.here.is_empty() && self.rest.is_empty()
    }
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
        }
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
        let mut segs = pattern.split('/').peekable();
        while let Some(s) = segs.next() {
            if s == ">" && segs.peek().is_none() {
                node.rest.push(m);
                self.len += 1;
                return;
            }
            node = if s == "*" {
                node.star.get_or_insert_with(Box::default)
            } else {
                node.lit.entry(s.into()).or_default()
            };
        }
        node.here.push(m);
        self.len += 1;
    }

    /// Unsubscribes `m` from `pattern`; returns whether it was subscribed.
    pub fn remove(&mut self, pattern: &str, m: M) -> bool {
        let segs: Vec<&str> = pattern.split('/').collect();
        let found = remove_at(&mut self.root, &segs, m);
        if found {
            self.len -= 1;
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
    if let Some(next) = node.lit.get(*first) {
        walk(next, rest, out);
    }
    if let Some(next) = &node.star {
        walk(next, rest, out);
    }
}

fn remove_at<M: PartialEq>(node: &mut Node<M>, segs: &[&str], m: M) -> bool {
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
                let found = remove_at(child, rest, m);
                if child.is_empty() {
                    node.star = None;
                }
                found
            } else {
                let Some(child) = node.lit.get_mut(*first) else {
                    return false;
                };
                let found = remove_at(child, rest, m);
                if child.is_empty() {
                    node.lit.remove(*first);
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
        }
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
