//! Step 2 of the publish path. The room's owner: a room message gets its
//! dedup check, the room's next offset and a place in its history, its
//! answer to the publisher, and leaves as one `RoomFrame` per shard
//! (`fan_out_room`, which cluster mode reaches too, from
//! `shard::cluster::rooms::apply`); a pattern publish is published to every
//! matching room the shard owns.
//!
//! Runs on the room's owner shard. `publish_room` runs on a single node
//! only (in a cluster Redis gives the offset); `fan_out_room` and
//! `publish_pattern` in both modes. Invariant: only the owner sends a
//! room's frames, in offset order.

use crate::disk::record::Record;
use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::pattern;
use crate::proto::v2::{Envelope, Kind};
use crate::proto::wire::{Frames, Wire};
use crate::shard::dedup::Outcome;
use crate::shard::history;
use crate::shard::mesh::{owner_of_str, Answer, Publication, PublishOutcome, Published, Reach, ShardMsg};
use crate::shard::state::Shard;
use crate::shard::store::durable::Held;
use fnv::FnvHashSet;
use std::sync::Arc;

impl Shard {
    /// On a room's owner: the message gets the room's next offset and a
    /// place in its history, is encoded once per version, and leaves as one
    /// `RoomFrame` per shard (sent in offset order: this shard is the only
    /// one that sends the room's frames).
    ///
    /// A message whose publisher id this shard saw for the same room within
    /// `[api] dedup_window_secs` is not published again: `reply` gets the
    /// first one's offset, marked as a duplicate.
    pub(in crate::shard) fn publish_room(&mut self, room: Arc<str>, msg: Publication, reply: Answer) {
        let policy = self.cfg().history.policy(&room);
        let now = self.conns.wheel.now();
        let key = msg.id.as_deref().map(|id| format!("r\0{room}\0{id}"));
        if let Some(Outcome::Room { offset, epoch }) = key.as_deref().and_then(|k| self.store.dedup.seen(k, now)) {
            ShardStats::add(&self.stats().publish_duplicates, 1);
            let published = Published {
                offset,
                epoch,
                duplicate: true,
            };
            // Not before the first one is kept (it may still wait).
            return self.after_kept(Held::Published {
                reply,
                room,
                published,
                frames: None,
            });
        }
        if let Some(why) = self.storage_refusal() {
            return self.refuse(reply, &room, why);
        }
        let id = msg.id.as_deref().unwrap_or("");
        let (offset, epoch, v2) = self.store.logs.publish(&room, policy, now, msg.ttl, |offset, epoch| {
            Wire::from_tcp(
                Envelope {
                    op: msg.op,
                    kind: Kind::Room,
                    room: &room,
                    offset,
                    epoch,
                    id,
                    payload: &msg.payload,
                }
                .frame(),
            )
        });
        self.store.count_history(&self.shared.stats[self.id]);
        if self.durable() {
            let d = self.disk_now();
            let ttl_end = msg.ttl.map_or(0, |t| d.unix_end(history::ttl_end(now, t)));
            self.log(&Record::Message {
                room: &room,
                epoch,
                offset,
                at: d.unix,
                ttl_end,
                op: msg.op,
                id,
                payload: &msg.payload,
            });
        }
        if let Some(k) = key {
            self.store.dedup.record(&k, Outcome::Room { offset, epoch }, now);
        }
        let published = Published {
            offset,
            epoch,
            duplicate: false,
        };
        let frames = Frames {
            v1: Wire::encode(binary::VERSION_GOIM, msg.op, 0, &msg.payload),
            v2,
        };
        self.after_kept(Held::Published {
            reply,
            room,
            published,
            frames: Some(frames),
        });
    }

    /// On a room's owner: a message with its offset, to every shard's
    /// members (in offset order: only the owner sends a room's frames).
    pub(in crate::shard) fn fan_out_room(&mut self, room: &Arc<str>, frames: &Frames, reach: Reach) {
        for s in 0..self.nr() {
            self.route(
                s,
                ShardMsg::RoomFrame {
                    room: room.clone(),
                    frames: frames.clone(),
                    reach,
                },
            );
        }
    }

    /// Tells whoever waits what a room publish got.
    pub(in crate::shard) fn answer(&mut self, reply: Answer, room: &Arc<str>, p: Published) {
        self.tell_publisher(reply, room, Ok(p));
    }

    /// Tells whoever waits that a room publish was refused, and why.
    fn refuse(&mut self, reply: Answer, room: &Arc<str>, why: String) {
        self.tell_publisher(reply, room, Err(why));
    }

    fn tell_publisher(&mut self, reply: Answer, room: &Arc<str>, got: PublishOutcome) {
        match reply {
            Answer::None => {}
            Answer::Api(r) => r.send(got),
            Answer::Client { at, seq } => self.route(
                usize::from(at.shard),
                ShardMsg::ClientPublished {
                    conn: at.conn,
                    seq,
                    room: room.clone(),
                    published: got,
                },
            ),
        }
    }

    /// An API publish to `pattern`: published, each with its own offset, to
    /// every room this shard owns that matches and exists — has a log here,
    /// or members on some shard as of the last published views (counted in
    /// `pattern_publishes`). Costs a pass over those rooms' names.
    pub(in crate::shard) fn publish_pattern(&mut self, pattern: &str, msg: Publication) {
        let (me, n) = (self.id, self.nr());
        let mut rooms: FnvHashSet<Arc<str>> = self
            .store
            .logs
            .names()
            .filter(|r| pattern::matches(pattern, r))
            .cloned()
            .collect();
        for v in &self.shared.views {
            let v = v.load();
            rooms.extend(
                v.rooms
                    .keys()
                    .filter(|r| owner_of_str(r, n) == me && pattern::matches(pattern, r))
                    .cloned(),
            );
        }
        let count = rooms.len();
        ShardStats::add(&self.stats().pattern_publishes, count as u64);
        for room in rooms {
            // This shard owns them: on a single node published here, in a
            // cluster through Redis (each node publishes it, a token makes
            // it once).
            self.publish_room_in(room, msg.clone(), Answer::None);
        }
    }
}
