//! How a record sits in a segment file of the durable store, and how a
//! segment is read back: framing, checksums, the end of what was written,
//! and skipping what is damaged.
//!
//! Pure code over bytes (recovery hands it a segment's contents). Every
//! byte read is untrusted: a crash can leave a torn write, a disk can flip
//! bits, and an operator can truncate a file.
//!
//! ```text
//! record:  u32 len | u32 crc32c(len, kind, body) | u8 kind | body (len bytes)     little-endian
//! block:   BLOCK bytes; a write (one group commit) starts on a block boundary
//! ```
//!
//! Invariants: a record is returned only if its checksum holds; a kind of
//! 0 never starts a record, so the zeros after the last write (preallocated
//! space) read as the end; after a damaged record, reading resumes at the
//! next block boundary, where the next write began, and the bytes skipped
//! are reported, never served.

/// Alignment of writes (O_DIRECT's): each group commit starts at a multiple.
pub const BLOCK: usize = 4096;
/// Bytes before a record's body.
pub const HEADER: usize = 9;
/// The largest body a record may have: the largest payload any
/// configuration lets through (16 MiB) with room for a record's other
/// fields (names and ids are bounded far below 64 KiB); it also bounds what
/// a damaged length can make the reader take.
pub const MAX_BODY: usize = (16 << 20) + (64 << 10);

/// Appends one record of `kind` (1 to 255) with `body` to `out`.
pub fn encode(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    encode_with(out, kind, |out| out.extend_from_slice(body));
}

/// Appends one record of `kind` whose body `body` writes straight into
/// `out` (no copy through a buffer of its own), then its header.
pub fn encode_with(out: &mut Vec<u8>, kind: u8, body: impl FnOnce(&mut Vec<u8>)) {
    assert!(kind != 0, "kind 0 marks the end of a segment");
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    body(out);
    let len = out.len() - at - HEADER;
    assert!(len <= MAX_BODY, "record body of {len} bytes");
    let crc = checksum(len as u32, kind, &out[at + HEADER..]);
    out[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    out[at + 8] = kind;
}

/// Pads `out` with zeros to the next block boundary (the end of a write).
pub fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(BLOCK), 0);
}

/// Covers the length too, so a damaged length is caught by the checksum
/// and not only by where the body would end.
fn checksum(len: u32, kind: u8, body: &[u8]) -> u32 {
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = kind;
    crc32c::crc32c_append(crc32c::crc32c(&head), body)
}

/// What reading a segment finds next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<'a> {
    /// A whole record whose checksum holds, at byte `at`.
    Record {
        /// Where it starts.
        at: usize,
        /// Its kind (1 to 255).
        kind: u8,
        /// Its body.
        body: &'a [u8],
    },
    /// Bytes `at..at + len` hold no readable record (a bad checksum or an
    /// impossible length); reading goes on at the next block boundary.
    Damaged {
        /// Where the damage was found.
        at: usize,
        /// Bytes skipped.
        len: usize,
        /// What was wrong.
        why: &'static str,
    },
}

/// Reads the records of one segment's bytes in order.
#[derive(Debug)]
pub struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where what was written ends, once found.
    end: Option<usize>,
}

impl<'a> Scan<'a> {
    /// A reader of `bytes`, a segment from its start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Scan {
            bytes,
            at: 0,
            end: None,
        }
    }

    /// Where what was written ends (after the last readable record, or
    /// where a torn one began), once `next` has returned `None`; new
    /// writes start at the first block boundary from there.
    pub fn end(&self) -> Option<usize> {
        self.end
    }

    /// Skips to the next block boundary after `at`, reporting the skip.
    fn damaged(&mut self, at: usize, why: &'static str) -> Item<'a> {
        let next = (at + 1).next_multiple_of(BLOCK).min(self.bytes.len());
        self.at = next;
        Item::Damaged {
            at,
            len: next - at,
            why,
        }
    }
}

