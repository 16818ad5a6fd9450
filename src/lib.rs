//! volley: a thread-per-core push server on io_uring (glommio), wire-compatible
//! with goim v2 clients.
//!
//! # Architecture
//!
//! ```text
//!        app servers ──HTTP / TCP──┐     clients ──TCP (goim frames) / WebSocket──┐
//!                                  ▼                                              ▼
//!  ┌─ shard 0 (core 0) ───────────────────────┐  ┌─ shard 1 (core 1) ─────────────────┐
//!  │ http_api, publish::tcp                   │  │ accept ─> TcpDriver per connection │
//!  │   ─encode once─> route(owner)            │  │                                    │
//!  │ Shard: conns, RoomTable, key/mid dir,    │  │ Shard: conns, RoomTable, ...       │
//!  │        heartbeat wheel                   │  │                                    │
//!  └────────────▲─────────────────────────────┘  └──────────────▲─────────────────────┘
//!               └──────── mesh: lock-free inbox per shard ──────┘
//! ```
//!
//! A room publish goes to the room's owner shard, which sends one `RoomFrame`
//! (sharing the same `Bytes`) to every shard; each shard queues it to its
//! local members, whose drivers coalesce queued frames into one `sendmsg`.
//! A push is encoded once per transport (`proto::wire::Wire`): TCP
//! connections get the bare frame, WebSocket ones the same frame as one binary
//! message; both forms are shared by every connection.
//!
//! # Modules
//! - [`config`]: every knob, file/env/flag layering.
//! - [`server`]: listeners, executors, `ServerHandle`, shutdown.
//! - [`shard`]: per-core state and behaviour; `shard::topics` (room index,
//!   pure) and `shard::mesh` (cross-core messages).
//! - [`conn`]: the socket drivers and outbound queues (the only awaiting code).
//! - [`proto`]: sans-IO codecs (binary frames, control bodies, WebSocket).
//! - [`http_api`]: publish / online / stats API.
//! - [`publish`]: checking and routing a push (HTTP and TCP publishers alike),
//!   and the TCP publisher connection.
//! - [`metrics`]: counters and close reasons.
//! - [`host`]: `volley check-host`, what on this host is not tuned.
//! - [`wake_keeper`]: wake-up insurance for glommio executors (also used by
//!   the load generator).
#![warn(missing_docs)]

pub mod config;
pub mod conn;
pub mod host;
pub mod http_api;
pub mod metrics;
pub mod proto;
pub mod publish;
pub mod server;
pub mod shard;
pub mod wake_keeper;

pub use config::Config;
pub use server::{Server, ServerHandle, StartError};
