//! `Outbound`: one connection's queue of frames waiting to be written.
//!
//! Lives in the connection's record on its shard; filled by delivery code,
//! drained by the connection's driver. Each entry is a `Bytes` that may be
//! shared with every other connection (a broadcast frame is encoded once);
//! `iovecs` lends up to `MAX_IOV` of them to one `sendmsg` (done by the
//! driver, `conn::write`), so many queued frames cost one syscall and no
//! user-space copy. Pure data: no socket, no clock (time stamps are given).
//!
//! Invariants:
//! - `cost` = sum over entries of (unwritten length + `ENTRY_OVERHEAD`); it
//!   never exceeds the limit passed to `push` except by one goodbye frame
//!   (or replayed history) pushed with `push_unbounded`. It is what the
//!   client is behind by, and what its limit bounds.
//! - `mem` = what the entries cost in memory, for the shard's outbound
//!   budget: per entry `ENTRY_OVERHEAD` and the entry's share of its bytes
//!   (all of them for a frame of its own; a broadcast's bytes, stored once,
//!   are split among the members it was queued to). Entries leave with the
//!   average share, so `mem` is exact whenever the queue is empty, and 0
//!   then;
//! - `head` < length of the front entry whenever the queue is non-empty;
//! - `since` is when the oldest unwritten byte was queued, to the precision
//!   the caller stamps with (set when the queue goes from empty to not,
//!   moved up by each write that leaves bytes behind).
//!
//! An idle connection's queue holds no allocation, and neither does one
//! frame waiting alone (the usual case at low rates: a deque per push cost
//! ~80 ns per connection at 19,000 in `benches/fanout_encode.rs`); a deque is
//! allocated only while two or more frames wait, and freed when drained.
//!
//! `Held`: a version-2 resume replays history that may be larger than the
//! connection's limit (a slow consumer missed about that much when it was
//! closed). What does not fit waits in a `Held` (kept by the version-2
//! connection's state, so version 1 pays nothing for it), behind the queue,
//! and moves in as writes drain the queue; every push arriving meanwhile
//! waits behind it, so order is kept. Held frames are shared with history,
//! so each costs the connection a handle, not its bytes; they are bounded by
//! their own limit (`[limits] replay_limit`); `Held::charge` is what they
//! cost in memory (handles and slots).

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::IoSlice;

/// Bytes charged per queued frame on top of its length: what the frame's
/// place in the queue really costs. A `Bytes` handle is 32 bytes and the
/// deque that holds a burst doubles its capacity as it grows, so a slot
/// costs up to twice the handle. An upper bound, as the shard's outbound
/// budget needs (`Shard::queued`).
pub const ENTRY_OVERHEAD: usize = 2 * std::mem::size_of::<Bytes>();
/// Most frames handed to one `sendmsg`.
pub const MAX_IOV: usize = 64;

/// A push that would pass the connection's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue already holds `queued` bytes.
    OverLimit {
        /// Bytes charged to the queue before this push.
        queued: usize,
    },
}

/// Frames in write order: inline while there is at most one.
#[derive(Debug)]
enum Frames {
    /// None or one frame; no allocation.
    Inline(Option<Bytes>),
    /// Two or more frames (a burst); never empty.
    Spilled(VecDeque<Bytes>),
}

impl Default for Frames {
    fn default() -> Self {
        Frames::Inline(None)
    }
}

impl Frames {
    fn is_empty(&self) -> bool {
        matches!(self, Frames::Inline(None))
    }

    fn len(&self) -> usize {
        match self {
            Frames::Inline(f) => usize::from(f.is_some()),
            Frames::Spilled(q) => q.len(),
        }
    }

    fn front(&self) -> Option<&Bytes> {
        match self {
            Frames::Inline(f) => f.as_ref(),
            Frames::Spilled(q) => q.front(),
        }
    }

