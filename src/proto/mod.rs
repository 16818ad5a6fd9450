//! Sans-IO protocol code: nothing under this module touches a socket, a
//! runtime or a clock, so all of it is tested (and fuzzed) on bytes alone.
//!
//! - `binary`: the goim v2 frame (the client protocol and the TCP
//!   publisher's), decoded from untrusted bytes and encoded;
//! - `batch`: op 9, a frame whose body is more frames;
//! - `body`: the client control bodies (auth JSON, room, accepts list);
//! - `publish`: the TCP publisher's push bodies;
//! - `close`: every close reason, its name, its op 6 text and close code;
//! - `pattern`: room pattern syntax, matching and covering;
//! - `wire`: a push encoded once per transport;
//! - `v2`: protocol version 2 — its operations, the push envelope, control
//!   bodies and numbered errors;
//! - `ws`: WebSocket — upgrade, frames, message reader, session policy.

pub mod batch;
pub mod binary;
pub mod body;
pub mod close;
pub mod pattern;
pub mod publish;
pub mod v2;
pub mod wire;
pub mod ws;
