//! A shard's connections handed to the next process (`volley upgrade`):
//! `Shard::export` takes them from a quiet shard as plain records
//! (`ShardState`); `Shard::import` puts them into a fresh shard of the new
//! process at the same slots and generations.
//!
//! Same slots and generations keep every address that names a connection
//! true: the directory slices handed over with them (keys and users →
//! `GlobalConn`), server-assigned keys (they spell the address; the new
//! process signs with the old one's secret, which the process hand-off
//! carries), presence watches. Room and pattern indexes are rebuilt from
//! the records: a member's position in a room's list is this process's
//! business. Nothing is announced while importing — no presence join, no
//! directory registration, no inbox replay — since, for the clients,
//! nothing happened.
//!
//! What travels per connection: its protocol state (version, user, key,
//! token grant and timers, rooms, patterns, accepts, rate buckets), its
//! heartbeat deadline, whether it is closing and why, and the frames
//! queued or held for it and not yet written. What does not: its socket
//! (sent beside the records by SCM_RIGHTS, in the records' order), what
//! history and inboxes hold (read back from the durable store by the new
//! process), the bytes its driver holds (`conn::driver`).
//!
//! Sans-IO; used by the hand-off runtime on every shard. Invariants:
//! export only from a quiet shard — no join waiting for its owner (refused
//! otherwise); import only into a shard that holds no connection; export,
//! encode, decode and import give back the same connections (tests in
//! `shard::sim::handoff_tests`).

use super::conns::{Conn, Session, Transport, V2Conn};
use super::mesh::{ConnRef, GlobalConn};
use super::outbound::Outbound;
use super::owners::directory::Directory;
use super::state::Shard;
use super::token::Token;
use crate::auth::jwt::Grant;
use crate::metrics::ShardStats;
use crate::proto::close::CloseReason;
use crate::proto::pattern::{self, Kind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

/// The hand-off's format version (these records and `handoff::wire`'s
/// messages): both processes must speak the same one. Bumped on any change
/// to either; a test pins the encoding of a sample.
pub const VERSION: u32 = 1;

/// Everything one shard hands over.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardState {
    /// The shard's index (the new process runs as many shards).
    pub shard: u32,
    /// Its wheel's tick: deadlines, token timers and rate buckets count in
    /// these ticks.
    pub tick: u32,
    /// The generation it would give the next slot it fills.
    pub next_gen: u32,
    /// Its connections; the i-th socket sent beside is the i-th one's.
    pub conns: Vec<ConnState>,
    /// Its slice of the directory: client-chosen keys with their holder and
    /// the holder's user.
    pub keys: Vec<(String, GlobalConn, i64)>,
    /// And users with their connections (each: whether it speaks version 2).
    pub users: Vec<(i64, Vec<(GlobalConn, bool)>)>,
    /// Pushes to users that entered the process at this shard.
    pub push_seq: u64,
    /// Rooms whose presence this shard's connections watch, and who.
    pub watching: Vec<(String, Vec<ConnRef>)>,
}

/// One connection.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnState {
    /// Its slot and generation.
    pub conn: ConnRef,
    /// Its wire.
    pub transport: Transport,
    /// Passed auth.
    pub authed: bool,
    /// Protocol version.
    pub ver: u16,
    /// Client-chosen key (`None`: the assigned one, or not authenticated).
    pub key: Option<String>,
    /// User id, 0 = anonymous.
    pub mid: i64,
    /// Peer IP.
    pub ip: IpAddr,
    /// Tick by which it must show a sign of life.
    pub deadline: u32,
    /// A WebSocket ping is out for a passed deadline.
    pub pinged: bool,
    /// Its socket refused the last write.
    pub blocked: bool,
    /// Why it is closing (`CloseReason::name`), if it is.
    pub close: Option<String>,
    /// Its token's grant and timers.
    pub token: Option<TokenState>,
    /// Its protocol version's state.
    pub session: SessionState,
    /// Queued, not yet written: the first from where writing stopped.
    pub out: Vec<Vec<u8>>,
    /// What its driver read and has not handed on yet.
    pub input: Input,
}

/// A connection's bytes read and not yet handled (`conn::driver`): an
/// incomplete frame or upgrade request, and the WebSocket session.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The incomplete frame (or HTTP upgrade request) read so far.
    pub partial: Vec<u8>,
    /// The WebSocket session (`None`: raw TCP).
    pub ws: Option<crate::proto::ws::session::Saved>,
}

