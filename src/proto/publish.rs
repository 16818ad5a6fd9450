//! Bodies of the TCP publisher's operations: who a push goes to, its business
//! operation code and its payload, parsed from untrusted bytes.
//!
//! Pure code (sans-IO), run on the shard that accepted the publisher's
//! connection. The frame around these bodies is the client protocol's
//! (`binary`); docs/API.md ("TCP publisher") is the contract.
//!
//! ```text
//! all integers big-endian
//! op 20 push keys: u32 op, u16 n (≥ 1), n × (u16 len, key bytes), payload
//! op 22 push mids: u32 op, u16 n (≥ 1), n × i64, payload
//! op 24 push room: u32 op, u16 len (1..=256), room bytes (UTF-8), payload
//! op 26 push all:  u32 op, payload
//!
//! version 2 (frame header version 2): the same bodies behind a prefix
//!   u16 id_len (0..=128), id bytes (UTF-8; 0 = no id), u32 ttl (0 = none)
//! ```
//!
//! Invariants: every length is checked against the bytes present before it
//! is used; keys and rooms are valid UTF-8 within the client protocol's
//! limits (`body::MAX_KEY_LEN`, `body::MAX_ROOM_LEN`); the payload is the rest
//! of the body, borrowed, never copied here.

use super::body::{MAX_KEY_LEN, MAX_ROOM_LEN};
use super::v2::MAX_ID_LEN;

/// Operation codes of the publisher protocol (client ops 2, 6, 7, 9 keep
/// their meaning; these are publisher-only). A non-zero sequence asks for a
/// reply with op + 1 once the message is routed.
pub mod op {
    /// Push to connection keys.
    pub const PUSH_KEYS: u32 = 20;
    /// Push to user ids.
    pub const PUSH_MIDS: u32 = 22;
    /// Push to one room.
    pub const PUSH_ROOM: u32 = 24;
    /// Push to every connection.
    pub const PUSH_ALL: u32 = 26;
}

/// Who a push goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These connection keys.
    Keys(Vec<String>),
    /// Every connection of these users.
    Mids(Vec<i64>),
    /// Every member of this room.
    Room(String),
    /// Every connection.
    All,
}

/// One parsed publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Recipients.
    pub target: Target,
    /// Business operation code the clients see.
    pub op: u32,
    /// The payload, borrowed from the frame body.
    pub payload: &'a [u8],
}

