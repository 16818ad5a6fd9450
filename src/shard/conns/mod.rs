//! `Conn`: one client connection's record (in the shard's slab, addressed by
//! `ConnRef` = slot + generation), and `Transport`, the wire it speaks.
//!
//! Plain data owned by one shard; `lifecycle` creates, closes and removes
//! records, the driver (`conn::driver`) reads the queue and close mark.
//! The record is the biggest thing an idle connection costs us, so every
//! field says why it is there (and a unit test bounds its size).
//!
//! Files: this one (the record), `lifecycle` (new, close, remove, room
//! changes), `heartbeat` (deadlines, WebSocket pings, the sweep), `wheel`
//! (the deadline wheel, pure), `drain` (who is told to reconnect when,
//! while `volley drain` runs), `outbound` (a connection's write queue,
//! pure), `worklist` (connections waiting for the flusher or the reactor,
//! one wake per burst, pure).

use crate::config::Config;
use crate::proto::binary;
use crate::proto::close::CloseReason;
use crate::proto::ws;
use crate::shard::outbound::{Held, Outbound};
use crate::shard::token::{Token, TokenStep};
use bytes::Bytes;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;

pub(super) mod drain;
pub(super) mod heartbeat;
mod lifecycle;
pub mod outbound;
pub(super) mod wheel;
pub mod worklist;

/// The connections a shard holds, with what is kept beside their records:
/// the deadline wheel, connection counts per client address (the
/// admission view), and the open publisher sockets.
#[derive(Debug)]
pub(in crate::shard) struct Conns {
    /// Local client connections.
    pub(in crate::shard) slab: slab::Slab<Conn>,
    /// Next generation to hand out.
    pub(in crate::shard) next_gen: u32,
    /// Heartbeat / handshake deadlines, one slot per second.
    pub(in crate::shard) wheel: wheel::Wheel<crate::shard::mesh::ConnRef>,
    /// Client IPs on this shard with their connection counts.
    pub(in crate::shard) ips: fnv::FnvHashMap<IpAddr, u32>,
    /// IP set changed since the last published view.
    pub(in crate::shard) ips_dirty: bool,
    /// Open TCP publisher sockets, so shutdown can end their reads at once.
    publishers: fnv::FnvHashSet<RawFd>,
    /// While `volley drain` runs: who is told to reconnect when.
    pub(in crate::shard) drain: Option<drain::Plan>,
}

impl Default for Conns {
    fn default() -> Self {
        Conns {
            slab: slab::Slab::new(),
            next_gen: 1,
            wheel: wheel::Wheel::new(),
            ips: Default::default(),
            ips_dirty: false,
            publishers: Default::default(),
            drain: None,
        }
    }
}

/// Which wire a connection speaks, and how far its WebSocket handshake got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Transport {
    /// Raw TCP: protocol frames back to back.
    Tcp,
    /// WebSocket, HTTP upgrade not yet answered: nothing framed may be sent.
    WsUpgrading,
    /// WebSocket carrying the protocol, one frame (or op 9 batch) per message.
    Ws,
    /// WebSocket echo endpoint (conformance testing): no protocol, no pushes.
    WsEcho,
    /// As `Ws`, with permessage-deflate agreed at the full window: a push
    /// goes compressed when that shrinks it (`Wire::for_transport`).
    WsDeflate,
}

impl Transport {
    /// The upgrade is done: WebSocket frames flow.
    pub fn websocket_open(self) -> bool {
        matches!(self, Transport::Ws | Transport::WsEcho | Transport::WsDeflate)
    }

    /// WebSocket carrying the protocol (pushes go to it).
    pub fn protocol_ws(self) -> bool {
        matches!(self, Transport::Ws | Transport::WsDeflate)
    }

    /// The form its pushes take.
    pub fn form(self) -> crate::proto::wire::Form {
        use crate::proto::wire::Form;
        match self {
            Transport::Ws | Transport::WsEcho | Transport::WsUpgrading => Form::Ws,
            Transport::WsDeflate => Form::WsDeflate,
            Transport::Tcp => Form::Tcp,
        }
    }