/// What a protocol version keeps.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum SessionState {
    /// Version 1 (and connections not yet authenticated).
    V1 {
        /// Its room.
        room: Option<String>,
        /// Accepted operation codes, sorted.
        accepts: Vec<u32>,
    },
    /// Version 2.
    V2 {
        /// Rooms joined.
        rooms: Vec<String>,
        /// Room patterns held.
        patterns: Vec<String>,
        /// Frames held behind the queue (a replay), in order.
        held: Vec<Vec<u8>>,
        /// The outbound limit the queue is refilled up to.
        limit: u64,
        /// Client publishes left in its bucket at tick `publish_at`.
        publish_left: u32,
        /// Tick of `publish_left`.
        publish_at: u32,
        /// Joins and read marks left at tick `ops_at`.
        ops_left: u32,
        /// Tick of `ops_left`.
        ops_at: u32,
    },
}

/// A verified token: what it grants and its timers.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenState {
    /// `sub`.
    pub mid: i64,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// Rooms and patterns it may join (`None`: any).
    pub rooms: Option<Vec<String>>,
    /// Rooms and patterns it may publish to.
    pub publish: Vec<String>,
    /// Keys it may choose.
    pub keys: Vec<String>,
    /// Presence info, raw JSON.
    pub info: Option<String>,
    /// Tick of the refresh request.
    pub refresh_at: u32,
    /// Tick of the close unless refreshed.
    pub expire_at: u32,
    /// The refresh request went out.
    pub asked: bool,
}

/// Why a shard cannot be exported or imported.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum HandoffError {
    /// A join waits for its owner's answer: the shard is not quiet.
    #[error("connection {0:?} waits for the answer to a join")]
    Joining(ConnRef),
    /// Import into a shard that holds connections.
    #[error("shard {0} already holds connections")]
    NotEmpty(usize),
    /// The records are another shard's.
    #[error("records of shard {records} offered to shard {shard}")]
    WrongShard {
        /// Whose records.
        records: u32,
        /// Offered to.
        shard: usize,
    },
    /// Not one socket per connection.
    #[error("{sockets} sockets for {conns} connections")]
    Sockets {
        /// Sockets given.
        sockets: usize,
        /// Connections in the records.
        conns: usize,
    },
    /// A close reason this build does not know.
    #[error("unknown close reason {0:?}")]
    Reason(String),
    /// A WebSocket session on a raw TCP connection, or none on a
    /// WebSocket one.
    #[error("slot {0}: its input is not its transport's")]
    Input(u32),
    /// Two records for one slot, or a slot past any shard's.
    #[error("slot {0} given twice, or past the most a shard holds")]
    Slot(u32),
    /// A room pattern that is not one, or a room that is a pattern.
    #[error("{0:?} is not what its place says (room or pattern)")]
    Room(String),
    /// A watcher that is none of the connections.
    #[error("a watcher of {0:?} is none of the connections")]
    Watcher(String),
}

/// The highest slot taken: a shard's slots are dense (a freed one is
/// reused first), so a shard has none past the most connections it ever
/// held at once, and the table of a million per shard is what the records
/// may ask for; a slot past `[limits] max_conns` (when set) is refused too.
pub const MAX_SLOT: u32 = 1 << 20;

/// The records as bytes (postcard).
pub fn encode(state: &ShardState) -> Vec<u8> {
    postcard::to_stdvec(state).expect("plain records always encode")
}

/// Records from bytes; `None` if they are not whole, valid records.
pub fn decode(bytes: &[u8]) -> Option<ShardState> {
    postcard::from_bytes(bytes).ok()
}

fn owned(frames: impl Iterator<Item = Bytes>) -> Vec<Vec<u8>> {
    frames.map(|f| f.to_vec()).collect()
}

impl Shard {
    /// Every connection this shard holds.
    pub fn conn_ids(&self) -> Vec<ConnRef> {
        self.conn_refs().map(|(r, _)| r).collect()
    }

    /// Whether nothing this shard started waits to finish: no join waits
    /// for its owner, no answer for the journal. A shard that no longer
    /// reads anything gets there, and stays there.
    pub fn settled(&self) -> bool {
        let joining = self
            .conn_refs()
            .any(|(_, c)| c.v2().is_some_and(|v| !v.joining.is_empty()));
        !joining && self.store.disk.as_ref().is_none_or(|d| d.settled())
    }

