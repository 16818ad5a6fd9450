//! User inboxes: for every user id this shard owns, the pushes to that user
//! still waiting for a version-2 connection of the user to acknowledge
//! them, oldest first.
//!
//! Pure data on the user's owner shard (sans-IO): time arrives as the
//! shard's tick, pushes as already-encoded frames shared with live delivery
//! (one allocation per push, whatever the number of users it went to). The
//! owner stores a push (`store`), lists what a new connection is owed
//! (`pending`), forgets what was acknowledged (`ack`) or handed to a
//! version-1 connection (`take`), and ages entries once a tick (`expire`).
//!
//! Limits (`[inbox]`): per user at most `messages` entries and `bytes`
//! bytes (the oldest leave first), none older than its TTL (the publisher's,
//! else `ttl_secs`), and across the shard at most its share of `memory`,
//! evicting the oldest stored push of any user first. What counts is what
//! is allocated (`cost`): each push's frames and place, and each user's
//! inbox itself. A push to many users is stored once and charged in full
//! to each, so the cap errs on the side of less memory. Every eviction is
//! counted by cause. The entries are kept by the shard's one bounded
//! store (`store::bounded`), an `Inbox` being the user's slot there.
//!
//! Invariants: entries of a user are in the order their pushes reached the
//! owner; an id appears at most once per user (ids are process-unique per
//! push); a user without entries has no inbox.

use crate::proto::wire::Frames;
use crate::shard::cost;
use crate::shard::store::bounded::{Bounded, Cause, Item, Queue, Slot};
use crate::shard::store::due::Mark;
use crate::shard::store::history;

pub use crate::shard::store::bounded::Evicted;

/// Bytes a stored push costs beyond its frames: its place in the eviction
/// order (its slot in the user's deque is the inbox's).
const ENTRY_COST: usize = cost::queue_slot::<(i64, u64)>();

/// Bytes a user's inbox costs before its deque: its map slot and its place
/// in the due heap.
const INBOX_COST: usize = cost::map_slot::<i64, Inbox>() + cost::queue_slot::<Mark<i64>>();

/// How much one user's inbox keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Most pushes kept per user (0: no inbox).
    pub messages: usize,
    /// Most bytes kept per user.
    pub bytes: usize,
    /// Seconds a push is kept unless the publisher gave a TTL.
    pub ttl: u32,
}

/// One push waiting for a user.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The push's id (what a version-2 client acknowledges).
    pub id: u64,
    /// Its business operation code (version 1's accepts filter).
    pub op: u32,
    /// Its frames, shared with live delivery.
    pub frames: Frames,
    /// Tick its TTL ends (`history::ttl_end`: never before its TTL).
    pub ttl_end: u32,
    /// Bytes charged for it.
    pub cost: usize,
}

impl Item for Entry {
    fn cost(&self) -> usize {
        self.cost
    }
}

/// One user's inbox: its slot in the bounded store.
#[derive(Debug, Default)]
struct Inbox {
    entries: Queue<Entry>,
}

impl Slot<i64> for Inbox {
    type Entry = Entry;
    const KEEP_EMPTY: bool = false;

    fn queue(&self) -> &Queue<Entry> {
        &self.entries
    }

    fn queue_mut(&mut self) -> &mut Queue<Entry> {
        &mut self.entries
    }

    fn own_cost(&self, _: &i64) -> usize {
        INBOX_COST + self.entries.buffer_cost()
    }

    fn due(&self, e: &Entry) -> u32 {
        e.ttl_end
    }

    fn due_cause(&self, e: &Entry, now: u32) -> Option<Cause> {
        (e.ttl_end <= now).then_some(Cause::Ttl)
    }
}

/// Every inbox this shard owns.
#[derive(Debug)]
pub struct Inboxes {
    users: Bounded<i64, Inbox>,
    policy: Policy,
}

impl Inboxes {
    /// Inboxes under `policy`, holding at most `cap` bytes in all.
    pub fn new(policy: Policy, cap: usize) -> Self {
        Inboxes {
            users: Bounded::new(cap),
            policy,
        }
    }

    /// Whether inboxes are on (`[inbox] messages` > 0).
    pub fn enabled(&self) -> bool {
        self.policy.messages > 0
    }

    /// Pushes stored, all users.
    pub fn messages(&self) -> usize {
        self.users.count()
    }

    /// Bytes counted against the cap, all users: the pushes and the
    /// inboxes.
    pub fn bytes(&self) -> usize {
        self.users.charged()
    }

    /// Users with something stored.
    pub fn users(&self) -> usize {
        self.users.slots()
    }

    /// What was evicted since the last call.
    pub fn take_evicted(&mut self) -> Evicted {
        self.users.take_evicted()
    }

    /// Stores push `id` for `mid` at tick `now`, with the publisher's `ttl`
    /// if it gave one.
    pub fn store(&mut self, mid: i64, id: u64, op: u32, frames: &Frames, now: u32, ttl: Option<u32>) {
        let end = history::ttl_end(now, ttl.unwrap_or(self.policy.ttl));
        self.keep(mid, id, op, frames, end);
    }

