//! Delivery and fan-out: queueing a frame to one connection, and the mesh
//! messages that deliver a push to a room's, the directory's or every
//! connection of this shard.
//!
//! Runs on the owning shard, inside the mesh inbox task (or inline when a
//! publish arrives on the shard that owns its target). Nothing is written
//! here: frames go into each connection's `Outbound`, and its driver is woken
//! only on the queue's empty → non-empty edge.
//!
//! Invariants: one record lookup per delivery; a frame is never copied per
//! connection (every queue holds a clone of the same `Bytes`); a queue over
//! its limit closes its connection as a slow consumer, never grows.
//!
//! ```text
//! publish room R ─> owner_of(R): PublishRoom ─> RoomFrame to every shard ─> each member's queue
//! push keys/mids ─> owners: directory lookup ─> Deliver to the holding shards ─> those queues
//! push all ─────> All to every shard ─> every authenticated connection accepting the op
//! ```

use super::conns::Transport;
use super::mesh::{ConnRef, ShardMsg};
use super::outbound::PushError;
use super::state::Shard;
use crate::metrics::ShardStats;
use crate::proto::close::CloseReason;
use crate::proto::wire::Wire;
use bytes::Bytes;
use fnv::FnvHashMap;
use std::sync::Arc;

impl Shard {
    /// Queues a push to `r` in its transport's form, enforcing its byte limit.
    pub(super) fn enqueue(&mut self, r: ConnRef, wire: &Wire) {
        self.enqueue_with(r, |t| wire.for_transport(t == Transport::Ws).clone());
    }

    /// Queues bytes already in `r`'s wire format (a pong, an echo, the
    /// upgrade answer), enforcing its byte limit.
    pub fn enqueue_bytes(&mut self, r: ConnRef, frame: Bytes) {
        self.enqueue_with(r, |_| frame);
    }

    /// Queues a reply frame to `r` in its wire form. Replies bypass nothing:
    /// a client that floods requests without reading replies is a slow
    /// consumer like any other.
    pub(super) fn reply(&mut self, r: ConnRef, ver: u16, op: u32, seq: u32, body: &[u8]) {
        self.enqueue_with(r, |t| t.frame(ver, op, seq, body));
    }

    /// The one place frames are queued: a single record lookup per delivery;
    /// `frame` picks the connection's wire form and is not built for a
    /// connection that is already closing.
    fn enqueue_with(&mut self, r: ConnRef, frame: impl FnOnce(Transport) -> Bytes) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(r.idx as usize).filter(|c| c.gen == r.gen) else {
            return;
        };
        let stats = &self.shared.stats[self.id];
        if c.close.is_some() {
            ShardStats::add(&stats.dropped, 1);
            return;
        }
        let limit = c.transport.outbound_limit(&self.shared.config);
        match c.out.push(frame(c.transport), limit, now) {
            Ok(was_empty) => {
                if was_empty {
                    if let Some(w) = &c.waker {
                        w.wake_by_ref();
                    }
                }
                ShardStats::add(&stats.deliveries, 1);
            }
            Err(PushError::OverLimit { queued }) => {
                ShardStats::add(&stats.dropped, 1);
                let detail = format!("{queued} bytes queued, limit {limit}");
                self.close(r, CloseReason::SlowConsumer, &detail);
            }
        }
    }

    /// On a room's owner: the message leaves as one `RoomFrame` per shard.
    pub(super) fn publish_room(&mut self, room: Arc<str>, frame: Wire) {
        for s in 0..self.nr() {
            self.route(
                s,
                ShardMsg::RoomFrame {
                    room: room.clone(),
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Every local member of `room` gets `frame`.
    pub(super) fn deliver_room(&mut self, room: &str, frame: &Wire) {
        // Collect first: enqueue may close a slow member, which edits the
        // member list we would be iterating.
        let members: Vec<ConnRef> = self.rooms.members(room).to_vec();
        for m in members {
            self.enqueue(m, frame);
        }
    }

    /// These local connections get `frame` if authenticated and accepting
    /// `op` (and, for targets found by decoding an assigned key, only if
    /// their key is server-assigned).
    pub(super) fn deliver_to(&mut self, conns: Vec<ConnRef>, assigned_only: bool, op: u32, frame: &Wire) {
        for r in conns {
            if self.conn(r).is_some_and(|c| {
                c.authed && (!assigned_only || c.key.is_none()) && c.accepts.binary_search(&op).is_ok()
            }) {
                self.enqueue(r, frame);
            }
        }
    }

    /// Every authenticated local connection accepting `op` gets `frame`.
    pub(super) fn deliver_all(&mut self, op: u32, frame: &Wire) {
        let targets: Vec<ConnRef> = self
            .conn_refs()
            .filter(|(_, c)| c.authed && c.accepts.binary_search(&op).is_ok())
            .map(|(r, _)| r)
            .collect();
        for r in targets {
            self.enqueue(r, frame);
        }
    }

    /// Sends each holding shard the directory hits that live there.
    pub(super) fn forward(
        &mut self,
        by_shard: FnvHashMap<u16, Vec<ConnRef>>,
        op: u32,
        frame: &Wire,
        assigned_only: bool,
    ) {
        for (s, conns) in by_shard {
            self.route(
                usize::from(s),
                ShardMsg::Deliver {
                    conns,
                    assigned_only,
                    op,
                    frame: frame.clone(),
                },
            );
        }
    }
}