    /// This shard's connections and directory slice as records, with each
    /// connection's socket in the same order; `input_of` gives what each
    /// one's driver holds.
    pub fn export(&self, mut input_of: impl FnMut(ConnRef) -> Input) -> Result<(ShardState, Vec<RawFd>), HandoffError> {
        let mut conns = Vec::with_capacity(self.nr_conns());
        let mut fds = Vec::with_capacity(self.nr_conns());
        for (r, c) in self.conn_refs() {
            let session = match &c.session {
                Session::V1 { room, accepts } => SessionState::V1 {
                    room: room.as_ref().map(|(n, _)| n.to_string()),
                    accepts: accepts.to_vec(),
                },
                Session::V2(v) => {
                    if !v.joining.is_empty() {
                        return Err(HandoffError::Joining(r));
                    }
                    SessionState::V2 {
                        rooms: v.rooms.iter().map(|(n, _)| n.to_string()).collect(),
                        patterns: v.patterns.iter().map(|p| p.to_string()).collect(),
                        held: owned(v.held.frames().cloned()),
                        limit: v.limit as u64,
                        publish_left: v.publish_left,
                        publish_at: v.publish_at,
                        ops_left: v.ops_left,
                        ops_at: v.ops_at,
                    }
                }
            };
            let token = c.token.as_deref().map(|t| TokenState {
                mid: t.grant.mid,
                exp: t.grant.exp,
                rooms: t
                    .grant
                    .rooms
                    .as_ref()
                    .map(|g| g.iter().map(|s| s.to_string()).collect()),
                publish: t.grant.publish.iter().map(|s| s.to_string()).collect(),
                keys: t.grant.keys.iter().map(|s| s.to_string()).collect(),
                info: t.grant.info.as_ref().map(|s| s.to_string()),
                refresh_at: t.refresh_at,
                expire_at: t.expire_at,
                asked: t.asked,
            });
            conns.push(ConnState {
                conn: r,
                transport: c.transport,
                authed: c.authed,
                ver: c.ver,
                key: c.key.as_ref().map(|k| k.to_string()),
                mid: c.mid,
                ip: c.ip,
                deadline: c.deadline,
                pinged: c.pinged,
                blocked: c.blocked,
                close: c.close.map(|r| r.name().to_string()),
                token,
                session,
                out: owned(c.out.unwritten()),
                input: input_of(r),
            });
            fds.push(c.fd);
        }
        let (keys, users) = self.owners.dir.all();
        let state = ShardState {
            shard: self.id as u32,
            tick: self.conns.wheel.now(),
            next_gen: self.conns.next_gen,
            conns,
            keys: keys.into_iter().map(|(k, at, mid)| (k.to_string(), at, mid)).collect(),
            users,
            push_seq: self.owners.push_seq,
            watching: self
                .index
                .watched
                .mine
                .iter()
                .map(|(room, who)| (room.to_string(), who.clone()))
                .collect(),
        };
        Ok((state, fds))
    }

