//! Operator-facing counters: one `ShardStats` block per shard, written only by
//! its shard and read by anyone (the stats API runs on every shard).
//!
//! Every counter is a relaxed atomic on the writing shard's own cache lines,
//! so counting costs a plain add and never contends; a reader sees each value
//! a moment late, which is all a stats page needs.
//!
//! `CloseReason` names every way a connection ends; each has its own counter,
//! its own stable metric name, and (where the protocol can say it) a text sent
//! to the client in op 6 before the close.

use crate::proto::binary::DecodeError;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! close_reasons {
    ($($variant:ident => $name:literal, $notify:literal, $doc:literal;)*) => {
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

            /// Position in `ALL` (the counter index).
            pub fn index(self) -> usize {
                self as usize
            }

            /// Whether the client is told the reason (op 6) before the close.
            pub fn notifies_client(self) -> bool {
                match self { $(CloseReason::$variant => $notify,)* }
            }
        }
    };
}

close_reasons! {
    PeerClosed => "peer_closed", false, "The client closed its side (EOF).";
    ClientDisconnect => "client_disconnect", false, "The client sent op 6.";
    IoError => "io_error", false, "A socket error (reset, broken pipe).";
    HandshakeTimeout => "handshake_timeout", true, "No auth frame within the handshake timeout.";
    HeartbeatTimeout => "heartbeat_timeout", true, "No frame within the heartbeat deadline.";
    AuthRequired => "auth_required", true, "A frame other than auth arrived first.";
    BadAuth => "bad_auth", true, "The auth body was refused.";
    BadHeaderLength => "bad_header_length", true, "Header-length field not 16.";
    BadPacketLength => "bad_packet_length", true, "Packet-length field shorter than the header.";
    BodyTooLarge => "body_too_large", true, "Frame body over the configured limit.";
    UnsupportedVersion => "unsupported_version", true, "Protocol version not served.";
    BadBody => "bad_body", true, "A control body (room, accepts) was refused.";
    ProtocolError => "protocol_error", true, "Any other broken protocol rule.";
    SlowConsumer => "slow_consumer", true, "Outbound queue passed its byte limit.";
    Replaced => "replaced", true, "Another connection authenticated with the same key.";
    Shutdown => "shutdown", true, "The server is shutting down; reconnect elsewhere.";
    BadUpgrade => "bad_upgrade", false, "The WebSocket upgrade request was refused (HTTP 4xx sent).";
    WsClosed => "ws_closed", false, "The WebSocket client sent a close frame (answered).";
    WsProtocol => "ws_protocol_error", false, "A WebSocket framing rule was broken (close 1002).";
    WsInvalidData => "ws_invalid_utf8", false, "A WebSocket text message or close reason was not UTF-8 (close 1007).";
    WsTooBig => "ws_too_big", false, "A WebSocket message over the size limit (close 1009).";
    WsUnsupportedData => "ws_unsupported_data", false, "A text message on the binary protocol endpoint (close 1003).";
    BadApiKey => "bad_api_key", true, "A TCP publisher's auth did not carry the API key.";
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

/// Counters for one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Connections currently open (accepted and not yet closed).
    pub conns: AtomicU64,
    /// Connections that completed auth and are still open.
    pub authed: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Rooms with at least one member on this shard.
    pub rooms: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Messages published into this shard by the API (as first hop).
    pub published: AtomicU64,
    /// Frames queued to connections (replies and pushes).
    pub deliveries: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Write syscalls issued (deliveries / writes = coalescing factor).
    pub writes: AtomicU64,
    /// Frames dropped because a connection was closing or over its limit.
    pub dropped: AtomicU64,
    /// Frames from clients with an operation volley does not serve.
    pub unknown_ops: AtomicU64,
    /// Accept errors (EMFILE and the like).
    pub accept_errors: AtomicU64,
    /// Closes, indexed like `CloseReason::ALL`.
    pub closes: [AtomicU64; CloseReason::ALL.len()],
    /// TCP publisher connections currently open.
    pub publishers: AtomicU64,
    /// TCP publisher connections closed, indexed like `CloseReason::ALL`.
    pub publisher_closes: [AtomicU64; CloseReason::ALL.len()],
}

impl ShardStats {
    /// Adds `n` to `c`.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Counts one close.
    pub fn close(&self, r: CloseReason) {
        self.closes[r.index()].fetch_add(1, Relaxed);
    }

    /// Counts one TCP publisher close.
    pub fn publisher_close(&self, r: CloseReason) {
        self.publisher_closes[r.index()].fetch_add(1, Relaxed);
    }

    /// A plain copy for serialisation.
    pub fn snapshot(&self) -> StatsSnapshot {
        let by_reason = |counters: &[AtomicU64]| {
            CloseReason::ALL
                .iter()
                .zip(counters)
                .map(|(r, c)| (r.name(), c.load(Relaxed)))
                .collect()
        };
        StatsSnapshot {
            conns: self.conns.load(Relaxed),
            authed: self.authed.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            rooms: self.rooms.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            published: self.published.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            writes: self.writes.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            unknown_ops: self.unknown_ops.load(Relaxed),
            accept_errors: self.accept_errors.load(Relaxed),
            closes: by_reason(&self.closes),
            publishers: self.publishers.load(Relaxed),
            publisher_closes: by_reason(&self.publisher_closes),
        }
    }
}

/// Serialisable copy of `ShardStats` (see its fields for meaning).
#[derive(Debug, Default, Clone, Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub conns: u64,
    pub authed: u64,
    pub accepted: u64,
    pub rooms: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    pub published: u64,
    pub deliveries: u64,
    pub bytes_out: u64,
    pub writes: u64,
    pub dropped: u64,
    pub unknown_ops: u64,
    pub accept_errors: u64,
    pub closes: std::collections::BTreeMap<&'static str, u64>,
    pub publishers: u64,
    pub publisher_closes: std::collections::BTreeMap<&'static str, u64>,
}

impl StatsSnapshot {
    /// Sums shard snapshots into a total.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a StatsSnapshot>) -> StatsSnapshot {
        let mut t = StatsSnapshot::default();
        for s in all {
            t.conns += s.conns;
            t.authed += s.authed;
            t.accepted += s.accepted;
            t.rooms += s.rooms;
            t.frames_in += s.frames_in;
            t.bytes_in += s.bytes_in;
            t.published += s.published;
            t.deliveries += s.deliveries;
            t.bytes_out += s.bytes_out;
            t.writes += s.writes;
            t.dropped += s.dropped;
            t.unknown_ops += s.unknown_ops;
            t.accept_errors += s.accept_errors;
            for (k, v) in &s.closes {
                *t.closes.entry(k).or_default() += v;
            }
            t.publishers += s.publishers;
            for (k, v) in &s.publisher_closes {
                *t.publisher_closes.entry(k).or_default() += v;
            }
        }
        t
    }
}
