//! The router: the one place that decides, per operation, whether it is
//! served on this node (by the shard that owns the room, key or user) or
//! through Redis by the cluster (`shard::cluster`, from the shard it
//! entered on), as nats-server's `processInboundMsg` decides once per
//! message. Everything past this fork is single-node code that never
//! mentions the cluster, or cluster code that never runs on a single node.
//!
//! Runs on the shard where the operation entered (an API request, a client
//! frame) or, for a join, on the room's owner.
//!
//! ```text
//! operation          one node                              cluster
//! room publish       PublishRoom to owner_of(room)         cluster_publish here (Redis gives the offset)
//! pattern publish    PublishPattern to every shard         cluster_publish_pattern (every node's channel)
//! key/user/all push  route_push to the owners              cluster_push (registry in Redis)
//! join (on owner)    join_req: the owner's log             cluster_join: once the room's subscription is live
//! read mark          MarkReq to owner_of(room)             cluster_mark (marks in Redis)
//! GET /v1/history    HistoryReq to owner_of(room)          cluster_history (the room's Stream)
//! GET /v1/unread     UnreadReq per owner shard             cluster_unread per Redis instance
//! GET /v1/presence   PresenceReq to every shard            PresenceAsk to shard 0 (every node answers)
//! ```
//!
//! The named hooks by which single-node code lets cluster mode know of a
//! change are elsewhere, each a no-op on a single node: a room's first
//! member (`first_member`), pattern interest, presence watches and changes,
//! registry changes, the sweep (`cluster_sweep`). Three places read the
//! mode for whose data is the truth rather than where an operation goes:
//! the online figures (`view`: the cluster's sums), a user push's offline
//! inbox (`users`: Redis keeps it in a cluster) and presence changes sent
//! to watching nodes (`presence`).

use super::cluster::state::Join;
use super::members::Member;
use super::mesh::{owner_of_str, Answer, GlobalConn, HistoryPage, MembersTo, NodesPage, Publication, Reply};
use super::mesh::{ConnRef, Kept, ReplyWait, ShardMsg};
use super::state::Shard;
use crate::proto::publish::Target;
use crate::proto::v2::Resume;
use crate::redis::ops::Marks;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a presence question's answers come from.
pub enum PresenceAsked {
    /// Every shard of this node, each its own members.
    Shards(Vec<ReplyWait<(usize, Vec<Member>)>>),
    /// Every node of the cluster, gathered on shard 0 (`None`: the room's
    /// Redis instance is unreachable).
    Nodes(ReplyWait<Option<NodesPage>>),
}

impl Shard {
    /// Why a publish to `target` cannot be taken now (in a cluster: the
    /// Redis instance it needs is unreachable); `None` on a single node.
    pub fn refuses(&self, target: &Target) -> Option<String> {
        // On a single node there is no cluster state, and no refusal.
        self.cluster_refuses(target)
    }

    /// A room message entering on this shard (an API publish, a client's
    /// op 52); `reply` learns its offset.
    pub fn publish_room_in(&mut self, room: Arc<str>, msg: Publication, reply: Answer) {
        if self.clustered() {
            return self.cluster_publish(room, msg, reply);
        }
        let owner = owner_of_str(&room, self.nr());
        self.route(owner, ShardMsg::PublishRoom { room, msg, reply });
    }

    /// A message to every room `pattern` matches.
    pub fn publish_pattern_in(&mut self, pattern: &str, msg: Publication) {
        if self.clustered() {
            // Every node, this one too, hears it on its own channel.
            return self.cluster_publish_pattern(pattern, &msg);
        }
        let pattern: Arc<str> = Arc::from(pattern);
        for s in 0..self.nr() {
            let msg = msg.clone();
            let pattern = pattern.clone();
            self.route(s, ShardMsg::PublishPattern { pattern, msg });
        }
    }