/// Why a publish body was refused; the text is what the publisher is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body ended inside a fixed field or a length-prefixed item.
    #[error("body ends inside {0}")]
    Truncated(&'static str),
    /// A push to no keys or no users.
    #[error("no {0} given")]
    Empty(&'static str),
    /// A key or room over its limit, or empty.
    #[error("{what} of {len} bytes (allowed 1..={max})")]
    Length {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key or room that is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Not a publish operation.
    #[error("operation {0} is not a publish (20, 22, 24, 26)")]
    NotPublish(u32),
}

/// A cursor over a body that fails with the field being read.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BodyError> {
        if self.0.len() < n {
            return Err(BodyError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, BodyError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, BodyError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn text(&mut self, what: &'static str, max: usize) -> Result<String, BodyError> {
        let len = usize::from(self.u16(what)?);
        if len == 0 || len > max {
            return Err(BodyError::Length { what, len, max });
        }
        let b = self.take(len, what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| BodyError::NotUtf8(what))
    }
}

/// What a version-2 publish says besides its version-1 body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta<'a> {
    /// The publisher's message id (deduplicated, carried in version-2
    /// envelopes).
    pub id: Option<&'a str>,
    /// Seconds the message stays in history or inboxes.
    pub ttl: Option<u32>,
}

/// Splits a version-2 publish body into its prefix and the version-1 body
/// behind it.
pub fn parse_meta(body: &[u8]) -> Result<(Meta<'_>, &[u8]), BodyError> {
    let mut c = Cursor(body);
    let len = usize::from(c.u16("the message id length")?);
    if len > MAX_ID_LEN {
        return Err(BodyError::Length {
            what: "message id",
            len,
            max: MAX_ID_LEN,
        });
    }
    let id = c.take(len, "the message id")?;
    let id = std::str::from_utf8(id).map_err(|_| BodyError::NotUtf8("message id"))?;
    let ttl = c.u32("the TTL")?;
    let meta = Meta {
        id: (!id.is_empty()).then_some(id),
        ttl: (ttl != 0).then_some(ttl),
    };
    Ok((meta, c.0))
}

/// Parses the body of publisher operation `op`.
pub fn parse(op: u32, body: &[u8]) -> Result<Publish<'_>, BodyError> {
    let mut c = Cursor(body);
    let push_op = c.u32("the operation code")?;
    let target = match op {
        op::PUSH_ROOM => Target::Room(c.text("room", MAX_ROOM_LEN)?),
        op::PUSH_ALL => Target::All,
        op::PUSH_KEYS => {
            let n = c.u16("the key count")?;
            if n == 0 {
                return Err(BodyError::Empty("keys"));
            }
            // At most 65,535 entries, each at least 3 bytes of body already
            // present; no allocation is sized beyond what arrived.
            let mut keys = Vec::with_capacity(usize::from(n).min(c.0.len() / 3));
            for _ in 0..n {
                keys.push(c.text("key", MAX_KEY_LEN)?);
            }
            Target::Keys(keys)
        }
        op::PUSH_MIDS => {
            let n = usize::from(c.u16("the user count")?);
            if n == 0 {
                return Err(BodyError::Empty("mids"));
            }
            let raw = c.take(n * 8, "the user ids")?;
            Target::Mids(
                raw.chunks_exact(8)
                    .map(|b| i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            )
        }
        other => return Err(BodyError::NotPublish(other)),
    };
    Ok(Publish {
        target,
        op: push_op,
        payload: c.0,
    })
}

/// Appends the body of a publish of `payload` to `target` with business
/// operation `push_op`, and returns the publisher operation that carries it
/// (the inverse of `parse`; the load generator publishes with it).
///
/// # Panics
/// If more than 65,535 keys or mids, or a key or room over 65,535 bytes, are
/// given: the format cannot carry them (and the server refuses far less).
pub fn encode(dst: &mut bytes::BytesMut, target: &Target, push_op: u32, payload: &[u8]) -> u32 {
    use bytes::BufMut;
    let len16 = |n: usize| u16::try_from(n).expect("over 65,535 in one publish");
    dst.put_u32(push_op);
    let op = match target {
        Target::Room(room) => {
            dst.put_u16(len16(room.len()));
            dst.put_slice(room.as_bytes());
            op::PUSH_ROOM
        }
        Target::All => op::PUSH_ALL,
        Target::Keys(keys) => {
            dst.put_u16(len16(keys.len()));
            for k in keys {
                dst.put_u16(len16(k.len()));
                dst.put_slice(k.as_bytes());
            }
            op::PUSH_KEYS
        }
        Target::Mids(mids) => {
            dst.put_u16(len16(mids.len()));
            for m in mids {
                dst.put_i64(*m);
            }
            op::PUSH_MIDS
        }
    };
    dst.put_slice(payload);
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    #[test]
    fn every_target_round_trips() {
        for t in [
            Target::Room("live://1000".into()),
            Target::All,
            Target::Keys(vec!["a".into(), "key-2".into()]),
            Target::Mids(vec![1, -7, i64::MAX]),
        ] {
            let mut b = BytesMut::new();
            let op = encode(&mut b, &t, 1000, b"hello");
            let p = parse(op, &b).unwrap();
            assert_eq!((p.target, p.op, p.payload), (t, 1000, &b"hello"[..]));
        }
    }

    #[test]
    fn refuses_each_broken_rule() {
        let cases: &[(u32, &[u8], BodyError)] = &[
            (op::PUSH_ALL, b"\0\0\x03", BodyError::Truncated("the operation code")),
            (op::PUSH_ROOM, b"\0\0\x03\xe8\0", BodyError::Truncated("room")),
            (
                op::PUSH_ROOM,
                b"\0\0\x03\xe8\0\0",
                BodyError::Length {
                    what: "room",
                    len: 0,
                    max: MAX_ROOM_LEN,
                },
            ),
            (
                op::PUSH_ROOM,
                b"\0\0\x03\xe8\x01\x01",
                BodyError::Length {
                    what: "room",
                    len: 257,
                    max: MAX_ROOM_LEN,
                },
            ),
            (op::PUSH_ROOM, b"\0\0\x03\xe8\0\x05ab", BodyError::Truncated("room")),
            (op::PUSH_ROOM, b"\0\0\x03\xe8\0\x02\xff\xfe", BodyError::NotUtf8("room")),
            (op::PUSH_KEYS, b"\0\0\x03\xe8\0\0", BodyError::Empty("keys")),
            (
                op::PUSH_KEYS,
                b"\0\0\x03\xe8\xff\xff\0\x01a",
                BodyError::Truncated("key"),
            ),
            (
                op::PUSH_KEYS,
                b"\0\0\x03\xe8\0\x01\0\x81",
                BodyError::Length {
                    what: "key",
                    len: 129,
                    max: MAX_KEY_LEN,
                },
            ),
            (op::PUSH_MIDS, b"\0\0\x03\xe8\0\0", BodyError::Empty("mids")),
            (
                op::PUSH_MIDS,
                b"\0\0\x03\xe8\0\x02\0\0\0\0\0\0\0\x01",
                BodyError::Truncated("the user ids"),
            ),
            (4, b"\0\0\x03\xe8", BodyError::NotPublish(4)),
        ];
        for (op, b, want) in cases {
            assert_eq!(parse(*op, b).unwrap_err(), *want, "op {op} body {b:?}");
        }
    }

    proptest! {
        // Untrusted bytes: any body under any op parses or fails, never panics.
        #[test]
        fn never_panics(op in prop_oneof![Just(20u32), Just(22), Just(24), Just(26), any::<u32>()],
                        b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(op, &b);
        }
    }
}
