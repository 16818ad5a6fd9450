//! The shard's indexes, pure data: which connections are in which room
//! (`rooms`), which hold which room patterns (`patterns`), and the
//! presence data of members, their changes and who watches (`members`).
//!
//! Owned by one shard each; no I/O, no clock.

pub mod members;
pub mod patterns;
pub mod rooms;
