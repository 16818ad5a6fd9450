//! `CloseReason`: every way a connection (client or TCP publisher) ends, as
//! one table: its stable name (stats, logs, the op 6 body), whether the peer
//! is told, the WebSocket close code that goes with it, and its meaning.
//!
//! Pure data, used by every shard. The names are part of the protocol
//! (docs/PROTOCOL.md lists them) and of the metrics (one counter each):
//! renaming one is a breaking change.
//!
//! ```text
//! op 6 body:  "<name>"  or  "<name>: <detail>"
//! ```

use super::binary::DecodeError;
use super::ws::close;

macro_rules! close_reasons {
    ($($variant:ident => $name:literal, $notify:literal, $ws:expr, $doc:literal;)*) => {
        /// Why a connection was closed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CloseReason {
            $(#[doc = $doc] $variant,)*
        }

        impl CloseReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [CloseReason] = &[$(CloseReason::$variant,)*];

            /// Stable snake_case name used in stats, logs and the op 6 body.
            pub fn name(self) -> &'static str {
                match self { $(CloseReason::$variant => $name,)* }
            }

            /// Whether the peer is told the reason (op 6) before the close.
            pub fn notifies_client(self) -> bool {
                match self { $(CloseReason::$variant => $notify,)* }
            }

            /// The close code a WebSocket peer gets; `None`: no close frame
            /// (the peer is gone, was already answered, or the close frame is
            /// the answer to its own).
            pub fn ws_close_code(self) -> Option<u16> {
                match self { $(CloseReason::$variant => $ws,)* }
            }
        }
    };
}

close_reasons! {
    PeerClosed => "peer_closed", false, None, "The client closed its side (EOF).";
    ClientDisconnect => "client_disconnect", false, Some(close::NORMAL), "The client sent op 6.";
    IoError => "io_error", false, None, "A socket error (reset, broken pipe).";
    HandshakeTimeout => "handshake_timeout", true, Some(close::NORMAL), "No auth frame within the handshake timeout.";
    HeartbeatTimeout => "heartbeat_timeout", true, Some(close::NORMAL), "No frame within the heartbeat deadline.";
    AuthRequired => "auth_required", true, Some(close::POLICY), "A frame other than auth arrived first.";
    BadAuth => "bad_auth", true, Some(close::POLICY), "The auth body was refused.";
    BadHeaderLength => "bad_header_length", true, Some(close::PROTOCOL), "Header-length field not 16.";
    BadPacketLength => "bad_packet_length", true, Some(close::PROTOCOL), "Packet-length field shorter than the header.";
    BodyTooLarge => "body_too_large", true, Some(close::TOO_BIG), "Frame body over the configured limit.";
    UnsupportedVersion => "unsupported_version", true, Some(close::PROTOCOL), "Protocol version not served.";
    BadBody => "bad_body", true, Some(close::PROTOCOL), "A control body (room, accepts) was refused.";
    ProtocolError => "protocol_error", true, Some(close::PROTOCOL), "Any other broken protocol rule.";
    SlowConsumer => "slow_consumer", true, Some(close::POLICY), "Outbound queue passed its byte limit.";
    Replaced => "replaced", true, Some(close::NORMAL), "Another connection authenticated with the same key.";
    Shutdown => "shutdown", true, Some(close::GOING_AWAY), "The server is shutting down; reconnect elsewhere.";
    Restart => "restart", true, Some(close::SERVICE_RESTART), "The server is draining (`volley drain`): reconnect, elsewhere if there is an elsewhere; version 2 resumes from its offsets.";
    BadUpgrade => "bad_upgrade", false, None, "The WebSocket upgrade request was refused (HTTP 4xx sent).";
    WsClosed => "ws_closed", false, None, "The WebSocket client sent a close frame (answered).";
    WsProtocol => "ws_protocol_error", false, Some(close::PROTOCOL), "A WebSocket framing rule was broken (close 1002).";
    WsInvalidData => "ws_invalid_utf8", false, Some(close::INVALID_DATA), "A WebSocket text message or close reason was not UTF-8 (close 1007).";
    WsTooBig => "ws_too_big", false, Some(close::TOO_BIG), "A WebSocket message over the size limit (close 1009).";
    WsUnsupportedData => "ws_unsupported_data", false, Some(close::UNSUPPORTED), "A text message on the binary protocol endpoint (close 1003).";
    TokenRequired => "token_required", true, Some(close::POLICY), "Auth is on and the auth body carried no token.";
    TokenMalformed => "token_malformed", true, Some(close::POLICY), "The token is not a JWT, or its claims are not volley's.";
    TokenAlgRefused => "token_alg_refused", true, Some(close::POLICY), "The token's algorithm is none or not configured.";
    TokenBadSignature => "token_bad_signature", true, Some(close::POLICY), "No configured key verifies the token's signature.";
    TokenExpired => "token_expired", true, Some(close::POLICY), "The token expired (at auth, or not refreshed in time).";
    TokenNotYetValid => "token_not_yet_valid", true, Some(close::POLICY), "The token's nbf has not been reached.";
    RoomNotAllowed => "room_not_allowed", true, Some(close::POLICY), "A version-1 auth or op 12 named a room the token does not allow.";
    ConnLimit => "conn_limit", true, Some(close::TRY_AGAIN), "The server holds [limits] max_conns connections.";
    IpConnLimit => "ip_conn_limit", true, Some(close::POLICY), "The client's IP holds [limits] max_conns_per_ip connections.";
    IpRateLimit => "ip_rate_limit", true, Some(close::TRY_AGAIN), "The client's IP passed [limits] conn_rate_per_ip attempts this second.";
    UserConnLimit => "user_conn_limit", true, Some(close::POLICY), "The user holds [limits] max_conns_per_user connections (policy refuse: the new one; close-oldest: the oldest).";
    // A publisher's reason; clients never get it.
    BadApiKey => "bad_api_key", true, Some(close::POLICY), "A TCP publisher's auth did not carry the API key.";
    Unavailable => "unavailable", true, Some(close::TRY_AGAIN), "Cluster mode: a TCP publisher's room publish needs a Redis instance that is unreachable; nothing was published.";
    Lagged => "lagged", true, Some(close::TRY_AGAIN), "Cluster mode: the node missed messages of a room the connection joined (its Redis subscription was down) that Redis no longer holds; resuming tells which.";
    IpHandshakeLimit => "ip_handshake_limit", true, Some(close::TRY_AGAIN), "The client's IP holds [limits] max_handshakes_per_ip connections that have not authenticated yet.";
    KeyInUse => "key_in_use", true, Some(close::POLICY), "Auth is on and a connection of another user holds the key this one asked for.";
    KeyNotAllowed => "key_not_allowed", true, Some(close::POLICY), "Auth is on and the token's keys claim does not list the key the auth body asked for.";
}

