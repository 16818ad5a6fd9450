//! The shard's indexes, pure data: which connections are in which room
//! (`rooms`), which hold which room patterns (`patterns`), and the
//! presence data of members, their changes and who watches (`members`).
//!
//! Owned by one shard each; no I/O, no clock.

pub mod members;
pub mod patterns;
pub mod rooms;

use crate::shard::mesh::ConnRef;

/// A shard's indexes of its own connections.
#[derive(Debug, Default)]
pub(in crate::shard) struct Index {
    /// Local room memberships.
    pub(in crate::shard) rooms: rooms::RoomTable<ConnRef>,
    /// Local version-2 connections' pattern subscriptions.
    pub(in crate::shard) patterns: patterns::PatternIndex<ConnRef>,
    /// Rooms whose members' joins and leaves someone watches (`presence`).
    pub(in crate::shard) watched: members::Watched<ConnRef>,
}
