//! The goim v2 binary frame: decoding from untrusted bytes and encoding into
//! `BytesMut`.
//!
//! Pure code (sans-IO): no sockets, no clock, no runtime. It runs on whichever
//! shard owns the connection whose bytes it is given, and it never blocks.
//!
//! ```text
//! offset size field
//! 0      u32  packet length = 16 + body length   (big-endian, as all fields)
//! 4      u16  header length = 16                 (anything else: error)
//! 6      u16  protocol version                   (1 = goim, 2 = volley native)
//! 8      u32  operation
//! 12     u32  sequence (echoed in replies; 0 on server pushes)
//! 16     ...  body
//! ```
//!
//! Invariants:
//! - `decode` either consumes one whole frame or nothing; a short buffer is
//!   `Ok(None)`, never an error, so the caller can retry after the next read.
//! - A length field is checked against the caller's limit before anything is
//!   sized from it, and as early as the bytes that carry it have arrived: a
//!   hostile header fails after 4-6 bytes, not after a body that never ends.
//!
//! Deliberately not here: what an operation means (see `conn`), and op 9
//! batches, whose body is just more frames and is fed back into `decode`.

use bytes::{BufMut, BytesMut};

/// Size of the fixed header; also the only accepted header-length value.
pub const HEADER_LEN: usize = 16;

/// Operation codes shared with goim (`api/protocol/operation.go`).
pub mod op {
    /// Client heartbeat.
    pub const HEARTBEAT: u32 = 2;
    /// Heartbeat reply; body is the u32 online count of the connection's room.
    pub const HEARTBEAT_REPLY: u32 = 3;
    /// Client message (goim forwards it to its logic service).
    pub const SEND_MSG: u32 = 4;
    /// Reply to [`SEND_MSG`].
    pub const SEND_MSG_REPLY: u32 = 5;
    /// Disconnect: from the client, "close me"; from the server, the reason
    /// it is about to close the connection (UTF-8 text body).
    pub const DISCONNECT: u32 = 6;
    /// Authentication, the mandatory first frame (JSON body).
    pub const AUTH: u32 = 7;
    /// Reply to [`AUTH`].
    pub const AUTH_REPLY: u32 = 8;
    /// Raw batch: the body is a sequence of complete frames.
    pub const RAW: u32 = 9;
    /// Change room (body: the new room key, empty = leave).
    pub const CHANGE_ROOM: u32 = 12;
    /// Reply to [`CHANGE_ROOM`], body echoed.
    pub const CHANGE_ROOM_REPLY: u32 = 13;
    /// Add operation codes to the accepts filter (body: "1000,1001").
    pub const SUB: u32 = 14;
    /// Reply to [`SUB`], body echoed.
    pub const SUB_REPLY: u32 = 15;
    /// Remove operation codes from the accepts filter.
    pub const UNSUB: u32 = 16;
    /// Reply to [`UNSUB`], body echoed.
    pub const UNSUB_REPLY: u32 = 17;
}

/// Protocol version spoken by goim clients.
pub const VERSION_GOIM: u16 = 1;
/// Protocol version reserved for volley's native extensions.
pub const VERSION_NATIVE: u16 = 2;

/// One decoded frame, borrowing its body from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Protocol version from the header.
    pub ver: u16,
    /// Operation code.
    pub op: u32,
    /// Sequence number, echoed in replies.
    pub seq: u32,
    /// Body bytes (may be empty).
    pub body: &'a [u8],
}

