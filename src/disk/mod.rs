//! The durable store's side that touches disk (named for what it talks to,
//! as `redis` is for cluster mode): the segment format (`frame`: how
//! records are framed and checksummed, and how a segment is read back after
//! a crash, a torn write or damage) and what records say (`record`).
//!
//! Pure code over bytes, used by whichever shard owns a segment.

pub mod frame;
pub mod record;
