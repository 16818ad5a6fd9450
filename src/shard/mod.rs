//! `Shard`: everything one core owns — its connections, their room
//! memberships, its slice of the key and user directories, and its heartbeat
//! wheel — and what it does with each inbound frame and mesh message.
//!
//! Runs on exactly one glommio executor thread and is shared by that
//! executor's tasks through `Rc<RefCell<Shard>>`. No method awaits, so a
//! borrow never spans a suspension point; I/O is left to `conn::tcp`.
//!
//! Ownership:
//! - a connection belongs to the shard that accepted it, for life;
//! - a room belongs to `owner_of_str(room)`: publishes go there first and leave
//!   as one `RoomFrame` per shard (the owner is where offsets and history will
//!   live);
//! - a connection key belongs to `owner_of_str(key)` and a user id to
//!   `owner_of_mid(mid)`: the owner keeps where each lives (the one truth for
//!   "same key replaces" and for user pushes).
//!
//! Invariants:
//! - a `ConnRef` is unique per shard and never valid on another shard; a
//!   stale one (slot reused) fails the generation check and is ignored;
//! - every live connection has exactly one entry in the heartbeat wheel;
//! - a closing connection gets nothing queued except its op 6 goodbye (and,
//!   on WebSocket, the close frame after it);
//! - a WebSocket connection whose upgrade is not answered yet
//!   (`Transport::WsUpgrading`) gets nothing framed: only the driver's HTTP
//!   answer.
//!
//! ```text
//! accept ─> Handshake ──op 7 ok──> Authed ──op 6 / EOF / error / timeout──> Closing ─> removed
//!              └──────── any other frame, bad auth, timeout ───────────────────┘
//! ```

pub mod mesh;
pub mod topics;

use crate::config::Config;
use crate::conn::outbound::{Outbound, PushError};
use crate::metrics::{CloseReason, ShardStats};
use crate::proto::binary::{self, op, Frame};
use crate::proto::body;
use crate::proto::wire::Wire;
use crate::proto::ws;
use arc_swap::ArcSwap;
use bytes::Bytes;
use fnv::{FnvHashMap, FnvHashSet};
use mesh::{owner_of_mid, owner_of_str, ConnRef, GlobalConn, Mesh, ShardMsg};
use slab::Slab;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use topics::RoomTable;

/// Seconds a WebSocket connection has to answer the server's ping once its
/// heartbeat deadline passed (capped by the heartbeat timeout).
const WS_PING_GRACE_SECS: u32 = 30;

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
    fn websocket_open(self) -> bool {
        matches!(self, Transport::Ws | Transport::WsEcho)
    }

    /// A protocol frame in this connection's wire form (one binary message
    /// on WebSocket).
    fn frame(self, ver: u16, op: u32, seq: u32, body: &[u8]) -> Bytes {
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
    fn outbound_limit(self, cfg: &Config) -> usize {
        if self == Transport::WsEcho {
            cfg.outbound_limit.max(2 * cfg.ws_echo_max_message + 64)
        } else {
            cfg.outbound_limit
        }
    }
}

/// Slots in the heartbeat wheel (one per second); deadlines further out simply
/// go round again.
const WHEEL_SLOTS: usize = 1024;

/// What each shard publishes for the others once a second: room counts and
/// client IPs, read by heartbeat replies and the online API on any shard.
#[derive(Debug, Default)]
pub struct ShardView {
    /// Room key → members on that shard.
    pub rooms: FnvHashMap<Arc<str>, u32>,
    /// Distinct client IPs on that shard.
    pub ips: FnvHashSet<IpAddr>,
}

/// State shared read-only (or lock-free) by all shards.
pub struct Shared {
    /// The configuration, validated.
    pub config: Config,
    /// Cross-shard inboxes.
    pub mesh: Mesh,
    /// Counters, one block per shard.
    pub stats: Vec<ShardStats>,
    /// Latest published `ShardView` of each shard.
    pub views: Vec<ArcSwap<ShardView>>,
    /// Random per-process prefix for server-assigned keys.
    pub node_tag: u64,
    /// WebSocket upgrade rules: path 0 is the protocol endpoint, path 1 the
    /// echo endpoint when enabled.
    pub ws_rules: ws::UpgradeRules,
}

