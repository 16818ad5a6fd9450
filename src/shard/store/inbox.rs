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
//! counted by cause.
//!
//! Invariants: entries of a user are in the order their pushes reached the
//! owner; an id appears at most once per user (ids are process-unique per
//! push); `bytes` and `count` are the sums over every user.

use crate::proto::wire::Frames;
use crate::shard::cost;
use crate::shard::store::due::{self, DueMarks, Mark};
use fnv::FnvHashMap;
use std::collections::VecDeque;

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
    /// Tick its TTL ends.
    pub ttl_end: u32,
    /// Bytes charged for it.
    pub cost: usize,
}

#[derive(Debug)]
struct Inbox {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The earliest tick this inbox has a mark for in `due`.
    scheduled: u32,
    /// What the inbox itself costs, as counted in `Inboxes::overhead`.
    charged: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox {
            entries: VecDeque::new(),
            bytes: 0,
            scheduled: u32::MAX,
            charged: 0,
        }
    }
}

impl Inbox {
    /// What it costs beside its pushes.
    fn cost(&self) -> usize {
        INBOX_COST + cost::deque(&self.entries)
    }

    /// Makes sure `due` will look at this inbox when its front is due
    /// (after the front changed); returns the mark to push, if one is needed.
    fn reschedule(&mut self) -> Option<u32> {
        let when = self.entries.front()?.ttl_end;
        (when < self.scheduled).then(|| {
            self.scheduled = when;
            when
        })
    }
}

/// Counts of what left inboxes and why.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// By a user's message or byte limit.
    pub limit: u64,
    /// By the shard's share of `[inbox] memory` (oldest first).
    pub memory: u64,
    /// By its TTL.
    pub ttl: u64,
}

/// Every inbox this shard owns.
#[derive(Debug)]
pub struct Inboxes {
    users: FnvHashMap<i64, Inbox>,
    policy: Policy,
    cap: usize,
    /// Sum of the stored pushes' costs.
    bytes: usize,
    /// Sum of the inboxes' own costs (`Inbox::charged`).
    overhead: usize,
    count: usize,
    /// (user, id) in the order stored: the memory cap evicts from the front;
    /// entries already gone are skipped.
    order: VecDeque<(i64, u64)>,
    /// (tick, user) at which a user's oldest entry may be due.
    due: DueMarks<i64>,
    evicted: Evicted,
}

impl Inboxes {
    /// Inboxes under `policy`, holding at most `cap` bytes in all.
    pub fn new(policy: Policy, cap: usize) -> Self {
        Inboxes {
            users: FnvHashMap::default(),
            policy,
            cap,
            bytes: 0,
            overhead: 0,
            count: 0,
            order: VecDeque::new(),
            due: DueMarks::default(),
            evicted: Evicted::default(),
        }
    }

    /// Whether inboxes are on (`[inbox] messages` > 0).
    pub fn enabled(&self) -> bool {
        self.policy.messages > 0
    }

    /// Pushes stored, all users.
    pub fn messages(&self) -> usize {
        self.count
    }

    /// Bytes counted against the cap, all users: the pushes and the
    /// inboxes.
    pub fn bytes(&self) -> usize {
        self.bytes + self.overhead
    }

    /// Forgets `mid`'s inbox (empty, or handed over) and its cost.
    fn remove_user(&mut self, mid: i64) -> Option<Inbox> {
        let inbox = self.users.remove(&mid)?;
        self.overhead -= inbox.charged;
        Some(inbox)
    }

    /// Users with something stored.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// What was evicted since the last call.
    pub fn take_evicted(&mut self) -> Evicted {
        std::mem::take(&mut self.evicted)
    }

