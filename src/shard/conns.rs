//! `Conn`: one client connection's record (in the shard's slab, addressed by
//! `ConnRef` = slot + generation), and `Transport`, the wire it speaks.
//!
//! Plain data owned by one shard; `lifecycle` creates, closes and removes
//! records, the driver (`conn::driver`) reads the queue and close mark.
//! The record is the biggest thing an idle connection costs us, so every
//! field says why it is there (and a unit test bounds its size).

use super::outbound::Outbound;
use crate::config::Config;
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::ws;
use bytes::Bytes;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

/// Which wire a connection speaks, and how far its WebSocket handshake got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Raw TCP: protocol frames back to back.
    Tcp,
    /// WebSocket, HTTP upgrade not yet answered: nothing framed may be sent.
    WsUpgrading,
    /// WebSocket carrying the protocol, one frame (or op 9 batch) per message.
    Ws,
    /// WebSocket echo endpoint (conformance testing): no protocol, no pushes.
    WsEcho,
}

impl Transport {
    /// The upgrade is done: WebSocket frames flow.
    pub fn websocket_open(self) -> bool {
        matches!(self, Transport::Ws | Transport::WsEcho)
    }

    /// A protocol frame in this connection's wire form (one binary message
    /// on WebSocket).
    pub fn frame(self, ver: u16, op: u32, seq: u32, body: &[u8]) -> Bytes {
        let frame = binary::encode_to_bytes(ver, op, seq, body);
        if self == Transport::Ws {
            ws::frame(ws::opcode::BINARY, &frame)
        } else {
            frame
        }
    }

    /// Unwritten bytes a connection may hold before it is a slow consumer. An
    /// echo connection must hold the largest message it takes twice over (one
    /// being written, one echoed behind it).
    pub fn outbound_limit(self, cfg: &Config) -> usize {
        if self == Transport::WsEcho {
            cfg.limits.outbound_limit.max(2 * cfg.ws.echo_max_message + 64)
        } else {
            cfg.limits.outbound_limit
        }
    }
}

/// One connection's record, reachable by delivery code through its `ConnRef`.
#[derive(Debug)]
pub struct Conn {
    /// Generation of this slab slot (see `ConnRef`).
    pub(super) gen: u32,
    /// The driver task's waker: deliveries wake it when its queue goes from
    /// empty to non-empty, and closes wake it to finish.
    pub waker: Option<Waker>,
    /// Frames waiting to be written.
    pub out: Outbound,
    /// Passed auth.
    pub(super) authed: bool,
    /// Protocol version chosen at auth (replies echo the request's).
    pub(super) ver: u16,
    /// Client-chosen connection key (registered in the key owner's
    /// directory); `None` once authenticated means a server-assigned key,
    /// which is computed from the connection's address, never stored.
    pub(super) key: Option<Arc<str>>,
    /// User id, 0 = anonymous.
    pub(super) mid: i64,
    /// Current room and this connection's position in it.
    pub(super) room: Option<(Rc<str>, usize)>,
    /// Accepted business operation codes, sorted (goim's "accepts").
    pub(super) accepts: Box<[u32]>,
    /// Wheel tick at which the connection is closed unless renewed.
    pub(super) deadline: u32,
    /// Tick whose wheel slot holds this connection's live entry.
    pub(super) wheel_at: u32,
    /// Set once the connection must close; the driver flushes and ends.
    pub close: Option<CloseReason>,
    /// Peer IP, for the online IP count.
    pub(super) ip: IpAddr,
    /// Wire format and WebSocket phase.
    pub transport: Transport,
    /// A WebSocket ping went out for a passed deadline; a pong clears it.
    pub(super) pinged: bool,
}

impl Conn {
    /// Past the handshake: authenticated, or an echo connection.
    pub(super) fn authed_or_echo(&self) -> bool {
        self.authed || self.transport == Transport::WsEcho
    }

    /// The connection must close (its driver flushes and ends).
    pub fn closing(&self) -> bool {
        self.close.is_some()
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection record is the largest per-connection allocation we
    /// own; keep an eye on its size (RSS per idle connection is a target).
    #[test]
    fn conn_record_stays_small() {
        let size = std::mem::size_of::<super::Conn>();
        assert!(size <= 176, "Conn grew to {size} bytes");
    }
}
