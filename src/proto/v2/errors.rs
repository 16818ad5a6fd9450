//! Version 2's numbered errors (op 50): the code, name and text of each
//! refusal a connection is answered with instead of being closed
//! (docs/PROTOCOL.md, *Errors*).
//!
//! Pure code, used by the version-2 session on the connection's shard.

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
