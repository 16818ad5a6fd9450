//! Reading a shard's journal back at start: where to begin (the segment of
//! the newest whole checkpoint) and each segment's records in order, with
//! every damaged or unreadable stretch named, never served.
//!
//! Pure code over a segment's bytes; `disk::driver` reads the files and
//! the shard applies the records (`shard::store::durable`).
//!
//! Invariants: a checkpoint counts only if its segment begins with its
//! `Begin` and holds its `End` (a crash while writing one leaves the one
//! before it, whose segments are removed only once the new one is synced;
//! the unfinished one is left out, as everything in it is also in the
//! segments before it);
//! a record is handed on only if its frame's checksum holds and its body
//! decodes; markers (`Begin`, `End`) are not handed on.

use crate::disk::frame::{Item, Scan};
use crate::disk::record::{self, Record};

/// Something in a segment that was not read, named for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The segment's number.
    pub segment: u64,
    /// Where in it.
    pub at: usize,
    /// Bytes not read.
    pub len: usize,
    /// Why.
    pub why: String,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} bytes {}..{}: {}",
            self.segment,
            self.at,
            self.at + self.len,
            self.why
        )
    }
}

/// What reading one segment found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Read {
    /// Records handed on.
    pub records: u64,
    /// What was not read.
    pub lost: Vec<Loss>,
    /// Where what was written ends: after the last readable record, or
    /// where a torn one began.
    pub stop: u64,
    /// What follows `stop` is a torn write to cut off, not the zeros a
    /// segment ends with (written ahead with its records).
    pub torn: bool,
}

/// The checkpoint `bytes` (a segment) begins with, whole or not.
pub fn begins_checkpoint(bytes: &[u8]) -> Option<u64> {
    match Scan::new(bytes).next()? {
        Item::Record { kind, body, .. } => match record::decode(kind, body) {
            Ok(Record::Begin { checkpoint }) => Some(checkpoint),
            _ => None,
        },
        Item::Damaged { .. } => None,
    }
}

/// The checkpoint `bytes` (a segment) begins with, if it is whole.
pub fn whole_checkpoint(bytes: &[u8]) -> Option<u64> {
    let n = begins_checkpoint(bytes)?;
    let mut scan = Scan::new(bytes);
    scan.next();
    scan.any(|i| match i {
        Item::Record { kind, body, .. } => record::decode(kind, body) == Ok(Record::End { checkpoint: n }),
        Item::Damaged { .. } => false,
    })
    .then_some(n)
}

/// Hands every readable record of segment `segment` (its `bytes`) to
/// `apply`, in order.
pub fn read_segment(segment: u64, bytes: &[u8], mut apply: impl FnMut(Record<'_>)) -> Read {
    let mut read = Read::default();
    let mut scan = Scan::new(bytes);
    for item in scan.by_ref() {
        match item {
            Item::Record { at, kind, body } => match record::decode(kind, body) {
                Ok(Record::Begin { .. } | Record::End { .. }) => {}
                Ok(r) => {
                    read.records += 1;
                    apply(r);
                }
                Err(e) => read.lost.push(Loss {
                    segment,
                    at,
                    len: body.len() + crate::disk::frame::HEADER,
                    why: e.to_string(),
                }),
            },
            Item::Damaged { at, len, why } => read.lost.push(Loss {
                segment,
                at,
                len,
                why: why.to_string(),
            }),
        }
    }
    read.stop = scan.end().unwrap_or(bytes.len()) as u64;
    read.torn = bytes[read.stop as usize..].iter().any(|&b| b != 0);
    read
}

/// Of segments numbered `numbers` (oldest first), the index to begin
/// replaying at: that of the newest one `is_whole` says begins a whole
/// checkpoint, else 0 (a store never checkpointed starts at its first).
pub fn start_at(numbers: &[u64], mut is_whole: impl FnMut(u64) -> bool) -> usize {
    (0..numbers.len()).rev().find(|&i| is_whole(numbers[i])).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::frame;

    fn seg(records: &[Record<'_>]) -> Vec<u8> {
        let mut b = Vec::new();
        for r in records {
            r.write(&mut b);
        }
        frame::pad(&mut b);
        b
    }

    fn mark(offset: u64) -> Record<'static> {
        Record::Mark {
            room: "r",
            mid: 1,
            offset,
        }
    }

    #[test]
    fn a_checkpoint_is_whole_only_with_its_end() {
        let whole = seg(&[
            Record::Begin { checkpoint: 3 },
            mark(1),
            Record::End { checkpoint: 3 },
            mark(2),
        ]);
        assert_eq!(whole_checkpoint(&whole), Some(3));
        let cut = seg(&[Record::Begin { checkpoint: 3 }, mark(1)]);
        assert_eq!(whole_checkpoint(&cut), None);
        let other = seg(&[Record::Begin { checkpoint: 3 }, Record::End { checkpoint: 2 }]);
        assert_eq!(whole_checkpoint(&other), None);
        assert_eq!(whole_checkpoint(&seg(&[mark(1)])), None);
        assert_eq!(whole_checkpoint(&[]), None);
    }

    #[test]
    fn reading_hands_on_records_but_not_markers_and_names_losses() {
        let mut b = seg(&[Record::Begin { checkpoint: 1 }, mark(1), Record::End { checkpoint: 1 }]);
        let second = b.len();
        b.extend(seg(&[mark(2), mark(3)]));
        b[second + 20] ^= 0xFF;
        b.extend(vec![0; 2 * frame::BLOCK]);
        let mut got = Vec::new();
        let read = read_segment(7, &b, |r| got.push(r.clone().into_owned_mark()));
        assert_eq!(got, [1]);
        assert_eq!(read.records, 1);
        assert_eq!(read.lost.len(), 1);
        assert_eq!(read.lost[0].segment, 7);
        assert_eq!(read.lost[0].at, second);
        assert_eq!(read.stop, 2 * frame::BLOCK as u64);
    }

    #[test]
    fn replay_starts_at_the_newest_whole_checkpoint() {
        assert_eq!(start_at(&[1, 2, 3, 4], |n| n == 2 || n == 3), 2);
        assert_eq!(start_at(&[1, 2, 3], |_| false), 0);
        assert_eq!(start_at(&[], |_| true), 0);
    }

    impl Record<'_> {
        fn into_owned_mark(self) -> u64 {
            match self {
                Record::Mark { offset, .. } => offset,
                r => panic!("{r:?}"),
            }
        }
    }
}
