//! The publish path, in data-path order: where a push enters (`ingress`),
//! the room's owner (`owner`), each shard's fan-out (`fanout`), one
//! connection's queue (`queue`, counted in the shard's `Output`), then
//! `conn::flush` writes it. Deliveries of pushes to keys, users and
//! everyone take the same last two steps.
//!
//! Runs on the owning shard, inside the mesh inbox task (or inline when a
//! publish arrives on the shard that owns its target). Nothing is written
//! here: frames go into each connection's `Outbound`, and a queue's empty →
//! non-empty edge puts the connection on the shard's dirty list, which the
//! shard's flusher task (`conn::flush`) writes out after the burst — one
//! task wake per burst, not one per connection.
//!
//! Invariants: one record lookup per delivery; a frame is never copied per
//! connection (every queue holds a clone of the same `Bytes`, in the form
//! for the connection's protocol version and transport); a queue over its
//! limit closes its connection as a slow consumer, never grows; a version-1
//! connection is only ever given version-1 frames.
//!
//! ```text
//! one node:  shard::router::publish_room_in ─PublishRoom─> owner_of(R): owner::publish_room
//!              dedup, offset, history, answer ─> fan_out_room ─RoomFrame─> every shard:
//!              fanout::deliver_room ─> queue::enqueue per receiver ─> conn::flush
//! cluster:   shard::router::publish_room_in ─> shard::cluster::publish ─> Redis ─> each node's owner:
//!              shard::cluster::rooms::apply ─> fan_out_room ─> (as above)
//! push keys/mids ─> owners: directory lookup ─> Deliver to the holding shards ─> those queues
//! push all ─────> All to every shard ─> every authenticated connection accepting the op
//! ```
//!
//! The accepts filter (key, user and global pushes) is version 1's; a
//! version-2 connection gets every push addressed to it.

mod fanout;
mod ingress;
mod output;
mod owner;
mod queue;
pub(super) use output::Output;

pub(in crate::shard) use fanout::wants;
