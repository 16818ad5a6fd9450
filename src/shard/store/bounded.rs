//! The one bounded store under room history (`store::history`) and user
//! inboxes (`store::inbox`): per key (a room, a user) a FIFO of entries
//! with per-key limits, and across the shard a byte cap, an expiry heap
//! and eviction counts. The durable store of a later issue goes under it.
//!
//! Pure data, owned by one shard; time is ticks. What a key keeps beside
//! its entries (a room's epoch and read marks; nothing for an inbox) is the
//! `Slot` the caller defines; the store owns every entry and every count.
//!
//! ```text
//! push(key, e)   ─► key's FIFO ─► per-key limits (oldest out: Limit)
//!                        │
//!                        ├──► order   (key, seq), store-wide: the cap sheds from its front (Memory)
//!                        └──► due     (tick, key): expire takes what is due (Ttl, or Limit for age)
//! ```
//!
//! Invariants:
//! - a key's entries are in the order pushed; each has a store-wide `seq`,
//!   increasing, so the order queue and the heap can hold places that went
//!   another way (acknowledged, expired) and tell them apart by `seq`;
//! - `bytes` is the sum of every entry's `Item::cost`, `count` their number,
//!   `overhead` the sum of every slot's own cost as last charged; `charged()`
//!   (what the cap holds to) is `bytes + overhead`;
//! - a slot without entries is dropped unless `Slot::KEEP_EMPTY`;
//! - a key with entries has a mark in `due` no later than its front's due
//!   tick (`Queue::scheduled` is its earliest), so `expire` reaches every
//!   front when it falls due; a mark whose entry has gone (acknowledged,
//!   shed, or the key dropped) only makes `expire` look at the key again;
//! - the order queue and the heap stay within twice what they index plus a
//!   constant (`due::compact`).

use crate::shard::cost;
use crate::shard::store::due::{self, DueMarks};
use fnv::FnvHashMap;
use std::collections::VecDeque;
use std::hash::Hash;

/// Why an entry left the store (what the shard's stats count it as).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A key's message, byte or age limit.
    Limit,
    /// The shard's cap (oldest first, any key).
    Memory,
    /// The entry's own TTL.
    Ttl,
}

/// Counts of what left the store, by cause.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// By a key's message, byte or age limit.
    pub limit: u64,
    /// By the shard's cap.
    pub memory: u64,
    /// By its TTL.
    pub ttl: u64,
}

impl Evicted {
    fn count(&mut self, cause: Cause) {
        match cause {
            Cause::Limit => self.limit += 1,
            Cause::Memory => self.memory += 1,
            Cause::Ttl => self.ttl += 1,
        }
    }
}

/// An entry the store keeps.
pub trait Item {
    /// Bytes it costs beyond its place in the key's FIFO (its frames and
    /// its place in the order queue).
    fn cost(&self) -> usize;
}

/// What the store keeps per key beside the entries.
pub trait Slot<K>: Sized {
    /// What the FIFO holds.
    type Entry: Item;
    /// Whether the slot stays when its last entry leaves.
    const KEEP_EMPTY: bool;
    /// The key's FIFO.
    fn queue(&self) -> &Queue<Self::Entry>;
    /// The key's FIFO, for the store only.
    fn queue_mut(&mut self) -> &mut Queue<Self::Entry>;
    /// What the slot costs beside its entries (its FIFO's buffer included).
    fn own_cost(&self, key: &K) -> usize;
    /// The tick `e` is due to leave (`u32::MAX`: never by time).
    fn due(&self, e: &Self::Entry) -> u32;
    /// Whether `e` is due at tick `now`, and as what.
    fn due_cause(&self, e: &Self::Entry, now: u32) -> Option<Cause>;
    /// `e` left for `cause` (history marks what can no longer be replayed).
    fn left(&mut self, _e: &Self::Entry, _cause: Cause) {}
}

/// One key's entries, oldest first, each with its store-wide sequence.
#[derive(Debug)]
pub struct Queue<E> {
    entries: VecDeque<(u64, E)>,
    bytes: usize,
    /// The earliest tick this key has a mark for in `due`.
    scheduled: u32,
    /// The slot's own cost as counted in `Bounded::overhead`.
    charged: usize,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            entries: VecDeque::new(),
            bytes: 0,
            scheduled: u32::MAX,
            charged: 0,
        }
    }
}

impl<E> Queue<E> {
    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &E> + ExactSizeIterator {
        self.entries.iter().map(|(_, e)| e)
    }