/// Why a byte sequence is not a valid frame. Each variant is one broken rule
/// and carries the numbers that broke it, so the reason sent to the client and
/// the log line can say exactly what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header-length field is not 16.
    #[error("header length {got}, expected 16")]
    HeaderLength {
        /// The value received.
        got: u16,
    },
    /// The packet-length field is smaller than the header itself.
    #[error("packet length {got} is shorter than the 16-byte header")]
    PacketTooShort {
        /// The value received.
        got: u32,
    },
    /// The body announced by the packet length exceeds the configured limit.
    #[error("body of {got} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Announced body length.
        got: u64,
        /// Configured limit.
        max: usize,
    },
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(Some((frame, consumed)))` for a whole frame, `Ok(None)` when
/// more bytes are needed (nothing consumed), or `Err` as soon as the bytes
/// present break a rule. `max_body` bounds the body length.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    decode_with(buf, max_body, |_| max_body)
}

/// `decode` with a body limit per operation: `limit(op)`, which is at most
/// `most`. A body over `most` fails as soon as the length arrives; one
/// over its operation's limit as soon as the operation does (12 bytes in).
pub fn decode_with(
    buf: &[u8],
    most: usize,
    limit: impl Fn(u32) -> usize,
) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(len_bytes) = buf.get(0..4) else {
        return Ok(None);
    };
    let packet_len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if (packet_len as usize) < HEADER_LEN {
        return Err(DecodeError::PacketTooShort { got: packet_len });
    }
    let body_len = u64::from(packet_len) - HEADER_LEN as u64;
    if body_len > most as u64 {
        return Err(DecodeError::BodyTooLarge {
            got: body_len,
            max: most,
        });
    }
    if let Some(h) = buf.get(4..6) {
        let header_len = u16::from_be_bytes([h[0], h[1]]);
        if header_len as usize != HEADER_LEN {
            return Err(DecodeError::HeaderLength { got: header_len });
        }
    }
    if let Some(o) = buf.get(8..12) {
        let max = limit(u32::from_be_bytes([o[0], o[1], o[2], o[3]])).min(most);
        if body_len > max as u64 {
            return Err(DecodeError::BodyTooLarge { got: body_len, max });
        }
    }
    // `packet_len` fits in usize: it is at most HEADER_LEN + most.
    let packet_len = packet_len as usize;
    let Some(packet) = buf.get(..packet_len) else {
        return Ok(None);
    };
    let ver = u16::from_be_bytes([packet[6], packet[7]]);
    let op = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let seq = u32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
    Ok(Some((
        Frame {
            ver,
            op,
            seq,
            body: &packet[HEADER_LEN..],
        },
        packet_len,
    )))
}

/// Appends one frame to `dst`.
///
/// # Panics
/// If `body` is longer than `u32::MAX - 16` bytes; bodies come from our own
/// publish API, which bounds them far below that.
pub fn encode(dst: &mut BytesMut, ver: u16, op: u32, seq: u32, body: &[u8]) {
    let packet_len = u32::try_from(HEADER_LEN + body.len()).expect("frame body over 4 GiB");
    dst.reserve(HEADER_LEN + body.len());
    dst.put_u32(packet_len);
    dst.put_u16(HEADER_LEN as u16);
    dst.put_u16(ver);
    dst.put_u32(op);
    dst.put_u32(seq);
    dst.put_slice(body);
}

/// Encodes one frame into a fresh, exactly sized buffer.
pub fn encode_to_bytes(ver: u16, op: u32, seq: u32, body: &[u8]) -> bytes::Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + body.len());
    encode(&mut b, ver, op, seq, body);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(packet_len: u32, header_len: u16, ver: u16, op: u32, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&packet_len.to_be_bytes());
        v.extend_from_slice(&header_len.to_be_bytes());
        v.extend_from_slice(&ver.to_be_bytes());
        v.extend_from_slice(&op.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    type Expect = Result<Option<(u16, u32, u32, &'static [u8], usize)>, DecodeError>;

    /// (input, max_body, expected) — the table every fragmentation rerun uses.
    fn cases() -> Vec<(Vec<u8>, usize, Expect)> {
        vec![
            (frame_bytes(16, 16, 1, 2, 7, b""), 16, Ok(Some((1, 2, 7, b"", 16)))),
            (
                frame_bytes(21, 16, 1, 7, 1, b"hello"),
                16,
                Ok(Some((1, 7, 1, b"hello", 21))),
            ),
            (
                frame_bytes(32, 16, 1, 1000, 0, &[9u8; 16]),
                16,
                Ok(Some((1, 1000, 0, &[9u8; 16], 32))),
            ),
            (
                frame_bytes(33, 16, 1, 1000, 0, &[9u8; 17]),
                16,
                Err(DecodeError::BodyTooLarge { got: 17, max: 16 }),
            ),
            (
                frame_bytes(20, 20, 1, 2, 0, b"abcd"),
                16,
                Err(DecodeError::HeaderLength { got: 20 }),
            ),
            (
                frame_bytes(15, 16, 1, 2, 0, b""),
                16,
                Err(DecodeError::PacketTooShort { got: 15 }),
            ),
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                4096,
                Err(DecodeError::BodyTooLarge {
                    got: 1_195_725_856 - 16,
                    max: 4096,
                }),
            ),
            (
                frame_bytes(u32::MAX, 16, 1, 2, 0, b""),
                4096,
                Err(DecodeError::BodyTooLarge {
                    got: u64::from(u32::MAX) - 16,
                    max: 4096,
                }),
            ),
        ]
    }

    fn check(input: &[u8], max: usize, expect: &Expect) {
        let got = decode(input, max).map(|o| o.map(|(f, n)| (f.ver, f.op, f.seq, f.body.to_vec(), n)));
        let want = (*expect).map(|o| o.map(|(v, op, s, b, n)| (v, op, s, b.to_vec(), n)));
        assert_eq!(got, want, "input {input:?}");
    }

    #[test]
    fn table() {
        for (input, max, expect) in cases() {
            check(&input, max, &expect);
        }
    }

    /// Every prefix of a valid frame is "need more"; every prefix of an invalid
    /// one is "need more" until the offending field is complete, then the error.
    #[test]
    fn every_split_point() {
        for (input, max, expect) in cases() {
            for cut in 0..input.len() {
                let got = decode(&input[..cut], max);
                match (&expect, got) {
                    (_, Ok(None)) => {}
                    (Err(e), Err(g)) => assert_eq!(*e, g, "cut {cut} of {input:?}"),
                    (want, got) => panic!("cut {cut} of {input:?}: got {got:?}, want {want:?}"),
                }
            }
            // And two frames back to back decode one at a time.
            if let Ok(Some((_, _, _, _, n))) = expect {
                let mut two = input.clone();
                two.extend_from_slice(&input);
                let (_, used) = decode(&two, max).unwrap().unwrap();
                assert_eq!(used, n);
                check(&two[used..], max, &expect);
            }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(ver: u16, op: u32, seq: u32, body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut b = BytesMut::new();
            encode(&mut b, ver, op, seq, &body);
            let (f, n) = decode(&b, 600).unwrap().unwrap();
            prop_assert_eq!(n, b.len());
            prop_assert_eq!((f.ver, f.op, f.seq, f.body), (ver, op, seq, &body[..]));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..64) {
            if let Ok(Some((f, n))) = decode(&data, max) {
                prop_assert!(n <= data.len());
                prop_assert_eq!(f.body.len() + HEADER_LEN, n);
                prop_assert!(f.body.len() <= max);
            }
        }
    }
}
