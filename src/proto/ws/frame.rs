//! WebSocket frames: parsing a client frame header from untrusted bytes,
//! unmasking, and encoding the frames the server sends (and, for the load
//! generator and tests, the masked frames a client sends).
//!
//! Pure code. `parse_header` follows the decoder contract: `Ok(None)` when
//! the header is not complete (nothing consumed), an error as soon as the
//! bytes present break a rule.
//!
//! ```text
//! byte 0: FIN | RSV1-3 | opcode      byte 1: MASK | len7
//! len7 = 126: u16 length follows; 127: u64 length (top bit clear)
//! then 4 mask bytes (client frames must be masked), then the payload
//! ```

use super::{close, opcode};
use bytes::{BufMut, Bytes, BytesMut};

/// A violation that ends the connection; each variant is one rule of RFC
/// 6455 and knows the close code the peer gets (`code`). The text is what
/// goes into the close frame's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// RSV1-3 set although no extension was negotiated (or RSV1 on a
    /// control frame or a continuation, which permessage-deflate forbids).
    #[error("reserved bits set (no extension negotiated)")]
    ReservedBits,
    /// A compressed message that does not inflate (permessage-deflate).
    #[error("compressed message is not valid deflate data")]
    BadCompression,
    /// An opcode RFC 6455 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame longer than 125 bytes.
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// A client frame without a mask.
    #[error("client frames must be masked")]
    Unmasked,
    /// A server frame with a mask (what a client reading a server refuses).
    #[error("server frames must not be masked")]
    Masked,
    /// A 64-bit length with its most significant bit set.
    #[error("64-bit length with the top bit set")]
    LengthTopBit,
    /// A message (all its fragments) over the connection's limit.
    #[error("message too big: {size} bytes, limit {max}")]
    TooBig {
        /// Bytes of the message so far, this frame included.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A continuation frame with no message started.
    #[error("continuation frame without a message")]
    ContinuationWithoutMessage,
    /// A new data frame while a fragmented message is unfinished.
    #[error("new message before the previous one ended")]
    MessageInsideMessage,
    /// A text message that is not UTF-8 (found as early as possible).
    #[error("text message is not UTF-8")]
    InvalidUtf8,
    /// A close payload of exactly one byte.
    #[error("close payload of one byte")]
    CloseOneByte,
    /// A close code that may not appear on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8.
    #[error("close reason is not UTF-8")]
    CloseReasonNotUtf8,
}

impl WsError {
    /// The close code the peer gets for this violation.
    pub fn code(&self) -> u16 {
        match self {
            WsError::TooBig { .. } => close::TOO_BIG,
            WsError::InvalidUtf8 | WsError::CloseReasonNotUtf8 | WsError::BadCompression => close::INVALID_DATA,
            _ => close::PROTOCOL,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last frame of the message.
    pub fin: bool,
    /// RSV1: a compressed message's first frame (permessage-deflate; the
    /// reader decides whether it may be set).
    pub rsv1: bool,
    /// Opcode.
    pub op: u8,
    /// Masking key (clients must mask).
    pub mask: [u8; 4],
    /// Payload length.
    pub len: u64,
    /// Header length in bytes.
    pub size: usize,
}

/// Who sent the frames being parsed: client frames must be masked, server
/// frames must not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A client (what the server reads).
    Client,
    /// A server (what a client, such as the load generator, reads).
    Server,
}

/// Parses a client frame header. `Ok(None)`: not enough bytes yet.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    parse_header_from(buf, Sender::Client)
}

/// Parses a frame header sent by `from`. `Ok(None)`: not enough bytes yet;
/// a server frame's header has no mask (`mask` is zero, `size` without it).
pub fn parse_header_from(buf: &[u8], from: Sender) -> Result<Option<Header>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    // RSV2 and RSV3 belong to no extension volley knows; RSV1 to
    // permessage-deflate, never on a control frame.
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && b0 & 0x08 != 0) {
        return Err(WsError::ReservedBits);
    }
    let op = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    match op {
        opcode::CONT | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin {
                return Err(WsError::FragmentedControl);
            }
            if b1 & 0x7f > 125 {
                return Err(WsError::ControlTooLong);
            }
        }
        op => return Err(WsError::ReservedOpcode(op)),
    }
    let masked = b1 & 0x80 != 0;
    match (from, masked) {
        (Sender::Client, false) => return Err(WsError::Unmasked),
        (Sender::Server, true) => return Err(WsError::Masked),
        _ => {}
    }
    let (len, at) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            let len = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            if len >> 63 != 0 {
                return Err(WsError::LengthTopBit);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if !masked {
        return Ok(Some(Header {
            fin,
            rsv1,
            op,
            mask: [0; 4],
            len,
            size: at,
        }));
    }
    let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
    Ok(Some(Header {
        fin,
        rsv1,
        op,
        mask: [m[0], m[1], m[2], m[3]],
        len,
        size: at + 4,
    }))
}

/// A server frame (FIN set, unmasked) around `payload`.
pub fn frame(op: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(10 + payload.len());
    put_header(&mut b, op, payload.len());
    b.put_slice(payload);
    b.freeze()
}

/// A FIN, unmasked data frame whose payload is a compressed message
/// (permessage-deflate: RSV1 set).
pub fn compressed_frame(op: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(10 + payload.len());
    b.put_u8(0x80 | 0x40 | op);
    put_len(&mut b, 0, payload.len());
    b.put_slice(payload);
    b.freeze()
}

/// Writes a FIN, unmasked frame header for `len` payload bytes.
pub fn put_header(b: &mut BytesMut, op: u8, len: usize) {
    b.put_u8(0x80 | op);
    put_len(b, 0, len);
}