    /// Takes over the connections in `state` (another process's shard of
    /// the same index), whose sockets are `fds` in the same order. Returns
    /// each connection's input, for its driver.
    pub fn import(&mut self, state: ShardState, fds: &[RawFd]) -> Result<Vec<(ConnRef, Input)>, HandoffError> {
        if self.nr_conns() > 0 {
            return Err(HandoffError::NotEmpty(self.id));
        }
        if state.shard as usize != self.id {
            return Err(HandoffError::WrongShard {
                records: state.shard,
                shard: self.id,
            });
        }
        if fds.len() != state.conns.len() {
            return Err(HandoffError::Sockets {
                sockets: fds.len(),
                conns: state.conns.len(),
            });
        }
        // Checked before anything changes, so a refusal leaves the shard
        // as it was.
        let mut slots = std::collections::HashSet::with_capacity(state.conns.len());
        let max_conns = self.cfg().limits.max_conns;
        let max_slot = if max_conns > 0 {
            MAX_SLOT.min(u32::try_from(max_conns).unwrap_or(u32::MAX))
        } else {
            MAX_SLOT
        };
        for c in &state.conns {
            if c.conn.idx > max_slot || !slots.insert(c.conn.idx) {
                return Err(HandoffError::Slot(c.conn.idx));
            }
            if c.input.ws.is_some() == (c.transport == Transport::Tcp) {
                return Err(HandoffError::Input(c.conn.idx));
            }
            if let Some(name) = c.close.as_deref().filter(|n| CloseReason::from_name(n).is_none()) {
                return Err(HandoffError::Reason(name.to_string()));
            }
            let (rooms, patterns) = match &c.session {
                SessionState::V1 { room, .. } => (room.as_slice(), &[][..]),
                SessionState::V2 { rooms, patterns, .. } => (rooms.as_slice(), patterns.as_slice()),
            };
            let is = |name: &str, kind| pattern::check(name).is_ok_and(|k| k == kind);
            if let Some(bad) = (rooms.iter().find(|r| !is(r, Kind::Literal)))
                .or_else(|| patterns.iter().find(|p| !is(p, Kind::Pattern)))
            {
                return Err(HandoffError::Room(bad.clone()));
            }
        }
        let refs: std::collections::HashSet<ConnRef> = state.conns.iter().map(|c| c.conn).collect();
        if let Some((room, _)) = (state.watching.iter()).find(|(_, who)| who.iter().any(|r| !refs.contains(r))) {
            return Err(HandoffError::Watcher(room.clone()));
        }
        self.conns.wheel = super::conns::wheel::Wheel::starting_at(state.tick);
        self.conns.next_gen = state.next_gen;
        let mut later = Vec::with_capacity(state.conns.len());
        let mut inputs = Vec::with_capacity(state.conns.len());
        let records: Vec<(usize, Conn)> = state
            .conns
            .into_iter()
            .zip(fds)
            .map(|(c, &fd)| {
                let (session, rooms) = match c.session {
                    SessionState::V1 { room, accepts } => (
                        Session::V1 {
                            room: None,
                            accepts: accepts.into(),
                        },
                        Rooms::V1(room),
                    ),
                    SessionState::V2 {
                        rooms,
                        patterns,
                        held,
                        limit,
                        publish_left,
                        publish_at,
                        ops_left,
                        ops_at,
                    } => (
                        Session::V2(Box::new(V2Conn {
                            limit: limit as usize,
                            publish_left,
                            publish_at,
                            ops_left,
                            ops_at,
                            ..V2Conn::default()
                        })),
                        Rooms::V2 { rooms, patterns, held },
                    ),
                };
                let token = c.token.map(|t| {
                    Box::new(Token {
                        grant: Grant {
                            mid: t.mid,
                            exp: t.exp,
                            rooms: t.rooms.map(|g| g.into_iter().map(Into::into).collect()),
                            publish: t.publish.into_iter().map(Into::into).collect(),
                            keys: t.keys.into_iter().map(Into::into).collect(),
                            info: t.info.map(Into::into),
                        },
                        refresh_at: t.refresh_at,
                        expire_at: t.expire_at,
                        asked: t.asked,
                    })
                });
                inputs.push((c.conn, c.input));
                later.push((c.conn, rooms, c.out));
                let record = Conn {
                    gen: c.conn.gen,
                    out: Outbound::default(),
                    authed: c.authed,
                    ver: c.ver,
                    key: c.key.map(Arc::from),
                    mid: c.mid,
                    session,
                    deadline: c.deadline,
                    wheel_at: 0,
                    close: c.close.as_deref().and_then(CloseReason::from_name),
                    ip: c.ip,
                    transport: c.transport,
                    pinged: c.pinged,
                    blocked: c.blocked,
                    token,
                    fd,
                };
                (c.conn.idx as usize, record)
            })
            .collect();
        self.conns.slab = records.into_iter().collect();
        let now = self.clock.now;
        for (r, rooms, out) in later {
            let (ip, authed) = {
                let c = &self.conns.slab[r.idx as usize];
                (c.ip, c.authed)
            };
            self.shared.admission.adopt(ip, authed);
            *self.conns.ips.entry(ip).or_default() += 1;
            ShardStats::add(&self.stats().conns, 1);
            if authed {
                ShardStats::add(&self.stats().authed, 1);
            }
            match rooms {
                Rooms::V1(Some(room)) => {
                    let (name, pos) = self.index.rooms.join(&room, r);
                    if pos == 0 {
                        self.first_member(&room);
                    }
                    if let Some(Conn {
                        session: Session::V1 { room, .. },
                        ..
                    }) = self.conn_mut(r)
                    {
                        *room = Some((name, pos));
                    }
                }
                Rooms::V1(None) => {}
                Rooms::V2 { rooms, patterns, held } => {
                    for room in rooms {
                        let (name, pos) = self.index.rooms.join(&room, r);
                        if pos == 0 {
                            self.first_member(&room);
                        }
                        if let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) {
                            v2.rooms.push((name, pos));
                        }
                    }
                    for p in patterns {
                        self.index.patterns.insert(&p, r);
                        self.pattern_interest(&p, 1);
                        if let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) {
                            v2.patterns.push(p.as_str().into());
                        }
                    }
                    self.requeue(r, |c| {
                        if let Some(v2) = c.v2_mut() {
                            for f in held {
                                // Held frames were under the cap once; the
                                // same frames are again.
                                let _ = v2.held.push(Bytes::from(f), usize::MAX);
                            }
                        }
                    });
                }
            }
            let queued = !out.is_empty();
            self.requeue(r, |c| {
                for f in out {
                    let n = f.len();
                    c.out.push_unbounded(Bytes::from(f), n, now);
                }
            });
            if queued {
                self.mark_dirty(r);
            }
            if self.conn(r).is_some_and(Conn::closing) {
                self.wake_conn(r);
            }
            self.schedule(r);
        }
        self.conns.ips_dirty = true;
        let keys = state
            .keys
            .into_iter()
            .map(|(k, at, mid)| (Arc::from(k), at, mid))
            .collect();
        self.owners.dir = Directory::restore(keys, state.users);
        self.owners.push_seq = self.owners.push_seq.max(state.push_seq);
        for (room, who) in state.watching {
            let room: Arc<str> = room.into();
            for r in who {
                self.watch(r, &room);
            }
        }
        Ok(inputs)
    }
}

