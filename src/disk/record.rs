//! What the durable store's records say: one `Record` per change a shard
//! makes to what it promised to keep (a room message, a room's position, a
//! push kept for users, an acknowledgement, a read mark, a publisher id
//! seen), and the markers that frame a checkpoint. `frame` puts each in a
//! segment with its kind and checksum; this module is the body inside.
//!
//! Pure code over bytes; times are Unix seconds (ticks do not outlive the
//! process). Every body read back is untrusted even when its checksum
//! holds (a bug in an older build, a file from elsewhere): `decode` checks
//! every length against what is there and against the bounds below, and
//! refuses trailing bytes.
//!
//! ```text
//! all integers little-endian; str = u16 len | UTF-8; bytes = u32 len | bytes
//! 1 Message   room str | epoch u64 | offset u64 | at u64 | ttl_end u64 | op u32 | id str | payload bytes
//! 2 Head      room str | epoch u64 | last u64 | lost_through u64
//! 3 Push      n u32 | n × mid i64 | push u64 | op u32 | at u64 | ttl_end u64 | id str | payload bytes
//! 4 Ack       mid i64 | n u32 | n × push u64
//! 5 Mark      room str | mid i64 | offset u64
//! 6 Seen      key str | at u64 | offset u64 | epoch u64            (offset 0: a push, not a room message)
//! 7 Begin     checkpoint u64                                      (a checkpoint's records follow)
//! 8 End       checkpoint u64                                      (the checkpoint is whole)
//! 9 Floor     push u64                                            (push ids go on above it)
//! ttl_end 0: no TTL of its own
//! ```

use crate::disk::frame;

/// Longest room name, publisher id or dedup key a record holds (the
/// protocol's own limits are far below).
pub const MAX_NAME: usize = 4096;
/// Most users one push record names (a push to more is split).
pub const MAX_MIDS: usize = 65_536;
/// Most ids one acknowledgement record names.
pub const MAX_ACKS: usize = 65_536;

/// One change to what a shard keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A room message, stored in the room's history.
    Message {
        /// The room.
        room: &'a str,
        /// The room's epoch.
        epoch: u64,
        /// Its offset in the room.
        offset: u64,
        /// When it was published.
        at: u64,
        /// When its own TTL ends (0: none).
        ttl_end: u64,
        /// Its business operation code.
        op: u32,
        /// The publisher's message id ("": none).
        id: &'a str,
        /// The payload.
        payload: &'a [u8],
    },
    /// A room's position: its epoch and newest offset (a room whose
    /// messages are not kept, a new log, a checkpoint).
    Head {
        /// The room.
        room: &'a str,
        /// Its epoch.
        epoch: u64,
        /// Its newest offset.
        last: u64,
        /// The highest offset no longer replayable for a reason other
        /// than its TTL.
        lost_through: u64,
    },
    /// A push kept in the inboxes of `mids`.
    Push {
        /// The users whose inboxes keep it.
        mids: Vec<i64>,
        /// The push's id (what a client acknowledges).
        push: u64,
        /// Its business operation code.
        op: u32,
        /// When it was stored.
        at: u64,
        /// When its TTL ends (0: none).
        ttl_end: u64,
        /// The publisher's message id ("": none).
        id: &'a str,
        /// The payload.
        payload: &'a [u8],
    },
    /// A user acknowledged pushes (or a version-1 connection took them).
    Ack {
        /// The user.
        mid: i64,
        /// The pushes.
        pushes: Vec<u64>,
    },
    /// A user's read mark in a room.
    Mark {
        /// The room.
        room: &'a str,
        /// The user.
        mid: i64,
        /// Read up to this offset.
        offset: u64,
    },
    /// A publisher message id seen (a push's; a room message's id travels
    /// in its `Message`).
    Seen {
        /// The dedup key.
        key: &'a str,
        /// When it was first seen.
        at: u64,
        /// The offset it got (0: a push).
        offset: u64,
        /// The room's epoch then (0: a push).
        epoch: u64,
    },
    /// A checkpoint starts: what the shard keeps follows, whole.
    Begin {
        /// The checkpoint's number.
        checkpoint: u64,
    },
    /// The checkpoint numbered so is whole.
    End {
        /// The checkpoint's number.
        checkpoint: u64,
    },
    /// Push ids given out so far go up to this sequence (a checkpoint
    /// keeps it when the pushes themselves are gone).
    Floor {
        /// The highest push sequence given out.
        push: u64,
    },
}

