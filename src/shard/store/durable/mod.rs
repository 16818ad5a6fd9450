//! The durable store on a shard (`[storage] mode = "disk"`): every change
//! to what the shard keeps is appended to its journal (`disk::journal`) as
//! it is made in memory, and what must not be told before it is kept —
//! a publish's answer and fan-out, a push's answer — is held until the
//! journal says its record is durable, then let go in order. At start the
//! journal is read back into the memory store (`replay`); now and then a
//! checkpoint writes down what the shard keeps so that older segments go
//! (`checkpoint`). Files: this one (the journal, what waits, clocks),
//! `replay`, `checkpoint`, `shard` (the `Shard` side: logging each change,
//! letting go, the driver's hooks).
//!
//! Pure data on the shard that owns the rooms and users (sans-IO):
//! `disk::driver` runs the journal's writes on the shard's ring.
//!
//! Invariants: records are appended in the order the memory store
//! changed; what is held goes out in the order it was held, each only once
//! the journal's durable LSN has reached the newest record appended when
//! it was held; a record's times are Unix seconds, turned into ticks only
//! when read back (`Now`).

pub mod checkpoint;
pub mod replay;
pub mod shard;

use crate::disk::journal::{Journal, Lsn};
use crate::proto::wire::Frames;
use crate::shard::mesh::{Answer, Kept, Published, Reply, ShardMsg};
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

/// Segments' worth of bytes the journal may grow past twice its last
/// checkpoint before the next one is written (so a store holds at most
/// about twice what the shard keeps, plus this).
pub const CHECKPOINT_SEGMENTS: u64 = 4;

/// What waits for the journal.
#[derive(Debug)]
pub enum Held {
    /// A room publish's answer, and its frames to fan out (`None`: a
    /// duplicate, answered only).
    Published {
        /// Who waits.
        reply: Answer,
        /// The room.
        room: Arc<str>,
        /// What it got.
        published: Published,
        /// What goes to the members.
        frames: Option<Frames>,
    },
    /// An answer to send to a shard once kept (a read mark's, an
    /// acknowledgement's).
    Route(usize, ShardMsg),
    /// A push to users kept by this shard.
    Kept(Reply<Kept>),
}

/// A shard's journal and what waits for it.
#[derive(Debug)]
pub struct Durable {
    /// The journal.
    pub journal: Journal,
    /// The checkpoint under way, until its last records are in the journal.
    pub snapshot: Option<checkpoint::Snapshot>,
    held: VecDeque<(Lsn, Held)>,
    /// The driver's waker, woken when there is work.
    waker: Option<Waker>,
}

impl Durable {
    /// A durable store writing through `journal`.
    pub fn new(journal: Journal) -> Self {
        Durable {
            journal,
            snapshot: None,
            held: VecDeque::new(),
            waker: None,
        }
    }

    /// Whether everything appended is durable and nothing waits for it:
    /// the journal has nothing under way that anyone waits on.
    pub fn settled(&self) -> bool {
        self.held.is_empty() && self.journal.appended() <= self.journal.durable()
    }

    /// Holds `h` until what was appended so far is durable; gives it back
    /// if it already is (and nothing held before it still waits).
    pub fn hold(&mut self, h: Held) -> Option<Held> {
        let lsn = self.journal.appended();
        if lsn <= self.journal.durable() && self.held.is_empty() {
            return Some(h);
        }
        self.held.push_back((lsn, h));
        self.wake();
        None
    }

    /// The next held thing whose records are durable, in order.
    pub fn next_ready(&mut self) -> Option<Held> {
        let durable = self.journal.durable();
        if self.held.front().is_some_and(|(lsn, _)| *lsn <= durable) {
            return self.held.pop_front().map(|(_, h)| h);
        }
        None
    }

    /// Things held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Wakes the driver (records were appended).
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Registers the driver's waker.
    pub fn park(&mut self, w: &Waker) {
        self.waker = Some(w.clone());
    }
}

/// The clocks a record's times are turned with: the shard's tick and the
/// Unix time it stands for.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The shard's tick now.
    pub tick: u32,
    /// Unix seconds now.
    pub unix: u64,
}

impl Now {
    /// The Unix time of past tick `t`.
    pub fn unix_at(self, t: u32) -> u64 {
        self.unix.saturating_sub(u64::from(self.tick.saturating_sub(t)))
    }

    /// The Unix time a TTL ending at tick `end` ends (0: `u32::MAX`, none).
    pub fn unix_end(self, end: u32) -> u64 {
        if end == u32::MAX {
            0
        } else {
            self.unix + u64::from(end.saturating_sub(self.tick))
        }
    }

    /// The tick of past Unix time `u` (tick 0 for anything before the
    /// process: its age is then counted from the start, never shortened).
    pub fn tick_at(self, u: u64) -> u32 {
        let age = self.unix.saturating_sub(u);
        self.tick.saturating_sub(u32::try_from(age).unwrap_or(u32::MAX))
    }

    /// The tick a TTL ending at Unix time `u` ends (0: none, `u32::MAX`).
    pub fn tick_end(self, u: u64) -> u32 {
        if u == 0 {
            return u32::MAX;
        }
        let left = u.saturating_sub(self.unix);
        self.tick
            .saturating_add(u32::try_from(left).unwrap_or(u32::MAX))
            .min(u32::MAX - 1)
    }
}