    /// Stores push `id` for `mid` at tick `now`, with the publisher's `ttl`
    /// if it gave one.
    pub fn store(&mut self, mid: i64, id: u64, op: u32, frames: &Frames, now: u32, ttl: Option<u32>) {
        if !self.enabled() {
            return;
        }
        let p = self.policy;
        let cost = cost::frames(frames) + ENTRY_COST;
        let ttl_end = now.saturating_add(ttl.unwrap_or(p.ttl));
        let inbox = self.users.entry(mid).or_default();
        if inbox.entries.capacity() == 0 {
            // Most users have one push waiting: no room for four up front.
            inbox.entries.reserve_exact(1);
        }
        inbox.entries.push_back(Entry {
            id,
            op,
            frames: frames.clone(),
            ttl_end,
            cost,
        });
        inbox.bytes += cost;
        self.bytes += cost;
        self.count += 1;
        while inbox.entries.len() > p.messages || inbox.bytes > p.bytes {
            let e = inbox.entries.pop_front().expect("over a limit, so not empty");
            inbox.bytes -= e.cost;
            self.bytes -= e.cost;
            self.count -= 1;
            self.evicted.limit += 1;
        }
        let c = inbox.cost();
        self.overhead = self.overhead - inbox.charged + c;
        inbox.charged = c;
        if inbox.entries.is_empty() {
            // A push larger than a whole inbox: nothing is kept.
            self.remove_user(mid);
            return;
        }
        self.order.push_back((mid, id));
        if let Some(when) = inbox.reschedule() {
            self.due.mark(when, mid);
        }
        while self.bytes() > self.cap {
            let Some((m, id)) = self.order.pop_front() else { break };
            let Some(inbox) = self.users.get_mut(&m) else { continue };
            if inbox.entries.front().is_some_and(|e| e.id == id) {
                let e = inbox.entries.pop_front().expect("front checked");
                inbox.bytes -= e.cost;
                self.bytes -= e.cost;
                self.count -= 1;
                self.evicted.memory += 1;
                if inbox.entries.is_empty() {
                    self.remove_user(m);
                } else if let Some(when) = inbox.reschedule() {
                    self.due.mark(when, m);
                }
            }
        }
        // Keep the order queue and the due heap from outgrowing what they
        // index (a user's marks stay in the heap until due, a day by
        // default, after the user's inbox has gone).
        let users = &self.users;
        due::compact(&mut self.order, self.count, |(m, id)| {
            users.get(m).is_some_and(|i| i.entries.iter().any(|e| e.id == *id))
        });
        self.due.compact(users.len(), |m| users.contains_key(m));
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
        let Some(inbox) = self.remove_user(mid) else {
            return Vec::new();
        };
        self.bytes -= inbox.bytes;
        self.count -= inbox.entries.len();
        inbox.entries.into_iter().filter(|e| e.ttl_end > now).collect()
    }

    /// Forgets the entries of `mid` with these ids; returns how many there were.
    pub fn ack(&mut self, mid: i64, ids: &[u64]) -> usize {
        let Some(inbox) = self.users.get_mut(&mid) else {
            return 0;
        };
        let before = inbox.entries.len();
        let mut freed = 0;
        inbox.entries.retain(|e| {
            let keep = !ids.contains(&e.id);
            if !keep {
                freed += e.cost;
            }
            keep
        });
        let gone = before - inbox.entries.len();
        inbox.bytes -= freed;
        self.bytes -= freed;
        self.count -= gone;
        if inbox.entries.is_empty() {
            self.remove_user(mid);
        } else if let Some(when) = inbox.reschedule() {
            self.due.mark(when, mid);
        }
        gone
    }

    /// Drops the entries whose TTL has ended as of tick `now` (from the front
    /// of each inbox; a shorter-lived entry behind longer-lived ones is
    /// skipped by `pending` until it reaches the front).
    pub fn expire(&mut self, now: u32) {
        while let Some((when, mid)) = self.due.take_due(now) {
            let Some(inbox) = self.users.get_mut(&mid) else {
                continue;
            };
            if when == inbox.scheduled {
                inbox.scheduled = u32::MAX;
            }
            while inbox.entries.front().is_some_and(|e| e.ttl_end <= now) {
                let e = inbox.entries.pop_front().expect("front checked");
                inbox.bytes -= e.cost;
                self.bytes -= e.cost;
                self.count -= 1;
                self.evicted.ttl += 1;
            }
            if inbox.entries.is_empty() {
                self.remove_user(mid);
            } else if let Some(when) = inbox.reschedule() {
                self.due.mark(when, mid);
            }
        }
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
        let mut b = Inboxes::new(P, probe.bytes() + 3 * std::mem::size_of::<Entry>());
        b.store(1, 1, 7, &frames(1), 0, Some(5));
        b.store(2, 2, 7, &frames(2), 0, None);
        b.store(2, 3, 7, &frames(3), 0, None);
        assert_eq!(b.take_evicted().memory, 1, "user 1's push was the oldest");
        assert!(b.pending(1, 0).is_empty());
        b.expire(99);
        assert_eq!(b.messages(), 2);
        b.expire(100);
        assert_eq!((b.messages(), b.take_evicted().ttl), (0, 2));
        b.store(3, 4, 7, &frames(4), 0, None);
        assert_eq!(ids(&b.take(3, 0)), vec![4]);
        assert_eq!((b.messages(), b.bytes()), (0, 0));
        let mut off = Inboxes::new(Policy { messages: 0, ..P }, 1 << 20);
        off.store(1, 1, 7, &frames(1), 0, None);
        assert_eq!(off.messages(), 0);
    }
}
