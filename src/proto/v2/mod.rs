//! Protocol version 2 (volley native): its operation codes and the push
//! envelope here; the control bodies (`bodies`) and the error replies
//! (`errors`), re-exported.
//!
//! Pure code (sans-IO), used by the session of a version-2 connection on the
//! shard that owns it, by the room owner that encodes a publication once for
//! every recipient, and by clients (the load generator, tests). Frames are the
//! goim frame of `binary` with version 2; docs/PROTOCOL.md is the contract.
//!
//! ```text
//! push body (op 44), big-endian:
//! offset size field
//! 0      u32  business operation (the publisher's)
//! 4      u8   kind: 1 room, 2 user, 3 direct (a key push or a push to all)
//! 5      u8   reserved, 0
//! 6      u16  room length R (0 unless kind 1)
//! 8      u64  offset (kind 1: the room offset; kind 2: the push's id, to
//!             acknowledge; kind 3: 0)
//! 16     u64  epoch (kind 1: the room's epoch; otherwise 0)
//! 24     u16  message id length M (the publisher's id; 0 = none)
//! 26     R    room (UTF-8)
//! 26+R   M    message id (UTF-8)
//! 26+R+M ...  payload
//! ```
//!
//! Control bodies are JSON objects (unknown fields ignored); epochs travel
//! in JSON as 16 lower-case hex digits, because JSON numbers are doubles in
//! most clients and an epoch is a full 64-bit value.
//!
//! Invariants: a decoder takes untrusted bytes and bounds every field
//! before storing it (room ≤ `body::MAX_ROOM_LEN`, message id ≤
//! `MAX_ID_LEN`); the envelope of one publication is identical for every
//! recipient, so it is encoded once and its bytes shared.

use super::binary::{self, VERSION_NATIVE};
use super::body::{MAX_ROOM_LEN, MAX_TOKEN_FRAME_BODY};
use bytes::{BufMut, Bytes, BytesMut};

mod bodies;
mod errors;

pub use bodies::*;
pub use errors::*;

/// Largest body a client frame of operation `op` (either version) may
/// have, with `[limits] max_body` = `max_body`: more for the frames that
/// carry a token (op 7 auth, op 54 token refresh).
pub fn frame_limit(op: u32, max_body: usize) -> usize {
    if op == binary::op::AUTH || op == op::TOKEN {
        max_body.max(MAX_TOKEN_FRAME_BODY)
    } else {
        max_body
    }
}

/// Operation codes of version 2 beyond those it shares with version 1
/// (2/3 heartbeat, 6 disconnect, 7/8 auth, 9 batch).
pub mod op {
    /// Join a room, optionally resuming from an offset (JSON body).
    pub const JOIN: u32 = 40;
    /// Reply to [`JOIN`] (JSON body).
    pub const JOIN_REPLY: u32 = 41;
    /// Leave a room (JSON body).
    pub const LEAVE: u32 = 42;
    /// Reply to [`LEAVE`] (JSON body).
    pub const LEAVE_REPLY: u32 = 43;
    /// A push (server → client): envelope, then payload.
    pub const PUSH: u32 = 44;
    /// Acknowledge user pushes: they leave the user's inbox (JSON body).
    pub const ACK: u32 = 46;
    /// Reply to [`ACK`] (JSON body).
    pub const ACK_REPLY: u32 = 47;
    /// Mark a room read up to an offset (JSON body).
    pub const READ: u32 = 48;
    /// Reply to [`READ`] (JSON body).
    pub const READ_REPLY: u32 = 49;
    /// An error answering the request with the same sequence (JSON body);
    /// the connection stays open.
    pub const ERROR: u32 = 50;
    /// Publish to a room (client → server; binary body, `parse_publish`).
    pub const PUBLISH: u32 = 52;
    /// Reply to [`PUBLISH`]: the offset the message got (JSON body).
    pub const PUBLISH_REPLY: u32 = 53;
    /// A new token for the connection (JSON body `{"token"}`).
    pub const TOKEN: u32 = 54;
    /// Reply to [`TOKEN`]: the new expiry (JSON body).
    pub const TOKEN_REPLY: u32 = 55;
    /// Server → client: the token expires soon, send a new one with
    /// [`TOKEN`] (JSON body `{"exp"}`).
    pub const REFRESH: u32 = 56;
    /// Server → client: who joined and left a watched room in the last
    /// second, and its member count (JSON body).
    pub const PRESENCE: u32 = 58;
}

