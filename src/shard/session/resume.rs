//! Version-2 joins and resumes, and history reads: the owner side (a room's
//! owner answers with the room's epoch, newest offset and what a resuming
//! client missed) and the member side (the joining connection's shard
//! replays that, then makes the connection a member).
//!
//! Runs on both shards of a join, inside their mesh inbox tasks (inline
//! when they are the same shard); never awaits.
//!
//! ```text
//! member shard S                         owner shard O of room R
//! op 40 {room R, offset o, epoch e}
//!   joining += R (not a member yet) ───> JoinReq
//!                                        log = logs[R]: last offset L, epoch E,
//!                                        entries (o, L] if e == E and o ≥ lost_through
//!   <─────────────────────────────────── JoinReply{L, E, entries}
//! op 41 {offset L, epoch E, recovered}
//! entries (o, L] as op 44, in order
//! member of R: every RoomFrame from now on
//! ```
//!
//! Why a resume is gapless and never doubles, while publishes go on: O is
//! the only shard that gives R offsets and the only one that sends R's
//! `RoomFrame`s; it sends them to S in offset order through S's inbox, a
//! FIFO per producer, and the `JoinReply` travels the same queue. When O
//! answers the join, every offset up to L has been given out and its frame
//! already queued to S; every later offset's frame is queued after the
//! reply. So while the connection is joining, the frames S sees for R are
//! exactly those ≤ L — covered by the replay, and not delivered to it (it is
//! no member yet); the reply arrives next; every frame after it is > L and
//! reaches it as a member. Replay (o, L] then live (L, ∞): each offset once,
//! in order. When O is S the request and the reply are handled inline, with
//! no frame in between, and the same holds.
//!
//! A resume that cannot be served (epoch changed, history no longer reaching
//! back to o, an offset ahead of L, or a replay over `[limits]
//! replay_limit`) is answered `recovered: false` with the reason and the
//! current L and E, and nothing replayed: never silently. A replay larger
//! than the connection's outbound limit is not refused: what does not fit is
//! held behind its queue and moves in as the client reads (`Outbound`), so a
//! slow consumer that was closed can resume.

use crate::disk::record::Record;
use crate::metrics::ShardStats;
use crate::proto::binary::VERSION_NATIVE;
use crate::proto::v2::{self, op, Resume, Unrecovered};
use crate::shard::history::Resumed;
use crate::shard::mesh::{ConnRef, GlobalConn, HistoryPage, ShardMsg};
use crate::shard::state::Shard;
use crate::shard::store::durable::Held;
use std::sync::Arc;

impl Shard {
    /// On `r`'s shard: a version-2 join of `room` (already checked against
    /// the connection's rooms and limit); asks the room's owner.
    pub(in crate::shard) fn start_join(
        &mut self,
        r: ConnRef,
        seq: u32,
        room: Arc<str>,
        resume: Option<Resume>,
        presence: bool,
    ) {
        let Some(c) = self.conn_mut(r) else { return };
        let mid = c.mid;
        let Some(v2) = c.v2_mut() else { return };
        v2.joining.push(room.clone());
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        let owner = crate::shard::mesh::owner_of_str(&room, self.nr());
        self.route(
            owner,
            ShardMsg::JoinReq {
                room,
                at,
                seq,
                resume,
                mid,
                presence,
            },
        );
    }

    /// On the room's owner: the room's position and what the client missed.
    pub(in crate::shard) fn join_req(
        &mut self,
        room: Arc<str>,
        at: GlobalConn,
        seq: u32,
        (resume, mid, presence): (Option<Resume>, i64, bool),
    ) {
        let policy = self.cfg().history.policy(&room);
        let new_log = self.durable() && self.store.logs.get(&room).is_none();
        let resumed = self
            .store
            .logs
            .resume(&room, policy, self.conns.wheel.now(), resume, mid);
        if new_log {
            // The epoch the reply names outlives a restart.
            self.log(&Record::Head {
                room: &room,
                epoch: resumed.epoch,
                last: 0,
                lost_through: 0,
            });
        }
        self.store.count_history(&self.shared.stats[self.id]);
        self.route(
            usize::from(at.shard),
            ShardMsg::JoinReply {
                conn: at.conn,
                seq,
                room,
                asked: resume.is_some(),
                resumed,
                presence,
            },
        );
    }

