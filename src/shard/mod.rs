//! The shard: everything one core owns — its connections, their room
//! memberships, its slice of the key and user directories, its heartbeat
//! wheel — what it does with each client frame and mesh message, and the
//! per-shard runtime that drives it.
//!
//! Ownership:
//! - a connection belongs to the shard that accepted it, for life;
//! - a room belongs to `owner_of_str(room)`: publishes go there first, get
//!   the room's next offset and a place in its history, and leave as one
//!   `RoomFrame` per shard;
//! - a connection key belongs to `owner_of_str(key)` and a user id to
//!   `owner_of_mid(mid)`: the owner keeps where each lives.
//!
//! Files, by responsibility (all but `run` are sans-IO: no socket, no
//! clock, no await; cluster mode's Redis calls are values run by
//! `redis::driver::drive`):
//!
//! ```text
//! state      Shard = components that own their data (conns, index, store, owners, out,
//!            clock, cluster); route()
//! dispatch   handle(): one line per ShardMsg
//! router     THE fork per operation: this node (owner shards) or the cluster (Redis)
//! addr       ConnRef, GlobalConn, signed server-assigned keys (pure)
//! conns/     Conn record, Transport; lifecycle (new / close / remove, rooms), heartbeat
//!            (deadlines, pings, sweep), wheel, outbound (write queue), worklist (pure),
//!            drain (who is told to reconnect when)
//! handoff    a quiet shard's connections as records for the next process, and taking
//!            them over at the same slots (volley upgrade)
//! publish/   the publish path in data-path order: ingress, owner, fanout, queue (→ conn::flush)
//! owners/    the key and user directory slice (pure); registering with it; pushes to users
//! store/     bounded, counted keeping (pure): one bounded store under history (room logs)
//!            and inbox; dedup, cost; durable/ (the journal of every change, held answers,
//!            replay, checkpoints)
//! session/   bytes → frames → v1 / v2 operations, resume, access (auth, tokens, limits), token
//! admission  process-wide connection counts: total, per IP, attempts per IP (shared)
//! presence   member lists, watched rooms, coalesced join/leave events
//! index/     pure indexes: rooms (RoomTable), patterns (PatternIndex), members (presence data)
//! mesh       inboxes, owners
//! msg        ShardMsg and what travels with it (pure)
//! reply      Reply / ReplyWait: a one-shot answer across shards and threads
//! view       Shared, published views, online counts
//! cluster/   cluster mode on a shard, sans-IO (Redis calls are values):
//!   mod        the mode, the hooks single-node code calls, what subscribers hear, the sweep
//!   state      its data: links, subscriptions, open questions, Then
//!   ops        emit Redis operations as values; each answer to its Then
//!   publish    room messages, pattern publishes and pushes through Redis
//!   rooms      the subscription machine: subscribing, syncing, live, filled, gaps
//!   registry   who holds which users and keys; alive marks; the node queue
//!   reads      read marks, unread counts and history pages from Redis
//!   counts     the node's counts report and the cluster's sums
//!   patterns   pattern subscriptions as channel globs
//!   presence   member lists and presence changes between nodes
//! run        per-shard runtime: inbox loop, sweep timer, shutdown drain (awaits)
//! recovery   the durable store's start: journal read back, torn tail cut, driver started
//!            (awaits)
//! sim        simulated-time harness for tests (no sockets, no wall clock), with a simulated Redis
//! ```

pub mod addr;
pub mod admission;
pub mod cluster;
mod conns;
mod dispatch;
pub mod handoff;
pub mod mesh;
pub mod msg;
pub mod presence;
mod publish;
pub mod recovery;
pub mod reply;
pub mod router;
pub mod run;
mod session;
mod state;
pub mod view;

mod index;
pub use index::members;
pub use index::patterns;
pub use index::rooms;

use session::token;

use conns::heartbeat;
pub use conns::outbound;
pub use conns::worklist;

mod owners;
use owners::directory;

mod store;
pub use store::cost;
pub use store::dedup;
pub use store::history;
pub use store::inbox;

#[cfg(test)]
pub(crate) mod sim;

pub use conns::{Conn, Transport};
pub use state::Shard;
pub use view::{ShardView, Shared};
