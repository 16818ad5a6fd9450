//! volley: a thread-per-core push server on io_uring (glommio), wire-compatible
//! with goim v2 clients.
//!
//! # Architecture
//!
//! ```text
//!    app servers ──HTTP / TCP publisher──┐   clients ──TCP (goim frames) / WebSocket──┐
//!                                        ▼                                            ▼
//!  ┌─ every shard (one per core) ──────────────────────────────────────────────────────────┐
//!  │ api: http, tcp ── publish: encode once, route to the owner                           │
//!  │ conn: accept ─> readiness ring ─> reactor runs ClientDriver (bytes) ─> Shard::feed   │
//!  │ shard: Shard = conns, RoomTable, key/user directory slice, heartbeat wheel (sans-IO) │
//!  │ shard::run: inbox loop (fan-out), 1 s sweep, shutdown drain                          │
//!  └──────────────▲─────────────────────────────────────────────────────────▲─────────────┘
//!                 └─────────── shard::mesh: a lock-free inbox per shard ─────┘
//! ```
//!
//! # A room publish, step by step
//!
//! ```text
//! one node:  api::publish (HTTP, TCP publisher) | shard::session::access (client op 52)
//!              └─> shard::router::publish_room_in ─PublishRoom─> owner_of(room):
//!                  shard::publish::owner: dedup, next offset, history, answer
//!                  └─> fan_out_room ─RoomFrame─> every shard: publish::fanout ─> publish::queue per member
//!                      └─> conn::flush: one sendmsg per connection, batched on io_uring
//! cluster:   the same entry ─> shard::router::publish_room_in ─> shard::cluster::publish
//!              └─> a Call::Publish value ─> redis::driver::drive ─> Redis (offset, Stream, PUBLISH)
//!              each node's owner of the room hears it on its subscription (shard::cluster::on_redis)
//!              └─> shard::cluster::rooms::apply: the node's cache ─> fan_out_room ─> (as on one node from here)
//! ```
//!
//! `shard::router` is the one place that decides, per operation, this node
//! or the cluster; cluster mode on a shard lives in `shard::cluster` and
//! is sans-IO (Redis calls are values, `redis::ops`), tested against a
//! simulated Redis in `shard::sim::redis`.
//!
//! The owner shard sends one `RoomFrame` per shard, all sharing the same
//! `Bytes`; each shard queues it to its local members, and the shard's
//! flusher writes each member's queued frames with one `sendmsg`, up to 256
//! of them per `io_uring_enter`.
//! A push is encoded once per protocol version and transport
//! (`proto::wire::Frames`): TCP connections get the bare frame, WebSocket
//! ones the same frame as one binary message; every form is shared by every
//! connection that needs it.
//!
//! # Modules
//! - [`config`]: every knob, grouped in sections; file / environment / flag
//!   layering; the example file and the configuration in force (`volley
//!   config`).
//! - [`server`]: binds the listeners, starts the shards, `ServerHandle`.
//! - [`net`]: listener specs, binding one socket per shard, the accept loop.
//! - [`shard`]: per-core state and behaviour, sans-IO, a folder per role,
//!   `Shard` made of the components they own (connection records, their
//!   addresses and signed assigned keys, heartbeat wheel, directory,
//!   delivery, the version-1 and version-2 sessions, rooms, one bounded
//!   store under room logs (offsets, history) and inboxes, resume, access
//!   and connection limits, room patterns, presence, the mesh, and what
//!   kept data costs in memory),
//!   plus `shard::run`, the per-shard runtime that drives it,
//!   `shard::router`, the fork per operation between this node and the
//!   cluster, and `shard::cluster`, cluster mode on a shard (one file per
//!   role: its data, the Redis operations it emits and their answers,
//!   publishes and pushes, the rooms' subscription machine, the registry,
//!   reads from Redis, counts, patterns and presence across nodes).
//! - [`conn`]: client connections' I/O: accept, the per-connection driver
//!   (state, not a task), the per-shard readiness ring (one multishot poll
//!   per connection on an io_uring of our own), the reactor task that runs
//!   the drivers as it reports, and the per-shard flusher that writes what
//!   fan-out queued (batched on io_uring).
//! - [`api`]: the application-server side: HTTP API, TCP publishers, the
//!   one publish path both take, and their connections' cap, deadlines and
//!   body memory (`api::conns`); TCP publishers park for an upgrade in
//!   place (`api::tcp_handoff`).
//! - [`auth`]: the API key check (constant time) and client tokens (JWT).
//! - [`redis`]: cluster mode's Redis side (named for what it talks to, so
//!   that "cluster" names one thing, `shard::cluster`): each shard's pipelined links
//!   to the instances of `[redis] urls` and their health, its pub/sub
//!   subscribers, a room message's keys, scripts, Stream reads and channel
//!   forms, the push form, the user / key registry, the nodes' counts, the
//!   presence notes nodes leave each other, and Redis operations as values
//!   with the per-shard driver that runs them (`redis::ops`).
//! - [`proto`]: sans-IO codecs and policies (frames, batches, bodies, close
//!   reasons, room patterns, version 2, WebSocket with permessage-deflate).
//! - [`disk`]: the durable store's segment format (records framed with a
//!   CRC32C, read back past torn writes and damage) and its records (room
//!   messages and positions, pushes, acks, marks, ids seen, checkpoints),
//!   the journal as a state machine, reading it back, the folder and its
//!   lock, and the driver that runs a shard's journal on DMA files.
//! - [`handoff`]: `volley upgrade`: what crosses to the next process
//!   (descriptors over a Unix socket pair, versioned messages), taking
//!   every shard's listeners and connections from a running server and
//!   giving them back if the next process does not take over, the
//!   conversation between the two processes, and which binary it may start
//!   (docs/UPGRADE.md).
//! - [`metrics`]: counters and histograms, as JSON and Prometheus text.
//! - [`host`]: `volley check-host`, what on this host is not tuned.
//! - [`sub`]: `volley sub`, a terminal subscriber (blocking sockets, a
//!   client of the server, not part of it) that prints what arrives and
//!   resumes after a lost connection.
//! - [`ctl`]: `volley drain` and `volley upgrade`, the operator's commands
//!   that ask a running server to drain or to upgrade in place, and follow
//!   it (a client of the HTTP API).
//!
//! Code that awaits: `conn`, `api::http`, `api::tcp`, `net::accept_each`,
//! `shard::run`, `redis` (links, subscribers, scripts, the operations'
//! driver and its timer), and `server`'s start-up; everything else is
//! plain functions over data, driven by them.
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod ctl;
pub mod disk;
pub mod handoff;
pub mod host;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod redis;
pub mod server;
pub mod shard;
pub mod sub;

pub use config::Config;
pub use handoff::Adoption;
pub use server::{Server, ServerHandle, StartError};
