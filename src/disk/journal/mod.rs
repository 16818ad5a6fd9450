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
//! starts the next segment. A checkpoint (what the shard keeps, begun at
//! one LSN, `begin_checkpoint`) has a segment of its own, N: the records
//! appended before it began are written first, in the segments before N;
//! those appended after it go to N + 1 and on, while the checkpoint's
//! records are written into N in pieces of `CHECKPOINT_PIECE` bytes, one
//! piece between two writes of the log, so a checkpoint of gigabytes never
//! holds an answer back for longer than one piece's write. Once its `End`
//! is synced every segment before N is removed (recovery starts at the
//! newest whole checkpoint and reads the segments after it, leaving out a
//! checkpoint that did not finish, `disk::recover`).
//!
//! Invariants: LSNs are 1, 2, 3, ... in append order and written in that
//! order; at most one write or sync is out at a time, and beside it at most
//! one removal; `durable <= written <=
//! appended`; no record appended after a checkpoint began is written
//! before its segment, none appended before it after; a failed write is
//! retried with the same bytes at the same place (so nothing is written
//! twice or out of order), and while writes fail the journal is `failing`
//! (the shard refuses what it cannot keep); once the segments hold
//! `max_bytes`, `refusal` says `Full` and the shard takes no more publishes
//! (acknowledgements, marks and checkpoints still go in, so space can be
//! freed) until a checkpoint frees space.
//!
//! Files: this one (the log's chunks, the operations and their turns, what
//! each answer means), `checkpoint` (a checkpoint's pieces and segment, the
//! removal of the segments it made old), `tests`.

use crate::disk::frame;
use crate::disk::record::Record;
use std::collections::VecDeque;

use checkpoint::Checkpoint;

/// A log sequence number: the place of a record in its shard's journal.
pub type Lsn = u64;

/// Bytes of a checkpoint written at a time, between two writes of the log:
/// what a checkpoint adds to an answer's wait is one write of this size.
pub const CHECKPOINT_PIECE: usize = 256 << 10;

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
        /// A piece of a checkpoint (to its own segment, open beside the
        /// log's) rather than records of the log.
        checkpoint: bool,
        /// Whether the segment is new.
        create: bool,
        /// Where in it.
        at: u64,
        /// Whole blocks.
        bytes: Vec<u8>,
        /// Whether it must be on disk when done.
        sync: bool,
    },
    /// fdatasync the log's segment written now (`interval`).
    Sync {
        /// The segment's number.
        segment: u64,
    },
    /// Remove these segments (older than a whole checkpoint). Run beside
    /// the other operations, told with `removed`.
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
    },
    Sync {
        through: Lsn,
    },
    Piece {
        segment: u64,
        end: u64,
        created: bool,
        last: bool,
    },
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
    /// The log's segment written now (0: none yet) and where its next
    /// write goes.
    segment: u64,
    at: u64,
    /// The highest segment number given out (the log's or a checkpoint's).
    highest: u64,
    /// Segments on disk, by number, with their sizes.
    segments: VecDeque<(u64, u64)>,
    /// The checkpoint under way, until older segments are removed.
    checkpoint: Option<Checkpoint>,
    /// The next record appended starts a chunk of its own (the first
    /// after a checkpoint began).
    cut: bool,
    /// The last write taken was a checkpoint's piece (the log's go next).
    piece_last: bool,
    /// The segment being removed, beside the other operations.
    removing: Option<u64>,
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
            highest: segment,
            segments: segments.into(),
            checkpoint: None,
            cut: false,
            piece_last: false,
            removing: None,
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
        let cut = std::mem::take(&mut self.cut);
        if self.chunks.is_empty() || cut {
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

    /// Whether the driver has something to do.
    pub fn has_work(&self) -> bool {
        self.out.is_none()
            && (self.retry.is_some()
                || !self.chunks.is_empty()
                || (self.removable().is_some() && self.removing.is_none())
                || self.piece_due()
                || self.wants_pieces())
    }

    /// Whether writes wait in `interval` mode for a sync.
    pub fn unsynced(&self) -> bool {
        self.out.is_none() && self.synced < self.written
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
        // The segments a checkpoint made old go one at a time, beside the
        // log's writes: unlinking one takes ~10 ms per 64 MiB here (110 ms
        // for an old checkpoint of 2 GB), which the log does not wait for.
        if let Some(old) = self.removable() {
            match old.first() {
                None => self.checkpoint = None,
                Some(&segment) if self.removing.is_none() => {
                    self.removing = Some(segment);
                    return Some(DiskOp::Remove {
                        segments: vec![segment],
                    });
                }
                Some(_) => {}
            }
        }
        // The log's writes and a checkpoint's pieces take turns, so that
        // neither waits for the other for long.
        let piece = self.piece_due() && (!self.piece_last || self.chunks.is_empty());
        self.piece_last = piece;
        if piece {
            return self.take_piece();
        }
        let mut chunk = self.chunks.pop_front()?;
        if self.checkpoint.as_ref().is_some_and(|c| chunk.through > c.before) {
            // Appended after the checkpoint began: after its segment.
            self.checkpoint_segment();
        }
        frame::pad(&mut chunk.bytes);
        let len = chunk.bytes.len() as u64;
        let create = self.at == 0 || self.at + len > self.segment_bytes;
        let (segment, at) = if create {
            (self.highest + 1, 0)
        } else {
            (self.segment, self.at)
        };
        if create {
            self.highest = segment;
        }
        let sync = matches!(self.sync, Sync::Batch { .. });
        let op = DiskOp::Write {
            segment,
            checkpoint: false,
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
                    } => {
                        let start = if created { 0 } else { self.at };
                        self.grew(segment, created, start, end);
                        (self.segment, self.at) = (segment, end);
                        self.written = through;
                        if sync {
                            self.synced = through;
                            self.counts.syncs += 1;
                        }
                    }
                    Out::Piece {
                        segment,
                        end,
                        created,
                        last,
                    } => {
                        let c = self.checkpoint.as_mut().expect("a piece is a checkpoint's");
                        let start = c.at;
                        c.at = end;
                        if last {
                            c.whole = true;
                            self.checkpoint_bytes = end;
                            self.counts.syncs += 1;
                        }
                        self.grew(segment, created, start, end);
                    }
                    Out::Sync { through } => {
                        self.synced = self.synced.max(through);
                        self.counts.syncs += 1;
                    }
                }
            }
            Err((op, why)) => {
                self.failing = Some(why);
                self.counts.failures += 1;
                self.retry = Some((op, out));
            }
        }
    }

    /// A write of segment `segment` (new if `created`) from `start` to
    /// `end` is done.
    fn grew(&mut self, segment: u64, created: bool, start: u64, end: u64) {
        if created {
            let i = self.segments.partition_point(|s| s.0 < segment);
            self.segments.insert(i, (segment, 0));
        }
        if let Some(s) = self.segments.iter_mut().rev().find(|s| s.0 == segment) {
            s.1 = s.1.max(end);
        }
        self.counts.writes += 1;
        self.counts.bytes += end - start;
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

mod checkpoint;

#[cfg(test)]
mod tests;
