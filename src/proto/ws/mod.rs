//! WebSocket (RFC 6455), server side, sans-IO.
//!
//! - `upgrade`: the HTTP/1.1 upgrade request, checked against the
//!   configured paths and origins, and the answers to it;
//! - `frame`: frame headers, unmasking, the frames the server sends, and the
//!   masked frames a client sends (the load generator and tests use those);
//! - `reader`: message assembly across frames and reads, with UTF-8 checks;
//!   returns one event at a time;
//! - `deflate`: permessage-deflate (RFC 7692): the offers and the answer,
//!   a message compressed once for every connection that negotiated it,
//!   a client's message inflated under a limit (not yet used by `session`);
//! - `session`: the policy on top — answer the upgrade, pong pings, echo on
//!   the echo endpoint, refuse text on the protocol endpoint, answer a
//!   close, and which reason and close code each violation gets.
//!
//! No sockets, no shard state, no clock: all of it runs on whichever shard
//! owns the connection, and is tested and fuzzed on its own. The connection
//! driver owns one `Session` per WebSocket connection and only moves bytes
//! between it, the socket and the shard.

pub mod deflate;
pub mod frame;
pub mod reader;
pub mod session;
pub mod upgrade;

pub use frame::{close_frame, frame, WsError};
pub use reader::{Event, Limits, Reader};
pub use session::Session;
pub use upgrade::{parse_upgrade, refusal, Upgrade, UpgradeError, UpgradeRules};

/// Frame opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONT: u8 = 0x0;
    /// Text message (UTF-8).
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close status codes used by the server.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (server shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Data the endpoint does not accept (e.g. text on a binary protocol).
    pub const UNSUPPORTED: u16 = 1003;
    /// No status code in the peer's close frame (never on the wire).
    pub const NO_STATUS: u16 = 1005;
    /// Invalid payload data (bad UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server condition.
    pub const INTERNAL: u16 = 1011;
    /// Service restart: the server is draining; reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Try again later (the server is at a limit).
    pub const TRY_AGAIN: u16 = 1013;
}
