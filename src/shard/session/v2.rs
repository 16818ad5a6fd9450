//! The version-2 client session (volley native): auth that tells the
//! connection its key, many rooms per connection with resume, and numbered
//! errors instead of closes wherever the connection can go on.
//!
//! Runs on the connection's shard, called by `session` once per decoded
//! frame of a connection that authenticated with version 2; never awaits.
//! docs/PROTOCOL.md is the contract this implements; the join itself
//! (owner round trip, replay, membership) is `resume`.
//!
//! ```text
//! op 2  heartbeat   deadline renewed; op 3, empty body
//! op 6  disconnect  closed (client_disconnect), no reply
//! op 7  auth        (first frame only) op 8 {"key","mid"}; again later: protocol_error
//! op 9  batch       each inner frame in order
//! op 40 join        op 41 {"room","epoch","offset"[,"recovered"[,"reason"]]}, then any replay;
//!                   a pattern: op 41 {"room","pattern":true}, subscribed at once
//! op 42 leave       op 43 {"room"}
//! op 46 ack         op 47 {"count"}; the user's owner forgets those pushes
//! op 48 read        op 49 {"room","offset","unread"}: the user's read mark
//! op 52 publish     op 53 {"room","offset","epoch","duplicate"} once the room's owner has it (`access`)
//! op 54 token       op 55 {"exp"}: the connection's token replaced (`access`)
//! other             op 50 unknown_op (the connection stays)
//! ```
//!
//! Invariants: every reply and push a version-2 connection gets is a
//! version-2 frame; a refused request gets op 50 with its sequence and the
//! connection goes on; only framing errors, a bad auth and protocol
//! violations that leave nothing sensible to answer close it.

use crate::metrics::ShardStats;
use crate::proto::binary::{op, Frame, VERSION_NATIVE};
use crate::proto::body;
use crate::proto::close::CloseReason;
use crate::proto::pattern::{self, Kind};
use crate::proto::v2::{self, ErrorCode};
use crate::shard::conns::{Session, V2Conn};
use crate::shard::mesh::{owner_of_mid, ConnRef, GlobalConn, ShardMsg};
use crate::shard::patterns::PatternIndex;
use crate::shard::state::Shard;
use std::sync::Arc;

impl Shard {
    /// Op 7 with version 2 on a new connection: the body names the user
    /// (auth off) or carries its token (`access`); the reply says which key
    /// the connection has.
    pub(in crate::shard) fn v2_auth(&mut self, r: ConnRef, f: Frame<'_>) {
        let a = match body::parse_auth(f.body) {
            Ok(a) => a,
            Err(e) => return self.close(r, CloseReason::BadAuth, &e.to_string()),
        };
        let (mid, token) = match self.authenticate(&a) {
            Ok(x) => x,
            Err((reason, detail)) => return self.close(r, reason, &detail),
        };
        let key: Option<Arc<str>> = (!a.key.is_empty()).then(|| a.key.as_str().into());
        let limit = self.cfg().limits.outbound_limit;
        let (burst, tick) = (self.cfg().client.publish_burst, self.conns.wheel.now());
        let ops = self.cfg().client.room_op_burst;
        let session = Session::V2(Box::new(V2Conn {
            limit,
            publish_left: burst,
            publish_at: tick,
            ops_left: ops,
            ops_at: tick,
            ..V2Conn::default()
        }));
        self.set_authed(r, VERSION_NATIVE, (mid, key.clone(), token), session);
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        let shown = key
            .as_deref()
            .map_or_else(|| at.assigned_key(&self.shared.keys), str::to_string);
        // The reply first: the announce may queue pushes owed to the user
        // (when its owner is this shard, at once), which must follow it.
        self.reply(r, VERSION_NATIVE, op::AUTH_REPLY, f.seq, &v2::auth_reply(&shown, mid));
        self.announce(at, key, mid, true);
    }

