//! Protocol version 2 (volley native): its operation codes, the push
//! envelope, the control bodies, and the error replies.
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
use serde::Deserialize;

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
/// Longest publisher message id, in bytes.
pub const MAX_ID_LEN: usize = 128;

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

/// An epoch as JSON carries it: 16 lower-case hex digits.
pub fn fmt_epoch(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// An epoch from its JSON text; `None` unless exactly 16 hex digits.
pub fn parse_epoch(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// Numbered errors a version-2 connection is answered with (op 50) instead
/// of being closed: the request is refused, the connection goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// A body that does not parse, or a field over its limit.
    BadRequest,
    /// An operation version 2 does not have.
    UnknownOp,
    /// One more room would pass `[client] max_rooms`.
    RoomLimit,
    /// The room is joined already, or its join is being answered.
    AlreadyJoined,
    /// Leave of a room that is not joined.
    NotJoined,
    /// Leave of a room whose join has not been answered yet.
    JoinPending,
    /// An acknowledgement (or read mark) from a connection without a user.
    NoUser,
    /// The room already has `[history] max_marks` read marks of other users.
    MarkLimit,
    /// The connection's token does not allow joining or publishing to the
    /// room.
    Forbidden,
    /// More publishes than `[client] publish_rate` allows.
    RateLimited,
    /// A publish payload over `[client] max_publish_payload`.
    PayloadTooLarge,
    /// A refresh token that does not verify, or names another user.
    TokenRefused,
    /// Cluster mode: the Redis instance a join or publish needs is
    /// unreachable; nothing was done, and the request may be sent again.
    Unavailable,
    /// One more pattern would pass `[client] max_patterns`, or the shard's
    /// patterns hold `[client] pattern_memory`.
    PatternLimit,
}

impl ErrorCode {
    /// Every code, for the documentation test.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::RoomLimit,
        ErrorCode::AlreadyJoined,
        ErrorCode::NotJoined,
        ErrorCode::JoinPending,
        ErrorCode::NoUser,
        ErrorCode::MarkLimit,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TokenRefused,
        ErrorCode::Unavailable,
        ErrorCode::PatternLimit,
    ];

    /// Position in `ALL` (the counter index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The number clients switch on.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::BadRequest => 4000,
            ErrorCode::UnknownOp => 4001,
            ErrorCode::RoomLimit => 4002,
            ErrorCode::AlreadyJoined => 4003,
            ErrorCode::NotJoined => 4004,
            ErrorCode::JoinPending => 4005,
            ErrorCode::NoUser => 4006,
            ErrorCode::MarkLimit => 4007,
            ErrorCode::Forbidden => 4008,
            ErrorCode::RateLimited => 4009,
            ErrorCode::PayloadTooLarge => 4010,
            ErrorCode::TokenRefused => 4011,
            ErrorCode::Unavailable => 4012,
            ErrorCode::PatternLimit => 4013,
        }
    }

    /// Its stable name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::JoinPending => "join_pending",
            ErrorCode::NoUser => "no_user",
            ErrorCode::MarkLimit => "mark_limit",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TokenRefused => "token_refused",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::PatternLimit => "pattern_limit",
        }
    }

    /// The op 50 body: `{"code":4002,"reason":"room_limit","message":"..."}`.
    pub fn body(self, message: &str) -> Vec<u8> {
        serde_json::json!({"code": self.code(), "reason": self.name(), "message": message})
            .to_string()
            .into_bytes()
    }
}

/// A join request (op 40), parsed and bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The room (or room pattern).
    pub room: String,
    /// Resume after this offset of this epoch: replay what came since.
    pub resume: Option<Resume>,
    /// Send presence events (op 58) for the room.
    pub presence: bool,
}

/// Where a client left a room: the last offset it has, and of which epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The last offset the client received.
    pub offset: u64,
    /// The epoch that offset belongs to.
    pub epoch: u64,
}

