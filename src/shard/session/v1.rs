//! The version-1 client session (goim-compatible): what each operation a
//! client sends does, from auth (op 7) to unsubscribe (op 16).
//!
//! Runs on the connection's shard, called by `session` once per decoded
//! frame; never awaits. docs/PROTOCOL.md is the contract this implements.
//!
//! ```text
//! op 2  heartbeat       deadline renewed; op 3 with the room's online count (u32)
//! op 4  send message    op 5, empty
//! op 6  disconnect      closed (client_disconnect), no reply
//! op 7  auth            (first frame only) op 8; again later: protocol_error
//! op 9  batch           each inner frame in order
//! op 12 change room     joined (empty body: left); op 13, body echoed;
//!                       a room the token does not allow: closed (room_not_allowed)
//! op 14 / 16 accepts    codes added / removed; op 15 / 17, body echoed
//! other                 ignored, counted as unknown_ops
//! ```
//!
//! Invariants: a version-1 connection is never sent a version-2 frame;
//! replies carry the request's version and sequence; every body is bounded
//! by `proto::body` before anything is stored.

use crate::metrics::ShardStats;
use crate::proto::binary::{self, op, Frame};
use crate::proto::body;
use crate::proto::close::CloseReason;
use crate::shard::conns::{Conn, Session};
use crate::shard::mesh::{ConnRef, GlobalConn};
use crate::shard::state::Shard;
use std::sync::Arc;

impl Shard {
    /// An operation on an authenticated version-1 connection.
    pub(in crate::shard) fn v1_frame(&mut self, r: ConnRef, f: Frame<'_>) {
        match f.op {
            op::HEARTBEAT => {
                self.renew(r);
                let count = self.online(r);
                self.reply(r, f.ver, op::HEARTBEAT_REPLY, f.seq, &count.to_be_bytes());
            }
            op::SEND_MSG => self.reply(r, f.ver, op::SEND_MSG_REPLY, f.seq, &[]),
            op::DISCONNECT => self.close(r, CloseReason::ClientDisconnect, ""),
            op::AUTH => self.close(r, CloseReason::ProtocolError, "already authenticated"),
            op::RAW => self.on_batch(r, f.body),
            op::CHANGE_ROOM => match body::parse_room(f.body) {
                Ok(room) if !room.is_empty() && !self.may_join(r, room) => {
                    let detail = format!("the token does not allow {room}");
                    self.close(r, CloseReason::RoomNotAllowed, &detail);
                }
                Ok(room) => {
                    self.change_room(r, room);
                    self.reply(r, f.ver, op::CHANGE_ROOM_REPLY, f.seq, f.body);
                }
                Err(e) => self.close(r, CloseReason::BadBody, &e.to_string()),
            },
            op::SUB | op::UNSUB => match body::parse_ops(f.body) {
                Ok(ops) => self.change_accepts(r, f, &ops),
                Err(e) => self.close(r, CloseReason::BadBody, &e.to_string()),
            },
            _ => ShardStats::add(&self.stats().unknown_ops, 1),
        }
    }

    /// Members of `r`'s room on every shard (0 without a room): this
    /// shard's live count, the others' last published ones.
    fn online(&self, r: ConnRef) -> u32 {
        let Some(Conn {
            session: Session::V1 {
                room: Some((room, _)), ..
            },
            ..
        }) = self.conn(r)
        else {
            return 0;
        };
        let live = self.index.rooms.count(room);
        let n = self.shared.online_room(room, Some((self.id, live)));
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Op 14 adds `ops` to the accepts filter, op 16 removes them.
    fn change_accepts(&mut self, r: ConnRef, f: Frame<'_>, ops: &[u32]) {
        let Some(Conn {
            session: Session::V1 { accepts, .. },
            ..
        }) = self.conn_mut(r)
        else {
            return;
        };
        let mut acc = std::mem::take(accepts).into_vec();
        if f.op == op::SUB {
            acc.extend_from_slice(ops);
            acc.sort_unstable();
            acc.dedup();
        } else {
            acc.retain(|a| !ops.contains(a));
        }
        let too_many = acc.len() > body::MAX_ACCEPTS;
        *accepts = acc.into_boxed_slice();
        if too_many {
            return self.close(r, CloseReason::BadBody, "too many accepted operations");
        }
        let reply = if f.op == op::SUB {
            op::SUB_REPLY
        } else {
            op::UNSUB_REPLY
        };
        self.reply(r, f.ver, reply, f.seq, f.body);
    }

    /// Op 7 on a new connection: the body names the user, key, room and
    /// accepts (trusted, as in goim, with auth off; with JWT the token names
    /// the user and must allow the room).
    pub(in crate::shard) fn v1_auth(&mut self, r: ConnRef, f: Frame<'_>) {
        let a = match body::parse_auth(f.body) {
            Ok(a) => a,
            Err(e) => return self.close(r, CloseReason::BadAuth, &e.to_string()),
        };
        let (mid, token) = match self.authenticate(&a) {
            Ok(x) => x,
            Err((reason, detail)) => return self.close(r, reason, &detail),
        };
        if let Some(t) = &token {
            if !a.room_id.is_empty() && !t.grant.may_join(&a.room_id) {
                let detail = format!("the token does not allow {}", a.room_id);
                return self.close(r, CloseReason::RoomNotAllowed, &detail);
            }
        }
        let key: Option<Arc<str>> = (!a.key.is_empty()).then(|| a.key.as_str().into());
        let mut accepts: Vec<u32> = a.accepts.iter().filter_map(|&x| u32::try_from(x).ok()).collect();
        accepts.sort_unstable();
        accepts.dedup();
        let session = Session::V1 {
            room: None,
            accepts: accepts.into_boxed_slice(),
        };
        self.set_authed(r, binary::VERSION_GOIM, (mid, key.clone(), token), session);
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        // The reply first: the announce may queue pushes owed to the user
        // (when its owner is this shard, at once), which must follow it.
        self.reply(r, f.ver, op::AUTH_REPLY, f.seq, &[]);
        self.announce(at, key, mid, true);
        if !a.room_id.is_empty() {
            self.change_room(r, &a.room_id);
        }
    }
}