    /// A protocol frame in this connection's wire form (one binary message
    /// on WebSocket).
    pub fn frame(self, ver: u16, op: u32, seq: u32, body: &[u8]) -> Bytes {
        let frame = binary::encode_to_bytes(ver, op, seq, body);
        // Replies are small: never worth compressing.
        if self.protocol_ws() {
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
    pub(in crate::shard) gen: u32,
    /// Frames waiting to be written.
    pub out: Outbound,
    /// Passed auth.
    pub(in crate::shard) authed: bool,
    /// Protocol version chosen at auth (replies echo the request's).
    pub(in crate::shard) ver: u16,
    /// Client-chosen connection key (registered in the key owner's
    /// directory); `None` once authenticated means a server-assigned key,
    /// which is computed from the connection's address, never stored.
    pub(in crate::shard) key: Option<Arc<str>>,
    /// User id, 0 = anonymous.
    pub(in crate::shard) mid: i64,
    /// What the connection has of its protocol version: its rooms, its
    /// accepts filter (version 1).
    pub(in crate::shard) session: Session,
    /// Wheel tick at which the connection is closed unless renewed.
    pub(in crate::shard) deadline: u32,
    /// Tick whose wheel slot holds this connection's live entry.
    pub(in crate::shard) wheel_at: u32,
    /// Set once the connection must close; the driver flushes and ends.
    pub close: Option<CloseReason>,
    /// Peer IP, for the online IP count.
    pub(in crate::shard) ip: IpAddr,
    /// Wire format and WebSocket phase.
    pub transport: Transport,
    /// A WebSocket ping went out for a passed deadline; a pong clears it.
    pub(in crate::shard) pinged: bool,
    /// The socket refused the last write (its buffers are full: the peer
    /// is not reading); the next write that moves bytes clears it. Only
    /// such connections may be closed by the outbound budget.
    pub(in crate::shard) blocked: bool,
    /// Its verified token (`[auth] mode = "jwt"`), with its timers.
    pub(in crate::shard) token: Option<Box<Token>>,
    /// Its socket, which the shard's flusher writes queued frames to (the
    /// driver owns it and closes it; -1 in the simulated-time harness).
    pub fd: RawFd,
}

/// Per protocol version: version 1 keeps what goim's session needs inline;
/// version 2, which has more, keeps it boxed (one pointer in the record).
#[derive(Debug)]
pub enum Session {
    /// Version 1 (and a connection not yet authenticated).
    V1 {
        /// Current room and this connection's position in it.
        room: Option<(Rc<str>, usize)>,
        /// Accepted business operation codes, sorted (goim's "accepts").
        accepts: Box<[u32]>,
    },
    /// Version 2.
    V2(Box<V2Conn>),
}

impl Default for Session {
    fn default() -> Self {
        Session::V1 {
            room: None,
            accepts: Box::default(),
        }
    }
}

/// What only a version-2 connection has.
#[derive(Debug, Default)]
pub struct V2Conn {
    /// Rooms it is in, each with its position in that room's member list on
    /// this shard.
    pub(in crate::shard) rooms: Vec<(Rc<str>, usize)>,
    /// Rooms whose join the room's owner has not answered yet: not members
    /// until it does (`shard::session::resume` says why that is what keeps a resume
    /// gapless).
    pub(in crate::shard) joining: Vec<Arc<str>>,
    /// Replayed frames (and pushes behind them) waiting for room in the
    /// queue; refilled as writes drain it.
    pub(in crate::shard) held: Held,
    /// The outbound limit the queue is refilled up to.
    pub(in crate::shard) limit: usize,
    /// Room patterns it subscribed to (in the shard's `PatternIndex`).
    pub(in crate::shard) patterns: Vec<Rc<str>>,
    /// Client publishes left in its bucket at tick `publish_at`.
    pub(in crate::shard) publish_left: u32,
    /// Tick of `publish_left`.
    pub(in crate::shard) publish_at: u32,
    /// Joins and read marks left in its bucket at tick `ops_at`.
    pub(in crate::shard) ops_left: u32,
    /// Tick of `ops_left`.
    pub(in crate::shard) ops_at: u32,
}

impl V2Conn {
    /// Rooms and patterns joined or being joined (what `[client]
    /// max_rooms` bounds).
    pub(in crate::shard) fn nr_rooms(&self) -> usize {
        self.rooms.len() + self.joining.len() + self.patterns.len()
    }

    /// Whether `room` (or pattern) is joined or being joined.
    pub(in crate::shard) fn has(&self, room: &str) -> bool {
        self.rooms.iter().any(|(r, _)| &**r == room)
            || self.joining.iter().any(|r| &**r == room)
            || self.patterns.iter().any(|p| &**p == room)
    }
}

impl Conn {
    /// Past the handshake: authenticated, or an echo connection.
    pub(in crate::shard) fn authed_or_echo(&self) -> bool {
        self.authed || self.transport == Transport::WsEcho
    }

    /// The connection must close (its driver flushes and ends).
    pub fn closing(&self) -> bool {
        self.close.is_some()
    }

    /// What the connection's output costs in memory, as the shard's
    /// outbound budget counts it (`Shard::queued`): its queue's
    /// (`Outbound::mem`) and the handles of frames held behind it.
    pub(in crate::shard) fn charge(&self) -> usize {
        self.out.mem() + self.v2().map_or(0, |v| v.held.charge())
    }

    /// Marks `n` bytes written at time `now`; frames held behind the queue
    /// (a version-2 replay) move in as it drains. Only through
    /// `Shard::written`, which keeps the shard's total.
    pub(in crate::shard) fn written(&mut self, n: usize, now: u32) {
        self.out.advance(n, now);
        if let Session::V2(v) = &mut self.session {
            if !v.held.is_empty() {
                v.held.refill(&mut self.out, v.limit, now);
            }
        }
    }

    /// Drops every frame not yet started, held ones too (see
    /// `Outbound::clear`); returns how many.
    pub(in crate::shard) fn clear_queued(&mut self) -> usize {
        let held = self.v2_mut().map_or(0, |v| v.held.clear());
        self.out.clear() + held
    }

    /// Drops everything queued or held (the connection is given up).
    pub(in crate::shard) fn discard_queued(&mut self) -> usize {
        let held = self.v2_mut().map_or(0, |v| v.held.clear());
        self.out.discard() + held
    }

    /// The version-2 state, if this is a version-2 connection.
    pub(in crate::shard) fn v2(&self) -> Option<&V2Conn> {
        match &self.session {
            Session::V2(v) => Some(v),
            Session::V1 { .. } => None,
        }
    }

    /// The version-2 state, to change.
    pub(in crate::shard) fn v2_mut(&mut self) -> Option<&mut V2Conn> {
        match &mut self.session {
            Session::V2(v) => Some(v),
            Session::V1 { .. } => None,
        }
    }
}

impl Conn {
    /// The tick the wheel must look at this connection by: its deadline, or
    /// its token's next step if sooner.
    pub(in crate::shard) fn next_check(&self) -> u32 {
        match (&self.token, self.close) {
            (Some(t), None) => self.deadline.min(t.next_check(self.ver == binary::VERSION_NATIVE)),
            _ => self.deadline,
        }
    }

    /// What is due for the connection's token at `tick`, if anything.
    pub(in crate::shard) fn token_due(&mut self, tick: u32) -> Option<TokenStep> {
        let v2 = self.ver == binary::VERSION_NATIVE;
        self.token.as_mut()?.due(tick, v2)
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection record is the largest per-connection allocation we
    /// own; keep an eye on its size (RSS per idle connection is a target).
    #[test]
    fn conn_record_stays_small() {
        let size = std::mem::size_of::<crate::shard::Conn>();
        // 176 before the token pointer (issue 11), 184 with it; 168 since
        // the driver is no task (no waker to keep).
        assert!(size <= 168, "Conn grew to {size} bytes");
    }
}