/// A record's rooms, joined once every record is in its slot.
enum Rooms {
    V1(Option<String>),
    V2 {
        rooms: Vec<String>,
        patterns: Vec<String>,
        held: Vec<Vec<u8>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of `fuzz/corpus/handoff_records/seed-three-conns`: a
    /// version-1 member with a key, a version-2 one with rooms, a pattern,
    /// held frames and a presence watch, and a closing one with a token.
    fn sample() -> ShardState {
        let c = |idx, session, close: Option<&str>| ConnState {
            conn: ConnRef { idx, gen: idx + 1 },
            transport: Transport::Tcp,
            authed: true,
            ver: 1,
            key: Some(format!("k{idx}")),
            mid: idx as i64 + 1,
            ip: "127.0.0.1".parse().unwrap(),
            deadline: 40,
            pinged: false,
            blocked: false,
            close: close.map(String::from),
            token: None,
            session,
            out: vec![vec![0, 0, 0, 16, 0, 16, 0, 1, 0, 0, 3, 232, 0, 0, 0, 0]],
            input: Input::default(),
        };
        let v1 = SessionState::V1 {
            room: Some("live://1".into()),
            accepts: vec![1000],
        };
        let v2 = SessionState::V2 {
            rooms: vec!["live://1".into(), "live://2".into()],
            patterns: vec!["live://*".into()],
            held: vec![vec![1, 2, 3]],
            limit: 1 << 20,
            publish_left: 5,
            publish_at: 3,
            ops_left: 7,
            ops_at: 3,
        };
        let mut closing = c(
            2,
            SessionState::V1 {
                room: None,
                accepts: vec![],
            },
            Some("restart"),
        );
        closing.transport = Transport::Ws;
        closing.input = Input {
            partial: vec![0x82, 0x85],
            ws: Some(crate::proto::ws::session::Saved {
                state: crate::proto::ws::session::State::Open { echo: false },
                assembling: Some(crate::proto::ws::reader::Assembling {
                    text: false,
                    buf: vec![0, 0, 0, 20],
                }),
            }),
        };
        closing.token = Some(TokenState {
            mid: 3,
            exp: 1_700_000_100,
            rooms: Some(vec!["live://>".into()]),
            publish: vec![],
            keys: vec!["k2".into()],
            info: Some("{\"name\":\"ann\"}".into()),
            refresh_at: 90,
            expire_at: 101,
            asked: false,
        });
        let at = |idx| GlobalConn {
            shard: 0,
            conn: ConnRef { idx, gen: idx + 1 },
        };
        ShardState {
            shard: 0,
            tick: 12,
            next_gen: 9,
            conns: vec![c(0, v1, None), c(1, v2, None), closing],
            keys: vec![("k0".into(), at(0), 1)],
            users: vec![(1, vec![(at(0), false)]), (2, vec![(at(1), true)])],
            push_seq: 4,
            watching: vec![("live://1".into(), vec![ConnRef { idx: 1, gen: 2 }])],
        }
    }

    /// The format is part of `handoff::wire::VERSION`: a change to these
    /// records that changes their bytes must bump it, and renew the seed
    /// (`VOLLEY_RENEW_SEED=1 cargo test --lib pinned_sample` writes it).
    #[test]
    fn the_records_encode_as_the_pinned_sample_for_this_version() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/handoff_records/seed-three-conns"
        );
        if std::env::var_os("VOLLEY_RENEW_SEED").is_some() {
            std::fs::write(path, encode(&sample())).unwrap();
        }
        let pinned = std::fs::read(path).unwrap();
        let pinned = &pinned[..];
        assert_eq!(VERSION, 1, "a new version: renew the seed");
        assert_eq!(encode(&sample()), pinned);
        assert_eq!(decode(pinned), Some(sample()));
    }
}
