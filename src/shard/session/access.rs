//! Who a connection is and what it may do, on its shard: the token checked
//! at auth (`[auth] mode = "jwt"`), its refresh and expiry, the connection
//! limits checked at accept and at auth, and client publish (version 2)
//! with its rate and size limits.
//!
//! Runs on the connection's shard, called from the sessions (`v1`, `v2`),
//! `lifecycle` and the sweep; never awaits. What a token grants is
//! `auth::jwt::Grant`, its timers are `token::Token`; what they mean for
//! each operation is decided here.
//!
//! ```text
//! auth (op 7)   mode off: the body names the user;  mode jwt: Verifier → Grant, the token's sub is the user,
//!               a key in the body must be in its keys claim (else key_not_allowed)
//! sweep         refresh_at (exp - refresh_secs): op 56 to a version-2 connection (once)
//!               expire_at (exp + leeway + grace): closed as token_expired (either version)
//! op 54 token   verified, same user → op 55 {"exp"}, timers restart, rooms and patterns the new
//!               token's `rooms` no longer allow are left (op 43 {"room","reason":"forbidden"});
//!               else error token_refused
//! op 52 publish room allowed (token's publish) → payload limit → rate bucket → room owner → op 53
//! ```
//!
//! Invariants: with auth on, no connection is authenticated without a
//! verified token, and every one is closed by its token's expiry plus
//! grace unless it refreshed; a refusal of a version-2 request is an error
//! reply (op 50), never a close; with auth off nothing here changes goim's
//! behaviour but the connection limits an operator configured.

use crate::auth::jwt::{Grant, TokenError};
use crate::config::{AuthMode, UserConnPolicy};
use crate::metrics::ShardStats;
use crate::proto::binary::{Frame, VERSION_NATIVE};
use crate::proto::body::AuthBody;
use crate::proto::close::CloseReason;
use crate::proto::pattern::{self, Kind};
use crate::proto::v2::{self, op, ErrorCode};
use crate::shard::mesh::{Answer, ConnRef, GlobalConn, Publication, PublishOutcome};
use crate::shard::state::Shard;
use crate::shard::token::{Token, TokenStep};
use bytes::Bytes;
use std::rc::Rc;
use std::sync::Arc;

/// Why an auth is refused: the close reason and its detail.
pub(in crate::shard) type Refusal = (CloseReason, String);

/// Publishes a connection may make now, by its bucket: `(left, at)` is
/// what it had at tick `at`.
fn refill(left: u32, at: u32, now: u32, rate: u32, burst: u32) -> u32 {
    let add = u64::from(now.saturating_sub(at)) * u64::from(rate);
    (u64::from(left) + add).min(u64::from(burst)) as u32
}

impl Shard {
    /// A connection was accepted: counts it against the process-wide
    /// limits; one past a limit is closed with the limit's name.
    pub(in crate::shard) fn admit(&mut self, r: ConnRef) {
        let Some(ip) = self.conn(r).map(|c| c.ip) else { return };
        let shared = self.shared.clone();
        if let Err(reason) = shared.admission.admit(ip, self.clock.unix, &shared.config.limits) {
            let l = &shared.config.limits;
            let detail = match reason {
                CloseReason::IpRateLimit => format!("{} connections per second per IP", l.conn_rate_per_ip),
                CloseReason::IpConnLimit => format!("{} connections per IP", l.max_conns_per_ip),
                CloseReason::IpHandshakeLimit => {
                    format!("{} connections per IP not yet authenticated", l.max_handshakes_per_ip)
                }
                _ => format!("{} connections on this server", l.max_conns),
            };
            self.close(r, reason, &detail);
        }
    }

    /// Who the auth body's connection is: with auth off the user the body
    /// names; with JWT the token's, and its grant. `Err`: why it is closed.
    pub(in crate::shard) fn authenticate(&self, a: &AuthBody) -> Result<(i64, Option<Box<Token>>), Refusal> {
        let cfg = &self.cfg().auth;
        if cfg.mode == AuthMode::Off {
            return Ok((a.mid, None));
        }
        let refused = |e: TokenError| (e.reason(), e.to_string());
        let Some(verifier) = &self.shared.verifier else {
            return Err((CloseReason::TokenBadSignature, "no token keys are loaded".into()));
        };
        let grant = verifier.verify(&a.token, self.clock.unix).map_err(refused)?;
        if !a.key.is_empty() && !grant.may_hold_key(&a.key) {
            let detail = format!("the token's keys claim does not list {:?}", a.key);
            return Err((CloseReason::KeyNotAllowed, detail));
        }
        Ok((grant.mid, Some(Box::new(self.token_timers(grant)))))
    }

