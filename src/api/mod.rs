//! The application-server side: where trusted servers publish and ask, side
//! by side — `http` (the HTTP API, on hyper) and `tcp` (the pipelined TCP
//! publisher connection) — and `publish`, the one path every push takes
//! from either into the shards; `conns` keeps both kinds of connection
//! within `[api] max_conns`, their deadlines and the body memory;
//! `tcp_handoff` parks the TCP publishers for an upgrade in place.
//!
//! Runs on the shard that accepted the request or connection, in its
//! control task queue. Both listeners check the same API key (`auth`).
//!
//! `publish`: a room push goes to the room's owner shard (which fans it out
//! to every shard), a key or user push to the owners of those keys or
//! users, a global push to every shard (`Shard::route_push`); a message for
//! this shard is handled inline, the rest travel through the mesh. In
//! cluster mode room pushes go to Redis from the shard they entered, pattern
//! and global pushes to every node through Redis, and key and user pushes
//! to the nodes the registry says hold them (`shard::cluster`).
//!
//! Invariants: a push is checked whole (payload size, target counts, room
//! length, message id) before anything is routed; its frames are encoded
//! once per protocol version and transport and shared by every recipient
//! (a room message by its owner shard, which gives it its offset first).

pub mod conns;
pub mod http;
pub mod tcp;
pub mod tcp_handoff;
mod tcp_session;

use crate::metrics::ShardStats;
use crate::proto::body::MAX_ROOM_LEN;
use crate::proto::pattern;
pub use crate::proto::publish::Target;
use crate::proto::v2::MAX_ID_LEN;
use crate::shard::mesh::{Answer, Kept, Publication, PublishOutcome, Published, Reply, ReplyWait};
use crate::shard::Shard;
use bytes::Bytes;
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
    /// A message id over `MAX_ID_LEN` bytes.
    #[error("message id over {MAX_ID_LEN} bytes")]
    IdTooLong,
    /// A push to user id 0, which names no user: no connection has it,
    /// and what an inbox kept for it nobody could read.
    #[error("mid 0 names no user")]
    NoUser,
    /// A room name with `>` before its last segment, or a pattern past
    /// its bounds.
    #[error("{0}")]
    BadPattern(pattern::PatternError),
    /// Cluster mode: the Redis instance the publish needs is unreachable.
    #[error("{0}")]
    Unavailable(String),
}

/// What a publish waits for before it is answered.
pub enum Wait {
    /// A room push: its owner's answer (the offset it got).
    Room(ReplyWait<PublishOutcome>),
    /// A push to users with the durable store: each owner's word that it
    /// kept it.
    Kept(Vec<ReplyWait<Kept>>),
}

impl std::fmt::Debug for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Room(_) => f.write_str("Wait::Room"),
            Wait::Kept(w) => write!(f, "Wait::Kept({})", w.len()),
        }
    }
}

impl Wait {
    /// What the publish got: a room push's offset, or nothing for a kept
    /// push; `Err` with why it was not published.
    pub async fn outcome(self) -> Result<Option<Published>, String> {
        match self {
            Wait::Room(w) => match w.await {
                Some(p) => p.map(Some),
                None => Err("the room's shard did not answer".to_string()),
            },
            Wait::Kept(ws) => {
                for w in ws {
                    match w.await {
                        Some(Ok(())) => {}
                        Some(Err(why)) => return Err(why),
                        None => return Err("a user's shard did not answer".to_string()),
                    }
                }
                Ok(None)
            }
        }
    }
}

/// What a publisher may say about a message besides where it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// The publisher's message id, carried in version-2 envelopes.
    pub id: Option<String>,
    /// Seconds a room message stays in history (the room's limits still
    /// apply).
    pub ttl: Option<u32>,
}

/// Checks a push against the limits without routing it.
pub fn check(target: &Target, payload: &[u8], meta: &Meta, max: usize) -> Result<(), PublishError> {
    if meta.id.as_ref().is_some_and(|id| id.len() > MAX_ID_LEN) {
        return Err(PublishError::IdTooLong);
    }
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
        Target::Mids(m) if m.contains(&0) => Err(PublishError::NoUser),
        Target::Room(r) if r.len() > MAX_ROOM_LEN => Err(PublishError::RoomTooLong),
        Target::Room(r) => pattern::check(r).map(|_| ()).map_err(PublishError::BadPattern),
        _ => Ok(()),
    }
}

/// Checks a push, encodes its frames once (a room message: at its owner),
/// and routes it. With `answer`, a room push returns the wait for its
/// owner's answer: the offset it got (or, for a message id seen within the
/// dedup window, the offset the first one got). In cluster mode a room
/// push goes to Redis from this shard (refused at once while the room's
/// instance is unreachable, else answered with what Redis said), and the
/// other pushes through Redis to the nodes they concern.
pub fn publish(
    sh: &mut Shard,
    target: Target,
    op: u32,
    payload: &[u8],
    meta: Meta,
    answer: bool,
) -> Result<Option<Wait>, PublishError> {
    check(&target, payload, &meta, sh.shared.config.api.max_push_body)?;
    if let Some(why) = sh.refuses(&target) {
        ShardStats::add(&sh.stats().cluster_publish_failed, 1);
        return Err(PublishError::Unavailable(why));
    }
    let dedup: Option<Arc<str>> = meta.id.as_deref().map(Arc::from);
    let mut wait = None;
    ShardStats::add(&sh.stats().published, 1);
    match target {
        Target::Room(room) if pattern::kind(&room) == pattern::Kind::Pattern => {
            let msg = Publication {
                op,
                id: dedup,
                payload: Bytes::copy_from_slice(payload),
                ttl: meta.ttl,
                token: None,
            };
            sh.publish_pattern_in(&room, msg);
        }
        Target::Room(room) => {
            let msg = Publication {
                op,
                id: dedup,
                payload: Bytes::copy_from_slice(payload),
                ttl: meta.ttl,
                token: None,
            };
            let reply = if answer {
                let (reply, w) = Reply::pair();
                wait = Some(Wait::Room(w));
                Answer::Api(reply)
            } else {
                Answer::None
            };
            sh.publish_room_in(Arc::from(room), msg, reply);
        }
        target => {
            let kept = sh.push_in(target, op, payload, meta.id.as_deref(), meta.ttl);
            if !kept.is_empty() {
                wait = Some(Wait::Kept(kept));
            }
        }
    }
    Ok(wait)
}