    /// A push to keys, users or everyone.
    pub fn push_in(
        &mut self,
        target: Target,
        op: u32,
        payload: &[u8],
        id: Option<&str>,
        ttl: Option<u32>,
    ) -> Vec<ReplyWait<Kept>> {
        if self.clustered() {
            // Through Redis to the nodes that hold the targets (everyone:
            // every node, this one too).
            self.cluster_push(target, op, payload, id, ttl);
            return Vec::new();
        }
        // With the durable store a push to users is answered once kept.
        let kept = self.durable();
        self.route_push(target, op, payload, (id, ttl), kept)
    }

    /// On a room's owner: a version-2 join of connection `at`.
    pub(super) fn join_at_owner(
        &mut self,
        room: Arc<str>,
        at: GlobalConn,
        seq: u32,
        (resume, mid, presence): (Option<Resume>, i64, bool),
    ) {
        if self.clustered() {
            let j = Join {
                at,
                seq,
                resume,
                mid,
                presence,
                marked: false,
            };
            return self.cluster_join(room, j);
        }
        self.join_req(room, at, seq, (resume, mid, presence));
    }

    /// Op 48 of connection `r` (on this shard): user `mid` has read `room`
    /// up to `offset`.
    pub(super) fn mark_in(&mut self, r: ConnRef, seq: u32, room: Arc<str>, mid: i64, offset: u64) {
        if self.clustered() {
            return self.cluster_mark(r, seq, room, mid, offset);
        }
        let at = GlobalConn {
            shard: self.id as u16,
            conn: r,
        };
        let owner = owner_of_str(&room, self.nr());
        self.route(
            owner,
            ShardMsg::MarkReq {
                room,
                at,
                seq,
                mid,
                offset,
            },
        );
    }

    /// `GET /v1/history`: a page of `room` after `since`, into `reply`.
    pub fn ask_history(&mut self, room: Arc<str>, since: u64, limit: usize, reply: Reply<Option<HistoryPage>>) {
        if self.clustered() {
            // History lives in Redis; a node's cache holds only the tail.
            return self.cluster_history(room, since, limit, reply);
        }
        let owner = owner_of_str(&room, self.nr());
        let msg = ShardMsg::HistoryReq {
            room,
            since,
            limit,
            reply,
        };
        self.route(owner, msg);
    }

    /// `GET /v1/unread`: user `mid`'s marks in `rooms`, asked of each
    /// rooms' owner shard (in a cluster: each Redis instance, where the
    /// marks live); the rooms of each question with its answer.
    pub fn ask_unread(&mut self, mid: i64, rooms: &[String]) -> Vec<(Vec<Arc<str>>, ReplyWait<Marks>)> {
        let mut by: BTreeMap<usize, Vec<Arc<str>>> = BTreeMap::new();
        for room in rooms {
            let at = self
                .cluster_instance(room)
                .unwrap_or_else(|| owner_of_str(room, self.nr()));
            by.entry(at).or_default().push(Arc::from(room.as_str()));
        }
        let mut waits = Vec::with_capacity(by.len());
        for (owner, rooms) in by {
            let (reply, wait) = Reply::pair();
            waits.push((rooms.clone(), wait));
            if self.clustered() {
                self.cluster_unread(mid, rooms, reply);
            } else {
                self.route(owner, ShardMsg::UnreadReq { mid, rooms, reply });
            }
        }
        waits
    }

    /// `GET /v1/presence`: who is in `room`, at most `limit` listed.
    pub fn ask_presence(&mut self, room: &str, limit: usize) -> PresenceAsked {
        let room: Arc<str> = Arc::from(room);
        if self.clustered() {
            // Every node with members answers with its own; shard 0 gathers.
            let (reply, wait) = Reply::pair();
            self.route(0, ShardMsg::PresenceAsk { room, limit, reply });
            return PresenceAsked::Nodes(wait);
        }
        let waits = (0..self.nr())
            .map(|s| {
                let (reply, wait) = Reply::pair();
                let to = MembersTo::Api(reply);
                self.route(
                    s,
                    ShardMsg::PresenceReq {
                        room: room.clone(),
                        limit,
                        to,
                    },
                );
                wait
            })
            .collect();
        PresenceAsked::Shards(waits)
    }
}
