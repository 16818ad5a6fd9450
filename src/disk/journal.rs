//! `Journal`: one shard's append-only log of records, as a state machine
//! that says what to write and when (sans-IO: `disk::driver` runs the
//! writes, syncs and removals it emits, and tells it how each went).
//!
//! Records get log sequence numbers (LSNs) in the order appended. They wait
//! in a chunk until the driver takes the next write (group commit: one
//! write, in `batch` mode a synced one, carries everything appended
//! meanwhile); `durable()` is the newest LSN the configured promise holds
//! for (`batch`: written and synced; `interval` and `none`: written), which
//! is when the shard answers and fans out what waited for it.
//!
//! Segments are files numbered from 1 up, each written from its start in
//! whole blocks (`frame::BLOCK`); a write that would pass `segment_bytes`
//! starts the next segment. A checkpoint starts a segment too: once its
//! `End` is durable, every older segment is removed (recovery starts at the
//! newest whole checkpoint, `disk::recover`).
//!
//! Invariants: LSNs are 1, 2, 3, ... in append order and written in that
//! order; at most one operation is out at a time; `durable <= written <=
//! appended`; a failed write is retried with the same bytes at the same
//! place (so nothing is written twice or out of order), and while writes
//! fail the journal is `failing` (the shard refuses what it cannot keep);
//! once the segments hold `max_bytes`, `refusal` says `Full` and the shard
//! takes no more publishes (acknowledgements, marks and checkpoints still
//! go in, so space can be freed) until a checkpoint frees space.

use crate::disk::frame;
use crate::disk::record::Record;
use std::collections::VecDeque;

/// A log sequence number: the place of a record in its shard's journal.
pub type Lsn = u64;

/// When an appended record counts as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Written and synced (on disk); a write waits at most `window_us` for
    /// others to share its sync.
    Batch {
        /// Longest a record waits before its write starts.
        window_us: u32,
    },
    /// Written; an fdatasync every `every_ms`.
    Interval {
        /// Milliseconds between syncs.
        every_ms: u32,
    },
    /// Written; syncing is left to the OS.
    None,
}

/// What the driver is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Write `bytes` (whole blocks) at `at` of segment `segment`, creating
    /// and preallocating it first when `create` (and syncing the
    /// directory), and on disk before it counts as done when `sync` (the
    /// driver's choice how: an O_DSYNC file, or an fdatasync after).
    Write {
        /// The segment's number.
        segment: u64,
        /// Whether the segment is new.
        create: bool,
        /// Where in it.
        at: u64,
        /// Whole blocks.
        bytes: Vec<u8>,
        /// Whether it must be on disk when done.
        sync: bool,
    },
    /// fdatasync the current segment (`interval`).
    Sync {
        /// The segment's number.
        segment: u64,
    },
    /// Remove these segments (older than a whole checkpoint).
    Remove {
        /// Their numbers.
        segments: Vec<u64>,
    },
}

/// Records appended but not yet taken, bound for one place.
#[derive(Debug, Default)]
struct Chunk {
    bytes: Vec<u8>,
    /// The newest LSN in it.
    through: Lsn,
    /// It starts a new segment (a checkpoint).
    fresh: bool,
    /// It is synced whatever the mode (it ends a checkpoint, which lets
    /// older segments go).
    sync: bool,
}

/// The operation out, and what its success means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Write {
        through: Lsn,
        sync: bool,
        segment: u64,
        end: u64,
        created: bool,
        checkpoint: bool,
    },
    Sync {
        through: Lsn,
    },
    Remove,
}

/// One shard's journal.
#[derive(Debug)]
pub struct Journal {
    sync: Sync,
    segment_bytes: u64,
    max_bytes: u64,
    /// Appended, not yet taken; the front goes first.
    chunks: VecDeque<Chunk>,
    /// A write that failed, to retry as it was.
    retry: Option<(DiskOp, Out)>,
    out: Option<Out>,
    appended: Lsn,
    written: Lsn,
    synced: Lsn,
    /// The segment written now (0: none yet) and where its next write goes.
    segment: u64,
    at: u64,
    /// Segments on disk, oldest first, with their sizes.
    segments: VecDeque<(u64, u64)>,
    /// The LSN of the newest checkpoint's `End`, until older segments are
    /// removed.
    checkpoint: Option<Lsn>,
    /// The segment that checkpoint starts, once its write is taken.
    checkpoint_segment: Option<u64>,
    /// Checkpoints started (numbers them).
    checkpoints: u64,
    /// Bytes the newest checkpoint's write took (0: none yet).
    checkpoint_bytes: u64,
    failing: Option<String>,
    counts: Counts,
}

