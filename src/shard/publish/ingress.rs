//! Step 1 of the publish path. Where a push to keys, users or everyone
//! enters, on one node: each target's owner shard (directory lookup, then
//! `Deliver` to the shards that hold the connections), or every shard
//! (`All`). Room publishes enter through `shard::router::publish_room_in`.
//!
//! Runs on the shard the push entered (API) or its targets' owners.

use crate::proto::publish::Target;
use crate::proto::v2::{Envelope, Kind};
use crate::proto::wire::Frames;
use crate::shard::mesh::{owner_of_mid, owner_of_str, Kept, Reply, ReplyWait, ShardMsg};
use crate::shard::state::Shard;
use fnv::FnvHashMap;
use std::sync::Arc;

impl Shard {
    /// A push to keys, users or everyone (never a room), as it enters this
    /// node: encoded once per form, then routed to the key and user owners,
    /// or to every shard. With `kept`, a push to users returns a wait per
    /// owner shard, answered once the owner has kept it (the durable store:
    /// on disk) or refused it.
    pub fn route_push(
        &mut self,
        target: Target,
        op: u32,
        payload: &[u8],
        (id, ttl): (Option<&str>, Option<u32>),
        kept: bool,
    ) -> Vec<ReplyWait<Kept>> {
        let mut waits = Vec::new();
        let n = self.nr();
        let dedup: Option<Arc<str>> = id.map(Arc::from);
        let direct = || {
            Frames::new(&Envelope {
                op,
                kind: Kind::Direct,
                room: "",
                offset: 0,
                epoch: 0,
                id: id.unwrap_or(""),
                payload,
            })
        };
        match target {
            Target::Room(_) => {}
            Target::All => {
                let frames = direct();
                for s in 0..n {
                    self.route(
                        s,
                        ShardMsg::All {
                            op,
                            frames: frames.clone(),
                            dedup: dedup.clone(),
                        },
                    );
                }
            }
            Target::Keys(keys) => {
                let frames = direct();
                let mut by: FnvHashMap<usize, Vec<Arc<str>>> = FnvHashMap::default();
                for k in keys {
                    by.entry(owner_of_str(&k, n)).or_default().push(Arc::from(k));
                }
                for (s, keys) in by {
                    self.route(
                        s,
                        ShardMsg::PushKeys {
                            keys,
                            op,
                            frames: frames.clone(),
                            dedup: dedup.clone(),
                        },
                    );
                }
            }
            Target::Mids(mids) => {
                let push = self.next_push_id();
                let frames = Frames::user(op, push, id.unwrap_or(""), payload);
                let mut by: FnvHashMap<usize, Vec<i64>> = FnvHashMap::default();
                for m in mids {
                    by.entry(owner_of_mid(m, n)).or_default().push(m);
                }
                for (s, mids) in by {
                    let kept = kept.then(|| {
                        let (reply, wait) = Reply::pair();
                        waits.push(wait);
                        reply
                    });
                    self.route(
                        s,
                        ShardMsg::PushMids {
                            mids,
                            op,
                            frames: frames.clone(),
                            id: push,
                            ttl,
                            dedup: dedup.clone(),
                            kept,
                        },
                    );
                }
            }
        }
        waits
    }
}
