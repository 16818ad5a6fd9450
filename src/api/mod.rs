//! The application-server side: where trusted servers publish and ask, side
//! by side — `http` (the HTTP API, on hyper) and `tcp` (the pipelined TCP
//! publisher connection) — and `publish`, the one path every push takes
//! from either into the shards.
//!
//! Runs on the shard that accepted the request or connection, in its
//! control task queue. Both listeners check the same API key (`auth`).
//!
//! `publish`: a room push goes to the room's owner shard (which fans it out
//! to every shard), a key or user push to the owners of those keys or
//! users, a global push to every shard; a message for this shard is handled
//! inline, the rest travel through the mesh.
//!
//! Invariants: a push is checked whole (payload size, target counts, room
//! length) before anything is routed; its frame is encoded once per
//! transport and shared by every recipient.

pub mod http;
pub mod tcp;
mod tcp_session;

use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::body::MAX_ROOM_LEN;
pub use crate::proto::publish::Target;
use crate::proto::wire::Wire;
use crate::shard::mesh::{owner_of_mid, owner_of_str, ShardMsg};
use crate::shard::Shard;
use fnv::FnvHashMap;
use std::sync::Arc;

/// Most keys or mids in one push.
pub const MAX_TARGETS: usize = 100_000;

/// Why a push was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The payload is over `[api] max_push_body`.
    #[error("payload of {got} bytes over max_push_body {max}")]
    TooLarge {
        /// Payload length.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// More keys or mids than `MAX_TARGETS`.
    #[error("{got} {what}, limit {MAX_TARGETS}")]
    TooManyTargets {
        /// "keys" or "mids".
        what: &'static str,
        /// How many were given.
        got: usize,
    },
    /// A room key over `MAX_ROOM_LEN` bytes.
    #[error("room key over {MAX_ROOM_LEN} bytes")]
    RoomTooLong,
}

/// Checks a push against the limits without routing it.
pub fn check(target: &Target, payload: &[u8], max: usize) -> Result<(), PublishError> {
    if payload.len() > max {
        return Err(PublishError::TooLarge {
            got: payload.len(),
            max,
        });
    }
    match target {
        Target::Keys(k) if k.len() > MAX_TARGETS => Err(PublishError::TooManyTargets {
            what: "keys",
            got: k.len(),
        }),
        Target::Mids(m) if m.len() > MAX_TARGETS => Err(PublishError::TooManyTargets {
            what: "mids",
            got: m.len(),
        }),
        Target::Room(r) if r.len() > MAX_ROOM_LEN => Err(PublishError::RoomTooLong),
        _ => Ok(()),
    }
}

/// Checks a push, encodes its frame once, and routes it.
pub fn publish(sh: &mut Shard, target: Target, op: u32, payload: &[u8]) -> Result<(), PublishError> {
    check(&target, payload, sh.shared.config.api.max_push_body)?;
    let frame = Wire::encode(binary::VERSION_GOIM, op, 0, payload);
    ShardStats::add(&sh.stats().published, 1);
    let n = sh.nr_shards();
    match target {
        Target::Room(room) => {
            let owner = owner_of_str(&room, n);
            sh.route(
                owner,
                ShardMsg::PublishRoom {
                    room: Arc::from(room),
                    frame,
                },
            );
        }
        Target::All => {
            for s in 0..n {
                sh.route(
                    s,
                    ShardMsg::All {
                        op,
                        frame: frame.clone(),
                    },
                );
            }
        }
        Target::Keys(keys) => {
            let mut by: FnvHashMap<usize, Vec<Arc<str>>> = FnvHashMap::default();
            for k in keys {
                by.entry(owner_of_str(&k, n)).or_default().push(Arc::from(k));
            }
            for (s, keys) in by {
                sh.route(
                    s,
                    ShardMsg::PushKeys {
                        keys,
                        op,
                        frame: frame.clone(),
                    },
                );
            }
        }
        Target::Mids(mids) => {
            let mut by: FnvHashMap<usize, Vec<i64>> = FnvHashMap::default();
            for m in mids {
                by.entry(owner_of_mid(m, n)).or_default().push(m);
            }
            for (s, mids) in by {
                sh.route(
                    s,
                    ShardMsg::PushMids {
                        mids,
                        op,
                        frame: frame.clone(),
                    },
                );
            }
        }
    }
    Ok(())
}