    /// On the joining connection's shard: the reply, the replay, then
    /// membership (see the module doc for why in this order).
    pub(in crate::shard) fn join_reply(
        &mut self,
        r: ConnRef,
        seq: u32,
        room: Arc<str>,
        (asked, presence): (bool, bool),
        resumed: Resumed,
    ) {
        let limit = self.cfg().limits.replay_limit;
        let Some(c) = self.conn_mut(r) else { return };
        let closing = c.closing();
        let Some(v2) = c.v2_mut() else { return };
        let Some(i) = v2.joining.iter().position(|j| *j == room) else {
            return;
        };
        v2.joining.swap_remove(i);
        if closing {
            return;
        }
        if !self.may_join(r, &room) {
            // A token refresh while the owner answered took the room away.
            let msg = format!("the token no longer allows joining {room}");
            return self.v2_error(r, seq, v2::ErrorCode::Forbidden, &msg);
        }
        let Resumed {
            epoch,
            last,
            mark,
            replay,
        } = resumed;
        let replay = replay.and_then(|w| {
            let bytes: usize = w.iter().map(|w| w.ws.len()).sum();
            if bytes > limit {
                Err(Unrecovered::ReplayTooLarge)
            } else {
                Ok(w)
            }
        });
        let outcome = asked.then(|| replay.as_ref().map(|_| ()).map_err(|e| *e));
        if asked {
            ShardStats::add(&self.stats().resumes, 1);
            if replay.is_err() {
                ShardStats::add(&self.stats().resumes_failed, 1);
            }
        }
        let unread = mark.map(|m| last.saturating_sub(m));
        let body = v2::join_reply(&room, epoch, last, outcome, unread);
        self.reply(r, VERSION_NATIVE, op::JOIN_REPLY, seq, &body);
        if let Ok(entries) = replay {
            ShardStats::add(&self.stats().replayed, entries.len() as u64);
            for w in &entries {
                self.enqueue_replay(r, w);
            }
        }
        if self.is_closing(r) {
            return;
        }
        self.presence_change(r, &room, true);
        let (name, pos) = self.index.rooms.join(&room, r);
        if pos == 0 {
            self.first_member(&room);
        }
        if let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) {
            v2.rooms.push((name, pos));
        }
        if presence {
            self.watch(r, &room);
        }
    }

    /// On the room's owner: records a read mark and answers with it.
    pub(in crate::shard) fn mark_req(&mut self, room: Arc<str>, at: GlobalConn, seq: u32, mid: i64, offset: u64) {
        let max = self.cfg().history.max_marks;
        let before = self.store.logs.unread(&room, mid).map(|(m, _)| m);
        let mark = self.store.logs.mark(&room, self.conns.wheel.now(), mid, offset, max);
        if let Some((m, _)) = mark.filter(|&(m, _)| self.durable() && before != Some(m) && m > 0) {
            self.log(&Record::Mark {
                room: &room,
                mid,
                offset: m,
            });
        }
        // Answered once the mark is kept (at once without a journal).
        let reply = ShardMsg::MarkReply {
            conn: at.conn,
            seq,
            room,
            mark,
        };
        self.after_kept(Held::Route(usize::from(at.shard), reply));
    }

    /// On the marking connection's shard: the answer, as op 49 or error.
    pub(in crate::shard) fn mark_reply(&mut self, r: ConnRef, seq: u32, room: &str, mark: Option<(u64, u64)>) {
        match mark {
            Some((mark, last)) => {
                // In a cluster both come from Redis, where a mark can outlive
                // the room's offset counter (evicted, or restored apart).
                let unread = last.saturating_sub(mark);
                let body = serde_json::json!({"room": room, "offset": mark, "unread": unread}).to_string();
                self.reply(r, VERSION_NATIVE, op::READ_REPLY, seq, body.as_bytes());
            }
            None => self.v2_error(
                r,
                seq,
                v2::ErrorCode::MarkLimit,
                "the room holds [history] max_marks read marks",
            ),
        }
    }

    /// On `r`'s shard: leaves `room` if joined. Returns whether it was.
    pub(in crate::shard) fn leave_v2_room(&mut self, r: ConnRef, room: &str) -> bool {
        let Some(v2) = self.conn_mut(r).and_then(|c| c.v2_mut()) else {
            return false;
        };
        let Some(i) = v2.rooms.iter().position(|(n, _)| &**n == room) else {
            return false;
        };
        let (name, pos) = v2.rooms.swap_remove(i);
        self.presence_change(r, &name, false);
        self.unwatch(r, &name);
        self.leave_room(name, pos);
        true
    }

    /// On a room's owner: a page of its history.
    pub(in crate::shard) fn history_page(&mut self, room: &str, since: u64, limit: usize) -> Option<HistoryPage> {
        let now = self.conns.wheel.now();
        let (epoch, last, entries) = self.store.logs.page(room, since, limit, now)?;
        Some(HistoryPage { epoch, last, entries })
    }
}