/// A version-2 control body that is refused (answered with `BadRequest`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not a JSON object of the expected shape.
    #[error("body is not the expected JSON object: {0}")]
    Json(String),
    /// The room is missing, empty or over `MAX_ROOM_LEN` bytes.
    #[error("`room` must be 1 to {MAX_ROOM_LEN} bytes")]
    Room,
    /// `offset` without `epoch` or the other way round, or an epoch that
    /// is not 16 hex digits.
    #[error("`offset` and `epoch` (16 hex digits) go together")]
    Resume,
    /// No ids, or more than `MAX_ACK_IDS`.
    #[error("`ids` must hold 1 to {MAX_ACK_IDS} push ids")]
    Ids,
    /// A publish body (op 52) that breaks its layout.
    #[error("publish body: {0}")]
    Publish(&'static str),
}

#[derive(Deserialize)]
struct JoinJson {
    room: String,
    offset: Option<u64>,
    epoch: Option<String>,
    #[serde(default)]
    presence: bool,
}

#[derive(Deserialize)]
struct LeaveJson {
    room: String,
}

#[derive(Deserialize)]
struct ReadJson {
    room: String,
    offset: u64,
}

/// Parses a read mark body: `{"room":"live://1","offset":57}`.
pub fn parse_read(body: &[u8]) -> Result<(String, u64), BodyError> {
    let r: ReadJson = json(body)?;
    Ok((room(r.room)?, r.offset))
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, BodyError> {
    // serde would also take a struct as a JSON array; the protocol says object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BodyError::Json("expected a JSON object".into()));
    }
    serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))
}

fn room(r: String) -> Result<String, BodyError> {
    if r.is_empty() || r.len() > MAX_ROOM_LEN {
        return Err(BodyError::Room);
    }
    Ok(r)
}

/// Parses a join body: `{"room":"live://1"}` or, to resume,
/// `{"room":"live://1","offset":41,"epoch":"9f86d081884c7d65"}`.
pub fn parse_join(body: &[u8]) -> Result<Join, BodyError> {
    let j: JoinJson = json(body)?;
    let resume = match (j.offset, j.epoch) {
        (None, None) => None,
        (Some(offset), Some(e)) => Some(Resume {
            offset,
            epoch: parse_epoch(&e).ok_or(BodyError::Resume)?,
        }),
        _ => return Err(BodyError::Resume),
    };
    Ok(Join {
        room: room(j.room)?,
        resume,
        presence: j.presence,
    })
}

/// Most push ids one acknowledgement may carry.
pub const MAX_ACK_IDS: usize = 1000;

#[derive(Deserialize)]
struct AckJson {
    ids: Vec<u64>,
}

/// Parses an acknowledgement body: `{"ids":[281474976710657, ...]}` (1 to
/// `MAX_ACK_IDS` push ids).
pub fn parse_ack(body: &[u8]) -> Result<Vec<u64>, BodyError> {
    let ids = json::<AckJson>(body)?.ids;
    if ids.is_empty() || ids.len() > MAX_ACK_IDS {
        return Err(BodyError::Ids);
    }
    Ok(ids)
}

/// A client publish (op 52), borrowed from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPublish<'a> {
    /// Business operation code.
    pub op: u32,
    /// The room.
    pub room: &'a str,
    /// The client's message id (empty: none), for deduplication.
    pub id: &'a str,
    /// The payload.
    pub payload: &'a [u8],
}

/// Size of a publish body before its room, id and payload.
pub const PUBLISH_HEAD_LEN: usize = 8;

/// Parses a publish body (op 52), big-endian: `u32 op, u16 room length,
/// u16 id length, room, id, payload`.
pub fn parse_publish(body: &[u8]) -> Result<ClientPublish<'_>, BodyError> {
    if body.len() < PUBLISH_HEAD_LEN {
        return Err(BodyError::Publish("shorter than its 8-byte head"));
    }
    let room_len = usize::from(u16::from_be_bytes([body[4], body[5]]));
    let id_len = usize::from(u16::from_be_bytes([body[6], body[7]]));
    let need = PUBLISH_HEAD_LEN + room_len + id_len;
    if body.len() < need {
        return Err(BodyError::Publish("room and id lengths pass the body's end"));
    }
    if room_len == 0 || room_len > MAX_ROOM_LEN {
        return Err(BodyError::Room);
    }
    if id_len > MAX_ID_LEN {
        return Err(BodyError::Publish("message id over 128 bytes"));
    }
    let text = |r: std::ops::Range<usize>| {
        std::str::from_utf8(&body[r]).map_err(|_| BodyError::Publish("room or id not UTF-8"))
    };
    Ok(ClientPublish {
        op: u32::from_be_bytes(body[..4].try_into().expect("4 bytes, length checked")),
        room: text(PUBLISH_HEAD_LEN..PUBLISH_HEAD_LEN + room_len)?,
        id: text(PUBLISH_HEAD_LEN + room_len..need)?,
        payload: &body[need..],
    })
}