/// Why a body does not read as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record has this kind.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// The body ends before a field does.
    #[error("a record cut short")]
    Short,
    /// A length past its bound.
    #[error("a record with a length past its bound")]
    TooLong,
    /// A name that is not UTF-8.
    #[error("a record with a name that is not UTF-8")]
    Utf8,
    /// Bytes after the last field.
    #[error("a record with bytes after its last field")]
    Trailing,
}

impl Record<'_> {
    /// Its kind byte in a segment.
    pub fn kind(&self) -> u8 {
        match self {
            Record::Message { .. } => 1,
            Record::Head { .. } => 2,
            Record::Push { .. } => 3,
            Record::Ack { .. } => 4,
            Record::Mark { .. } => 5,
            Record::Seen { .. } => 6,
            Record::Begin { .. } => 7,
            Record::End { .. } => 8,
            Record::Floor { .. } => 9,
        }
    }

    /// Appends the record, framed (`frame::encode`), to `out`.
    ///
    /// # Panics
    /// If a field is past its bound (a bug: the shard's own limits are far
    /// below these).
    pub fn write(&self, out: &mut Vec<u8>) {
        frame::encode_with(out, self.kind(), |b| self.body(b));
    }

    fn body(&self, b: &mut Vec<u8>) {
        match self {
            Record::Message {
                room,
                epoch,
                offset,
                at,
                ttl_end,
                op,
                id,
                payload,
            } => {
                put_str(b, room);
                put_u64s(b, &[*epoch, *offset, *at, *ttl_end]);
                b.extend_from_slice(&op.to_le_bytes());
                put_str(b, id);
                put_bytes(b, payload);
            }
            Record::Head {
                room,
                epoch,
                last,
                lost_through,
            } => {
                put_str(b, room);
                put_u64s(b, &[*epoch, *last, *lost_through]);
            }
            Record::Push {
                mids,
                push,
                op,
                at,
                ttl_end,
                id,
                payload,
            } => {
                assert!(mids.len() <= MAX_MIDS, "a push record for {} users", mids.len());
                b.extend_from_slice(&(mids.len() as u32).to_le_bytes());
                for m in mids {
                    b.extend_from_slice(&m.to_le_bytes());
                }
                b.extend_from_slice(&push.to_le_bytes());
                b.extend_from_slice(&op.to_le_bytes());
                put_u64s(b, &[*at, *ttl_end]);
                put_str(b, id);
                put_bytes(b, payload);
            }
            Record::Ack { mid, pushes } => {
                assert!(pushes.len() <= MAX_ACKS, "an ack record for {} pushes", pushes.len());
                b.extend_from_slice(&mid.to_le_bytes());
                b.extend_from_slice(&(pushes.len() as u32).to_le_bytes());
                put_u64s(b, pushes);
            }
            Record::Mark { room, mid, offset } => {
                put_str(b, room);
                b.extend_from_slice(&mid.to_le_bytes());
                b.extend_from_slice(&offset.to_le_bytes());
            }
            Record::Seen { key, at, offset, epoch } => {
                put_str(b, key);
                put_u64s(b, &[*at, *offset, *epoch]);
            }
            Record::Begin { checkpoint } | Record::End { checkpoint } => b.extend_from_slice(&checkpoint.to_le_bytes()),
            Record::Floor { push } => b.extend_from_slice(&push.to_le_bytes()),
        }
    }
}