impl CloseReason {
    /// The reason named `name` (as `name()` spells it).
    pub fn from_name(name: &str) -> Option<CloseReason> {
        CloseReason::ALL.iter().copied().find(|r| r.name() == name)
    }

    /// Position in `ALL` (the counter index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The text the peer is told: `<name>` or `<name>: <detail>`.
    pub fn goodbye(self, detail: &str) -> String {
        if detail.is_empty() {
            self.name().to_string()
        } else {
            format!("{}: {detail}", self.name())
        }
    }

    /// The HTTP status a WebSocket client refused before its upgrade gets
    /// (the connection limits, checked at accept); `None` for the rest.
    pub fn http_status(self) -> Option<&'static str> {
        match self {
            CloseReason::ConnLimit => Some("503 Service Unavailable"),
            CloseReason::IpConnLimit | CloseReason::IpRateLimit | CloseReason::IpHandshakeLimit => {
                Some("429 Too Many Requests")
            }
            _ => None,
        }
    }

    /// An ordinary end of a connection's life, which a server of many
    /// connections sees all the time (the peer left, went silent, its
    /// network failed, it reconnected with its key, the server stopped):
    /// logged at debug level. Every other close is logged at info.
    pub fn is_quiet(self) -> bool {
        matches!(
            self,
            CloseReason::PeerClosed
                | CloseReason::ClientDisconnect
                | CloseReason::IoError
                | CloseReason::HeartbeatTimeout
                | CloseReason::HandshakeTimeout
                | CloseReason::Replaced
                | CloseReason::Shutdown
                | CloseReason::Restart
                | CloseReason::WsClosed
        )
    }

    /// The WebSocket reason for a framing violation, by the close code the
    /// codec chose.
    pub fn for_ws_code(code: u16) -> CloseReason {
        match code {
            close::INVALID_DATA => CloseReason::WsInvalidData,
            close::TOO_BIG => CloseReason::WsTooBig,
            _ => CloseReason::WsProtocol,
        }
    }
}

impl From<&DecodeError> for CloseReason {
    fn from(e: &DecodeError) -> Self {
        match e {
            DecodeError::HeaderLength { .. } => CloseReason::BadHeaderLength,
            DecodeError::PacketTooShort { .. } => CloseReason::BadPacketLength,
            DecodeError::BodyTooLarge { .. } => CloseReason::BodyTooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_goodbyes_carry_them() {
        let mut seen = std::collections::HashSet::new();
        for r in CloseReason::ALL {
            assert!(seen.insert(r.name()), "{} twice", r.name());
            assert!(r
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
            assert_eq!(CloseReason::ALL[r.index()], *r);
        }
        assert_eq!(CloseReason::SlowConsumer.goodbye(""), "slow_consumer");
        assert_eq!(CloseReason::Replaced.goodbye("x"), "replaced: x");
        assert_eq!(CloseReason::for_ws_code(1007), CloseReason::WsInvalidData);
        assert_eq!(CloseReason::Shutdown.ws_close_code(), Some(close::GOING_AWAY));
    }
}
