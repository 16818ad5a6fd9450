//! Memory limits count what things cost: the bytes `[history] memory` and
//! `[inbox] memory` charge for what they keep are checked against the bytes
//! the allocator really handed out for it, counted by a global allocator
//! that wraps the system's. Pure data structures only (no server, no other
//! thread allocating meanwhile): one test in this file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;
use volley::proto::v2::{Envelope, Kind};
use volley::proto::wire::{Frames, Wire};
use volley::shard::history::{Logs, Policy};
use volley::shard::inbox::{Inboxes, Policy as InboxPolicy};

/// Counts live bytes handed out (requested sizes; the allocator's own
/// rounding comes on top, see `SLACK`).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn live() -> isize {
    LIVE.load(Relaxed)
}

const P: Policy = Policy {
    messages: 100,
    max_age: 300,
    bytes: 256 << 10,
};

/// A room message's frames as the owner builds them (64-byte payload).
fn room_wire(room: &str, offset: u64) -> Wire {
    let env = Envelope {
        op: 1000,
        kind: Kind::Room,
        room,
        offset,
        epoch: 7,
        id: "",
        payload: &[b'x'; 64],
    };
    Wire::from_tcp(env.frame())
}

/// Charged bytes against really allocated ones: `(charged, allocated)`
/// per item, and whether the charge is within bounds.
fn judge(what: &str, charged: usize, allocated: isize, n: usize) {
    let allocated = allocated.max(1) as usize;
    eprintln!(
        "{what}: {} B charged, {} B allocated per item ({n} items)",
        charged / n,
        allocated / n
    );
    // The allocator's size classes round up by at most 1/8 (mimalloc; the
    // binary's allocator): a charge under what was asked for undercounts.
    assert!(
        charged >= allocated,
        "{what}: charged {charged} < allocated {allocated}"
    );
    assert!(
        charged <= allocated * 2,
        "{what}: charged {charged} > twice allocated {allocated}"
    );
}

#[test]
fn history_and_inboxes_charge_what_they_allocate() {
    // Many rooms with one message each: per-room bookkeeping dominates.
    const ROOMS: usize = 50_000;
    let names: Vec<Arc<str>> = (0..ROOMS).map(|i| Arc::from(format!("live://room-{i}"))).collect();
    // The names are the rooms' (a log keeps one); their bytes count.
    let before = live() - names.iter().map(|n| n.len() as isize + 16).sum::<isize>();
    let mut logs = Logs::new(usize::MAX);
    for r in &names {
        logs.publish(r, P, 0, None, |o, _| room_wire(r, o));
    }
    drop(names);
    let allocated = live() - before;
    judge("history, one message per room", logs.charged(), allocated, ROOMS);

    // One room with many messages: per-message costs.
    const MESSAGES: usize = 50_000;
    let many = Policy {
        messages: MESSAGES,
        max_age: 300,
        bytes: usize::MAX,
    };
    let room: Arc<str> = Arc::from("live://many");
    let before = live();
    let mut one = Logs::new(usize::MAX);
    for i in 0..MESSAGES {
        one.publish(&room, many, 0, None, |o, _| room_wire(&room, o));
        let _ = i;
    }
    judge("history, one room", one.charged(), live() - before, MESSAGES);

    // Read marks.
    let (before, charged) = (live(), one.charged());
    for mid in 1..=MESSAGES as i64 {
        one.mark(&room, 0, mid, 1, usize::MAX);
    }
    judge("read marks", one.charged() - charged, live() - before, MESSAGES);
    drop((logs, one));

    // Inboxes: one push to many users, and many pushes to one user.
    const USERS: usize = 50_000;
    let push = |id: u64| {
        let env = Envelope {
            op: 1000,
            kind: Kind::User,
            room: "",
            offset: id,
            epoch: 0,
            id: "",
            payload: &[b'x'; 64],
        };
        Frames::new(&env)
    };
    let before = live();
    let mut inbox = Inboxes::new(
        InboxPolicy {
            messages: 100,
            bytes: 256 << 10,
            ttl: 3600,
        },
        usize::MAX,
    );
    for mid in 1..=USERS as i64 {
        // A push to one user each: frames of its own.
        inbox.store(mid, mid as u64, 1000, &push(mid as u64), 0, None);
    }
    judge("inbox, one push per user", inbox.bytes(), live() - before, USERS);
}