/// Reads the body of a record of `kind`.
pub fn decode(kind: u8, body: &[u8]) -> Result<Record<'_>, RecordError> {
    let mut r = Reader { rest: body };
    let rec = match kind {
        1 => Record::Message {
            room: r.str()?,
            epoch: r.u64()?,
            offset: r.u64()?,
            at: r.u64()?,
            ttl_end: r.u64()?,
            op: r.u32()?,
            id: r.str()?,
            payload: r.bytes()?,
        },
        2 => Record::Head {
            room: r.str()?,
            epoch: r.u64()?,
            last: r.u64()?,
            lost_through: r.u64()?,
        },
        3 => {
            let n = r.count(MAX_MIDS, 8)?;
            let mids = (0..n).map(|_| r.u64().map(|m| m as i64)).collect::<Result<_, _>>()?;
            Record::Push {
                mids,
                push: r.u64()?,
                op: r.u32()?,
                at: r.u64()?,
                ttl_end: r.u64()?,
                id: r.str()?,
                payload: r.bytes()?,
            }
        }
        4 => {
            let mid = r.u64()? as i64;
            let n = r.count(MAX_ACKS, 8)?;
            Record::Ack {
                mid,
                pushes: (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?,
            }
        }
        5 => Record::Mark {
            room: r.str()?,
            mid: r.u64()? as i64,
            offset: r.u64()?,
        },
        6 => Record::Seen {
            key: r.str()?,
            at: r.u64()?,
            offset: r.u64()?,
            epoch: r.u64()?,
        },
        7 => Record::Begin { checkpoint: r.u64()? },
        8 => Record::End { checkpoint: r.u64()? },
        9 => Record::Floor { push: r.u64()? },
        k => return Err(RecordError::Kind(k)),
    };
    if !r.rest.is_empty() {
        return Err(RecordError::Trailing);
    }
    Ok(rec)
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    assert!(s.len() <= MAX_NAME, "a name of {} bytes in a record", s.len());
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_bytes(b: &mut Vec<u8>, bytes: &[u8]) {
    b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    b.extend_from_slice(bytes);
}

fn put_u64s(b: &mut Vec<u8>, vs: &[u64]) {
    for v in vs {
        b.extend_from_slice(&v.to_le_bytes());
    }
}

/// A cursor over an untrusted body.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.rest.len() < n {
            return Err(RecordError::Short);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn str(&mut self) -> Result<&'a str, RecordError> {
        let n = usize::from(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")));
        if n > MAX_NAME {
            return Err(RecordError::TooLong);
        }
        std::str::from_utf8(self.take(n)?).map_err(|_| RecordError::Utf8)
    }

    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u32()? as usize;
        if n > frame::MAX_BODY {
            return Err(RecordError::TooLong);
        }
        self.take(n)
    }

    /// A count of `size`-byte items, at most `max`, that the rest can hold
    /// (so a damaged count cannot make the reader allocate).
    fn count(&mut self, max: usize, size: usize) -> Result<usize, RecordError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(RecordError::TooLong);
        }
        if n * size > self.rest.len() {
            return Err(RecordError::Short);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::frame::{Item, Scan};
    use proptest::prelude::*;

    fn samples() -> Vec<Record<'static>> {
        vec![
            Record::Message {
                room: "live://1000",
                epoch: 0x1234_5678_9abc,
                offset: 42,
                at: 1_796_000_000,
                ttl_end: 0,
                op: 1000,
                id: "order-7",
                payload: b"hello",
            },
            Record::Head {
                room: "r",
                epoch: 9,
                last: 7,
                lost_through: 3,
            },
            Record::Push {
                mids: vec![1, -2, i64::MAX],
                push: 1 << 48 | 5,
                op: 7,
                at: 10,
                ttl_end: 70,
                id: "",
                payload: &[0, 1, 2],
            },
            Record::Ack {
                mid: 5,
                pushes: vec![1, 2, 3],
            },
            Record::Mark {
                room: "room",
                mid: -1,
                offset: 99,
            },
            Record::Seen {
                key: "u\u{0}5\u{0}id",
                at: 3,
                offset: 0,
                epoch: 0,
            },
            Record::Begin { checkpoint: 4 },
            Record::End { checkpoint: 4 },
            Record::Floor { push: 77 },
        ]
    }

    #[test]
    fn every_kind_reads_back_as_written_through_a_segment() {
        let mut seg = Vec::new();
        for r in samples() {
            r.write(&mut seg);
        }
        frame::pad(&mut seg);
        let read: Vec<Record<'_>> = Scan::new(&seg)
            .map(|i| match i {
                Item::Record { kind, body, .. } => decode(kind, body).expect("decodes"),
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(read, samples());
    }

    /// The fuzz corpus's seed of every kind is this module's samples, in
    /// one write (`VOLLEY_WRITE_SEED=1` writes it afresh).
    #[test]
    fn the_fuzz_seed_holds_every_kind() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/disk_scan/every_kind");
        let mut seg = Vec::new();
        for r in samples() {
            r.write(&mut seg);
        }
        frame::pad(&mut seg);
        if std::env::var_os("VOLLEY_WRITE_SEED").is_some() {
            std::fs::write(path, &seg).expect("seed written");
        }
        assert_eq!(std::fs::read(path).expect("seed committed"), seg);
    }

    #[test]
    fn every_cut_of_every_body_is_refused_and_so_are_trailing_bytes() {
        for r in samples() {
            let mut b = Vec::new();
            r.body(&mut b);
            for cut in 0..b.len() {
                assert_eq!(
                    decode(r.kind(), &b[..cut]),
                    Err(RecordError::Short),
                    "{r:?} cut at {cut}"
                );
            }
            b.push(0);
            assert_eq!(decode(r.kind(), &b), Err(RecordError::Trailing));
        }
        assert_eq!(decode(0, &[]), Err(RecordError::Kind(0)));
        assert_eq!(decode(10, &[]), Err(RecordError::Kind(10)));
    }

    /// The largest payload a configuration lets through, with the longest
    /// names, still makes a record.
    #[test]
    fn the_largest_message_fits_a_record() {
        let (room, payload) = ("r".repeat(MAX_NAME), vec![7u8; 16 << 20]);
        let m = Record::Message {
            room: &room,
            epoch: 1,
            offset: 1,
            at: 0,
            ttl_end: 0,
            op: 1,
            id: &room,
            payload: &payload,
        };
        let mut seg = Vec::new();
        m.write(&mut seg);
        let Some(Item::Record { kind, body, .. }) = Scan::new(&seg).next() else {
            panic!("a record")
        };
        assert_eq!(decode(kind, body), Ok(m));
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        let mut b = u32::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        assert_eq!(decode(3, &b), Err(RecordError::TooLong));
        let mut b = 100u32.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        assert_eq!(decode(3, &b), Err(RecordError::Short));
        let mut b = 0u16.to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 32]);
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0xFF; 4]);
        assert_eq!(decode(1, &b), Err(RecordError::TooLong));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused() {
        let mut b = 2u16.to_le_bytes().to_vec();
        b.extend_from_slice(&[0xC3, 0x28]);
        b.extend_from_slice(&[0; 24]);
        assert_eq!(decode(2, &b), Err(RecordError::Utf8));
    }

    proptest! {
        #[test]
        fn messages_and_pushes_round_trip(
            room in "[a-z:/0-9]{0,40}",
            id in "\\PC{0,20}",
            nums in proptest::array::uniform4(any::<u64>()),
            op in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            mids in proptest::collection::vec(any::<i64>(), 0..20),
        ) {
            let m = Record::Message { room: &room, epoch: nums[0], offset: nums[1], at: nums[2], ttl_end: nums[3], op, id: &id, payload: &payload };
            let p = Record::Push { mids, push: nums[0], op, at: nums[1], ttl_end: nums[2], id: &id, payload: &payload };
            for r in [m, p] {
                let mut b = Vec::new();
                r.body(&mut b);
                prop_assert_eq!(decode(r.kind(), &b), Ok(r.clone()));
            }
        }
    }
}
