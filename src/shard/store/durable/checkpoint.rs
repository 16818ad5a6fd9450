//! A checkpoint: everything the memory store keeps, written to the journal
//! as records between a `Begin` and an `End` in a segment of its own, so
//! that recovery starts there and older segments can go.
//!
//! Pure, on the shard that owns the store. When a checkpoint begins (at
//! LSN T: every record from before it is in older segments, every one
//! after it in newer ones), `Store::snapshot` notes the names of the rooms,
//! the users with pushes and how many ids were seen; the journal's driver then asks
//! for records a few pieces at a time (`Journal::wants_pieces`), and each
//! room and inbox is written as it is when its turn comes, a big room over
//! several turns. No turn of the shard is proportional to the store: a
//! checkpoint of gigabytes costs its shard one pass over the room names
//! and users at the start, then 256 KiB of encoding now and then.
//!
//! Why a room written after T is as good as one written at T: the segments
//! after the checkpoint hold every change since T, and replay is idempotent
//! per record (`replay`): a message at an offset the room has passed, a
//! push its user holds, an ack of a push not there, a mark or an id seen
//! again change nothing, and a record of another epoch starts the room
//! over, as it did when it was made. So replaying those segments over a
//! room as it was at any moment after T ends where the shard ended. What
//! left a room between T and its turn (a limit, a TTL, an ack) is not
//! written, as it is no longer kept.
//!
//! Per room: a `Head` at the offset before its oldest stored message, the
//! messages, a `Head` at its newest offset, its read marks; per user and
//! push, a `Push`; per id seen, a `Seen`; and the push ids given out so
//! far (`Floor`), which outlive the pushes. Replayed, the rooms come back at
//! the same positions with the same messages (`history::restore`).

use super::Now;
use crate::disk::journal::Journal;
use crate::disk::record::Record;
use crate::proto::binary;
use crate::proto::v2::{self, Envelope};
use crate::shard::dedup::Outcome;
use crate::shard::store::inbox::Inboxes;
use crate::shard::store::Store;
use std::sync::Arc;

/// The envelope inside a version-2 push frame (its TCP form) as the shard
/// built it.
pub fn envelope(tcp: &[u8]) -> Option<Envelope<'_>> {
    let (frame, _) = binary::decode(tcp, usize::MAX).ok().flatten()?;
    v2::decode_push(frame.body).ok()
}

/// A checkpoint being written: what to write, and how far it has got.
#[derive(Debug)]
pub struct Snapshot {
    floor: u64,
    rooms: Vec<Arc<str>>,
    users: Vec<i64>,
    /// The ids seen are those numbered below this (`Dedup::by_seq`).
    seen_end: u64,
    next: Next,
}

/// What the next record written is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Floor,
    /// Room `i`; `at`: its epoch and the newest offset written, once its
    /// first `Head` is.
    Room {
        i: usize,
        at: Option<(u64, u64)>,
    },
    User(usize),
    /// The id seen numbered so.
    Seen(u64),
    Done,
}

impl Store {
    /// A checkpoint of this store, begun now, with the push ids given out
    /// so far (`push_floor`).
    pub fn snapshot(&self, push_floor: u64) -> Snapshot {
        Snapshot {
            floor: push_floor,
            rooms: self.logs.names().cloned().collect(),
            users: self.inbox.ids().collect(),
            seen_end: self.dedup.next_seq(),
            next: Next::Floor,
        }
    }
}

impl Snapshot {
    /// Rooms and users in it.
    pub fn items(&self) -> usize {
        self.rooms.len() + self.users.len()
    }

