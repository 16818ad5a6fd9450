//! The durable store's side that touches disk (named for what it talks to,
//! as `redis` is for cluster mode):
//!
//! ```text
//! frame     how records sit in a segment: length, CRC32C, kind; read back past torn
//!           writes and damage
//! record    what records say: room messages and heads, pushes, acks, marks, ids seen,
//!           checkpoint markers
//! journal   a shard's append-only log as a state machine: LSNs, group commit, segments,
//!           checkpoints, retries; emits writes, syncs and removals as values
//! recover   reading a journal back: the newest whole checkpoint, then every record
//! layout    the store's folder: its lock, `CURRENT`, the generations of shard folders
//! driver    runs a shard's journal on glommio's DMA files, and reads segments back
//! ```
//!
//! All but `layout` (the standard library, once at start) and `driver` (the
//! shard's ring) are pure code over bytes and values, used by the shard that
//! owns a journal.

pub mod driver;
pub mod frame;
pub mod journal;
pub mod layout;
pub mod record;
pub mod recover;