fn put_len(b: &mut BytesMut, mask_bit: u8, len: usize) {
    if len < 126 {
        b.put_u8(mask_bit | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        b.put_u8(mask_bit | 126);
        b.put_u16(short);
    } else {
        b.put_u8(mask_bit | 127);
        b.put_u64(len as u64);
    }
}

/// A close frame with `code` and a reason cut to fit a control frame.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = Vec::with_capacity(2 + cut);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(opcode::CLOSE, &p)
}

/// A client frame: masked with `mask`, FIN as given. Clients must mask;
/// a fixed mask is fine on loopback (masking protects proxies' caches).
pub fn client_frame(fin: bool, op: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(14 + payload.len());
    b.put_u8((u8::from(fin) << 7) | op);
    put_len(&mut b, 0x80, payload.len());
    b.put_slice(&mask);
    let at = b.len();
    b.put_slice(payload);
    unmask(&mut b[at..], mask, 0);
    b.to_vec()
}

/// A close code a peer may send (RFC 6455 7.4.1 and the IANA registry as of
/// the RFC; 1004-1006 and 1015 must never be on the wire).
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// XORs `data` with `mask`, starting at mask offset `at`.
pub fn unmask(data: &mut [u8], mask: [u8; 4], at: usize) {
    let m = [mask[at % 4], mask[(at + 1) % 4], mask[(at + 2) % 4], mask[(at + 3) % 4]];
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn server_frames_use_minimal_lengths() {
        assert_eq!(&frame(opcode::BINARY, &[1; 125])[..2], &[0x82, 125]);
        assert_eq!(&frame(opcode::BINARY, &[1; 126])[..4], &[0x82, 126, 0, 126]);
        assert_eq!(
            &frame(opcode::BINARY, &[1; 65536])[..10],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        let c = close_frame(1002, &"é".repeat(100));
        assert_eq!(c.len(), 2 + 2 + 122, "reason cut on a char boundary within 125");
    }

    #[test]
    fn unmask_matches_bytewise_at_any_offset() {
        let mask = [1, 2, 3, 4];
        for at in 0..4 {
            for n in 0..40 {
                let mut fast: Vec<u8> = (0..n as u8).collect();
                let slow: Vec<u8> = fast.iter().enumerate().map(|(i, b)| b ^ mask[(i + at) % 4]).collect();
                unmask(&mut fast, mask, at);
                assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn header_rules_table() {
        let h = |b: &[u8]| parse_header(b);
        assert_eq!(h(&[0x82]), Ok(None));
        assert_eq!(h(&[0xA2, 0x80, 0, 0, 0, 0]), Err(WsError::ReservedBits), "RSV2");
        assert_eq!(h(&[0x92, 0x80, 0, 0, 0, 0]), Err(WsError::ReservedBits), "RSV3");
        assert_eq!(
            h(&[0xC9, 0x80, 0, 0, 0, 0]),
            Err(WsError::ReservedBits),
            "RSV1 on a ping"
        );
        assert!(
            h(&[0xC2, 0x80, 0, 0, 0, 0]).unwrap().unwrap().rsv1,
            "RSV1: the reader's to judge"
        );
        assert_eq!(h(&[0x83, 0x80, 0, 0, 0, 0]), Err(WsError::ReservedOpcode(3)));
        assert_eq!(h(&[0x09, 0x80]), Err(WsError::FragmentedControl));
        assert_eq!(h(&[0x89, 0xFE]), Err(WsError::ControlTooLong));
        assert_eq!(h(&[0x82, 0x01]), Err(WsError::Unmasked));
        assert_eq!(h(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0]), Err(WsError::LengthTopBit));
        assert_eq!(h(&[0x82, 0xFE, 0x01]), Ok(None), "16-bit length incomplete");
        let ok = h(&[0x02, 0xFE, 0x01, 0x00, 9, 8, 7, 6]).unwrap().unwrap();
        assert_eq!(
            (ok.fin, ok.op, ok.len, ok.size, ok.mask),
            (false, 2, 256, 8, [9, 8, 7, 6])
        );
        let server = frame(opcode::BINARY, &[5; 300]);
        let h = parse_header_from(&server, Sender::Server).unwrap().unwrap();
        assert_eq!((h.fin, h.op, h.len, h.size), (true, opcode::BINARY, 300, 4));
        assert_eq!(parse_header(&server), Err(WsError::Unmasked));
        let client = client_frame(true, opcode::BINARY, [1, 2, 3, 4], b"x");
        assert_eq!(parse_header_from(&client, Sender::Server), Err(WsError::Masked));
        assert_eq!(WsError::TooBig { size: 1, max: 0 }.code(), close::TOO_BIG);
        assert_eq!(WsError::InvalidUtf8.code(), close::INVALID_DATA);
        assert_eq!(WsError::Unmasked.code(), close::PROTOCOL);
    }

    proptest! {
        /// What a client encodes, the server's header parser reads back, at
        /// every length class, and every prefix of the header is "need more".
        #[test]
        fn client_frames_round_trip(fin: bool, op in prop::sample::select(vec![0u8, 1, 2]), mask: [u8; 4],
                                    payload in prop::collection::vec(any::<u8>(), 0..70_000)) {
            let f = client_frame(fin, op, mask, &payload);
            let h = parse_header(&f).unwrap().unwrap();
            prop_assert_eq!((h.fin, h.op, h.mask, h.len as usize), (fin, op, mask, payload.len()));
            prop_assert_eq!(h.size + payload.len(), f.len());
            for cut in 0..h.size {
                prop_assert_eq!(parse_header(&f[..cut]), Ok(None));
            }
            let mut body = f[h.size..].to_vec();
            unmask(&mut body, h.mask, 0);
            prop_assert_eq!(body, payload);
        }
    }
}
