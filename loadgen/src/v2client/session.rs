//! One connection's protocol, once its bytes are frames: auth in the
//! version its kind speaks, the join (room, pattern, or none: version 1
//! names its room in the auth), and what each frame from the server counts
//! for. A room delivery is checked against the connection's offset (version
//! 2) and payload sequence (all kinds); a push to the user is counted once
//! by its payload sequence and acknowledged. Heartbeats go out on their
//! schedule while the broadcast runs.

use super::link::{self, Link};
use super::mix::Kind;
use super::{Driver, Phase, Role};
use crate::payload::read_stamp;
use crate::run::now_ns;
use crate::wire::BENCH_OP;
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use volley::proto::binary::{self, op};
use volley::proto::v2::{self, decode_push, Kind as PushKind};

impl Driver {
    /// Sends the auth of `slot`'s kind (the connection is up, and upgraded
    /// over WebSocket).
    pub(super) fn authenticate(&mut self, slot: usize) {
        let c = &self.conns[slot];
        let mid = self.shared.first_mid + c.index as i64;
        let auth = match (&self.shared.role, c.kind) {
            (Role::Room(room), Kind::V1) => {
                serde_json::json!({"mid": mid, "room_id": room, "accepts": [BENCH_OP]}).to_string()
            }
            _ => format!(r#"{{"mid":{mid}}}"#),
        };
        if self.send(slot, op::AUTH, 1, auth.as_bytes()) {
            self.conns[slot].phase = Phase::Authing;
        }
    }

    /// The protocol version `slot` speaks.
    pub(super) fn version(&self, slot: usize) -> u16 {
        match self.conns[slot].kind {
            Kind::V1 => binary::VERSION_GOIM,
            Kind::Room | Kind::Pattern => binary::VERSION_NATIVE,
        }
    }

    pub(super) fn frame(&mut self, slot: usize, op: u32, body: &[u8]) {
        let sh = self.shared.clone();
        match op {
            op::AUTH_REPLY => match &sh.role {
                Role::Room(room) => {
                    let c = &self.conns[slot];
                    let join = match c.kind {
                        Kind::V1 => return self.became_live(slot),
                        Kind::Pattern => serde_json::json!({"room": sh.mix.pattern}),
                        Kind::Room => {
                            let mut join = match &c.epoch {
                                Some(e) => serde_json::json!({"room": room, "offset": c.last_offset, "epoch": e}),
                                None => serde_json::json!({"room": room}),
                            };
                            if slot < sh.watchers {
                                join["presence"] = true.into();
                            }
                            join
                        }
                    };
                    if self.send(slot, v2::op::JOIN, 2, join.to_string().as_bytes()) {
                        self.conns[slot].phase = Phase::Joining;
                    }
                }
                Role::Inbox { .. } => self.became_live(slot),
            },
            v2::op::JOIN_REPLY => {
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if v["pattern"] == true {
                    return self.became_live(slot);
                }
                if v["recovered"] == false {
                    sh.unrecovered.fetch_add(1, Relaxed);
                    let why = v["reason"].as_str().unwrap_or("?").to_string();
                    *sh.unrecovered_why.lock().unwrap().entry(why).or_default() += 1;
                }
                let c = &mut self.conns[slot];
                let epoch = v["epoch"].as_str().map(str::to_owned);
                if c.epoch.is_none() || v["recovered"] == false || c.epoch != epoch {
                    // A first join, or one that could not resume: follow on
                    // from where the room is now.
                    c.last_offset = v["offset"].as_u64().unwrap_or(0);
                }
                c.epoch = epoch;
                self.became_live(slot);
            }
            v2::op::PUSH => {
                let Ok(env) = decode_push(body) else {
                    sh.errors.fetch_add(1, Relaxed);
                    return;
                };
                match (&sh.role, env.kind) {
                    (Role::Room(_), PushKind::Room) => {
                        let c = &mut self.conns[slot];
                        if c.kind == Kind::Pattern && c.last_offset == 0 {
                            // A pattern's subscription tells no offset: its
                            // first message sets where it follows from.
                            c.last_offset = env.offset.saturating_sub(1);
                        }
                        if env.offset <= c.last_offset {
                            sh.dups.fetch_add(1, Relaxed);
                            return;
                        }
                        if env.offset != c.last_offset + 1 {
                            sh.gaps.fetch_add(env.offset - c.last_offset - 1, Relaxed);
                        }
                        c.last_offset = env.offset;
                        self.room_delivery(slot, env.payload);
                    }
                    (Role::Room(_), PushKind::User) => {
                        if let Some((seq, _)) = read_stamp(env.payload) {
                            if self.conns[slot].user_seqs.insert(seq) {
                                sh.user_pushes.fetch_add(1, Relaxed);
                            } else {
                                sh.user_push_dups.fetch_add(1, Relaxed);
                            }
                        }
                        self.acknowledge(slot, env.offset);
                    }
                    (Role::Room(_), PushKind::Direct) => {}
                    (Role::Inbox { expect }, _) => {
                        let now = now_ns(sh.base);
                        if let Some((_, sent)) = read_stamp(env.payload) {
                            let _ = self.hist.record(now.saturating_sub(sent).max(1));
                        }
                        let c = &mut self.conns[slot];
                        c.got += 1;
                        let done = c.got == *expect;
                        sh.received.fetch_add(1, Relaxed);
                        self.acknowledge(slot, env.offset);
                        if done {
                            sh.done.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            // A version-1 connection's room message: the publisher's op.
            BENCH_OP if self.conns[slot].kind == Kind::V1 => self.room_delivery(slot, body),
            op::HEARTBEAT_REPLY => {
                sh.heartbeats_answered.fetch_add(1, Relaxed);
            }
            op::DISCONNECT => {
                sh.server_closed();
                if self.conns[slot].phase != Phase::Finished {
                    self.reconnect(slot);
                }
            }
            v2::op::ACK_REPLY => {
                sh.acks_answered.fetch_add(1, Relaxed);
                let c = &mut self.conns[slot];
                c.acks_pending = c.acks_pending.saturating_sub(1);
                if let Role::Inbox { expect } = sh.role {
                    if sh.max_open > 0 && c.got >= expect && c.acks_pending == 0 {
                        // Every acknowledgement answered (closing sooner
                        // could reset the connection before the server read
                        // the last one): make room for the next user.
                        self.drop_socket(slot);
                        self.conns[slot].phase = Phase::Finished;
                    }
                }
            }
            v2::op::PRESENCE => {
                sh.presence_events.fetch_add(1, Relaxed);
            }
            v2::op::ERROR => {
                sh.errors.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    /// Sends the heartbeats that are due, while the broadcast runs; each
    /// connection's first comes at a fraction of the period set by its
    /// index, so they do not all come at once.
    pub(super) fn heartbeats(&mut self) {
        let Some(every) = self.shared.mix.heartbeat else {
            return;
        };
        let now = Instant::now();
        if !self.shared.churning.load(Relaxed) || now < self.heartbeat_scan {
            return;
        }
        // Looking every 20 ms is early enough and keeps the scan off the
        // delivery path.
        self.heartbeat_scan = now + Duration::from_millis(20);
        for slot in 0..self.conns.len() {
            let c = &mut self.conns[slot];
            if c.phase != Phase::Live {
                continue;
            }
            let due = *c
                .heartbeat_due
                .get_or_insert_with(|| now + every.mul_f64((c.index % 1000) as f64 / 1000.0));
            if due > now {
                continue;
            }
            c.heartbeat_due = Some(now + every);
            let version = self.version(slot);
            if self.send_as(slot, version, op::HEARTBEAT, 3, b"") {
                self.shared.heartbeats_sent.fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts a room message (in offset order, for version 2) by its
    /// payload sequence, its latency, and the pause since the previous one.
    fn room_delivery(&mut self, slot: usize, payload: &[u8]) {
        let Some((seq, sent)) = read_stamp(payload) else {
            return;
        };
        let sh = &self.shared;
        let now = now_ns(sh.base);
        let c = &mut self.conns[slot];
        if seq < c.next_seq {
            sh.dups.fetch_add(1, Relaxed);
            return;
        }
        if c.last_room_ns > 0 {
            let _ = self.pauses.record(now.saturating_sub(c.last_room_ns).max(1));
        }
        c.last_room_ns = now;
        // A sequence jump is loss, counted at the end as what was expected
        // and never received.
        c.next_seq = seq + 1;
        sh.received.fetch_add(1, Relaxed);
        let latency = now.saturating_sub(sent).max(1);
        let _ = self.hist.record(latency);
        let sec = (now / 1_000_000_000) as usize;
        if self.by_sec.len() <= sec {
            self.by_sec.resize_with(sec + 1, || None);
        }
        let _ = self.by_sec[sec]
            .get_or_insert_with(super::sec_hist)
            .record((latency / 1000).max(1));
    }

    /// Acknowledges push `id` (op 46).
    fn acknowledge(&mut self, slot: usize, id: u64) {
        let ack = format!(r#"{{"ids":[{id}]}}"#);
        if self.send(slot, v2::op::ACK, 0, ack.as_bytes()) {
            self.shared.acked.fetch_add(1, Relaxed);
            self.conns[slot].acks_pending += 1;
        }
    }

    pub(super) fn became_live(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        c.phase = Phase::Live;
        if !c.was_live {
            c.was_live = true;
            self.shared.live.fetch_add(1, Relaxed);
        }
    }

    /// Writes one protocol frame in `slot`'s version.
    pub(super) fn send(&mut self, slot: usize, op: u32, seq: u32, body: &[u8]) -> bool {
        let version = self.version(slot);
        self.send_as(slot, version, op, seq, body)
    }

    /// Writes one protocol frame in `version`, wrapped for the link.
    pub(super) fn send_as(&mut self, slot: usize, version: u16, op: u32, seq: u32, body: &[u8]) -> bool {
        let frame = binary::encode_to_bytes(version, op, seq, body).to_vec();
        let link: Link = self.conns[slot].link;
        self.write(slot, &link::wrap(link, frame))
    }

    /// Writes `bytes` whole (small writes on a socket that is not backed
    /// up); a connection that cannot take them is reconnected.
    pub(super) fn write(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let fd = self.conns[slot].fd;
        // SAFETY: writing from a buffer we own to a descriptor we own.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n != bytes.len() as isize {
            self.shared.server_closed();
            self.reconnect(slot);
            return false;
        }
        true
    }
}