impl Shared {
    /// Shared state for `config.nr_shards()` shards.
    pub fn new(config: Config) -> Self {
        let n = config.nr_shards();
        Shared {
            mesh: Mesh::new(n),
            stats: (0..n).map(|_| ShardStats::default()).collect(),
            views: (0..n).map(|_| ArcSwap::from_pointee(ShardView::default())).collect(),
            node_tag: fastrand::u64(..),
            ws_rules: ws::UpgradeRules {
                paths: std::iter::once(config.ws_path.clone())
                    .chain(config.ws_echo.then(|| config.ws_echo_path.clone()))
                    .collect(),
                origins: config.ws_origins.clone(),
            },
            config,
        }
    }

    /// Members of `room` across all shards, as last published.
    pub fn room_count(&self, room: &str) -> u64 {
        self.views
            .iter()
            .map(|v| u64::from(v.load().rooms.get(room).copied().unwrap_or(0)))
            .sum()
    }
}

/// One connection's record, reachable by delivery code through its `ConnRef`.
#[derive(Debug)]
pub struct Conn {
    /// Generation of this slab slot (see `ConnRef`).
    gen: u32,
    /// The driver task's waker: deliveries wake it when its queue goes from
    /// empty to non-empty, and closes wake it to finish.
    pub waker: Option<Waker>,
    /// Frames waiting to be written.
    pub out: Outbound,
    /// Passed auth.
    authed: bool,
    /// Protocol version chosen at auth (replies echo the request's).
    ver: u16,
    /// Client-chosen connection key (registered in the key owner's
    /// directory); `None` once authenticated means a server-assigned key,
    /// which is computed from the connection's address, never stored.
    key: Option<Arc<str>>,
    /// User id, 0 = anonymous.
    mid: i64,
    /// Current room and this connection's position in it.
    room: Option<(Rc<str>, usize)>,
    /// Accepted business operation codes, sorted (goim's "accepts").
    accepts: Box<[u32]>,
    /// Wheel tick at which the connection is closed unless renewed.
    deadline: u32,
    /// Tick whose wheel slot holds this connection's live entry; entries
    /// found at any other tick are stale leftovers of an earlier schedule.
    wheel_at: u32,
    /// Set once the connection must close; the driver flushes and ends.
    pub close: Option<CloseReason>,
    /// Peer IP, for the online IP count.
    ip: IpAddr,
    /// Wire format and WebSocket phase.
    pub transport: Transport,
    /// A WebSocket ping went out for a passed deadline; a pong clears it.
    pinged: bool,
}

impl Conn {
    /// Past the handshake: authenticated, or an echo connection.
    fn authed_or_echo(&self) -> bool {
        self.authed || self.transport == Transport::WsEcho
    }
}

/// The close code a WebSocket peer gets for `reason`; `None`: no close frame
/// (the peer is gone, or already answered).
fn ws_close_code(reason: CloseReason) -> Option<u16> {
    use ws::close;
    Some(match reason {
        CloseReason::PeerClosed | CloseReason::IoError | CloseReason::WsClosed | CloseReason::BadUpgrade => {
            return None
        }
        CloseReason::ClientDisconnect
        | CloseReason::HandshakeTimeout
        | CloseReason::HeartbeatTimeout
        | CloseReason::Replaced => close::NORMAL,
        CloseReason::Shutdown => close::GOING_AWAY,
        // BadApiKey is a publisher's reason; clients never get it.
        CloseReason::AuthRequired | CloseReason::BadAuth | CloseReason::SlowConsumer | CloseReason::BadApiKey => {
            close::POLICY
        }
        CloseReason::BodyTooLarge | CloseReason::WsTooBig => close::TOO_BIG,
        CloseReason::WsInvalidData => close::INVALID_DATA,
        CloseReason::WsUnsupportedData => close::UNSUPPORTED,
        CloseReason::BadHeaderLength
        | CloseReason::BadPacketLength
        | CloseReason::UnsupportedVersion
        | CloseReason::BadBody
        | CloseReason::ProtocolError
        | CloseReason::WsProtocol => close::PROTOCOL,
    })
}