/// Size of the envelope before its room, id and payload.
pub const ENVELOPE_LEN: usize = 26;

/// What a push was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A room: the envelope carries the room, its offset and epoch.
    Room = 1,
    /// A user id (every connection of the user).
    User = 2,
    /// A connection key, or every connection.
    Direct = 3,
}

/// A push as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The publisher's business operation code.
    pub op: u32,
    /// What it was sent to.
    pub kind: Kind,
    /// The room (kind `Room`; empty otherwise).
    pub room: &'a str,
    /// The room offset (kind `Room`), the push's id to acknowledge (kind
    /// `User`), or 0.
    pub offset: u64,
    /// The room's epoch (kind `Room`; 0 otherwise).
    pub epoch: u64,
    /// The publisher's message id (empty: none given).
    pub id: &'a str,
    /// The publisher's payload.
    pub payload: &'a [u8],
}

/// A push body that breaks the envelope's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Fewer bytes than the fixed part, or than the lengths announce.
    #[error("push body of {got} bytes, needs {need}")]
    Short {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A kind byte other than 1, 2, 3.
    #[error("unknown push kind {0}")]
    Kind(u8),
    /// Room or id not UTF-8, or over its limit.
    #[error("bad {0} in push envelope")]
    Field(&'static str),
}

impl Envelope<'_> {
    /// The whole frame (version 2, op 44, sequence 0).
    pub fn frame(&self) -> Bytes {
        let body_len = ENVELOPE_LEN + self.room.len() + self.id.len() + self.payload.len();
        let mut b = BytesMut::with_capacity(binary::HEADER_LEN + body_len);
        b.put_u32((binary::HEADER_LEN + body_len) as u32);
        b.put_u16(binary::HEADER_LEN as u16);
        b.put_u16(VERSION_NATIVE);
        b.put_u32(op::PUSH);
        b.put_u32(0);
        b.put_u32(self.op);
        b.put_u8(self.kind as u8);
        b.put_u8(0);
        b.put_u16(self.room.len() as u16);
        b.put_u64(self.offset);
        b.put_u64(self.epoch);
        b.put_u16(self.id.len() as u16);
        b.put_slice(self.room.as_bytes());
        b.put_slice(self.id.as_bytes());
        b.put_slice(self.payload);
        b.freeze()
    }
}

/// Reads the envelope of a push body (op 44).
pub fn decode_push(body: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let short = |need| EnvelopeError::Short { got: body.len(), need };
    if body.len() < ENVELOPE_LEN {
        return Err(short(ENVELOPE_LEN));
    }
    let u16_at = |i: usize| usize::from(u16::from_be_bytes([body[i], body[i + 1]]));
    let u64_at = |i: usize| u64::from_be_bytes(body[i..i + 8].try_into().expect("8 bytes, length checked"));
    let kind = match body[4] {
        1 => Kind::Room,
        2 => Kind::User,
        3 => Kind::Direct,
        k => return Err(EnvelopeError::Kind(k)),
    };
    let (room_len, id_len) = (u16_at(6), u16_at(24));
    let need = ENVELOPE_LEN + room_len + id_len;
    if body.len() < need {
        return Err(short(need));
    }
    let text = |r: std::ops::Range<usize>, max, what| {
        std::str::from_utf8(&body[r])
            .ok()
            .filter(|s| s.len() <= max)
            .ok_or(EnvelopeError::Field(what))
    };
    let room = text(ENVELOPE_LEN..ENVELOPE_LEN + room_len, MAX_ROOM_LEN, "room")?;
    let id = text(ENVELOPE_LEN + room_len..need, MAX_ID_LEN, "message id")?;
    Ok(Envelope {
        op: u32::from_be_bytes(body[..4].try_into().expect("4 bytes, length checked")),
        kind,
        room,
        offset: u64_at(8),
        epoch: u64_at(16),
        id,
        payload: &body[need..],
    })
}

#[cfg(test)]
mod tests;
