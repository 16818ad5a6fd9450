//! Handing a running server's connections to the next process (`volley
//! upgrade`): what crosses the process boundary and how.
//!
//! - `fds`: descriptors with their bytes over a Unix socket pair
//!   (SCM_RIGHTS);
//! - `wire`: the versioned conversation between the two processes, in
//!   messages of any size, with the sockets they carry;
//! - `local`: taking every shard's listeners and connections from a
//!   running server (quiet, settled, exported), and letting go of them —
//!   or taking them back;
//! - `process`: the upgrade between two processes: starting the next
//!   binary, the conversation on each side, and its status;
//! - `binary`: which binary other than its own an upgrade may start.
//!
//! The shard's side — a connection's session as records, taken from a
//! quiet shard and put into a fresh one at the same slot — is
//! `shard::handoff`; starting a server from what was handed over is
//! `Server::adopt`.

pub mod binary;
pub mod fds;
pub mod local;
pub mod process;
pub mod wire;

use crate::net::ListenerKind;
use crate::shard::handoff::ShardState;
use std::os::fd::OwnedFd;

/// What a process taking over from another one starts with: the
/// listening sockets and connections it is given instead of binding, and
/// the key secret its assigned keys are signed with.
#[derive(Debug)]
pub struct Adoption {
    /// The previous process's key tag and secret.
    pub keys: (u64, Vec<u8>),
    /// Listening sockets: what each is for, and the shard to accept on it.
    pub listeners: Vec<(ListenerKind, usize, OwnedFd)>,
    /// Per shard, in order: its connections' records and their sockets.
    pub shards: Vec<(ShardState, Vec<OwnedFd>)>,
}