impl<'a> Iterator for Scan<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        loop {
            if self.end.is_some() {
                return None;
            }
            let at = self.at;
            let rest = &self.bytes[at..];
            if rest.len() < HEADER {
                // Nothing, or zeros: the end. Anything else is a header the
                // last write began and never finished.
                self.end = Some(at);
                if rest.iter().all(|&b| b == 0) {
                    return None;
                }
                self.at = self.bytes.len();
                return Some(Item::Damaged {
                    at,
                    len: rest.len(),
                    why: "a record header cut short at the end (a torn write)",
                });
            }
            if rest[8] == 0 {
                if rest[..HEADER].iter().any(|&b| b != 0) {
                    return Some(self.damaged(at, "a record of kind 0"));
                }
                // Zeros where a record would start. At a block boundary no
                // write began here: the end. Inside a block: the padding
                // after a write; the next one starts at the next boundary.
                if at % BLOCK == 0 {
                    self.end = Some(at);
                    return None;
                }
                self.at = at.next_multiple_of(BLOCK).min(self.bytes.len());
                continue;
            }
            let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
            let kind = rest[8];
            if len > MAX_BODY {
                return Some(self.damaged(at, "a record longer than any written"));
            }
            if rest.len() < HEADER + len {
                // A torn write at the end, or a damaged length: either way
                // what follows in this block cannot be trusted.
                return Some(self.damaged(at, "a record that runs past what was written"));
            }
            let body = &rest[HEADER..HEADER + len];
            if checksum(len as u32, kind, body) != crc {
                return Some(self.damaged(at, "a record whose checksum does not hold"));
            }
            self.at = at + HEADER + len;
            return Some(Item::Record { at, kind, body });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as written or read: (at, kind, body).
    type Rec = (usize, u8, Vec<u8>);

    /// Three writes (group commits) of a few records each, padded to the
    /// block; each record's (at, kind, body).
    fn segment() -> (Vec<u8>, Vec<Rec>) {
        let mut out = Vec::new();
        let mut written = Vec::new();
        for write in 0..3u8 {
            for i in 0..(2 + write as usize * 3) {
                let body: Vec<u8> = (0..(i * 37 + write as usize * 500))
                    .map(|b| (b * 7 + i) as u8)
                    .collect();
                written.push((out.len(), 1 + write, body.clone()));
                encode(&mut out, 1 + write, &body);
            }
            pad(&mut out);
        }
        // Preallocated space after the last write.
        out.resize(out.len() + 2 * BLOCK, 0);
        (out, written)
    }

    fn records(bytes: &[u8]) -> (Vec<Rec>, Vec<Item<'_>>, Option<usize>) {
        let mut scan = Scan::new(bytes);
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for item in scan.by_ref() {
            match item {
                Item::Record { at, kind, body } => good.push((at, kind, body.to_vec())),
                d => bad.push(d),
            }
        }
        (good, bad, scan.end())
    }

    #[test]
    fn a_segment_reads_back_whole_and_ends_where_writing_stopped() {
        let (bytes, written) = segment();
        let (good, bad, end) = records(&bytes);
        assert_eq!(good, written);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(end, Some(bytes.len() - 2 * BLOCK));
        assert_eq!(end.unwrap() % BLOCK, 0);
    }

    #[test]
    fn cut_anywhere_it_serves_only_whole_records_written_before_the_cut() {
        let (bytes, written) = segment();
        for cut in 0..bytes.len() {
            let (good, bad, end) = records(&bytes[..cut]);
            let whole: Vec<_> = written
                .iter()
                .filter(|(at, _, b)| at + HEADER + b.len() <= cut)
                .cloned()
                .collect();
            assert_eq!(good, whole, "cut at {cut}");
            // A record cut short is named, never dropped silently (unless
            // all of it that remains is zeros: then nothing was written).
            let torn =
                |(at, _, b): &Rec| *at < cut && at + HEADER + b.len() > cut && bytes[*at..cut].iter().any(|&x| x != 0);
            if written.iter().any(torn) {
                assert!(!bad.is_empty(), "cut at {cut}: a loss not named");
            }
            let end = end.expect("an end");
            assert!(end <= cut, "cut at {cut}: end {end}");
        }
    }

    #[test]
    fn a_flipped_byte_never_serves_wrong_bytes_and_only_its_write_is_lost() {
        let (bytes, written) = segment();
        let step = 7;
        for pos in (0..bytes.len() - 2 * BLOCK).step_by(step) {
            for bit in [0x01u8, 0x80] {
                let mut damaged = bytes.clone();
                damaged[pos] ^= bit;
                let (good, bad, _) = records(&damaged);
                for r in &good {
                    assert!(written.contains(r), "flip at {pos}: served {:?}", (r.0, r.1, r.2.len()));
                }
                // What lies wholly before the flip survives, and so does
                // every later write (kinds here number the writes).
                let hit_write = written.iter().rev().find(|(at, _, _)| *at <= pos).map_or(0, |r| r.1);
                for r in &written {
                    let before = r.0 + HEADER + r.2.len() <= pos;
                    if before || r.1 > hit_write {
                        assert!(good.contains(r), "flip at {pos}: lost the record at {}", r.0);
                    }
                }
                if good.len() < written.len() {
                    assert!(!bad.is_empty(), "flip at {pos}: a loss not named");
                }
            }
        }
    }

    proptest::proptest! {
        /// Random writes of random records, then damage of any kind (a cut,
        /// flipped bits, a run of zeros or garbage over any range): what is
        /// served is always exactly a record that was written, at its place.
        #[test]
        fn whatever_the_damage_only_written_records_are_served(
            writes in proptest::collection::vec(
                proptest::collection::vec((1u8..=255, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000)), 1..6),
                1..5,
            ),
            damage in proptest::collection::vec((0usize..30_000, 1usize..600, 0u8..3, proptest::prelude::any::<u8>()), 0..4),
            cut in proptest::option::of(0usize..30_000),
        ) {
            let mut bytes = Vec::new();
            let mut written = Vec::new();
            for w in &writes {
                for (kind, body) in w {
                    written.push((bytes.len(), *kind, body.clone()));
                    encode(&mut bytes, *kind, body);
                }
                pad(&mut bytes);
            }
            bytes.resize(bytes.len() + BLOCK, 0);
            for (at, len, how, b) in damage {
                let n = bytes.len();
                let range = at.min(n)..(at + len).min(n);
                for x in &mut bytes[range] {
                    *x = match how {
                        0 => *x ^ (b | 1),
                        1 => 0,
                        _ => b,
                    };
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.min(bytes.len()));
            }
            let (good, _, end) = records(&bytes);
            for r in &good {
                proptest::prop_assert!(written.contains(r), "served {:?}", (r.0, r.1, r.2.len()));
            }
            proptest::prop_assert!(end.is_some_and(|e| e <= bytes.len()));
        }
    }

    #[test]
    fn the_fuzz_seed_is_two_whole_writes_in_this_format() {
        let seed = include_bytes!("../../fuzz/corpus/disk_scan/two_writes");
        let (good, bad, end) = records(seed);
        let kinds: Vec<u8> = good.iter().map(|r| r.1).collect();
        assert_eq!(kinds, [1, 2, 3], "{bad:?}");
        assert_eq!(good[2], (BLOCK, 3, b"second write".to_vec()));
        assert!(bad.is_empty() && end.is_some());
    }

    #[test]
    fn kind_zero_is_refused_when_writing() {
        assert!(std::panic::catch_unwind(|| encode(&mut Vec::new(), 0, b"x")).is_err());
    }
}