    /// An operation on an authenticated version-2 connection.
    pub(in crate::shard) fn v2_frame(&mut self, r: ConnRef, f: Frame<'_>) {
        match f.op {
            op::HEARTBEAT => {
                self.renew(r);
                self.reply(r, VERSION_NATIVE, op::HEARTBEAT_REPLY, f.seq, &[]);
            }
            op::DISCONNECT => self.close(r, CloseReason::ClientDisconnect, ""),
            op::AUTH => self.close(r, CloseReason::ProtocolError, "already authenticated"),
            op::RAW => self.on_batch(r, f.body),
            v2::op::JOIN => self.v2_join(r, f),
            v2::op::LEAVE => self.v2_leave(r, f),
            v2::op::ACK => self.v2_ack(r, f),
            v2::op::READ => self.v2_read(r, f),
            v2::op::PUBLISH => self.v2_publish(r, f),
            v2::op::TOKEN => self.v2_token(r, f),
            other => {
                ShardStats::add(&self.stats().unknown_ops, 1);
                let msg = format!("operation {other} is not part of protocol version 2");
                self.v2_error(r, f.seq, ErrorCode::UnknownOp, &msg);
            }
        }
    }

    /// Refuses a request with `code`; the connection goes on.
    pub(in crate::shard) fn v2_error(&mut self, r: ConnRef, seq: u32, code: ErrorCode, message: &str) {
        self.stats().error(code);
        self.reply(r, VERSION_NATIVE, v2::op::ERROR, seq, &code.body(message));
    }