    fn push_back(&mut self, b: Bytes) {
        match self {
            Frames::Inline(None) => *self = Frames::Inline(Some(b)),
            Frames::Inline(Some(_)) => {
                let Frames::Inline(Some(first)) = std::mem::take(self) else {
                    unreachable!()
                };
                let mut q = VecDeque::with_capacity(4);
                q.push_back(first);
                q.push_back(b);
                *self = Frames::Spilled(q);
            }
            Frames::Spilled(q) => q.push_back(b),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Frames::Inline(f) => *f = None,
            Frames::Spilled(q) => {
                q.pop_front();
                if q.is_empty() {
                    *self = Frames::Inline(None);
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        let (one, many) = match self {
            Frames::Inline(f) => (f.as_ref(), None),
            Frames::Spilled(q) => (None, Some(q.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// Frames waiting behind a connection's queue (see the module doc).
#[derive(Debug, Default)]
pub struct Held {
    frames: VecDeque<Bytes>,
    /// Their total length.
    bytes: usize,
}

impl Held {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What holding these frames costs in memory: their handles and slots.
    /// The frames themselves are history's (counted by its memory cap), or
    /// pushes shared with every other member of their room.
    pub fn charge(&self) -> usize {
        self.frames.len() * ENTRY_OVERHEAD
    }

    /// Holds `frame` unless that passes `cap` held bytes.
    pub fn push(&mut self, frame: Bytes, cap: usize) -> Result<(), PushError> {
        if self.bytes + frame.len() > cap {
            return Err(PushError::OverLimit { queued: self.bytes });
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Ok(())
    }

    /// Moves held frames into `out` while they fit under `limit` (at least
    /// one when `out` is empty); returns whether any moved.
    pub fn refill(&mut self, out: &mut Outbound, limit: usize, now: u32) -> bool {
        let mut moved = false;
        while let Some(f) = self.frames.front() {
            if !out.is_empty() && out.cost() + f.len() + ENTRY_OVERHEAD > limit {
                break;
            }
            let f = self.frames.pop_front().expect("front checked");
            self.bytes -= f.len();
            // History's bytes, or a broadcast's shared with the room.
            out.push_unbounded(f, 0, now);
            moved = true;
        }
        if self.frames.is_empty() {
            // Give the burst's deque back.
            self.frames = VecDeque::new();
        }
        moved
    }

    /// The frames held, in order.
    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter()
    }

    /// Drops everything held; returns how many frames.
    pub fn clear(&mut self) -> usize {
        let n = self.frames.len();
        *self = Held::default();
        n
    }
}

/// A connection's pending frames.
#[derive(Debug, Default)]
pub struct Outbound {
    /// Frames in write order.
    q: Frames,
    /// Bytes of `q[0]` already written (a frame is at most 4 GiB: its
    /// length field is a u32).
    head: u32,
    /// Bytes charged against the connection's limit (see module
    /// invariants); the limit is at most 1 GiB, so this fits a u32 with
    /// room for the goodbye pushed past it.
    cost: u32,
    /// What the queued frames cost in memory (see module invariants).
    mem: u32,
    /// When the oldest unwritten byte was queued (µs on the caller's clock,
    /// wrapping); meaningful only while the queue is not empty.
    since: u32,
}

// The methods called once per delivery from other modules are `#[inline]`:
// without it, whether they are inlined follows which of the release
// profile's codegen units their callers land in, and moving callers
// between files once cost the delivery path 2.7% more instructions
// (BENCHMARKS.md, issue 26).
impl Outbound {
    /// Queues `frame` at time `now` unless that would pass `limit`; `share`
    /// is how many of its bytes this connection is charged in memory (see
    /// `mem`). Returns whether the queue was empty (the caller then wakes
    /// the writer).
    #[inline]
    pub fn push(&mut self, frame: Bytes, share: usize, limit: usize, now: u32) -> Result<bool, PushError> {
        let add = frame.len() + ENTRY_OVERHEAD;
        if self.cost() + add > limit {
            return Err(PushError::OverLimit { queued: self.cost() });
        }
        Ok(self.push_unbounded(frame, share, now))
    }

    /// Queues `frame` regardless of the limit (the op 6 goodbye, replayed
    /// history).
    pub fn push_unbounded(&mut self, frame: Bytes, share: usize, now: u32) -> bool {
        let was_empty = self.q.is_empty();
        if frame.is_empty() {
            return was_empty;
        }
        if was_empty {
            self.since = now;
        }
        self.cost += (frame.len() + ENTRY_OVERHEAD) as u32;
        self.mem += (share.min(frame.len()) + ENTRY_OVERHEAD) as u32;
        self.q.push_back(frame);
        was_empty
    }

    /// What is left to write, in order: the first frame from where writing
    /// stopped, then the others whole.
    pub fn unwritten(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.q.iter().enumerate().map(|(i, f)| {
            if i == 0 {
                f.slice(self.head as usize..)
            } else {
                f.clone()
            }
        })
    }

    /// When the oldest unwritten byte was queued (see `push`).
    pub fn since(&self) -> u32 {
        self.since
    }

    /// Drops every frame not yet started; returns how many were dropped. A
    /// frame already partly written stays, or the peer would read the rest
    /// of the stream (the goodbye) misframed.
    pub fn clear(&mut self) -> usize {
        let n = self.q.len();
        let started = (self.head > 0).then(|| self.q.front().cloned()).flatten();
        let front_mem = self.mem / n.max(1) as u32;
        self.q = Frames::default();
        self.cost = 0;
        self.mem = 0;
        match started {
            Some(front) => {
                self.cost = (front.len() - self.head as usize + ENTRY_OVERHEAD) as u32;
                self.mem = front_mem;
                self.q.push_back(front);
                n - 1
            }
            None => n,
        }
    }

    /// Drops everything, a partly written frame too (the connection is
    /// being given up); returns how many frames were dropped.
    pub fn discard(&mut self) -> usize {
        let n = self.q.len();
        self.q = Frames::default();
        self.head = 0;
        self.cost = 0;
        self.mem = 0;
        n
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Bytes charged against the connection's limit.
    pub fn cost(&self) -> usize {
        self.cost as usize
    }

    /// What the queued frames cost in memory: each frame's handle and slot,
    /// and its share of bytes.
    pub fn mem(&self) -> usize {
        self.mem as usize
    }

    /// The unwritten part of the front frame.
    pub fn front(&self) -> &[u8] {
        self.q.front().map_or(&[], |b| &b[self.head as usize..])
    }

    /// Marks `n` bytes as written at time `now`.
    #[inline]
    pub fn advance(&mut self, n: usize, now: u32) {
        self.consume(n);
        self.since = now;
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.q.front() else { return };
            let left = front.len() - self.head as usize;
            if n < left {
                self.head += n as u32;
                self.cost -= n as u32;
                return;
            }
            n -= left;
            self.cost -= (left + ENTRY_OVERHEAD) as u32;
            // Frames do not remember their shares: each leaves with the
            // average, and the last takes what is left, so `mem` is exact
            // whenever the queue is empty.
            self.mem -= self.mem / self.q.len() as u32;
            self.head = 0;
            self.q.pop_front();
        }
    }

    /// Lends up to `out.len()` queued frames, oldest first, as I/O slices
    /// for one vectored write; returns how many it filled.
    #[inline]
    pub fn iovecs<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, (i, b)) in out.iter_mut().zip(self.q.iter().enumerate()) {
            *slot = IoSlice::new(if i == 0 { &b[self.head as usize..] } else { &b[..] });
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_accounting() {
        const E: usize = ENTRY_OVERHEAD;
        let mut o = Outbound::default();
        assert_eq!(o.push(Bytes::from_static(&[1; 10]), 10, 200, 5), Ok(true));
        assert_eq!(o.push(Bytes::from_static(&[2; 10]), 10, 200, 6), Ok(false));
        assert_eq!(
            (o.cost(), o.since()),
            (2 * (10 + E), 5),
            "stamped when it stopped being empty"
        );
        assert_eq!(
            o.push(Bytes::from_static(&[3; 10]), 10, 2 * (10 + E) + 10, 7),
            Err(PushError::OverLimit { queued: 2 * (10 + E) })
        );
        o.advance(4, 8);
        assert_eq!(o.front(), &[1; 6]);
        assert_eq!((o.cost(), o.since()), (2 * (10 + E) - 4, 8));
        o.advance(6 + 3, 9);
        assert_eq!(o.front(), &[2; 7]);
        assert_eq!(o.cost(), 7 + E);
        o.advance(7, 10);
        assert!(o.is_empty());
        assert_eq!(o.cost(), 0);
        assert!(o.push_unbounded(Bytes::from_static(&[9; 200]), 200, 11));
        assert_eq!(o.clear(), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn memory_counts_handles_and_shares_and_is_exact_when_drained() {
        const E: usize = ENTRY_OVERHEAD;
        let mut o = Outbound::default();
        let shared = Bytes::from(vec![7; 1000]);
        o.push(shared.clone(), 1000 / 4, 1 << 20, 0).unwrap(); // a broadcast to 4
        o.push(Bytes::from(vec![1; 100]), 100, 1 << 20, 0).unwrap(); // its own
        o.push(shared, 10, 1 << 20, 0).unwrap(); // to 100
        assert_eq!(o.mem(), 250 + 100 + 10 + 3 * E);
        assert_eq!(o.cost(), 1000 + 100 + 1000 + 3 * E, "the limit counts every byte");
        o.advance(1000, 0);
        let all = 250 + 100 + 10 + 3 * E;
        assert_eq!(o.mem(), all - all / 3, "left with the average");
        o.advance(1100, 0);
        assert!(o.is_empty());
        assert_eq!(o.mem(), 0, "exact once drained");
    }

    #[test]
    fn clearing_keeps_a_partly_written_frame_whole() {
        let mut o = Outbound::default();
        for b in [1u8, 2, 3] {
            o.push(Bytes::from(vec![b; 10]), 10, 1000, 0).unwrap();
        }
        o.advance(4, 0);
        assert_eq!(o.clear(), 2, "the two unstarted frames");
        assert_eq!(o.front(), &[1; 6], "the rest of the started one stays");
        assert_eq!(o.cost(), 6 + ENTRY_OVERHEAD);
        o.advance(6, 0);
        assert!(o.is_empty());
    }

    #[test]
    fn held_frames_wait_behind_the_limit_and_move_in_as_the_queue_drains() {
        let mut o = Outbound::default();
        let mut h = Held::default();
        let f = |b: u8| Bytes::from(vec![b; 100 - ENTRY_OVERHEAD]); // 100 bytes charged each
        o.push(f(1), usize::MAX, 250, 0).unwrap();
        o.push(f(2), usize::MAX, 250, 0).unwrap();
        h.push(f(3), 1000).unwrap();
        h.push(f(4), 1000).unwrap();
        assert_eq!(h.charge(), 2 * ENTRY_OVERHEAD, "handles, not bytes");
        assert_eq!(
            h.push(Bytes::from(vec![5; 950]), 1000),
            Err(PushError::OverLimit {
                queued: 2 * (100 - ENTRY_OVERHEAD)
            })
        );
        assert!(!h.refill(&mut o, 250, 0), "nothing fits yet");
        let mut seen = Vec::new();
        while !o.is_empty() {
            seen.push(o.front()[0]);
            let n = o.front().len();
            o.advance(n, 0);
            h.refill(&mut o, 250, 0);
        }
        assert_eq!(seen, vec![1, 2, 3, 4]);
        assert!(h.is_empty() && h.bytes() == 0 && o.cost() == 0);
        h.push(Bytes::from(vec![9; 500]), 1000).unwrap();
        assert!(
            h.refill(&mut o, 250, 0),
            "an empty queue takes a frame whatever its size"
        );
        h.push(f(1), 1000).unwrap();
        assert_eq!(h.clear(), 1);
    }

    #[test]
    fn one_frame_stays_inline_and_a_burst_spills_then_frees() {
        let mut o = Outbound::default();
        o.push(Bytes::from_static(b"ab"), usize::MAX, 1000, 0).unwrap();
        assert!(matches!(o.q, Frames::Inline(Some(_))));
        o.push(Bytes::from_static(b"cd"), usize::MAX, 1000, 0).unwrap();
        o.push(Bytes::from_static(b"ef"), usize::MAX, 1000, 0).unwrap();
        assert!(matches!(o.q, Frames::Spilled(_)));
        let mut iov = [IoSlice::new(&[]); 2];
        assert_eq!(o.iovecs(&mut iov), 2, "as many as the caller has room for");
        let all: Vec<u8> = o.q.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, b"abcdef");
        o.advance(5, 0);
        assert_eq!(o.front(), b"f");
        o.advance(1, 0);
        assert!(matches!(o.q, Frames::Inline(None)), "drained burst frees its deque");
    }
}
