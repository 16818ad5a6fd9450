//! `Wheel`: deadlines in whole ticks (seconds), one slot per tick, for
//! every connection of a shard: no timer object per connection.
//!
//! Pure data, owned by one shard, driven by `advance` (the shard's sweep,
//! once a second; the simulated-time harness calls it directly). The wheel
//! never reads a clock: time is the number of `advance` calls.
//!
//! Entries are never removed: an item rescheduled later simply gets a new
//! entry, and its owner remembers which tick holds the live one
//! (`queued_at`). When a slot comes due the owner checks each entry against
//! that record and ignores stale ones. Scheduling a later deadline while the
//! live entry is due earlier adds nothing: the early entry, when it comes
//! due, finds the deadline not reached and reschedules.
//!
//! Invariants: an entry sits at a tick in `now+1 ..= now + SLOTS - 1`; a
//! deadline further out goes to the furthest slot and is looked at again
//! then; every item has at most one live entry.

/// Slots in the wheel (one per tick).
pub const SLOTS: u32 = 1024;

/// Items by the tick at which they are looked at next.
#[derive(Debug)]
pub struct Wheel<T> {
    slots: Vec<Vec<T>>,
    /// Ticks since the wheel started.
    now: u32,
}

impl<T: Copy> Default for Wheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy> Wheel<T> {
    /// An empty wheel at tick 0.
    pub fn new() -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now: 0,
        }
    }

    /// An empty wheel at tick `now` (a shard taking over another process's
    /// connections goes on counting from its tick).
    pub fn starting_at(now: u32) -> Self {
        Wheel { now, ..Self::new() }
    }

    /// The current tick.
    pub fn now(&self) -> u32 {
        self.now
    }

    /// Makes sure `item` is looked at by `deadline`. `queued_at` is the tick
    /// of its live entry (0 or a past tick: none). Returns the tick of its
    /// live entry afterwards, for the caller to keep.
    pub fn schedule(&mut self, item: T, deadline: u32, queued_at: u32) -> u32 {
        let at = deadline.min(self.now + SLOTS - 1).max(self.now + 1);
        if queued_at > self.now && queued_at <= at {
            return queued_at;
        }
        self.slots[(at % SLOTS) as usize].push(item);
        at
    }

    /// Advances one tick; returns it and the entries that came due. An entry
    /// is live only if its item's `queued_at` equals the returned tick.
    pub fn advance(&mut self) -> (u32, Vec<T>) {
        self.now += 1;
        let slot = (self.now % SLOTS) as usize;
        (self.now, std::mem::take(&mut self.slots[slot]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A toy owner: per item its deadline and live entry, as the shard keeps.
    struct Owner {
        wheel: Wheel<u32>,
        rec: HashMap<u32, (u32, u32)>,
    }

    impl Owner {
        fn new() -> Self {
            Owner {
                wheel: Wheel::new(),
                rec: HashMap::new(),
            }
        }
        fn set(&mut self, item: u32, deadline: u32) {
            let queued = self.rec.get(&item).map_or(0, |r| r.1);
            let at = self.wheel.schedule(item, deadline, queued);
            self.rec.insert(item, (deadline, at));
        }
        /// One tick: the items whose deadline passed (and are forgotten).
        fn tick(&mut self) -> Vec<u32> {
            let (now, due) = self.wheel.advance();
            let mut expired = Vec::new();
            for item in due {
                let Some(&(deadline, at)) = self.rec.get(&item) else {
                    continue;
                };
                if at != now {
                    continue;
                }
                if deadline <= now {
                    self.rec.remove(&item);
                    expired.push(item);
                } else {
                    self.set(item, deadline);
                }
            }
            expired
        }
    }

    #[test]
    fn items_expire_at_their_deadline_and_not_before() {
        let mut o = Owner::new();
        o.set(1, 3);
        o.set(2, 1);
        assert_eq!(o.tick(), vec![2]);
        assert_eq!(o.tick(), Vec::<u32>::new());
        assert_eq!(o.tick(), vec![1]);
        assert!(o.rec.is_empty());
    }

    #[test]
    fn renewing_moves_the_deadline_without_a_second_live_entry() {
        let mut o = Owner::new();
        o.set(7, 2);
        o.tick();
        o.set(7, 5); // renewed at tick 1: the entry at 2 will reschedule
        let mut when = None;
        for _ in 0..10 {
            if o.tick() == vec![7] {
                when = Some(o.wheel.now());
            }
        }
        assert_eq!(when, Some(5));
        // An earlier deadline than the live entry adds an entry now.
        o.set(8, 9);
        o.set(8, o.wheel.now() + 1);
        assert_eq!(o.tick(), vec![8]);
        assert_eq!(o.tick(), Vec::<u32>::new(), "the stale entry at 9 is ignored later");
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_a_full_turn_and_more() {
        let mut o = Owner::new();
        let far = 3 * SLOTS + 17;
        o.set(1, far);
        let mut expired_at = None;
        for _ in 0..far + 2 {
            if !o.tick().is_empty() {
                expired_at = Some(o.wheel.now());
            }
        }
        assert_eq!(expired_at, Some(far));
        // A deadline in the past is looked at on the next tick.
        o.set(2, 0);
        assert_eq!(o.tick(), vec![2]);
    }
}
