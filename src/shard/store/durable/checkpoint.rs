//! A checkpoint: everything the memory store keeps, as of one moment,
//! written to the journal as records between a `Begin` and an `End` in a
//! segment of its own, so that recovery starts there and older segments
//! can go.
//!
//! Pure, on the shard that owns the store. `Store::snapshot` takes the
//! store at one moment between two awaits — handles to the stored frames
//! (reference counts, no copies) and the small fields beside them — and
//! the `Snapshot` is then turned into records a few pieces at a time, as
//! the journal's driver asks for them (`Journal::wants_pieces`), between
//! the shard's other work. So a store of gigabytes costs its shard one pass
//! over its entries at the moment, not the encoding and writing of all of
//! it; the snapshot holds about 50 bytes per stored message meanwhile.
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
use crate::shard::store::Store;
use bytes::Bytes;
use std::sync::Arc;

/// The envelope inside a version-2 push frame (its TCP form) as the shard
/// built it.
pub fn envelope(tcp: &[u8]) -> Option<Envelope<'_>> {
    let (frame, _) = binary::decode(tcp, usize::MAX).ok().flatten()?;
    v2::decode_push(frame.body).ok()
}

/// What the store kept at one moment, to be written as a checkpoint.
#[derive(Debug)]
pub struct Snapshot {
    now: Now,
    items: Vec<Item>,
    rooms: Vec<Arc<str>>,
    /// The next item to write.
    next: usize,
}

/// One record to be, with what it needs from the store.
#[derive(Debug)]
enum Item {
    Floor(u64),
    Head {
        room: u32,
        epoch: u64,
        last: u64,
        lost_through: u64,
    },
    Message {
        room: u32,
        epoch: u64,
        offset: u64,
        at: u32,
        ttl_end: u32,
        frame: Bytes,
    },
    Mark {
        room: u32,
        mid: i64,
        offset: u64,
    },
    Push {
        mid: i64,
        push: u64,
        op: u32,
        ttl_end: u32,
        frame: Bytes,
    },
    Seen {
        key: Box<str>,
        at: u32,
        outcome: Outcome,
    },
}

impl Store {
    /// What this store keeps now (`now`), and the push ids given out so far
    /// (`push_floor`), to be written as a checkpoint.
    pub fn snapshot(&self, now: Now, push_floor: u64) -> Snapshot {
        let mut items = vec![Item::Floor(push_floor)];
        let mut rooms = Vec::new();
        for (name, log) in self.logs.each() {
            let room = rooms.len() as u32;
            rooms.push(name.clone());
            let first = log.entries().next().map_or(log.last, |e| e.offset - 1);
            let head = |last| Item::Head {
                room,
                epoch: log.epoch,
                last,
                lost_through: log.lost_through.min(last),
            };
            items.push(head(first));
            items.extend(log.entries().map(|e| Item::Message {
                room,
                epoch: log.epoch,
                offset: e.offset,
                at: e.at,
                ttl_end: e.ttl_end,
                frame: e.wire.tcp.clone(),
            }));
            if first != log.last {
                items.push(head(log.last));
            }
            items.extend(log.marks().map(|(mid, offset)| Item::Mark { room, mid, offset }));
        }
        items.extend(self.inbox.each().map(|(mid, e)| Item::Push {
            mid,
            push: e.id,
            op: e.op,
            ttl_end: e.ttl_end,
            frame: e.frames.v2.tcp.clone(),
        }));
        items.extend(self.dedup.each().map(|(key, at, outcome)| Item::Seen {
            key: key.into(),
            at,
            outcome,
        }));
        Snapshot {
            now,
            items,
            rooms,
            next: 0,
        }
    }
}

impl Snapshot {
    /// Records in it.
    pub fn records(&self) -> usize {
        self.items.len()
    }

    /// Adds records to the checkpoint under way in `j` while it wants
    /// them; returns whether every record is in (the caller then ends it).
    pub fn fill(&mut self, j: &mut Journal) -> bool {
        let now = self.now;
        while j.wants_pieces() {
            let Some(item) = self.items.get(self.next) else {
                return true;
            };
            self.next += 1;
            let room = |i: &u32| &*self.rooms[*i as usize];
            let rec = match item {
                Item::Floor(push) => Record::Floor { push: *push },
                Item::Head {
                    room: r,
                    epoch,
                    last,
                    lost_through,
                } => Record::Head {
                    room: room(r),
                    epoch: *epoch,
                    last: *last,
                    lost_through: *lost_through,
                },
                Item::Message {
                    room: r,
                    epoch,
                    offset,
                    at,
                    ttl_end,
                    frame,
                } => {
                    let Some(env) = envelope(frame) else { continue };
                    Record::Message {
                        room: room(r),
                        epoch: *epoch,
                        offset: *offset,
                        at: now.unix_at(*at),
                        ttl_end: now.unix_end(*ttl_end),
                        op: env.op,
                        id: env.id,
                        payload: env.payload,
                    }
                }
                Item::Mark { room: r, mid, offset } => Record::Mark {
                    room: room(r),
                    mid: *mid,
                    offset: *offset,
                },
                Item::Push {
                    mid,
                    push,
                    op,
                    ttl_end,
                    frame,
                } => {
                    let Some(env) = envelope(frame) else { continue };
                    Record::Push {
                        mids: vec![*mid],
                        push: *push,
                        op: *op,
                        at: now.unix,
                        ttl_end: now.unix_end(*ttl_end),
                        id: env.id,
                        payload: env.payload,
                    }
                }
                Item::Seen { key, at, outcome } => {
                    let (offset, epoch) = match *outcome {
                        Outcome::Room { offset, epoch } => (offset, epoch),
                        Outcome::Direct => (0, 0),
                    };
                    Record::Seen {
                        key,
                        at: now.unix_at(*at),
                        offset,
                        epoch,
                    }
                }
            };
            j.checkpoint_record(&rec);
        }
        self.next >= self.items.len()
    }
}
