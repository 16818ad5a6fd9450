//! The journal's checkpoints: when one is due, its records gathered into
//! pieces, the segment it is written to, and the removal of the segments
//! it made old (`Journal`'s turn-taking between them and the log is in
//! `take`, in the module above).

use super::{DiskOp, Journal, Lsn, Out, CHECKPOINT_PIECE};
use crate::disk::frame;
use crate::disk::record::Record;
use std::collections::VecDeque;

/// A checkpoint being written.
#[derive(Debug)]
pub(super) struct Checkpoint {
    pub(super) n: u64,
    /// The newest LSN appended when it began: every record up to it is
    /// written before any piece (those records come before the checkpoint).
    pub(super) before: Lsn,
    /// Its segment, numbered when its first piece or the first record
    /// after it is taken.
    pub(super) segment: Option<u64>,
    /// Where its next piece goes.
    pub(super) at: u64,
    /// Pieces ready, oldest first.
    pub(super) pieces: VecDeque<Vec<u8>>,
    /// The piece being filled.
    pub(super) open: Vec<u8>,
    /// Its `End` is appended: the last piece is among `pieces`.
    pub(super) ended: bool,
    /// Its `End` is synced: older segments may go.
    pub(super) whole: bool,
}

impl Journal {
    /// Whether the segments hold more than `growth` bytes beyond twice
    /// what the newest checkpoint took (what the shard keeps, about), and
    /// no checkpoint is under way: time for one.
    pub fn wants_checkpoint(&self, growth: u64) -> bool {
        self.checkpoint.is_none() && self.disk_bytes() > 2 * self.checkpoint_bytes + growth
    }

    /// Says the newest checkpoint read back took `bytes` (so the next one
    /// is due once the log has grown past it, not at once).
    pub fn checkpointed(&mut self, bytes: u64) {
        self.checkpoint_bytes = bytes;
    }

    /// Whether a checkpoint is being written or waits for older segments
    /// to be removed.
    pub fn checkpointing(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// Starts a checkpoint of what the shard keeps and returns its number:
    /// its `Begin` opens its first piece; the caller adds what the shard
    /// keeps with `checkpoint_record` while `wants_pieces` says so, then
    /// `end_checkpoint`. What is appended from now on is written after the
    /// checkpoint's segment.
    pub fn begin_checkpoint(&mut self) -> u64 {
        assert!(self.checkpoint.is_none(), "one checkpoint at a time");
        self.checkpoints += 1;
        let n = self.checkpoints;
        let mut open = Vec::new();
        Record::Begin { checkpoint: n }.write(&mut open);
        self.checkpoint = Some(Checkpoint {
            n,
            before: self.appended,
            segment: None,
            at: 0,
            pieces: VecDeque::new(),
            open,
            ended: false,
            whole: false,
        });
        self.cut = true;
        n
    }

    /// Whether the checkpoint under way wants more records (fewer than two
    /// pieces wait for the disk).
    pub fn wants_pieces(&self) -> bool {
        self.checkpoint.as_ref().is_some_and(|c| !c.ended && c.pieces.len() < 2)
    }

    /// Adds `rec` to the checkpoint under way.
    pub fn checkpoint_record(&mut self, rec: &Record<'_>) {
        let c = self.checkpoint.as_mut().expect("a checkpoint began");
        debug_assert!(!c.ended, "after its end");
        rec.write(&mut c.open);
        if c.open.len() >= CHECKPOINT_PIECE {
            let mut piece = std::mem::take(&mut c.open);
            frame::pad(&mut piece);
            c.pieces.push_back(piece);
        }
    }

    /// Ends the checkpoint under way: its last piece, synced whatever the
    /// mode, lets older segments go.
    pub fn end_checkpoint(&mut self) {
        let c = self.checkpoint.as_mut().expect("a checkpoint began");
        Record::End { checkpoint: c.n }.write(&mut c.open);
        let mut piece = std::mem::take(&mut c.open);
        frame::pad(&mut piece);
        c.pieces.push_back(piece);
        c.ended = true;
    }

    /// Segments a synced checkpoint made old, if any (whatever the mode:
    /// removing them before the checkpoint is synced could lose both).
    pub(super) fn removable(&self) -> Option<Vec<u64>> {
        let c = self.checkpoint.as_ref().filter(|c| c.whole)?;
        let seg = c.segment?;
        Some(self.segments.iter().map(|s| s.0).filter(|&s| s < seg).collect())
    }

    /// Whether a piece of the checkpoint may be written now: one is ready
    /// and every record from before the checkpoint is written.
    pub(super) fn piece_due(&self) -> bool {
        self.checkpoint
            .as_ref()
            .is_some_and(|c| !c.pieces.is_empty() && self.chunks.front().is_none_or(|ch| ch.through > c.before))
    }

    /// The checkpoint's segment, numbered now if it is not yet. It is
    /// numbered once every record from before it is written, so the log's
    /// segments before it are all there will be: the log's next write
    /// starts the one after it (the one written now goes with the others
    /// once the checkpoint is whole).
    pub(super) fn checkpoint_segment(&mut self) -> Option<u64> {
        let c = self.checkpoint.as_mut()?;
        if c.segment.is_none() {
            self.highest += 1;
            c.segment = Some(self.highest);
            self.at = 0;
        }
        c.segment
    }

    pub(super) fn take_piece(&mut self) -> Option<DiskOp> {
        let segment = self.checkpoint_segment()?;
        let c = self.checkpoint.as_mut()?;
        let bytes = c.pieces.pop_front()?;
        let last = c.ended && c.pieces.is_empty();
        let created = c.at == 0;
        let at = c.at;
        self.out = Some(Out::Piece {
            segment,
            end: at + bytes.len() as u64,
            created,
            last,
        });
        Some(DiskOp::Write {
            segment,
            checkpoint: true,
            create: created,
            at,
            bytes,
            sync: last,
        })
    }

    /// How the removal out went (a failed one is asked again by
    /// `removable` itself).
    pub fn removed(&mut self, result: Result<(), String>) {
        let Some(segment) = self.removing.take() else { return };
        match result {
            Ok(()) => self.segments.retain(|s| s.0 != segment),
            Err(why) => {
                self.failing = Some(why);
                self.counts.failures += 1;
            }
        }
    }
}
