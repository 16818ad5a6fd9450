//! What the shard's stores share to keep their entries bounded in time and
//! their bookkeeping bounded in size: `DueMarks`, when each kept item (a
//! room's log, a user's inbox) may next have an entry due to leave, and
//! `compact`, which keeps an eviction-order queue from outgrowing what it
//! indexes. History (`store::history`) and inboxes (`store::inbox`) used to
//! carry a copy each.
//!
//! Pure data, owned by one shard; time is ticks.
//!
//! Invariants: a mark is never taken before its tick; marks are taken
//! earliest first; an item may hold stale marks (its owner checks a taken
//! mark against what it scheduled), and they are dropped once the marks
//! outnumber twice the live items plus 1,024, so the heap stays within a
//! constant factor of what it indexes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Room a queue or heap may take beyond twice what it indexes before it is
/// compacted (so that compaction is rare on a small store).
const SLACK: usize = 1024;

/// One mark as the heap holds it (for memory accounting).
pub type Mark<K> = Reverse<(u32, K)>;

/// (tick, item) marks, earliest first.
#[derive(Debug)]
pub struct DueMarks<K> {
    heap: BinaryHeap<Mark<K>>,
}

impl<K: Ord> Default for DueMarks<K> {
    fn default() -> Self {
        DueMarks {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord> DueMarks<K> {
    /// `key` may have an entry due at tick `when`.
    pub fn mark(&mut self, when: u32, key: K) {
        self.heap.push(Reverse((when, key)));
    }

    /// The earliest mark due by tick `now`, taken; `None` when none is.
    pub fn take_due(&mut self, now: u32) -> Option<(u32, K)> {
        if self.heap.peek().is_none_or(|Reverse((when, _))| *when > now) {
            return None;
        }
        self.heap.pop().map(|Reverse(m)| m)
    }

    /// Drops the marks of items `live` says are gone, once the marks
    /// outnumber twice the `items` live plus the slack.
    pub fn compact(&mut self, items: usize, live: impl Fn(&K) -> bool) {
        if self.heap.len() > 2 * items + SLACK {
            self.heap.retain(|Reverse((_, k))| live(k));
        }
    }

    /// Marks held (live or stale).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no mark is held.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Keeps `order` (a store's eviction order, with stale places left behind
/// by entries that went another way) within twice the `entries` it indexes
/// plus the slack: past that, only the places `live` keeps stay.
pub fn compact<T>(order: &mut VecDeque<T>, entries: usize, live: impl FnMut(&T) -> bool) {
    if order.len() > 2 * entries + SLACK {
        order.retain(live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_come_due_earliest_first_and_never_before_their_tick() {
        let mut d = DueMarks::default();
        for (when, key) in [(5, "c"), (2, "a"), (3, "b"), (2, "z")] {
            d.mark(when, key);
        }
        assert_eq!(d.take_due(1), None);
        assert_eq!(d.take_due(2), Some((2, "a")));
        assert_eq!(d.take_due(2), Some((2, "z")));
        assert_eq!(d.take_due(2), None, "b is due at 3");
        assert_eq!(d.take_due(10), Some((3, "b")));
        assert_eq!(d.take_due(10), Some((5, "c")));
        assert!(d.is_empty());
    }

    #[test]
    fn stale_marks_go_only_past_the_bound() {
        let mut d = DueMarks::default();
        for i in 0..(2 * 10 + SLACK) as u32 {
            d.mark(i, i % 20);
        }
        // Keys 0..10 live: at the bound nothing is dropped yet.
        d.compact(10, |k| *k < 10);
        assert_eq!(d.len(), 2 * 10 + SLACK);
        d.mark(0, 3);
        d.compact(10, |k| *k < 10);
        assert!(d.len() <= 2 * 10 + SLACK, "{}", d.len());
        while let Some((_, k)) = d.take_due(u32::MAX) {
            assert!(k < 10, "a dead key's mark survived: {k}");
        }
        let mut order: VecDeque<u32> = (0..(2 * 5 + SLACK + 1) as u32).collect();
        compact(&mut order, 5, |x| x % 2 == 0);
        assert!(order.iter().all(|x| x % 2 == 0));
    }
}
