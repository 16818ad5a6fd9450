//! Reading records back into the memory store at start: each record as
//! the change it was (`Store::apply`), for what this shard owns.
//!
//! Pure, on the shard being recovered, before it serves. Idempotent per
//! record (a checkpoint repeats what was before it): a message whose offset
//! the room passed, a push its user holds, an id already seen change
//! nothing. What is due by now (a TTL over, an id past its window) is not
//! kept. A record for a room or user another shard owns (the shard count
//! changed) is left to that shard's replay.

use super::Now;
use crate::config::Config;
use crate::disk::record::Record;
use crate::proto::v2::{Envelope, Kind};
use crate::proto::wire::{Frames, Wire};
use crate::shard::dedup::Outcome;
use crate::shard::mesh::{owner_of_mid, owner_of_str};
use crate::shard::store::Store;
use std::sync::Arc;

/// The sequence bits of a push id (the top 16 name the shard it entered).
const PUSH_SEQ: u64 = (1 << 48) - 1;

/// Who owns what, for replay: this shard of how many.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    /// This shard.
    pub id: usize,
    /// Shards now.
    pub nr: usize,
}

impl Owner {
    fn room(self, room: &str) -> bool {
        owner_of_str(room, self.nr) == self.id
    }

    fn mid(self, mid: i64) -> bool {
        owner_of_mid(mid, self.nr) == self.id
    }

    /// A dedup key (`shard::state::first_seen`, `publish::owner`):
    /// `r\0ROOM\0ID` at the room's owner, `u\0MID\0ID` at the user's,
    /// `k\0KEY\0ID` at the key's, `a\0ID` on every shard.
    fn key(self, key: &str) -> bool {
        let mut parts = key.splitn(3, '\0');
        match (parts.next(), parts.next()) {
            (Some("r" | "k"), Some(name)) => owner_of_str(name, self.nr) == self.id,
            (Some("u"), Some(mid)) => mid.parse().is_ok_and(|m| self.mid(m)),
            _ => true,
        }
    }
}

/// What replay did, for the log and the stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Records that changed something, or repeated what was there.
    pub records: u64,
    /// Records for rooms or users of other shards.
    pub elsewhere: u64,
    /// The highest push sequence met, without the shard bits of its id
    /// (push ids go on above it).
    pub max_push: u64,
}

impl Store {
    /// Applies `rec` as of `now`, if `owner` owns what it is about.
    pub fn apply(&mut self, rec: &Record<'_>, now: Now, config: &Config, owner: Owner, done: &mut Applied) {
        let window = u64::from(config.api.dedup_window_secs);
        let mine = match rec {
            Record::Message { room, .. } | Record::Head { room, .. } | Record::Mark { room, .. } => owner.room(room),
            Record::Ack { mid, .. } => owner.mid(*mid),
            Record::Seen { key, .. } => owner.key(key),
            Record::Push { mids, .. } => mids.iter().any(|&m| owner.mid(m)),
            Record::Floor { .. } => true,
            Record::Begin { .. } | Record::End { .. } => false,
        };
        if !mine {
            done.elsewhere += 1;
            return;
        }
        if matches!(rec, Record::Message { offset: 0, .. }) {
            // No message has offset 0: not one of ours, whatever its checksum.
            return;
        }
        done.records += 1;
        match *rec {
            Record::Message {
                room,
                epoch,
                offset,
                at,
                ttl_end,
                op,
                id,
                payload,
            } => {
                let wire = Wire::from_tcp(
                    Envelope {
                        op,
                        kind: Kind::Room,
                        room,
                        offset,
                        epoch,
                        id,
                        payload,
                    }
                    .frame(),
                );
                let name: Arc<str> = Arc::from(room);
                let policy = config.history.policy(room);
                let (at_tick, end) = (now.tick_at(at), now.tick_end(ttl_end));
                self.logs
                    .restore(&name, policy, now.tick, at_tick, end, (offset, epoch), wire);
                if !id.is_empty() && now.unix.saturating_sub(at) < window {
                    let key = format!("r\0{room}\0{id}");
                    self.dedup.record(&key, Outcome::Room { offset, epoch }, at_tick);
                }
            }
            Record::Head {
                room,
                epoch,
                last,
                lost_through,
            } => {
                let policy = config.history.policy(room);
                self.logs
                    .restore_head(&Arc::from(room), policy, now.tick, epoch, last, lost_through);
            }
            Record::Push {
                ref mids,
                push,
                op,
                at: _,
                ttl_end,
                id,
                payload,
            } => {
                done.max_push = done.max_push.max(push & PUSH_SEQ);
                if ttl_end != 0 && ttl_end <= now.unix {
                    return;
                }
                let frames = Frames::user(op, push, id, payload);
                let end = now.tick_end(ttl_end);
                for &m in mids.iter().filter(|&&m| owner.mid(m)) {
                    if !self.inbox.holds(m, push) {
                        self.inbox.keep(m, push, op, &frames, end);
                    }
                }
            }
            Record::Ack { mid, ref pushes } => {
                self.inbox.ack(mid, pushes);
            }
            Record::Mark { room, mid, offset } => {
                self.logs.mark(&Arc::from(room), now.tick, mid, offset, usize::MAX);
            }
            Record::Seen { key, at, offset, epoch } => {
                if now.unix.saturating_sub(at) < window {
                    let outcome = if offset == 0 {
                        Outcome::Direct
                    } else {
                        Outcome::Room { offset, epoch }
                    };
                    self.dedup.record(key, outcome, now.tick_at(at));
                }
            }
            Record::Floor { push } => done.max_push = done.max_push.max(push),
            Record::Begin { .. } | Record::End { .. } => {}
        }
    }
}