/// What the journal did since last asked (`take_counts`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Writes done.
    pub writes: u64,
    /// Syncs done (a synced write, or an fdatasync alone).
    pub syncs: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Operations that failed.
    pub failures: u64,
}

/// Why the journal cannot take more now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Writing failed (the error), retried until it works.
    #[error("storage failing: {0}")]
    Failing(String),
    /// `[storage] max_bytes` reached until a checkpoint frees space.
    #[error("storage full: max_bytes reached")]
    Full,
}

impl Journal {
    /// A journal continuing after `segments` (number, bytes used, oldest
    /// first; empty for a new store), in a new segment (the last one read
    /// back is never written again: whatever a crash left at its end stays
    /// behind what was read). LSNs start again at 1 in every process: they
    /// order this process's records, recovery needs none.
    pub fn new(sync: Sync, segment_bytes: u64, max_bytes: u64, segments: Vec<(u64, u64)>) -> Self {
        let segment = segments.last().map_or(0, |s| s.0);
        let segment_bytes = segment_bytes
            .next_multiple_of(frame::BLOCK as u64)
            .max(frame::BLOCK as u64);
        Journal {
            sync,
            segment_bytes,
            max_bytes,
            chunks: VecDeque::new(),
            retry: None,
            out: None,
            appended: 0,
            written: 0,
            synced: 0,
            segment,
            at: 0,
            segments: segments.into(),
            checkpoint: None,
            checkpoint_segment: None,
            checkpoints: 0,
            checkpoint_bytes: 0,
            failing: None,
            counts: Counts::default(),
        }
    }

    /// Its sync policy.
    pub fn sync(&self) -> Sync {
        self.sync
    }

    /// Appends `rec`; returns its LSN.
    pub fn append(&mut self, rec: &Record<'_>) -> Lsn {
        if self.chunks.is_empty() {
            self.chunks.push_back(Chunk::default());
        }
        let c = self.chunks.back_mut().expect("one at least");
        rec.write(&mut c.bytes);
        self.appended += 1;
        c.through = self.appended;
        self.appended
    }

    /// The newest LSN appended.
    pub fn appended(&self) -> Lsn {
        self.appended
    }

    /// The newest LSN whose record is kept as the sync policy promises.
    pub fn durable(&self) -> Lsn {
        match self.sync {
            Sync::Batch { .. } => self.synced,
            Sync::Interval { .. } | Sync::None => self.written,
        }
    }

    /// The newest LSN synced (on disk).
    pub fn synced(&self) -> Lsn {
        self.synced
    }

    /// Why new records cannot be kept now, if so.
    pub fn refusal(&self) -> Option<Refusal> {
        if let Some(e) = &self.failing {
            return Some(Refusal::Failing(e.clone()));
        }
        (self.max_bytes > 0 && self.disk_bytes() >= self.max_bytes).then_some(Refusal::Full)
    }

    /// Bytes in segments on disk (as written, not as allocated).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// Segments on disk.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Whether the segments hold more than `growth` bytes beyond twice
    /// what the newest checkpoint took (what the shard keeps, about), and
    /// no checkpoint is under way: time for one.
    pub fn wants_checkpoint(&self, growth: u64) -> bool {
        self.checkpoint.is_none() && self.disk_bytes() > 2 * self.checkpoint_bytes + growth
    }

