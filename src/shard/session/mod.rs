//! Client frames into the shard: decoding a connection's bytes, op 9
//! batches, and handing each frame to the session of the protocol version
//! the connection authenticated with (`v1`, goim's, or `v2`, volley's).
//!
//! Runs on the owning shard; called by the connection's driver with bytes it
//! read (raw TCP) or one WebSocket message (which must hold whole frames),
//! and by the simulated-time harness. Never awaits.
//!
//! Which session: the auth frame's version field chooses it. goim clients
//! send 1 there; a client that never sets the field sends 0, which goim
//! also serves, so 0 means version 1 as well. After auth the field is not
//! looked at again on a version-1 connection (goim's own benchmark client
//! sends its heartbeats as version 0); replies echo whatever the request
//! carried.
//!
//! Invariants: a frame is acted on only while its connection is open;
//! nothing is read past the first frame that closes it; a decode error
//! closes with the reason named for the rule broken.
//!
//! Files: this one (bytes to frames), `v1` and `v2` (each version's
//! operations), `resume` (version-2 joins: the owner's round trip, replay,
//! then membership), `access` (auth, tokens at refresh and expiry,
//! connection limits, client publish), `token` (a connection's token and
//! its refresh / expiry ticks, pure).

use crate::metrics::ShardStats;
use crate::proto::batch::Batch;
use crate::proto::binary::{self, op, Frame};
use crate::proto::close::CloseReason;
use crate::proto::v2 as proto_v2;
use crate::shard::mesh::ConnRef;
use crate::shard::state::Shard;

mod access;
mod resume;
pub(super) mod token;
mod v1;
mod v2;

impl Shard {
    /// Decodes and acts on as many whole frames of `data` as it holds.
    /// Returns how many bytes were consumed; a partial frame is left (check
    /// `is_closing` to tell a partial frame from a close).
    pub fn feed(&mut self, r: ConnRef, data: &[u8]) -> usize {
        let max_body = self.cfg().limits.max_body;
        let most = proto_v2::frame_limit(op::AUTH, max_body);
        ShardStats::add(&self.stats().bytes_in, data.len() as u64);
        let mut used = 0;
        loop {
            if self.is_closing(r) {
                return used;
            }
            match binary::decode_with(&data[used..], most, |op| proto_v2::frame_limit(op, max_body)) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.on_frame(r, frame);
                }
                Ok(None) => return used,
                Err(e) => {
                    self.close(r, CloseReason::from(&e), &e.to_string());
                    return used;
                }
            }
        }
    }

    /// One WebSocket binary message of the protocol endpoint: whole frames
    /// (or one op 9 batch), nothing left over.
    pub fn feed_message(&mut self, r: ConnRef, payload: &[u8]) {
        let n = self.feed(r, payload);
        if n < payload.len() && !self.is_closing(r) {
            self.close(
                r,
                CloseReason::ProtocolError,
                "a WebSocket message must hold whole frames",
            );
        }
    }

    /// One frame from `r`: auth first, then its session's operations.
    pub(in crate::shard) fn on_frame(&mut self, r: ConnRef, f: Frame<'_>) {
        ShardStats::add(&self.stats().frames_in, 1);
        let Some(c) = self.conn(r) else { return };
        if !c.authed {
            if f.op != op::AUTH {
                let detail = format!("first frame must be auth (op 7), got op {}", f.op);
                return self.close(r, CloseReason::AuthRequired, &detail);
            }
            return match f.ver {
                0 | binary::VERSION_GOIM => self.v1_auth(r, f),
                binary::VERSION_NATIVE => self.v2_auth(r, f),
                v => {
                    let detail = format!("protocol version {v} is not served (this server speaks 1 and 2)");
                    self.close(r, CloseReason::UnsupportedVersion, &detail)
                }
            };
        }
        if c.ver == binary::VERSION_NATIVE {
            self.v2_frame(r, f);
        } else {
            self.v1_frame(r, f);
        }
    }

    /// An op 9 batch: every inner frame in order, each with its own reply;
    /// a malformed batch closes the connection after the frames before the
    /// fault.
    pub(in crate::shard) fn on_batch(&mut self, r: ConnRef, body: &[u8]) {
        let max_body = self.cfg().limits.max_body;
        for inner in Batch::new(body, max_body) {
            match inner {
                Ok(f) => {
                    self.on_frame(r, f);
                    if self.is_closing(r) {
                        return;
                    }
                }
                Err(e) => return self.close(r, CloseReason::ProtocolError, &e.to_string()),
            }
        }
    }
}