    /// Adds records to the checkpoint under way in `j`, from `store` as it
    /// is `now`, while it wants them; returns whether every record is in
    /// (the caller then ends it).
    pub fn fill(&mut self, store: &Store, j: &mut Journal, now: Now) -> bool {
        let (logs, inboxes) = (&store.logs, &store.inbox);
        while j.wants_pieces() {
            self.next = match self.next {
                Next::Floor => {
                    j.checkpoint_record(&Record::Floor { push: self.floor });
                    Next::Room { i: 0, at: None }
                }
                Next::Room { i, at } => match self.rooms.get(i) {
                    Some(room) => room_turn(room, logs.get(room), i, at, j, now),
                    None => Next::User(0),
                },
                Next::User(i) => match self.users.get(i) {
                    Some(&mid) => {
                        user(mid, inboxes, j, now);
                        Next::User(i + 1)
                    }
                    None => Next::Seen(0),
                },
                // Those forgotten since the checkpoint began are skipped.
                Next::Seen(seq) => match seq.max(store.dedup.first_seq()) {
                    seq if seq >= self.seen_end => Next::Done,
                    seq => {
                        if let Some((key, at, outcome)) = store.dedup.by_seq(seq) {
                            let (offset, epoch) = match outcome {
                                Outcome::Room { offset, epoch } => (offset, epoch),
                                Outcome::Direct => (0, 0),
                            };
                            j.checkpoint_record(&Record::Seen {
                                key,
                                at: now.unix_at(at),
                                offset,
                                epoch,
                            });
                        }
                        Next::Seen(seq + 1)
                    }
                },
                Next::Done => return true,
            };
        }
        self.next == Next::Done
    }
}

/// Writes room `i` (`room`, whose log is `log` now) from where `at` says,
/// while the journal wants records; returns what comes next.
fn room_turn(
    room: &str,
    log: Option<&crate::shard::store::history::RoomLog>,
    i: usize,
    at: Option<(u64, u64)>,
    j: &mut Journal,
    now: Now,
) -> Next {
    // Gone since the checkpoint began: what it kept is no longer kept.
    let Some(log) = log else {
        return Next::Room { i: i + 1, at: None };
    };
    let head = |last| Record::Head {
        room,
        epoch: log.epoch,
        last,
        lost_through: log.lost_through.min(last),
    };
    // Started over in another epoch since its first turn: written again
    // from its start (replay starts the room over at the new epoch).
    let mut after = match at {
        Some((epoch, after)) if epoch == log.epoch => after,
        _ => {
            let first = log.entries().next().map_or(log.last, |e| e.offset - 1);
            j.checkpoint_record(&head(first));
            first
        }
    };
    for e in log.entries_after(after) {
        if !j.wants_pieces() {
            return Next::Room {
                i,
                at: Some((log.epoch, after)),
            };
        }
        after = e.offset;
        let Some(env) = envelope(&e.wire.tcp) else { continue };
        j.checkpoint_record(&Record::Message {
            room,
            epoch: log.epoch,
            offset: e.offset,
            at: now.unix_at(e.at),
            ttl_end: now.unix_end(e.ttl_end),
            op: env.op,
            id: env.id,
            payload: env.payload,
        });
    }
    if after != log.last {
        j.checkpoint_record(&head(log.last));
    }
    for (mid, offset) in log.marks() {
        j.checkpoint_record(&Record::Mark { room, mid, offset });
    }
    Next::Room { i: i + 1, at: None }
}