    /// Whether a checkpoint is being written or waits to be durable.
    pub fn checkpointing(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// Starts a checkpoint: appends its `Begin` at the start of a new
    /// segment and returns its number; the caller appends what the shard
    /// keeps, then `end_checkpoint`.
    pub fn begin_checkpoint(&mut self) -> u64 {
        self.checkpoints += 1;
        self.chunks.push_back(Chunk {
            fresh: true,
            ..Chunk::default()
        });
        let n = self.checkpoints;
        self.append(&Record::Begin { checkpoint: n });
        n
    }

    /// Ends checkpoint `n`: once durable, older segments go.
    pub fn end_checkpoint(&mut self, n: u64) {
        let lsn = self.append(&Record::End { checkpoint: n });
        self.chunks.back_mut().expect("the checkpoint's").sync = true;
        self.checkpoint = Some(lsn);
    }

    /// Whether the driver has something to do.
    pub fn has_work(&self) -> bool {
        self.out.is_none() && (self.retry.is_some() || !self.chunks.is_empty() || self.removable().is_some())
    }

    /// Whether writes wait in `interval` mode for a sync.
    pub fn unsynced(&self) -> bool {
        self.out.is_none() && self.synced < self.written
    }

    /// Segments a synced checkpoint made old, if any (whatever the mode:
    /// removing them before the checkpoint is synced could lose both).
    fn removable(&self) -> Option<Vec<u64>> {
        let (end, seg) = (self.checkpoint?, self.checkpoint_segment?);
        (self.synced >= end).then(|| self.segments.iter().map(|s| s.0).filter(|&s| s < seg).collect())
    }

    /// The next operation, if any is due and none is out.
    pub fn take(&mut self) -> Option<DiskOp> {
        if self.out.is_some() {
            return None;
        }
        if let Some((op, out)) = self.retry.take() {
            self.out = Some(out);
            return Some(op);
        }
        if let Some(segments) = self.removable() {
            if !segments.is_empty() {
                self.out = Some(Out::Remove);
                return Some(DiskOp::Remove { segments });
            }
            (self.checkpoint, self.checkpoint_segment) = (None, None);
        }
        let mut chunk = self.chunks.pop_front()?;
        frame::pad(&mut chunk.bytes);
        let len = chunk.bytes.len() as u64;
        let create = self.at == 0 || chunk.fresh || self.at + len > self.segment_bytes;
        let (segment, at) = if create {
            (self.segment + 1, 0)
        } else {
            (self.segment, self.at)
        };
        if chunk.fresh {
            self.checkpoint_segment = Some(segment);
        }
        let sync = chunk.sync || matches!(self.sync, Sync::Batch { .. });
        let op = DiskOp::Write {
            segment,
            create,
            at,
            bytes: chunk.bytes,
            sync,
        };
        self.out = Some(Out::Write {
            through: chunk.through,
            sync,
            segment,
            end: at + len,
            created: create,
            checkpoint: chunk.fresh,
        });
        Some(op)
    }

    /// An fdatasync of what was written (`interval` mode's timer).
    pub fn take_sync(&mut self) -> Option<DiskOp> {
        if self.out.is_some() || self.synced >= self.written || self.segment == 0 {
            return None;
        }
        self.out = Some(Out::Sync { through: self.written });
        Some(DiskOp::Sync { segment: self.segment })
    }

    /// How the operation out went (`op` is given back on failure so it can
    /// be retried as it was).
    pub fn done(&mut self, result: Result<(), (DiskOp, String)>) {
        let out = self.out.take().expect("an operation was out");
        if matches!(out, Out::Remove) && result.is_ok() {
            if let Some(seg) = self.checkpoint_segment {
                self.segments.retain(|s| s.0 >= seg);
            }
            (self.checkpoint, self.checkpoint_segment) = (None, None);
        }
        match result {
            Ok(()) => {
                self.failing = None;
                match out {
                    Out::Write {
                        through,
                        sync,
                        segment,
                        end,
                        created,
                        checkpoint,
                    } => {
                        if created {
                            self.segments.push_back((segment, 0));
                        }
                        if let Some(s) = self.segments.back_mut() {
                            s.1 = end;
                        }
                        self.counts.writes += 1;
                        let start = if created { 0 } else { self.at };
                        self.counts.bytes += end - start;
                        (self.segment, self.at) = (segment, end);
                        self.written = through;
                        if sync {
                            self.synced = through;
                            self.counts.syncs += 1;
                        }
                        if checkpoint {
                            self.checkpoint_bytes = end;
                        }
                    }
                    Out::Sync { through } => {
                        self.synced = self.synced.max(through);
                        self.counts.syncs += 1;
                    }
                    Out::Remove => {}
                }
            }
            Err((op, why)) => {
                self.failing = Some(why);
                self.counts.failures += 1;
                // A remove is asked again by `removable` itself.
                if !matches!(op, DiskOp::Remove { .. }) {
                    self.retry = Some((op, out));
                }
            }
        }
    }

    /// What it did since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Whether writes are failing now.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(offset: u64) -> Record<'static> {
        Record::Mark {
            room: "room",
            mid: 7,
            offset,
        }
    }

    fn batch() -> Journal {
        Journal::new(Sync::Batch { window_us: 0 }, 64 << 10, 0, Vec::new())
    }