    /// A token's timers from now: asked `refresh_secs` before `exp`, closed
    /// `leeway + grace` after it.
    fn token_timers(&self, grant: Grant) -> Token {
        let cfg = &self.cfg().auth;
        let tick = self.conns.wheel.now();
        let left = grant.exp.saturating_sub(self.clock.unix);
        let ticks = |secs: u64| tick.saturating_add(u32::try_from(secs).unwrap_or(u32::MAX));
        Token {
            refresh_at: ticks(left.saturating_sub(u64::from(cfg.refresh_secs))),
            expire_at: ticks(left + cfg.leeway_secs + u64::from(cfg.grace_secs)),
            asked: false,
            grant,
        }
    }

    /// Whether `r` may join `room` (a room or pattern): always with auth
    /// off; with a token, if its `rooms` claim allows it.
    pub(in crate::shard) fn may_join(&self, r: ConnRef, room: &str) -> bool {
        self.conn(r)
            .and_then(|c| c.token.as_ref())
            .is_none_or(|t| t.grant.may_join(room))
    }

    /// The sweep found `r`'s token due (`Conn::token_due`).
    pub(in crate::shard) fn token_step(&mut self, r: ConnRef, step: TokenStep) {
        match step {
            TokenStep::Expire => self.close(r, CloseReason::TokenExpired, "no new token before expiry"),
            TokenStep::Ask(exp) => {
                let body = serde_json::json!({ "exp": exp }).to_string();
                self.reply(r, VERSION_NATIVE, op::REFRESH, 0, body.as_bytes());
            }
        }
    }