    /// Keeps push `id` for `mid` until tick `ttl_end` (what `store` does
    /// once it knows the end; the durable store's replay calls it too).
    pub fn keep(&mut self, mid: i64, id: u64, op: u32, frames: &Frames, ttl_end: u32) {
        if !self.enabled() {
            return;
        }
        let p = self.policy;
        let e = Entry {
            id,
            op,
            frames: frames.clone(),
            ttl_end,
            cost: cost::frames(frames) + ENTRY_COST,
        };
        if !self.users.contains(&mid) {
            self.users.insert(mid, Inbox::default());
        }
        self.users.push(&mid, e, p.messages, p.bytes);
        self.users.shed(|_, _| {});
    }

    /// What `mid` is owed, oldest first (expired entries skipped).
    pub fn pending(&self, mid: i64, now: u32) -> Vec<Entry> {
        self.users.get(&mid).map_or_else(Vec::new, |i| {
            i.entries.iter().filter(|e| e.ttl_end > now).cloned().collect()
        })
    }

    /// Hands `mid`'s whole inbox over (to a version-1 connection, which
    /// cannot acknowledge: at most once), oldest first.
    pub fn take(&mut self, mid: i64, now: u32) -> Vec<Entry> {
        let Some(inbox) = self.users.remove(&mid) else {
            return Vec::new();
        };
        inbox.entries.into_entries().filter(|e| e.ttl_end > now).collect()
    }

    /// Forgets the entries of `mid` with these ids; returns how many there were.
    pub fn ack(&mut self, mid: i64, ids: &[u64]) -> usize {
        self.users.remove_where(&mid, |e| ids.contains(&e.id))
    }

    /// Drops the entries whose TTL has ended as of tick `now` (from the front
    /// of each inbox; a shorter-lived entry behind longer-lived ones is
    /// skipped by `pending` until it reaches the front).
    pub fn expire(&mut self, now: u32) {
        self.users.expire(now, |_, _| {});
    }

    /// Whether `mid`'s inbox holds push `id` (replay meets a push twice
    /// when a checkpoint repeats it).
    pub fn holds(&self, mid: i64, id: u64) -> bool {
        self.users
            .get(&mid)
            .is_some_and(|i| i.entries.iter().any(|e| e.id == id))
    }

    /// The users with something stored.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.users.keys().copied()
    }

    /// `mid`'s pushes, oldest first.
    pub fn pushes(&self, mid: i64) -> impl Iterator<Item = &Entry> {
        self.users.get(&mid).into_iter().flat_map(|i| i.entries.iter())
    }

    /// Every user's pushes, oldest first.
    pub fn each(&self) -> impl Iterator<Item = (i64, &Entry)> {
        self.users
            .iter()
            .flat_map(|(&m, i)| i.entries.iter().map(move |e| (m, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v2::{Envelope, Kind};

    const P: Policy = Policy {
        messages: 3,
        bytes: 1 << 20,
        ttl: 100,
    };

    fn frames(id: u64) -> Frames {
        Frames::new(&Envelope {
            op: 7,
            kind: Kind::User,
            room: "",
            offset: id,
            epoch: 0,
            id: "",
            payload: b"x",
        })
    }

    fn ids(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.id).collect()
    }

    #[test]
    fn store_ack_and_limits() {
        let mut b = Inboxes::new(P, 1 << 20);
        for id in 1..=4 {
            b.store(9, id, 7, &frames(id), 0, None);
        }
        assert_eq!(
            ids(&b.pending(9, 0)),
            vec![2, 3, 4],
            "the oldest left at the message limit"
        );
        assert_eq!(b.take_evicted().limit, 1);
        assert_eq!(b.ack(9, &[3, 99]), 1);
        assert_eq!(ids(&b.pending(9, 0)), vec![2, 4]);
        assert_eq!(b.ack(9, &[2, 4]), 2);
        assert_eq!((b.messages(), b.bytes(), b.users()), (0, 0, 0));
        assert!(b.pending(8, 0).is_empty());
    }

    #[test]
    fn ttl_and_memory_cap_and_take() {
        // What one push each to two users costs, inboxes included.
        let mut probe = Inboxes::new(P, usize::MAX);
        probe.store(1, 1, 7, &frames(1), 0, None);
        probe.store(2, 2, 7, &frames(2), 0, None);
        // And user 2's deque growing from one slot to four.
        let mut b = Inboxes::new(P, probe.bytes() + 3 * std::mem::size_of::<(u64, Entry)>());
        b.store(1, 1, 7, &frames(1), 0, Some(5));
        b.store(2, 2, 7, &frames(2), 0, None);
        b.store(2, 3, 7, &frames(3), 0, None);
        assert_eq!(b.take_evicted().memory, 1, "user 1's push was the oldest");
        assert!(b.pending(1, 0).is_empty());
        // Stored during tick 0 with a TTL of 100 s: tick 100 may begin
        // less than 100 s later, so they stay through it.
        b.expire(100);
        assert_eq!((b.messages(), b.pending(2, 100).len()), (2, 2));
        b.expire(101);
        assert_eq!((b.messages(), b.take_evicted().ttl), (0, 2));
        b.store(3, 4, 7, &frames(4), 0, None);
        assert_eq!(ids(&b.take(3, 0)), vec![4]);
        assert_eq!((b.messages(), b.bytes()), (0, 0));
        let mut off = Inboxes::new(Policy { messages: 0, ..P }, 1 << 20);
        off.store(1, 1, 7, &frames(1), 0, None);
        assert_eq!(off.messages(), 0);
    }
}