/// Writes `mid`'s pushes as they are now.
fn user(mid: i64, inboxes: &Inboxes, j: &mut Journal, now: Now) {
    for e in inboxes.pushes(mid) {
        let Some(env) = envelope(&e.frames.v2.tcp) else {
            continue;
        };
        j.checkpoint_record(&Record::Push {
            mids: vec![mid],
            push: e.id,
            op: e.op,
            at: now.unix,
            ttl_end: now.unix_end(e.ttl_end),
            id: env.id,
            payload: env.payload,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::replay::{Applied, Owner};
    use super::super::Now;
    use crate::config::Config;
    use crate::disk::journal::{DiskOp, Journal, Sync};
    use crate::disk::record::Record;
    use crate::disk::recover::read_segment;
    use crate::shard::store::Store;

    /// (offset, frame) of each stored message, and (epoch, last, lost_through).
    type Room = (Vec<(u64, Vec<u8>)>, (u64, u64, u64));

    fn room(s: &Store, name: &str) -> Room {
        let log = s.logs.get(name).expect("the room");
        (
            log.entries().map(|e| (e.offset, e.wire.tcp.to_vec())).collect(),
            (log.epoch, log.last, log.lost_through),
        )
    }

    #[test]
    fn a_room_written_over_several_turns_while_it_changes_replays_to_where_it_ended() {
        let mut config = Config::default();
        // Kept by count only: the front is trimmed while the room grows.
        (config.history.messages, config.history.max_bytes) = (1500, 1 << 30);
        (config.history.max_age_secs, config.history.memory) = (86_400, 1 << 30);
        let now = Now {
            tick: 100,
            unix: 1_796_000_000,
        };
        let owner = Owner { id: 0, nr: 1 };
        let payload = vec![b'p'; 1000];
        let msg = |offset| Record::Message {
            room: "chat://big",
            epoch: 7,
            offset,
            at: now.unix,
            ttl_end: 0,
            op: 1000,
            id: "",
            payload: &payload,
        };
        // The shard: each change made to the store and appended to the log.
        let mut live = Store::new(&config, 1, |_| false);
        let mut applied = Applied::default();
        let mut j = Journal::new(Sync::None, 64 << 20, 0, Vec::new());
        let mut next = 1;
        let mut change = |live: &mut Store, j: &mut Journal, n: usize| {
            for _ in 0..n {
                let r = msg(next);
                next += 1;
                live.apply(&r, now, &config, owner, &mut applied);
                j.append(&r);
            }
        };
        change(&mut live, &mut j, 2000);
        j.begin_checkpoint();
        let mut snap = live.snapshot(0);
        let (mut pieces, mut writes) = (Vec::new(), Vec::new());
        let mut turns = 0;
        loop {
            if j.wants_pieces() {
                turns += 1;
                if snap.fill(&live, &mut j, now) {
                    j.end_checkpoint();
                }
                // The room goes on between turns.
                change(&mut live, &mut j, 60);
            }
            match j.take() {
                None => break,
                Some(DiskOp::Remove { .. }) => j.removed(Ok(())),
                Some(op) => {
                    if let DiskOp::Write {
                        segment,
                        checkpoint,
                        bytes,
                        ..
                    } = op
                    {
                        if checkpoint {
                            pieces.push((segment, bytes));
                        } else {
                            writes.push((segment, bytes));
                        }
                    }
                    j.done(Ok(()));
                }
            }
        }
        assert!(turns >= 3, "the room took {turns} turns");
        // Recovery: the checkpoint's segment, then every later one.
        let at = pieces[0].0;
        assert!(pieces.iter().all(|p| p.0 == at));
        let mut back = Store::new(&config, 1, |_| false);
        let mut replayed = Applied::default();
        let checkpoint: Vec<u8> = pieces.into_iter().flat_map(|p| p.1).collect();
        let mut apply = |seg, bytes: &[u8]| {
            let read = read_segment(seg, bytes, |r| back.apply(&r, now, &config, owner, &mut replayed));
            assert!(read.lost.is_empty(), "{:?}", read.lost);
        };
        apply(at, &checkpoint);
        let mut later = 0;
        for (seg, bytes) in writes.iter().filter(|w| w.0 > at) {
            apply(*seg, bytes);
            later += 1;
        }
        assert!(later >= 1, "changes went on after the checkpoint began");
        let (want, got) = (room(&live, "chat://big"), room(&back, "chat://big"));
        assert_eq!(want.1, got.1, "epoch, last, lost_through");
        assert_eq!(want.0.len(), 1500);
        assert!(want.0 == got.0, "the same messages");
    }
}