    /// Op 54: a new token for the same user replaces the old one.
    pub(in crate::shard) fn v2_token(&mut self, r: ConnRef, f: Frame<'_>) {
        let Some(mid) = self.conn(r).filter(|c| c.token.is_some()).map(|c| c.mid) else {
            return self.v2_error(
                r,
                f.seq,
                ErrorCode::TokenRefused,
                "auth is off: there is no token to refresh",
            );
        };
        let token = match v2::parse_token(f.body) {
            Ok(t) => t,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        let Some(verifier) = &self.shared.verifier else { return };
        let grant = match verifier.verify(&token, self.clock.unix) {
            Ok(g) if g.mid == mid => g,
            Ok(g) => {
                let msg = format!("the token is for user {}, this connection is {mid}", g.mid);
                return self.v2_error(r, f.seq, ErrorCode::TokenRefused, &msg);
            }
            Err(e) => {
                let msg = format!("{}: {e}", e.reason().name());
                return self.v2_error(r, f.seq, ErrorCode::TokenRefused, &msg);
            }
        };
        let exp = grant.exp;
        let t = Box::new(self.token_timers(grant));
        if let Some(c) = self.conn_mut(r) {
            c.token = Some(t);
        }
        self.schedule(r);
        let body = serde_json::json!({ "exp": exp }).to_string();
        self.reply(r, VERSION_NATIVE, op::TOKEN_REPLY, f.seq, body.as_bytes());
        self.leave_ungranted(r);
    }

    /// After a token refresh: takes `r` out of every room and pattern its
    /// new token no longer allows, telling it with an unasked op 43 each.
    fn leave_ungranted(&mut self, r: ConnRef) {
        let Some(c) = self.conn(r) else { return };
        let (Some(v2), Some(t)) = (c.v2(), c.token.as_ref()) else {
            return;
        };
        let rooms = v2.rooms.iter().map(|(n, _)| n);
        let gone: Vec<Rc<str>> = rooms
            .chain(&v2.patterns)
            .filter(|n| !t.grant.may_join(n))
            .cloned()
            .collect();
        for name in gone {
            if self.leave_v2_room(r, &name) || self.leave_pattern(r, &name) {
                ShardStats::add(&self.stats().left_ungranted, 1);
                let body = v2::left_body(&name, "forbidden");
                self.reply(r, VERSION_NATIVE, op::LEAVE_REPLY, 0, &body);
            }
        }
    }

    /// On a user's owner, at register: the user's connections against
    /// `[limits] max_conns_per_user`. Returns the connection to close (the
    /// new one, or the oldest), if the user is over.
    pub(in crate::shard) fn user_over_limit(&self, mid: i64, new: GlobalConn) -> Option<GlobalConn> {
        let l = &self.cfg().limits;
        let max = l.max_conns_per_user as usize;
        let conns = self.owners.dir.user(mid);
        if max == 0 || conns.len() <= max {
            return None;
        }
        match l.user_conn_policy {
            UserConnPolicy::Refuse => Some(new),
            UserConnPolicy::CloseOldest => conns.iter().map(|c| c.0).find(|&c| c != new),
        }
    }

    /// Op 52: a client publish to one room.
    pub(in crate::shard) fn v2_publish(&mut self, r: ConnRef, f: Frame<'_>) {
        let p = match v2::parse_publish(f.body) {
            Ok(p) => p,
            Err(e) => return self.v2_error(r, f.seq, ErrorCode::BadRequest, &e.to_string()),
        };
        if pattern::kind(p.room) != Kind::Literal {
            return self.v2_error(
                r,
                f.seq,
                ErrorCode::BadRequest,
                "a client publishes to one room, not a pattern",
            );
        }
        let (rate, burst, max) = {
            let c = &self.cfg().client;
            (c.publish_rate, c.publish_burst, c.max_publish_payload)
        };
        let tick = self.conns.wheel.now();
        let Some(c) = self.conn_mut(r) else { return };
        if c.token.as_ref().is_some_and(|t| !t.grant.may_publish(p.room)) {
            let msg = format!("the token does not allow publishing to {}", p.room);
            return self.v2_error(r, f.seq, ErrorCode::Forbidden, &msg);
        }
        if p.payload.len() > max {
            let msg = format!("payload of {} bytes, limit {max}", p.payload.len());
            return self.v2_error(r, f.seq, ErrorCode::PayloadTooLarge, &msg);
        }
        let Some(v2) = c.v2_mut() else { return };
        let left = refill(v2.publish_left, v2.publish_at, tick, rate, burst);
        v2.publish_at = tick;
        if left == 0 {
            v2.publish_left = 0;
            let msg = format!("{rate} publishes per second, bursts of {burst}");
            return self.v2_error(r, f.seq, ErrorCode::RateLimited, &msg);
        }
        v2.publish_left = left - 1;
        ShardStats::add(&self.stats().client_publishes, 1);
        let room: Arc<str> = p.room.into();
        let msg = Publication {
            op: p.op,
            id: (!p.id.is_empty()).then(|| Arc::from(p.id)),
            payload: Bytes::copy_from_slice(p.payload),
            ttl: None,
            token: None,
        };
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        self.publish_room_in(room, msg, Answer::Client { at, seq: f.seq });
    }

    /// Takes one room operation (a join, a read mark: what makes a room's
    /// owner create or keep state) from `r`'s bucket; refuses it with
    /// `rate_limited` (op 50, sequence `seq`) when the bucket is empty.
    pub(in crate::shard) fn room_op(&mut self, r: ConnRef, seq: u32) -> bool {
        let (rate, burst) = {
            let c = &self.cfg().client;
            (c.room_op_rate, c.room_op_burst)
        };
        let tick = self.conns.wheel.now();
        let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) else {
            return false;
        };
        let left = refill(v2.ops_left, v2.ops_at, tick, rate, burst);
        v2.ops_at = tick;
        if left == 0 {
            v2.ops_left = 0;
            let msg = format!("{rate} joins and read marks per second, bursts of {burst}");
            self.v2_error(r, seq, ErrorCode::RateLimited, &msg);
            return false;
        }
        v2.ops_left = left - 1;
        true
    }

    /// On the publishing connection's shard: the owner's answer, as op 53.
    pub(in crate::shard) fn client_published(&mut self, r: ConnRef, seq: u32, room: &str, p: PublishOutcome) {
        let p = match p {
            Ok(p) => p,
            Err(why) => return self.v2_error(r, seq, v2::ErrorCode::Unavailable, &why),
        };
        let body = serde_json::json!({
            "room": room,
            "offset": p.offset,
            "epoch": v2::fmt_epoch(p.epoch),
            "duplicate": p.duplicate,
        })
        .to_string();
        self.reply(r, VERSION_NATIVE, op::PUBLISH_REPLY, seq, body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::refill;

    #[test]
    fn the_bucket_refills_at_the_rate_up_to_the_burst() {
        assert_eq!(refill(0, 10, 10, 5, 20), 0);
        assert_eq!(refill(0, 10, 11, 5, 20), 5);
        assert_eq!(refill(3, 10, 100, 5, 20), 20);
        assert_eq!(refill(3, 10, 9, 5, 20), 3, "a clock going back adds nothing");
        assert_eq!(refill(0, 0, u32::MAX, u32::MAX, u32::MAX), u32::MAX);
    }
}
