//! Cluster mode's publishes: a room message to Redis (its offset and
//! epoch are Redis's), a pattern publish to every node's channel, key /
//! user / everyone pushes through the registry, what the node's channel
//! brings of them, and refusals while an instance is unreachable.
//!
//! Runs on the shard where a publish entered (`shard::router`), and on
//! shard 0 for what the node's channel brings.

use crate::proto::publish::Target;
use crate::redis::instance_of;
use crate::redis::ops::Call;
use crate::redis::push::{encode_push, Push};
use crate::redis::registry;
use crate::redis::room::{self, Dedup, Message, RoomKeys};
use crate::shard::cluster::state::{Then, PATTERN_DEDUP_SECS};
use crate::shard::mesh::{Answer, Publication, ShardMsg};
use crate::shard::state::Shard;
use bytes::Bytes;
use fnv::FnvHashMap;
use std::sync::Arc;

impl Shard {
    /// Cluster mode: why a push to `target` would fail now, a link it
    /// needs being down (a room's instance; a user's or client-chosen
    /// key's registry instance; the first instance for patterns, everyone
    /// and assigned keys); so that a publisher that gets no answer per
    /// message (the TCP publisher, fire-and-forget routes) is refused
    /// instead of told "routed".
    pub fn cluster_refuses(&self, target: &Target) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let first = || c.links[0].down_reason();
        match target {
            Target::Room(r) if crate::proto::pattern::kind(r) != crate::proto::pattern::Kind::Pattern => {
                c.link_for(r).down_reason()
            }
            Target::Room(_) | Target::All => first(),
            Target::Mids(mids) => mids
                .iter()
                .find_map(|&m| c.link_for(&registry::user_entry(m)).down_reason()),
            Target::Keys(keys) => keys.iter().find_map(|k| match registry::node_of_assigned_key(k) {
                Some(_) => first(),
                None => c.link_for(&registry::key_entry(k)).down_reason(),
            }),
        }
    }

    /// Cluster mode, on any shard: publishes a room message through
    /// Redis and tells `reply` what it got (or why not).
    pub(in crate::shard) fn cluster_publish(&mut self, room: Arc<str>, msg: Publication, reply: Answer) {
        let Some(instance) = self.cluster_instance(&room) else {
            return;
        };
        let history = self.cfg().history.policy(&room).messages.clamp(1, u32::MAX as usize) as u32;
        let keys = RoomKeys::of(&room);
        let dedup = match (&msg.id, msg.token) {
            (Some(id), _) => Some(Dedup {
                key: keys.dedup(id),
                secs: self.cfg().api.dedup_window_secs,
            }),
            (None, Some(t)) => Some(Dedup {
                key: keys.pattern_dedup(t),
                secs: PATTERN_DEDUP_SECS,
            }),
            (None, None) => None,
        };
        let call = Call::Publish {
            room: room.clone(),
            msg: message_of(&msg),
            history,
            dedup,
        };
        self.emit(instance, call, Then::Published { room, reply });
    }

    /// Cluster mode, on any shard: a pattern publish goes to every live
    /// node's channel (`registry::to_nodes`: one command); each publishes it
    /// to the matching rooms it knows (`pattern_message`).
    pub fn cluster_publish_pattern(&mut self, pattern: &str, msg: &Publication) {
        if self.cluster.is_none() {
            return;
        }
        let body = room::encode_pattern(pattern, fastrand::u64(1..), &message_of(msg));
        let call = Call::ToNodes {
            body: body.into(),
            nodes: Vec::new(),
        };
        self.emit(
            0,
            call,
            Then::Sent {
                what: "pattern publish",
            },
        );
    }

    /// Cluster mode, on any shard: a push to everyone goes to every live
    /// node's channel; a push to users or keys to the nodes that hold them
    /// (`redis::registry`: one command per instance of their entries; a
    /// server-assigned key names its node). Each node routes it to what it
    /// holds (`on_redis`); a node not subscribed at the time finds it in its
    /// queue when it is again.
    pub fn cluster_push(&mut self, target: Target, op: u32, payload: &[u8], id: Option<&str>, ttl: Option<u32>) {
        let Some(c) = self.cluster.as_ref() else { return };
        let id = id.unwrap_or("").to_string();
        let ttl = ttl.unwrap_or(0);
        let payload = Bytes::copy_from_slice(payload);
        // (nodes, push) to send to those nodes (none named: every node).
        let mut direct: Vec<(Vec<String>, Push)> = Vec::new();
        // Per instance, the targets to route through the registry.
        let n = c.links.len();
        let mut routed: Vec<Vec<Target>> = vec![Vec::new(); n];
        let push = |target| Push {
            target,
            op,
            ttl,
            id: id.clone(),
            payload: payload.clone(),
        };
        match target {
            Target::Room(_) => return,
            Target::All => direct.push((Vec::new(), push(Target::All))),
            Target::Mids(mids) => {
                let mut by: Vec<Vec<i64>> = vec![Vec::new(); n];
                for m in mids {
                    by[instance_of(registry::user_entry(m).as_bytes(), n)].push(m);
                }
                for (i, m) in by.into_iter().enumerate().filter(|(_, m)| !m.is_empty()) {
                    routed[i].push(Target::Mids(m));
                }
            }
            Target::Keys(keys) => {
                let mut by: Vec<Vec<String>> = vec![Vec::new(); n];
                let mut nodes: FnvHashMap<String, Vec<String>> = FnvHashMap::default();
                for k in keys {
                    match registry::node_of_assigned_key(&k) {
                        Some(node) => nodes.entry(node).or_default().push(k),
                        None => by[instance_of(registry::key_entry(&k).as_bytes(), n)].push(k),
                    }
                }
                for (i, k) in by.into_iter().enumerate().filter(|(_, k)| !k.is_empty()) {
                    routed[i].push(Target::Keys(k));
                }
                for (node, k) in nodes {
                    direct.push((vec![node], push(Target::Keys(k))));
                }
            }
        }
        let head = format!("{op} {ttl} {} {id}", id.len());
        let ib = &self.shared.config.inbox;
        let inbox = registry::InboxLimits {
            messages: ib.messages,
            secs: if ttl > 0 { ttl } else { ib.ttl_secs },
        };
        for (i, targets) in routed.into_iter().enumerate() {
            for target in targets {
                let (head, payload) = (head.clone(), payload.clone());
                let call = Call::Route {
                    target,
                    head,
                    payload,
                    inbox,
                };
                self.emit(i, call, Then::Sent { what: "push" });
            }
        }
        for (nodes, p) in direct {
            let Some(body) = encode_push(&p) else { continue };
            let call = Call::ToNodes {
                body: body.into(),
                nodes,
            };
            self.emit(0, call, Then::Sent { what: "push" });
        }
    }

    /// A push heard from Redis goes to this node's targets as a single
    /// node routes it (the form's empty id and zero TTL mean none).
    pub(super) fn route_cluster_push(&mut self, p: Push) {
        let id = (!p.id.is_empty()).then_some(p.id.as_str());
        let ttl = (p.ttl > 0).then_some(p.ttl);
        self.route_push(p.target, p.op, &p.payload, (id, ttl), false);
    }

    /// A pattern publish from the node's channel (on shard 0): every shard
    /// publishes it to the matching rooms it owns and knows.
    pub(super) fn pattern_message(&mut self, pattern: String, token: u64, m: Message) {
        if crate::proto::pattern::kind(&pattern) != crate::proto::pattern::Kind::Pattern {
            let channel = self
                .cluster
                .as_ref()
                .map(|c| c.node_channel.clone())
                .unwrap_or_default();
            return self.bad_channel_message(channel.as_bytes(), room::BadMessage("not a pattern"));
        }
        let msg = Publication {
            op: m.op,
            id: (!m.id.is_empty()).then(|| Arc::from(m.id.as_str())),
            payload: m.payload,
            ttl: (m.ttl > 0).then_some(m.ttl),
            token: Some(token),
        };
        let pattern: Arc<str> = Arc::from(pattern);
        for s in 0..self.nr() {
            self.route(
                s,
                ShardMsg::PublishPattern {
                    pattern: pattern.clone(),
                    msg: msg.clone(),
                },
            );
        }
    }
}

/// A publication as Redis takes it (its offset and epoch are Redis's to
/// give).
fn message_of(msg: &Publication) -> Message {
    Message {
        offset: 0,
        epoch: 1,
        op: msg.op,
        ttl: msg.ttl.unwrap_or(0),
        id: msg.id.as_deref().unwrap_or("").to_string(),
        payload: msg.payload.clone(),
    }
}
