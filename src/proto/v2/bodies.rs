//! Version 2's control bodies: the requests a client sends (join, leave,
//! read mark, ack, publish, token), parsed and bounded from untrusted bytes,
//! and the replies the server sends (join, leave, left).
//!
//! Pure code, used by the version-2 session on the connection's shard and
//! by clients (the load generator, tests). Every field is bounded before it
//! is kept.

use crate::proto::body::MAX_ROOM_LEN;
use serde::Deserialize;

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

/// Longest publisher message id, in bytes.
pub const MAX_ID_LEN: usize = 128;

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