/// One core's state.
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Cross-shard state.
    pub shared: Arc<Shared>,
    /// Local connections.
    conns: Slab<Conn>,
    /// Next generation to hand out.
    next_gen: u32,
    /// Local room memberships.
    rooms: RoomTable<ConnRef>,
    /// Directory slice: client-chosen keys owned by this shard → where the
    /// connection is.
    dir_keys: FnvHashMap<Arc<str>, GlobalConn>,
    /// Directory slice: users owned by this shard → their connections.
    dir_mids: FnvHashMap<i64, Vec<GlobalConn>>,
    /// Heartbeat / handshake deadline wheel, one slot per second.
    wheel: Vec<Vec<ConnRef>>,
    /// Seconds since the shard started (advanced by `sweep`).
    tick: u32,
    /// Client IPs on this shard with their connection counts.
    ips: FnvHashMap<IpAddr, u32>,
    /// IP set changed since the last published view.
    ips_dirty: bool,
    /// Set by `Shutdown`: accept loops stop, new connections are refused.
    pub shutting_down: bool,
}

/// What the driver should do after feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Keep reading.
    Continue,
    /// The connection is closing (reason recorded on the conn).
    Closing,
}

impl Shard {
    /// A new, empty shard.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        Shard {
            id,
            shared,
            conns: Slab::new(),
            next_gen: 1,
            rooms: RoomTable::new(),
            dir_keys: FnvHashMap::default(),
            dir_mids: FnvHashMap::default(),
            wheel: vec![Vec::new(); WHEEL_SLOTS],
            tick: 0,
            ips: FnvHashMap::default(),
            ips_dirty: false,
            shutting_down: false,
        }
    }

    fn cfg(&self) -> &Config {
        &self.shared.config
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// Registers a freshly accepted connection; it must auth before the
    /// handshake deadline.
    pub fn new_conn(&mut self, ip: IpAddr, transport: Transport) -> ConnRef {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let deadline = self.tick + self.cfg().handshake_timeout_secs;
        let idx = self.conns.insert(Conn {
            gen,
            waker: None,
            out: Outbound::default(),
            authed: false,
            ver: binary::VERSION_GOIM,
            key: None,
            mid: 0,
            room: None,
            accepts: Box::default(),
            deadline,
            wheel_at: 0,
            close: None,
            ip,
            transport,
            pinged: false,
        });
        let r = ConnRef { idx: idx as u32, gen };
        self.schedule(r);
        *self.ips.entry(ip).or_default() += 1;
        self.ips_dirty = true;
        ShardStats::add(&self.stats().conns, 1);
        ShardStats::add(&self.stats().accepted, 1);
        r
    }

    /// Puts `r` in the wheel slot of its deadline (or of the furthest tick the
    /// wheel can hold, to be looked at again then), unless an entry already
    /// sits at an earlier tick that will see the new deadline in time.
    fn schedule(&mut self, r: ConnRef) {
        let tick = self.tick;
        let Some(c) = self.conn_mut(r) else { return };
        let at = c.deadline.min(tick + WHEEL_SLOTS as u32 - 1).max(tick + 1);
        if c.wheel_at > tick && c.wheel_at <= at {
            return;
        }
        c.wheel_at = at;
        self.wheel[at as usize % WHEEL_SLOTS].push(r);
    }

    /// The record of a live connection.
    pub fn conn_mut(&mut self, r: ConnRef) -> Option<&mut Conn> {
        self.conns.get_mut(r.idx as usize).filter(|c| c.gen == r.gen)
    }

    /// Live connections on this shard.
    pub fn nr_conns(&self) -> usize {
        self.conns.len()
    }

    /// Forgets a connection whose driver has ended: leaves its room, tells the
    /// directory owners, counts the close.
    pub fn remove_conn(&mut self, r: ConnRef) {
        let Some(c) = self.conns.get(r.idx as usize).filter(|c| c.gen == r.gen) else {
            return;
        };
        let reason = c.close.unwrap_or(CloseReason::PeerClosed);
        let c = self.conns.remove(r.idx as usize);
        if let Some((room, pos)) = &c.room {
            self.leave_room(room.clone(), *pos);
        }
        if c.authed {
            let at = GlobalConn {
                shard: self.id as u16,
                conn: r,
            };
            if let Some(key) = c.key.clone() {
                let owner = owner_of_str(&key, self.nr());
                self.route(
                    owner,
                    ShardMsg::Unregister {
                        key: Some(key),
                        mid: 0,
                        at,
                    },
                );
            }
            if c.mid != 0 {
                let owner = owner_of_mid(c.mid, self.nr());
                self.route(
                    owner,
                    ShardMsg::Unregister {
                        key: None,
                        mid: c.mid,
                        at,
                    },
                );
            }
            self.stats().authed.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(n) = self.ips.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.ips.remove(&c.ip);
                self.ips_dirty = true;
            }
        }
        self.stats().conns.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.stats().close(reason);
        tracing::debug!(shard = self.id, conn = r.idx, reason = reason.name(), "closed");
    }

    fn nr(&self) -> usize {
        self.shared.mesh.nr_shards()
    }

    fn leave_room(&mut self, room: Rc<str>, pos: usize) {
        if let Some(moved) = self.rooms.leave(&room, pos) {
            if let Some(m) = self.conn_mut(moved) {
                if let Some((_, p)) = &mut m.room {
                    *p = pos;
                }
            }
        }
    }

    /// Marks `r` as closing with `reason` (first reason wins) and wakes its
    /// driver. Where the reason is for the client, an op 6 frame carrying
    /// `"<reason>: <detail>"` is queued as the last thing it will receive.
    pub fn close(&mut self, r: ConnRef, reason: CloseReason, detail: &str) {
        self.close_with_code(r, reason, detail, None);
    }

    /// `close`, naming the WebSocket close code (otherwise derived from the
    /// reason). WebSocket connections get the op 6 frame (protocol endpoint)
    /// and then a close frame.
    pub fn close_with_code(&mut self, r: ConnRef, reason: CloseReason, detail: &str, ws_code: Option<u16>) {
        let Some(c) = self.conn_mut(r) else { return };
        if c.close.is_some() {
            return;
        }
        c.close = Some(reason);
        let dropped = if reason == CloseReason::SlowConsumer {
            c.out.clear()
        } else {
            0
        };
        let goodbye = reason.notifies_client() && matches!(c.transport, Transport::Tcp | Transport::Ws);
        let close_code = if c.transport.websocket_open() {
            ws_code.or_else(|| ws_close_code(reason))
        } else {
            None
        };
        if goodbye || close_code.is_some() {
            let text = if detail.is_empty() {
                reason.name().to_string()
            } else {
                format!("{}: {detail}", reason.name())
            };
            if goodbye {
                c.out
                    .push_unbounded(c.transport.frame(c.ver, op::DISCONNECT, 0, text.as_bytes()));
            }
            if let Some(code) = close_code {
                c.out.push_unbounded(ws::close_frame(code, &text));
            }
        }
        if let Some(w) = &c.waker {
            w.wake_by_ref();
        }
        ShardStats::add(&self.stats().dropped, dropped as u64);
        if !matches!(
            reason,
            CloseReason::PeerClosed | CloseReason::ClientDisconnect | CloseReason::Shutdown
        ) {
            tracing::info!(
                shard = self.id,
                conn = r.idx,
                reason = reason.name(),
                detail,
                "closing connection"
            );
        }
    }

    /// Queues a push to `r` in its transport's form, enforcing its byte limit.
    fn enqueue(&mut self, r: ConnRef, wire: &Wire) {
        self.enqueue_with(r, |t| wire.for_transport(t == Transport::Ws).clone());
    }

    /// Queues bytes already in `r`'s wire format (a pong, an echo, the
    /// upgrade answer), enforcing its byte limit.
    pub fn enqueue_bytes(&mut self, r: ConnRef, frame: Bytes) {
        self.enqueue_with(r, |_| frame);
    }

    /// The one place frames are queued: a single record lookup per delivery;
    /// `frame` picks the connection's wire form and is not built for a
    /// connection that is already closing.
    fn enqueue_with(&mut self, r: ConnRef, frame: impl FnOnce(Transport) -> Bytes) {
        let Some(c) = self.conns.get_mut(r.idx as usize).filter(|c| c.gen == r.gen) else {
            return;
        };
        if c.close.is_some() {
            ShardStats::add(&self.shared.stats[self.id].dropped, 1);
            return;
        }
        let limit = c.transport.outbound_limit(&self.shared.config);
        match c.out.push(frame(c.transport), limit) {
            Ok(was_empty) => {
                if was_empty {
                    if let Some(w) = &c.waker {
                        w.wake_by_ref();
                    }
                }
                ShardStats::add(&self.shared.stats[self.id].deliveries, 1);
            }
            Err(PushError::OverLimit { queued }) => {
                let detail = format!("{queued} bytes queued, limit {limit}");
                ShardStats::add(&self.shared.stats[self.id].dropped, 1);
                self.close(r, CloseReason::SlowConsumer, &detail);
            }
        }
    }

    /// Sends `msg` to shard `to`, or handles it inline when `to` is this shard.
    pub fn route(&mut self, to: usize, msg: ShardMsg) {
        if to == self.id {
            self.handle(msg);
        } else {
            self.shared.mesh.send(to, msg);
        }
    }

    /// Acts on one mesh message.
    pub fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::PublishRoom { room, frame } => {
                for s in 0..self.nr() {
                    self.route(
                        s,
                        ShardMsg::RoomFrame {
                            room: room.clone(),
                            frame: frame.clone(),
                        },
                    );
                }
            }
            ShardMsg::RoomFrame { room, frame } => {
                // Collect first: enqueue may close a slow member, which edits
                // the member list we would be iterating.
                let members: Vec<ConnRef> = self.rooms.members(&room).to_vec();
                for m in members {
                    self.enqueue(m, &frame);
                }
            }
            ShardMsg::PushKeys { keys, op, frame } => {
                let mut by_shard: FnvHashMap<u16, Vec<ConnRef>> = FnvHashMap::default();
                let mut assigned: FnvHashMap<u16, Vec<ConnRef>> = FnvHashMap::default();
                for k in keys {
                    if let Some(at) = self.dir_keys.get(&k) {
                        by_shard.entry(at.shard).or_default().push(at.conn);
                    } else if let Some(at) = GlobalConn::from_assigned_key(&k, self.shared.node_tag) {
                        if usize::from(at.shard) < self.nr() {
                            assigned.entry(at.shard).or_default().push(at.conn);
                        }
                    }
                }
                self.forward(by_shard, op, &frame, false);
                self.forward(assigned, op, &frame, true);
            }
            ShardMsg::PushMids { mids, op, frame } => {
                let mut by_shard: FnvHashMap<u16, Vec<ConnRef>> = FnvHashMap::default();
                for m in mids {
                    for at in self.dir_mids.get(&m).map(Vec::as_slice).unwrap_or(&[]) {
                        by_shard.entry(at.shard).or_default().push(at.conn);
                    }
                }
                self.forward(by_shard, op, &frame, false);
            }
            ShardMsg::Deliver {
                conns,
                assigned_only,
                op,
                frame,
            } => {
                for r in conns {
                    if self.conn_mut(r).is_some_and(|c| {
                        c.authed && (!assigned_only || c.key.is_none()) && c.accepts.binary_search(&op).is_ok()
                    }) {
                        self.enqueue(r, &frame);
                    }
                }
            }
            ShardMsg::All { op, frame } => {
                let targets: Vec<ConnRef> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.authed && c.accepts.binary_search(&op).is_ok())
                    .map(|(i, c)| ConnRef {
                        idx: i as u32,
                        gen: c.gen,
                    })
                    .collect();
                for r in targets {
                    self.enqueue(r, &frame);
                }
            }
            ShardMsg::Register { key, mid, at } => {
                if let Some(key) = key {
                    // The key's previous holder: a directory entry, or the
                    // connection whose assigned key this client chose.
                    let assigned = GlobalConn::from_assigned_key(&key, self.shared.node_tag);
                    let old = match self.dir_keys.insert(key, at) {
                        Some(old) => Some((old, false)),
                        None => assigned.map(|a| (a, true)),
                    };
                    if let Some((old, assigned_only)) =
                        old.filter(|&(old, _)| old != at && usize::from(old.shard) < self.nr())
                    {
                        self.route(
                            usize::from(old.shard),
                            ShardMsg::Kick {
                                conn: old.conn,
                                reason: CloseReason::Replaced,
                                assigned_only,
                            },
                        );
                    }
                }
                if mid != 0 {
                    self.dir_mids.entry(mid).or_default().push(at);
                }
            }
            ShardMsg::Unregister { key, mid, at } => {
                if let Some(key) = key {
                    if self.dir_keys.get(&key) == Some(&at) {
                        self.dir_keys.remove(&key);
                    }
                }
                if mid != 0 {
                    if let Some(v) = self.dir_mids.get_mut(&mid) {
                        v.retain(|x| *x != at);
                        if v.is_empty() {
                            self.dir_mids.remove(&mid);
                        }
                    }
                }
            }
            ShardMsg::Kick {
                conn,
                reason,
                assigned_only,
            } => {
                let detail = if reason == CloseReason::Replaced {
                    if !self
                        .conn_mut(conn)
                        .is_some_and(|c| c.authed && (!assigned_only || c.key.is_none()))
                    {
                        return;
                    }
                    "another connection authenticated with this key"
                } else {
                    ""
                };
                self.close(conn, reason, detail);
            }
            ShardMsg::Shutdown => {
                self.shutting_down = true;
                let all: Vec<ConnRef> = self
                    .conns
                    .iter()
                    .map(|(i, c)| ConnRef {
                        idx: i as u32,
                        gen: c.gen,
                    })
                    .collect();
                for r in all {
                    self.close(r, CloseReason::Shutdown, "server shutting down, reconnect");
                }
            }
        }
    }

    /// Sends each holding shard the directory hits that live there.
    fn forward(&mut self, by_shard: FnvHashMap<u16, Vec<ConnRef>>, op: u32, frame: &Wire, assigned_only: bool) {
        for (s, conns) in by_shard {
            self.route(
                usize::from(s),
                ShardMsg::Deliver {
                    conns,
                    assigned_only,
                    op,
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Advances the clock one second: closes connections past their deadline
    /// and publishes this shard's view if it changed.
    pub fn sweep(&mut self) {
        self.tick += 1;
        let slot = self.tick as usize % WHEEL_SLOTS;
        let due = std::mem::take(&mut self.wheel[slot]);
        let tick = self.tick;
        let ping_grace = WS_PING_GRACE_SECS.min(self.cfg().heartbeat_timeout_secs);
        for r in due {
            let Some(c) = self.conn_mut(r) else { continue };
            if c.wheel_at != tick {
                continue;
            }
            if c.deadline <= tick {
                if c.close.is_none() && c.transport.websocket_open() && !c.pinged && c.authed_or_echo() {
                    // The WebSocket heartbeat alternative: a client that
                    // answers pings stays, op 2 or not.
                    c.pinged = true;
                    c.deadline = tick + ping_grace;
                    self.enqueue_bytes(r, ws::frame(ws::opcode::PING, b"volley"));
                    self.schedule(r);
                } else if c.close.is_none() {
                    let (reason, detail) = if c.authed_or_echo() {
                        (CloseReason::HeartbeatTimeout, "no heartbeat within the deadline")
                    } else {
                        (
                            CloseReason::HandshakeTimeout,
                            "no auth frame within the handshake timeout",
                        )
                    };
                    self.close(r, reason, detail);
                }
            } else {
                self.schedule(r);
            }
        }
        let rooms_dirty = self.rooms.take_dirty();
        if rooms_dirty || self.ips_dirty {
            self.ips_dirty = false;
            let view = ShardView {
                rooms: self.rooms.counts().map(|(k, n)| (Arc::from(&**k), n as u32)).collect(),
                ips: self.ips.keys().copied().collect(),
            };
            self.stats()
                .rooms
                .store(self.rooms.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.shared.views[self.id].store(Arc::new(view));
        }
    }

    /// Room members across all shards: this shard's live count plus the other
    /// shards' last published counts.
    fn online(&self, room: &str) -> u32 {
        let mut n = self.rooms.count(room) as u64;
        for (i, v) in self.shared.views.iter().enumerate() {
            if i != self.id {
                n += u64::from(v.load().rooms.get(room).copied().unwrap_or(0));
            }
        }
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Decodes and acts on as many whole frames of `data` as it holds.
    /// Returns how many bytes were consumed; a partial frame is left.
    pub fn feed(&mut self, r: ConnRef, data: &[u8]) -> (usize, Fed) {
        let max_body = self.cfg().max_body;
        ShardStats::add(&self.stats().bytes_in, data.len() as u64);
        let mut used = 0;
        loop {
            if self.conn_mut(r).is_none_or(|c| c.close.is_some()) {
                return (used, Fed::Closing);
            }
            match binary::decode(&data[used..], max_body) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.on_frame(r, frame, false);
                }
                Ok(None) => return (used, Fed::Continue),
                Err(e) => {
                    self.close(r, CloseReason::from(&e), &e.to_string());
                    return (used, Fed::Closing);
                }
            }
        }
    }

    fn reply(&mut self, r: ConnRef, ver: u16, op: u32, seq: u32, body: &[u8]) {
        // Replies bypass nothing: a client that floods requests without
        // reading replies is a slow consumer like any other.
        self.enqueue_with(r, |t| t.frame(ver, op, seq, body));
    }

    /// The HTTP upgrade of `r` was answered: from now on it speaks
    /// WebSocket frames. Echo connections skip auth and live until their
    /// heartbeat deadline (renewed by pongs).
    pub fn ws_upgraded(&mut self, r: ConnRef, echo: bool) {
        let (tick, heartbeat) = (self.tick, self.cfg().heartbeat_timeout_secs);
        let Some(c) = self.conn_mut(r) else { return };
        if echo {
            c.transport = Transport::WsEcho;
            c.deadline = tick + heartbeat;
            self.schedule(r);
        } else {
            c.transport = Transport::Ws;
        }
    }

    /// A WebSocket pong (or any sign of life the transport offers): the
    /// connection's heartbeat deadline starts again.
    pub fn ws_pong(&mut self, r: ConnRef) {
        let (tick, heartbeat) = (self.tick, self.cfg().heartbeat_timeout_secs);
        let Some(c) = self.conn_mut(r) else { return };
        if !c.authed_or_echo() {
            return;
        }
        c.pinged = false;
        c.deadline = tick + heartbeat;
        self.schedule(r);
    }

    fn on_frame(&mut self, r: ConnRef, f: Frame<'_>, in_batch: bool) {
        ShardStats::add(&self.stats().frames_in, 1);
        let (tick, heartbeat) = (self.tick, self.cfg().heartbeat_timeout_secs);
        let Some(c) = self.conn_mut(r) else { return };
        if !c.authed {
            if f.op != op::AUTH {
                let detail = format!("first frame must be auth (op 7), got op {}", f.op);
                return self.close(r, CloseReason::AuthRequired, &detail);
            }
            return self.auth(r, f);
        }
        match f.ver {
            binary::VERSION_GOIM => {}
            v => {
                let detail = format!("protocol version {v} is not served on this connection");
                return self.close(r, CloseReason::UnsupportedVersion, &detail);
            }
        }
        match f.op {
            op::HEARTBEAT => {
                let room = c.room.as_ref().map(|(n, _)| n.clone());
                c.deadline = tick + heartbeat;
                c.pinged = false;
                self.schedule(r);
                let online = room.map_or(0, |n| self.online(&n));
                self.reply(r, f.ver, op::HEARTBEAT_REPLY, f.seq, &online.to_be_bytes());
            }
            op::SEND_MSG => self.reply(r, f.ver, op::SEND_MSG_REPLY, f.seq, &[]),
            op::DISCONNECT => self.close(r, CloseReason::ClientDisconnect, ""),
            op::AUTH => self.close(r, CloseReason::ProtocolError, "already authenticated"),
            op::RAW if !in_batch => {
                let max_body = self.cfg().max_body;
                let mut rest = f.body;
                while !rest.is_empty() {
                    match binary::decode(rest, max_body) {
                        Ok(Some((inner, n))) => {
                            rest = &rest[n..];
                            self.on_frame(r, inner, true);
                            if self.conn_mut(r).is_none_or(|c| c.close.is_some()) {
                                return;
                            }
                        }
                        Ok(None) => {
                            return self.close(r, CloseReason::ProtocolError, "op 9 batch ends inside a frame");
                        }
                        Err(e) => return self.close(r, CloseReason::ProtocolError, &format!("op 9 batch: {e}")),
                    }
                }
            }
            op::RAW => self.close(r, CloseReason::ProtocolError, "op 9 batch nested in a batch"),
            op::CHANGE_ROOM => match body::parse_room(f.body) {
                Ok(room) => {
                    let room = room.to_string();
                    self.change_room(r, &room);
                    self.reply(r, f.ver, op::CHANGE_ROOM_REPLY, f.seq, f.body);
                }
                Err(e) => self.close(r, CloseReason::BadBody, &e.to_string()),
            },
            op::SUB | op::UNSUB => match body::parse_ops(f.body) {
                Ok(ops) => {
                    let c = self.conn_mut(r).expect("checked live above");
                    let mut acc = std::mem::take(&mut c.accepts).into_vec();
                    if f.op == op::SUB {
                        acc.extend(ops);
                        acc.sort_unstable();
                        acc.dedup();
                    } else {
                        acc.retain(|a| !ops.contains(a));
                    }
                    c.accepts = acc.into_boxed_slice();
                    if c.accepts.len() > body::MAX_ACCEPTS {
                        return self.close(r, CloseReason::BadBody, "too many accepted operations");
                    }
                    let reply = if f.op == op::SUB {
                        op::SUB_REPLY
                    } else {
                        op::UNSUB_REPLY
                    };
                    self.reply(r, f.ver, reply, f.seq, f.body);
                }
                Err(e) => self.close(r, CloseReason::BadBody, &e.to_string()),
            },
            _ => ShardStats::add(&self.stats().unknown_ops, 1),
        }
    }

    fn auth(&mut self, r: ConnRef, f: Frame<'_>) {
        if f.ver != binary::VERSION_GOIM {
            let detail = format!("protocol version {} is not served (this server speaks 1)", f.ver);
            return self.close(r, CloseReason::UnsupportedVersion, &detail);
        }
        let a = match body::parse_auth(f.body) {
            Ok(a) => a,
            Err(e) => return self.close(r, CloseReason::BadAuth, &e.to_string()),
        };
        let key: Option<Arc<str>> = (!a.key.is_empty()).then(|| a.key.as_str().into());
        let heartbeat = self.cfg().heartbeat_timeout_secs;
        let tick = self.tick;
        let c = self.conn_mut(r).expect("caller checked");
        c.authed = true;
        c.ver = f.ver;
        c.mid = a.mid;
        c.key = key.clone();
        let mut accepts: Vec<u32> = a.accepts.iter().filter_map(|&x| u32::try_from(x).ok()).collect();
        accepts.sort_unstable();
        accepts.dedup();
        c.accepts = accepts.into_boxed_slice();
        c.deadline = tick + heartbeat;
        self.schedule(r);
        ShardStats::add(&self.stats().authed, 1);
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        if let Some(key) = key {
            let owner = owner_of_str(&key, self.nr());
            self.route(
                owner,
                ShardMsg::Register {
                    key: Some(key),
                    mid: 0,
                    at,
                },
            );
        }
        if a.mid != 0 {
            let owner = owner_of_mid(a.mid, self.nr());
            self.route(
                owner,
                ShardMsg::Register {
                    key: None,
                    mid: a.mid,
                    at,
                },
            );
        }
        if !a.room_id.is_empty() {
            self.change_room(r, &a.room_id);
        }
        // The Register above may already have kicked us (same key, same shard).
        if self.conn_mut(r).is_some_and(|c| c.close.is_none()) {
            self.reply(r, f.ver, op::AUTH_REPLY, f.seq, &[]);
        }
    }

    fn change_room(&mut self, r: ConnRef, room: &str) {
        let Some(c) = self.conn_mut(r) else { return };
        if let Some((old, pos)) = c.room.take() {
            if &*old == room {
                c.room = Some((old, pos));
                return;
            }
            self.leave_room(old, pos);
        }
        if room.is_empty() {
            return;
        }
        let (name, pos) = self.rooms.join(room, r);
        if let Some(c) = self.conn_mut(r) {
            c.room = Some((name, pos));
        }
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
