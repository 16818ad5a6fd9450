//! `Dedup`: the publisher message ids a shard has seen lately, so that a
//! publish retried with the same id is delivered once.
//!
//! Owned by one shard, which keeps the ids of what it is the first to act
//! on: a room message's at the room's owner (with the offset it was given,
//! which a retry is answered with), a user or key push's at the owner of
//! each user or key, a push to everyone's on every shard. Pure data: time
//! is the shard's tick (seconds), given in.
//!
//! Invariants: an id is remembered for `window` ticks after it was first
//! seen (a retry does not extend it); at most `cap` ids are kept, the
//! oldest forgotten first when a new one would pass it (counted, so an
//! operator sees a window too small for the publish rate); `order` holds
//! exactly the keys of `seen`, oldest first.

use fnv::FnvHashMap;
use std::collections::VecDeque;
use std::rc::Rc;

/// What a first publish got, for answering its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A room message: its offset and the room's epoch then.
    Room {
        /// The message's offset.
        offset: u64,
        /// The room's epoch.
        epoch: u64,
    },
    /// A push to users, keys or everyone.
    Direct,
}

/// Recently seen publisher message ids.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: FnvHashMap<Rc<str>, (u32, Outcome)>,
    order: VecDeque<(u32, Rc<str>)>,
    window: u32,
    cap: usize,
    forgotten: u64,
    /// Ids ever put in `order`: the id at `order[i]` is the
    /// `pushed - order.len() + i`th kept (`by_seq`).
    pushed: u64,
}

impl Dedup {
    /// Ids are kept `window` ticks, at most `cap` of them (0: none).
    pub fn new(window: u32, cap: usize) -> Self {
        Dedup {
            window,
            cap,
            ..Dedup::default()
        }
    }

    /// What the first publish with `key` got, if it was within the window.
    pub fn seen(&self, key: &str, now: u32) -> Option<Outcome> {
        let &(at, outcome) = self.seen.get(key)?;
        (now.saturating_sub(at) < self.window).then_some(outcome)
    }

    /// Remembers `key` as first seen at `now` with `outcome`.
    pub fn record(&mut self, key: &str, outcome: Outcome, now: u32) {
        if self.cap == 0 || self.window == 0 {
            return;
        }
        self.expire(now);
        if self.seen.contains_key(key) {
            // Still within its window (expiry just ran): callers ask `seen`
            // first and do not publish again, and a retry does not extend
            // the window.
            return;
        }
        while self.seen.len() >= self.cap {
            let Some((_, old)) = self.order.pop_front() else { break };
            self.seen.remove(&old);
            self.forgotten += 1;
        }
        let key: Rc<str> = Rc::from(key);
        self.seen.insert(key.clone(), (now, outcome));
        self.order.push_back((now, key));
        self.pushed += 1;
    }

    /// Forgets ids older than the window.
    pub fn expire(&mut self, now: u32) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_sub(*at) < self.window {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front checked");
            self.seen.remove(&key);
        }
    }

    /// The ids kept so far are numbered from 0 in the order kept: the
    /// numbers of those still kept run from this one ...
    pub fn first_seq(&self) -> u64 {
        self.pushed - self.order.len() as u64
    }

    /// ... up to this one (the next id kept gets it).
    pub fn next_seq(&self) -> u64 {
        self.pushed
    }

    /// The id numbered `seq`, if it is still kept: (key, tick first seen,
    /// outcome). For the durable store's checkpoints, which write the ids
    /// kept when they began, a few at a time.
    pub fn by_seq(&self, seq: u64) -> Option<(&str, u32, Outcome)> {
        let i = usize::try_from(seq.checked_sub(self.first_seq())?).ok()?;
        let (at, k) = self.order.get(i)?;
        let &(_, o) = self.seen.get(k)?;
        Some((k, *at, o))
    }

    /// Ids kept now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none are kept.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Ids forgotten before their window ended (the cap was reached) since
    /// the last call.
    pub fn take_forgotten(&mut self) -> u64 {
        std::mem::take(&mut self.forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: Outcome = Outcome::Room { offset: 7, epoch: 1 };

    #[test]
    fn ids_are_numbered_in_the_order_kept_and_forgotten_numbers_find_nothing() {
        let mut d = Dedup::new(10, 2);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            d.record(k, ROOM, i as u32);
        }
        // The cap of 2 forgot "a".
        assert_eq!((d.first_seq(), d.next_seq()), (1, 3));
        assert_eq!(d.by_seq(0), None);
        assert_eq!(d.by_seq(1), Some(("b", 1, ROOM)));
        assert_eq!(d.by_seq(2), Some(("c", 2, ROOM)));
        assert_eq!(d.by_seq(3), None);
        d.expire(12);
        assert_eq!((d.first_seq(), d.by_seq(1), d.by_seq(2)), (3, None, None));
    }

    #[test]
    fn an_id_is_known_for_its_window_then_forgotten() {
        let mut d = Dedup::new(10, 100);
        assert_eq!(d.seen("a", 0), None);
        d.record("a", ROOM, 0);
        assert_eq!(d.seen("a", 9), Some(ROOM));
        assert_eq!(d.seen("a", 10), None, "the window is over");
        d.record("b", Outcome::Direct, 10);
        assert_eq!(d.len(), 1, "recording expires what is over");
        d.record("a", Outcome::Direct, 11);
        assert_eq!(d.seen("a", 20), Some(Outcome::Direct));
        d.expire(21);
        assert!(d.is_empty());
    }

    #[test]
    fn past_the_cap_the_oldest_go_first_and_are_counted() {
        let mut d = Dedup::new(100, 2);
        d.record("a", Outcome::Direct, 0);
        d.record("b", Outcome::Direct, 1);
        d.record("c", Outcome::Direct, 2);
        assert_eq!((d.seen("a", 3), d.seen("b", 3)), (None, Some(Outcome::Direct)));
        assert_eq!(d.take_forgotten(), 1);
        assert_eq!(d.take_forgotten(), 0);
    }

    #[test]
    fn a_zero_window_or_cap_keeps_nothing() {
        for mut d in [Dedup::new(0, 10), Dedup::new(10, 0)] {
            d.record("a", Outcome::Direct, 0);
            assert_eq!(d.seen("a", 0), None);
        }
    }

    #[test]
    fn a_key_seen_again_after_its_window_starts_a_new_one() {
        let mut d = Dedup::new(10, 100);
        d.record("a", ROOM, 0);
        d.record("b", Outcome::Direct, 5);
        d.record("a", Outcome::Direct, 12);
        d.expire(14);
        assert_eq!(d.seen("a", 14), Some(Outcome::Direct));
        assert_eq!(d.seen("b", 14), Some(Outcome::Direct));
        d.expire(15);
        assert_eq!(d.seen("b", 15), None);
        assert_eq!(d.len(), 1);
    }
}
