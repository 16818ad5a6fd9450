//! Putting another process's records into a fresh shard at the same slots
//! (see the parent module).

use super::{HandoffError, Input, SessionState, ShardState, MAX_SLOT};
use crate::auth::jwt::Grant;
use crate::metrics::ShardStats;
use crate::proto::close::CloseReason;
use crate::proto::pattern::{self, Kind};
use crate::shard::conns::{Conn, Session, Transport, V2Conn};
use crate::shard::mesh::ConnRef;
use crate::shard::outbound::Outbound;
use crate::shard::owners::directory::Directory;
use crate::shard::state::Shard;
use crate::shard::token::Token;
use bytes::Bytes;
use std::os::fd::RawFd;
use std::sync::Arc;

impl Shard {
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
        if let Some((bad, ..)) = state
            .cluster_rooms
            .iter()
            .find(|(r, ..)| !pattern::check(r).is_ok_and(|k| k == Kind::Literal))
        {
            return Err(HandoffError::Room(bad.clone()));
        }
        let refs: std::collections::HashSet<ConnRef> = state.conns.iter().map(|c| c.conn).collect();
        if let Some((room, _)) = (state.watching.iter()).find(|(_, who)| who.iter().any(|r| !refs.contains(r))) {
            return Err(HandoffError::Watcher(room.clone()));
        }
        self.conns.wheel = crate::shard::conns::wheel::Wheel::starting_at(state.tick);
        self.conns.next_gen = state.next_gen;
        // Before the members' interest subscribes the rooms again, so their
        // sync reads what they missed from there.
        self.set_cluster_positions(state.cluster_rooms);
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
        // Room counts and client addresses are seen at once, not at the
        // first sweep: for the clients nothing changed.
        self.publish_view();
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
