//! A checkpoint: everything the memory store keeps, written to the journal
//! as records between a `Begin` and an `End` at the start of a segment, so
//! that recovery starts there and older segments can go.
//!
//! Pure, on the shard that owns the store; written in one go between two
//! awaits (the shard changes nothing meanwhile, so the checkpoint is the
//! store at one moment, and every record after `End` is a change since).
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
use crate::proto::wire::Wire;
use crate::shard::dedup::Outcome;
use crate::shard::store::Store;

/// The envelope inside a version-2 push frame as the shard built it.
pub fn envelope(wire: &Wire) -> Option<Envelope<'_>> {
    let (frame, _) = binary::decode(&wire.tcp, usize::MAX).ok().flatten()?;
    v2::decode_push(frame.body).ok()
}

impl Store {
    /// Writes a checkpoint of this store as of `now` into `j`; returns the
    /// records written.
    pub fn checkpoint(&self, j: &mut Journal, now: Now, push_floor: u64) -> u64 {
        let n = j.begin_checkpoint();
        j.append(&Record::Floor { push: push_floor });
        let mut records = 1u64;
        let mut put = |j: &mut Journal, r: Record<'_>| {
            j.append(&r);
            records += 1;
        };
        for (room, log) in self.logs.each() {
            let first = log.entries().next().map_or(log.last, |e| e.offset - 1);
            let head = |last| Record::Head {
                room,
                epoch: log.epoch,
                last,
                lost_through: log.lost_through.min(last),
            };
            put(j, head(first));
            for e in log.entries() {
                let Some(env) = envelope(&e.wire) else { continue };
                put(
                    j,
                    Record::Message {
                        room,
                        epoch: log.epoch,
                        offset: e.offset,
                        at: now.unix_at(e.at),
                        ttl_end: now.unix_end(e.ttl_end),
                        op: env.op,
                        id: env.id,
                        payload: env.payload,
                    },
                );
            }
            if first != log.last {
                put(j, head(log.last));
            }
            for (mid, offset) in log.marks() {
                put(j, Record::Mark { room, mid, offset });
            }
        }
        for (mid, e) in self.inbox.each() {
            let Some(env) = envelope(&e.frames.v2) else { continue };
            put(
                j,
                Record::Push {
                    mids: vec![mid],
                    push: e.id,
                    op: e.op,
                    at: now.unix,
                    ttl_end: now.unix_end(e.ttl_end),
                    id: env.id,
                    payload: env.payload,
                },
            );
        }
        for (key, at, outcome) in self.dedup.each() {
            let (offset, epoch) = match outcome {
                Outcome::Room { offset, epoch } => (offset, epoch),
                Outcome::Direct => (0, 0),
            };
            put(
                j,
                Record::Seen {
                    key,
                    at: now.unix_at(at),
                    offset,
                    epoch,
                },
            );
        }
        j.end_checkpoint(n);
        records
    }
}