    /// The entries after those for which `before` holds (a prefix, as the
    /// entries are in order), oldest first; found by binary search.
    pub fn after(&self, mut before: impl FnMut(&E) -> bool) -> impl Iterator<Item = &E> {
        let i = self.entries.partition_point(|(_, e)| before(e));
        self.entries.range(i..).map(|(_, e)| e)
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<&E> {
        self.entries.front().map(|(_, e)| e)
    }

    /// What the FIFO's buffer costs (`cost::deque`).
    pub fn buffer_cost(&self) -> usize {
        cost::deque(&self.entries)
    }

    /// The entries, taken out of a slot the store no longer holds.
    pub fn into_entries(self) -> impl Iterator<Item = E> {
        self.entries.into_iter().map(|(_, e)| e)
    }

    fn holds(&self, seq: u64) -> bool {
        self.entries.binary_search_by_key(&seq, |(s, _)| *s).is_ok()
    }
}

/// Pops `q`'s front, returning it with its cost.
fn pop_front<E: Item>(q: &mut Queue<E>) -> Option<E> {
    let (_, e) = q.entries.pop_front()?;
    q.bytes -= e.cost();
    Some(e)
}

/// Every key's FIFO on one shard, under one byte cap.
#[derive(Debug)]
pub struct Bounded<K, S> {
    slots: FnvHashMap<K, S>,
    cap: usize,
    /// Sum of the entries' costs.
    bytes: usize,
    /// Sum of the slots' own costs (`Queue::charged`).
    overhead: usize,
    count: usize,
    next_seq: u64,
    /// (key, seq) in the order pushed: the cap sheds from the front; places
    /// of entries already gone are skipped.
    order: VecDeque<(K, u64)>,
    /// (tick, key) at which a key's oldest entry may be due.
    due: DueMarks<K>,
    evicted: Evicted,
}

impl<K, S> Bounded<K, S>
where
    K: Hash + Eq + Ord + Clone,
    S: Slot<K>,
{
    /// An empty store holding at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Bounded {
            slots: FnvHashMap::default(),
            cap,
            bytes: 0,
            overhead: 0,
            count: 0,
            next_seq: 0,
            order: VecDeque::new(),
            due: DueMarks::default(),
            evicted: Evicted::default(),
        }
    }

    /// The byte cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes of the entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Everything counted against the cap: entries and slots.
    pub fn charged(&self) -> usize {
        self.bytes + self.overhead
    }

    /// Entries kept, all keys.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Keys with a slot.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Every key with a slot.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.slots.keys()
    }

    /// Every slot with its key.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.slots.iter()
    }

    /// Whether `key` has a slot.
    pub fn contains(&self, key: &K) -> bool {
        self.slots.contains_key(key)
    }

    /// `key`'s slot.
    pub fn get<Q>(&self, key: &Q) -> Option<&S>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.slots.get(key)
    }

    /// `key`'s slot, to change what it keeps beside its entries (then
    /// `recharge` if its own cost changed).
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut S>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.slots.get_mut(key)
    }

    /// What was evicted since the last call.
    pub fn take_evicted(&mut self) -> Evicted {
        std::mem::take(&mut self.evicted)
    }

    /// Adds `slot` (with no entries) for `key`, which has none, charging
    /// its own cost.
    pub fn insert(&mut self, key: K, mut slot: S) {
        let c = slot.own_cost(&key);
        slot.queue_mut().charged = c;
        self.overhead += c;
        let old = self.slots.insert(key, slot);
        debug_assert!(old.is_none(), "insert over a slot");
    }

    /// Drops `key`'s slot with its entries (counted as no eviction: the
    /// caller hands them over or says why).
    pub fn remove(&mut self, key: &K) -> Option<S> {
        let slot = self.slots.remove(key)?;
        let q = slot.queue();
        self.overhead -= q.charged;
        self.bytes -= q.bytes;
        self.count -= q.entries.len();
        Some(slot)
    }

    /// Keeps only the slots `keep` says to, dropping the others as `remove`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &S) -> bool) {
        let (overhead, bytes, count) = (&mut self.overhead, &mut self.bytes, &mut self.count);
        self.slots.retain(|k, s| {
            let kept = keep(k, s);
            if !kept {
                let q = s.queue();
                *overhead -= q.charged;
                *bytes -= q.bytes;
                *count -= q.entries.len();
            }
            kept
        });
    }

    /// Recounts `key`'s own cost after what it keeps beside its entries
    /// changed.
    pub fn recharge<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some((k, s)) = self.slots.get_key_value(key) else {
            return;
        };
        let c = s.own_cost(k);
        let s = self.slots.get_mut(key).expect("looked up just above");
        let q = s.queue_mut();
        self.overhead = self.overhead - q.charged + c;
        q.charged = c;
    }

    /// Appends `e` to `key`'s FIFO (the slot exists), then drops its oldest
    /// entries while it holds more than `messages` or `bytes` (`Limit`).
    /// The cap is not enforced here (`shed`), so that a caller can first
    /// drop what it would rather lose.
    pub fn push(&mut self, key: &K, e: S::Entry, messages: usize, bytes: usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self.slots.get_mut(key).expect("push to a key with a slot");
        let cost = e.cost();
        let q = slot.queue_mut();
        if q.entries.capacity() == 0 {
            // Most keys keep one or a few entries: no room for four up front.
            q.entries.reserve_exact(1);
        }
        q.entries.push_back((seq, e));
        q.bytes += cost;
        self.bytes += cost;
        self.count += 1;
        while slot.queue().entries.len() > messages || slot.queue().bytes > bytes {
            let e = pop_front(slot.queue_mut()).expect("over a limit, so not empty");
            self.bytes -= e.cost();
            self.count -= 1;
            self.evicted.count(Cause::Limit);
            slot.left(&e, Cause::Limit);
        }
        if slot.queue().entries.is_empty() {
            // An entry larger than a whole key's limit: nothing is kept.
            self.settle(key);
            return;
        }
        self.order.push_back((key.clone(), seq));
        self.settle(key);
    }

    /// Drops every entry of `key` (counted as no eviction); the slot stays
    /// if it keeps empty ones.
    pub fn clear(&mut self, key: &K) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        let q = slot.queue_mut();
        self.bytes -= q.bytes;
        self.count -= q.entries.len();
        q.entries.clear();
        q.bytes = 0;
        self.settle(key);
    }

    /// Drops `key`'s entries `acked` picks (counted as no eviction);
    /// returns how many.
    pub fn remove_where(&mut self, key: &K, mut acked: impl FnMut(&S::Entry) -> bool) -> usize {
        let Some(slot) = self.slots.get_mut(key) else { return 0 };
        let q = slot.queue_mut();
        let (before, mut freed) = (q.entries.len(), 0);
        q.entries.retain(|(_, e)| {
            let gone = acked(e);
            if gone {
                freed += e.cost();
            }
            !gone
        });
        let gone = before - q.entries.len();
        q.bytes -= freed;
        self.bytes -= freed;
        self.count -= gone;
        self.settle(key);
        gone
    }

    /// Drops the due entries at the front of `key`'s FIFO as of tick `now`
    /// (a reader's view is then current between sweeps).
    pub fn trim(&mut self, key: &K, now: u32) {
        self.trim_front(key, now);
        self.settle(key);
    }

    fn trim_front(&mut self, key: &K, now: u32) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        while let Some(cause) = slot.queue().front().and_then(|e| slot.due_cause(e, now)) {
            let e = pop_front(slot.queue_mut()).expect("front checked");
            self.bytes -= e.cost();
            self.count -= 1;
            self.evicted.count(cause);
            slot.left(&e, cause);
        }
    }

    /// Drops every entry due as of tick `now` (from the front of each key:
    /// one due behind a longer-lived one waits until it reaches the front,
    /// and readers skip it meanwhile). `emptied` hears of every key whose
    /// slot stays empty.
    pub fn expire(&mut self, now: u32, mut emptied: impl FnMut(&K, &mut S)) {
        while let Some((when, key)) = self.due.take_due(now) {
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            let q = slot.queue_mut();
            if when == q.scheduled {
                q.scheduled = u32::MAX;
            }
            self.trim_front(&key, now);
            self.settle_then(&key, &mut emptied);
        }
    }

    /// Drops the oldest entries of any key (`Memory`) until everything
    /// counted is at most the cap; `emptied` hears of every key whose slot
    /// stays empty.
    pub fn shed(&mut self, mut emptied: impl FnMut(&K, &mut S)) {
        while self.charged() > self.cap {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&key) else { continue };
            if slot.queue().entries.front().is_none_or(|(s, _)| *s != seq) {
                continue;
            }
            let e = pop_front(slot.queue_mut()).expect("front checked");
            self.bytes -= e.cost();
            self.count -= 1;
            self.evicted.count(Cause::Memory);
            slot.left(&e, Cause::Memory);
            self.settle_then(&key, &mut emptied);
        }
        self.compact();
    }

    /// After `key`'s FIFO changed: drops an empty slot that does not keep,
    /// else recounts its cost and marks when its front is due.
    fn settle(&mut self, key: &K) {
        self.settle_then(key, &mut |_, _| {});
    }

    fn settle_then(&mut self, key: &K, emptied: &mut impl FnMut(&K, &mut S)) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        if slot.queue().entries.is_empty() {
            if !S::KEEP_EMPTY {
                self.remove(key);
                return;
            }
            emptied(key, slot);
        } else {
            let when = slot.due(slot.queue().front().expect("not empty"));
            let q = slot.queue_mut();
            if when < q.scheduled {
                q.scheduled = when;
                self.due.mark(when, key.clone());
            }
        }
        self.recharge(key);
    }

    /// Keeps the order queue and the due heap from outgrowing what they
    /// index (a key's marks stay in the heap until due after it has gone).
    fn compact(&mut self) {
        let slots = &self.slots;
        due::compact(&mut self.order, self.count, |(k, seq)| {
            slots.get(k).is_some_and(|s| s.queue().holds(*seq))
        });
        self.due.compact(slots.len(), |k| slots.contains_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry: (cost, due tick).
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct E(usize, u32);

    impl Item for E {
        fn cost(&self) -> usize {
            self.0
        }
    }

    #[derive(Debug, Default)]
    struct S<const KEEP: bool> {
        q: Queue<E>,
        left: Vec<(usize, Cause)>,
    }

    impl<const KEEP: bool> Slot<u32> for S<KEEP> {
        type Entry = E;
        const KEEP_EMPTY: bool = KEEP;
        fn queue(&self) -> &Queue<E> {
            &self.q
        }
        fn queue_mut(&mut self) -> &mut Queue<E> {
            &mut self.q
        }
        fn own_cost(&self, _: &u32) -> usize {
            10
        }
        fn due(&self, e: &E) -> u32 {
            e.1
        }
        fn due_cause(&self, e: &E, now: u32) -> Option<Cause> {
            (e.1 <= now).then_some(Cause::Ttl)
        }
        fn left(&mut self, e: &E, cause: Cause) {
            self.left.push((e.0, cause));
        }
    }

    fn recount<const K: bool>(b: &Bounded<u32, S<K>>) -> (usize, usize) {
        let entries: usize = b.iter().flat_map(|(_, s)| s.q.iter()).map(|e| e.0).sum();
        let n = b.iter().map(|(_, s)| s.q.len()).sum();
        (entries + 10 * b.slots(), n)
    }

    #[test]
    fn limits_cap_and_expiry_keep_the_counts_and_say_why() {
        let mut b: Bounded<u32, S<true>> = Bounded::new(800);
        b.insert(1, S::default());
        b.insert(2, S::default());
        for i in 0..4 {
            b.push(&1, E(100, 50 + i), 3, 1 << 20);
        }
        assert_eq!(b.get(&1).unwrap().left, vec![(100, Cause::Limit)]);
        b.push(&2, E(300, 10), 3, 1 << 20);
        b.push(&2, E(300, 99), 3, 1 << 20);
        assert_eq!(b.charged(), 3 * 100 + 600 + 20);
        // Over the cap by 120: the oldest places left are key 1's (its very
        // first went by the limit already, and is skipped).
        b.shed(|_, _| {});
        assert_eq!(b.charged(), 720);
        assert_eq!(b.get(&1).unwrap().q.len(), 1);
        let e = b.take_evicted();
        assert_eq!((e.limit, e.memory, e.ttl), (1, 2, 0));
        assert_eq!((b.charged(), b.count()), recount(&b));
        let mut emptied = Vec::new();
        b.expire(10, |k, _| emptied.push(*k));
        assert_eq!(b.get(&2).unwrap().q.len(), 1, "the TTL took key 2's first");
        b.expire(1000, |k, _| emptied.push(*k));
        assert_eq!(emptied, vec![1, 2], "both slots stay, empty");
        assert_eq!((b.count(), b.bytes(), b.charged()), (0, 0, 20));
        assert_eq!(b.take_evicted().ttl, 3);
    }

    #[test]
    fn slots_that_do_not_keep_go_with_their_last_entry() {
        let mut b: Bounded<u32, S<false>> = Bounded::new(1 << 20);
        b.insert(7, S::default());
        b.push(&7, E(5000, 9), 10, 1000);
        assert!(!b.contains(&7), "larger than the key's byte limit: nothing kept");
        b.insert(7, S::default());
        b.push(&7, E(5, 9), 10, 1000);
        b.push(&7, E(6, 9), 10, 1000);
        assert_eq!(b.remove_where(&7, |e| e.0 == 5), 1);
        assert_eq!((b.count(), b.charged()), (1, 16));
        assert_eq!(b.remove_where(&7, |_| true), 1);
        assert_eq!((b.slots(), b.charged()), (0, 0));
    }

    #[test]
    fn stale_places_are_skipped_and_compacted() {
        let mut b: Bounded<u32, S<false>> = Bounded::new(1 << 30);
        for round in 0..3000u32 {
            let k = round % 7;
            if !b.contains(&k) {
                b.insert(k, S::default());
            }
            b.push(&k, E(1, round + 5), 100, 1 << 20);
            b.remove_where(&k, |e| e.1 % 2 == 0);
            b.expire(round, |_, _| {});
            b.shed(|_, _| {});
        }
        assert!(b.order.len() <= 2 * b.count() + 1024, "{}", b.order.len());
        assert!(b.due.len() <= 2 * b.slots() + 1024);
        assert_eq!((b.charged(), b.count()), recount(&b));
    }
}