    fn v2_join(&mut self, r: ConnRef, f: Frame<'_>) {
        let j = match v2::parse_join(f.body) {
            Ok(j) => j,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        let kind = match pattern::check(&j.room) {
            Ok(k) => k,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        if kind == Kind::Pattern && (j.resume.is_some() || j.presence) {
            let msg = "a pattern spans rooms: it has no offset to resume from and no presence";
            return self.v2_error(r, f.seq, ErrorCode::BadRequest, msg);
        }
        if !self.may_join(r, &j.room) {
            let msg = format!("the token does not allow joining {}", j.room);
            return self.v2_error(r, f.seq, ErrorCode::Forbidden, &msg);
        }
        if !self.room_op(r, f.seq) {
            return;
        }
        let max = self.cfg().client.max_rooms;
        let Some(v2) = self.conn(r).and_then(|c| c.v2()) else {
            return;
        };
        if v2.has(&j.room) {
            let msg = format!("{} is joined or being joined", j.room);
            return self.v2_error(r, f.seq, ErrorCode::AlreadyJoined, &msg);
        }
        if v2.nr_rooms() >= max {
            let msg = format!("{max} rooms per connection ([client] max_rooms)");
            return self.v2_error(r, f.seq, ErrorCode::RoomLimit, &msg);
        }
        if kind == Kind::Pattern {
            if let Err(msg) = self.pattern_room(r, &j.room) {
                return self.v2_error(r, f.seq, ErrorCode::PatternLimit, &msg);
            }
            self.index.patterns.insert(&j.room, r);
            self.pattern_interest(&j.room, 1);
            if let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) {
                v2.patterns.push(j.room.as_str().into());
            }
            return self.reply(
                r,
                VERSION_NATIVE,
                v2::op::JOIN_REPLY,
                f.seq,
                &v2::pattern_join_reply(&j.room),
            );
        }
        self.start_join(r, f.seq, j.room.into(), j.resume, j.presence);
    }

    fn v2_ack(&mut self, r: ConnRef, f: Frame<'_>) {
        let ids = match v2::parse_ack(f.body) {
            Ok(ids) => ids,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        let Some(mid) = self.user_of(r, f.seq) else { return };
        let owner = owner_of_mid(mid, self.nr());
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        // The owner answers (op 47), once the acknowledgement is kept.
        let from = Some((at, f.seq));
        self.route(owner, ShardMsg::Ack { mid, ids, from });
    }

    /// The owner kept an acknowledgement of connection `r`: op 47.
    pub(in crate::shard) fn ack_reply(&mut self, r: ConnRef, seq: u32, count: usize) {
        let body = serde_json::json!({ "count": count }).to_string();
        self.reply(r, VERSION_NATIVE, v2::op::ACK_REPLY, seq, body.as_bytes());
    }

    fn v2_read(&mut self, r: ConnRef, f: Frame<'_>) {
        let (room, offset) = match v2::parse_read(f.body) {
            Ok(x) => x,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        let Some(mid) = self.user_of(r, f.seq) else { return };
        if pattern::kind(&room) != Kind::Literal {
            let msg = "a pattern spans rooms: it has no offset to mark";
            return self.v2_error(r, f.seq, ErrorCode::BadRequest, msg);
        }
        // A mark answers the room's newest offset: only for a room the
        // connection may join.
        if !self.may_join(r, &room) {
            let msg = format!("the token does not allow reading {room}");
            return self.v2_error(r, f.seq, ErrorCode::Forbidden, &msg);
        }
        if !self.room_op(r, f.seq) {
            return;
        }
        self.mark_in(r, f.seq, room.into(), mid, offset);
    }

    /// The user `r` authenticated as, for an operation that needs one
    /// (acks, read marks); otherwise refuses request `seq` as `NoUser`.
    fn user_of(&mut self, r: ConnRef, seq: u32) -> Option<i64> {
        let mid = self.conn(r).map_or(0, |c| c.mid);
        if mid == 0 {
            let msg = "this connection authenticated without a mid";
            self.v2_error(r, seq, ErrorCode::NoUser, msg);
            return None;
        }
        Some(mid)
    }

    /// Whether `r` may hold one more pattern, `pattern`: under `[client]
    /// max_patterns`, and the index under this shard's share of `[client]
    /// pattern_memory` with it.
    fn pattern_room(&self, r: ConnRef, pattern: &str) -> Result<(), String> {
        let c = &self.cfg().client;
        let held = self.conn(r).and_then(|c| c.v2()).map_or(0, |v| v.patterns.len());
        if held >= c.max_patterns {
            return Err(format!(
                "{} patterns per connection ([client] max_patterns)",
                c.max_patterns
            ));
        }
        let share = c.pattern_memory / self.nr();
        if self.index.patterns.bytes() + PatternIndex::<ConnRef>::cost_of(pattern) > share {
            ShardStats::add(&self.stats().pattern_refused, 1);
            return Err("the server's patterns hold [client] pattern_memory".into());
        }
        Ok(())
    }

    /// On `r`'s shard: unsubscribes it from `pattern` if it holds it.
    /// Returns whether it did.
    pub(in crate::shard) fn leave_pattern(&mut self, r: ConnRef, pattern: &str) -> bool {
        let held = self.conn_mut(r).and_then(|c| c.v2_mut()).and_then(|v| {
            let i = v.patterns.iter().position(|p| **p == *pattern)?;
            Some(v.patterns.swap_remove(i))
        });
        let Some(p) = held else { return false };
        self.index.patterns.remove(&p, r);
        self.pattern_interest(&p, -1);
        true
    }

    fn v2_leave(&mut self, r: ConnRef, f: Frame<'_>) {
        let room = match v2::parse_leave(f.body) {
            Ok(room) => room,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        let joining = self
            .conn(r)
            .and_then(|c| c.v2())
            .is_some_and(|v| v.joining.iter().any(|j| **j == *room));
        if joining {
            let msg = format!("the join of {room} has not been answered yet");
            return self.v2_error(r, f.seq, ErrorCode::JoinPending, &msg);
        }
        if self.leave_v2_room(r, &room) || self.leave_pattern(r, &room) {
            self.reply(r, VERSION_NATIVE, v2::op::LEAVE_REPLY, f.seq, &v2::leave_reply(&room));
        } else {
            self.v2_error(r, f.seq, ErrorCode::NotJoined, &format!("{room} is not joined"));
        }
    }
}