/// Encodes a publish body (clients: the load generator, tests).
pub fn publish_body(op: u32, room: &str, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(PUBLISH_HEAD_LEN + room.len() + id.len() + payload.len());
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&(room.len() as u16).to_be_bytes());
    b.extend_from_slice(&(id.len() as u16).to_be_bytes());
    b.extend_from_slice(room.as_bytes());
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(payload);
    b
}

#[derive(Deserialize)]
struct TokenJson {
    token: String,
}

/// Parses a token body (op 54): `{"token":"eyJ..."}`.
pub fn parse_token(body: &[u8]) -> Result<String, BodyError> {
    Ok(json::<TokenJson>(body)?.token)
}

/// Parses a leave body: `{"room":"live://1"}`.
pub fn parse_leave(body: &[u8]) -> Result<String, BodyError> {
    room(json::<LeaveJson>(body)?.room)
}

/// Why a resume could not be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecovered {
    /// The room's history was lost (its epoch is not the client's).
    EpochChanged,
    /// History no longer reaches back to the client's offset.
    HistoryGone,
    /// The client's offset is beyond the room's last one.
    OffsetAhead,
    /// What the client missed is more than `[limits] replay_limit` bytes:
    /// fetch it with `GET /v1/history` instead.
    ReplayTooLarge,
}

impl Unrecovered {
    /// Its name in the join reply's `reason`.
    pub fn name(self) -> &'static str {
        match self {
            Unrecovered::EpochChanged => "epoch_changed",
            Unrecovered::HistoryGone => "history_gone",
            Unrecovered::OffsetAhead => "offset_ahead",
            Unrecovered::ReplayTooLarge => "replay_too_large",
        }
    }
}

/// The join reply body (op 41). `recovered` is present only for a resume:
/// true when every message after the client's offset follows the reply;
/// false (with `reason`) when none is replayed. `unread` only for a
/// connection with a user: the room's newest offset minus the user's mark.
pub fn join_reply(
    room: &str,
    epoch: u64,
    offset: u64,
    resume: Option<Result<(), Unrecovered>>,
    unread: Option<u64>,
) -> Vec<u8> {
    let mut v = serde_json::json!({"room": room, "epoch": fmt_epoch(epoch), "offset": offset});
    if let Some(n) = unread {
        v["unread"] = n.into();
    }
    match resume {
        None => {}
        Some(Ok(())) => v["recovered"] = true.into(),
        Some(Err(why)) => {
            v["recovered"] = false.into();
            v["reason"] = why.name().into();
        }
    }
    v.to_string().into_bytes()
}

/// The join reply body (op 41) of a pattern: no offset, since a pattern
/// spans rooms (each push carries its room's).
pub fn pattern_join_reply(pattern: &str) -> Vec<u8> {
    serde_json::json!({"room": pattern, "pattern": true})
        .to_string()
        .into_bytes()
}

/// The leave reply body (op 43).
pub fn leave_reply(room: &str) -> Vec<u8> {
    serde_json::json!({ "room": room }).to_string().into_bytes()
}

/// The body of an op 43 the server sends unasked (sequence 0): the
/// connection is no longer in `room` (a room or pattern), for `reason`.
pub fn left_body(room: &str, reason: &str) -> Vec<u8> {
    serde_json::json!({ "room": room, "reason": reason })
        .to_string()
        .into_bytes()
}

/// The auth reply body of a version-2 connection (op 8): its key, whether
/// chosen by the client or assigned by the server, and its user id.
pub fn auth_reply(key: &str, mid: i64) -> Vec<u8> {
    serde_json::json!({"key": key, "mid": mid}).to_string().into_bytes()
}

#[cfg(test)]
mod tests;
