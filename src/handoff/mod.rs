//! Handing a running server's connections to the next process (`volley
//! upgrade`): what crosses the process boundary and how.
//!
//! Built so far: `fds`, descriptors with their bytes over a Unix socket
//! pair (SCM_RIGHTS); `wire`, the versioned conversation between the two
//! processes in messages of any size, with the sockets they carry. The
//! shard's side — a connection's session as records, taken from a quiet
//! shard and put into a fresh one at the same slot — is `shard::handoff`.

pub mod fds;
pub mod wire;