    fn write_of(op: &DiskOp) -> (u64, bool, u64, usize, bool) {
        match op {
            DiskOp::Write {
                segment,
                create,
                at,
                bytes,
                sync,
            } => (*segment, *create, *at, bytes.len(), *sync),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn one_write_and_sync_carries_everything_appended_meanwhile() {
        let mut j = batch();
        assert!(!j.has_work() && j.take().is_none());
        assert_eq!((j.append(&mark(1)), j.append(&mark(2))), (1, 2));
        let op = j.take().expect("a write");
        assert_eq!(write_of(&op), (1, true, 0, frame::BLOCK, true));
        // While it is out, more arrives and waits; nothing else is taken.
        j.append(&mark(3));
        j.append(&mark(4));
        assert!(j.take().is_none() && !j.has_work());
        assert_eq!(j.durable(), 0);
        j.done(Ok(()));
        assert_eq!(j.durable(), 2);
        let op = j.take().expect("the next write");
        assert_eq!(write_of(&op), (1, false, frame::BLOCK as u64, frame::BLOCK, true));
        j.done(Ok(()));
        assert_eq!(
            (j.durable(), j.synced(), j.disk_bytes()),
            (4, 4, 2 * frame::BLOCK as u64)
        );
    }

    #[test]
    fn interval_and_none_count_a_record_once_written_and_interval_syncs_apart() {
        for sync in [Sync::Interval { every_ms: 10 }, Sync::None] {
            let mut j = Journal::new(sync, 64 << 10, 0, Vec::new());
            j.append(&mark(1));
            let op = j.take().expect("a write");
            assert!(!write_of(&op).4, "no sync with the write");
            j.done(Ok(()));
            assert_eq!((j.durable(), j.synced()), (1, 0));
            assert!(j.unsynced());
            assert_eq!(j.take_sync(), Some(DiskOp::Sync { segment: 1 }));
            j.done(Ok(()));
            assert_eq!(j.synced(), 1);
            assert!(j.take_sync().is_none());
        }
    }

    #[test]
    fn a_write_past_the_segment_size_starts_the_next_segment() {
        let mut j = Journal::new(Sync::None, 2 * frame::BLOCK as u64, 0, vec![(4, frame::BLOCK as u64)]);
        let payload = vec![7u8; 5000];
        let big = Record::Message {
            room: "r",
            epoch: 1,
            offset: 1,
            at: 0,
            ttl_end: 0,
            op: 1,
            id: "",
            payload: &payload,
        };
        j.append(&big);
        let op = j.take().expect("a write");
        assert_eq!(write_of(&op), (5, true, 0, 2 * frame::BLOCK, false));
        j.done(Ok(()));
        j.append(&mark(1));
        let op = j.take().expect("a write");
        assert_eq!(write_of(&op), (6, true, 0, frame::BLOCK, false));
        j.done(Ok(()));
        assert_eq!(j.segments(), 3);
    }

    #[test]
    fn a_checkpoint_starts_a_segment_is_synced_in_any_mode_and_then_older_segments_go() {
        let mut j = Journal::new(Sync::None, 64 << 10, 0, vec![(1, 8192), (2, 4096)]);
        j.append(&mark(1));
        let n = j.begin_checkpoint();
        j.append(&mark(1));
        j.end_checkpoint(n);
        j.append(&mark(2));
        let op = j.take().expect("the write before the checkpoint");
        assert_eq!(
            write_of(&op),
            (3, true, 0, frame::BLOCK, false),
            "never after what was read back"
        );
        j.done(Ok(()));
        let op = j.take().expect("the checkpoint");
        assert_eq!(write_of(&op), (4, true, 0, frame::BLOCK, true));
        assert!(j.checkpointing());
        j.done(Ok(()));
        assert_eq!(
            j.take(),
            Some(DiskOp::Remove {
                segments: vec![1, 2, 3]
            })
        );
        j.done(Ok(()));
        assert!(!j.checkpointing() && !j.has_work());
        assert_eq!(j.segments(), 1);
        assert!(!j.wants_checkpoint(0), "just checkpointed");
        for i in 0..2 {
            j.append(&mark(i));
            j.take().expect("a write");
            j.done(Ok(()));
        }
        assert!(j.wants_checkpoint(0), "the log grew past twice the checkpoint");
    }

    #[test]
    fn a_failed_write_is_retried_as_it_was_and_refuses_meanwhile() {
        let mut j = batch();
        j.append(&mark(1));
        let op = j.take().expect("a write");
        let again = op.clone();
        j.done(Err((op, "No space left on device".into())));
        assert_eq!(j.refusal(), Some(Refusal::Failing("No space left on device".into())));
        assert_eq!(j.durable(), 0);
        j.append(&mark(2));
        assert_eq!(j.take(), Some(again), "the same write first");
        j.done(Ok(()));
        assert_eq!((j.refusal(), j.durable()), (None, 1));
        j.take().expect("then the rest");
        j.done(Ok(()));
        assert_eq!(j.durable(), 2);
    }

    #[test]
    fn max_bytes_refuses_until_space_is_freed() {
        let mut j = Journal::new(Sync::None, 64 << 10, 2 * frame::BLOCK as u64, Vec::new());
        for i in 0..2 {
            assert_eq!(j.refusal(), None);
            j.append(&mark(i));
            j.take().expect("a write");
            j.done(Ok(()));
        }
        assert_eq!(j.refusal(), Some(Refusal::Full));
    }
}
