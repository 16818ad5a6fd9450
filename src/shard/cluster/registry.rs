//! Cluster mode's registry: which node holds which users and keys
//! (`redis::registry`), a user's leave with what it owes, registering
//! everything again after a reconnect or when the node was taken for dead,
//! the node's alive mark and its queue.
//!
//! Runs on the owner shards of keys and users; the alive mark and the
//! queue on shard 0.

use crate::metrics::ShardStats;
use crate::proto::binary;
use crate::proto::publish::Target;
use crate::redis::instance_of;
use crate::redis::ops::Call;
use crate::redis::push::Push;
use crate::redis::registry;
use crate::redis::subscriber::Event;
use crate::shard::cluster::state::Then;
use crate::shard::mesh::ShardMsg;
use crate::shard::state::Shard;
use bytes::Bytes;

impl Shard {
    /// On a user's or key's owner, cluster mode: this node got its first
    /// connection of user `mid` / with key `key` (`on`), or its last went;
    /// the registry hears of it (client-chosen keys only: an assigned key
    /// names its node).
    pub(in crate::shard) fn registry_change(&mut self, key: Option<&str>, mid: Option<i64>, on: bool) {
        if self.cluster.is_none() {
            return;
        }
        if let (false, Some(mid)) = (on, mid) {
            self.user_leaves(mid);
        }
        let Some(node) = self.cluster.as_ref().map(|c| c.node.clone()) else {
            return;
        };
        // A lost add is mended by the registration after the link
        // reconnects (`register_all`); a lost remove only costs the node a
        // push it does not deliver.
        if let Some(key) = key.filter(|k| registry::node_of_assigned_key(k).is_none()) {
            let entry = registry::key_entry(key);
            let Some(i) = self.cluster_instance(&entry) else { return };
            let (call, what) = if on {
                (
                    Call::Claim {
                        key: key.to_string(),
                        node: node.clone(),
                    },
                    "key claim",
                )
            } else {
                (
                    Call::Remove {
                        entry,
                        node: node.clone(),
                    },
                    "key removal",
                )
            };
            self.emit(i, call, Then::Logged { what });
        }
        if let (true, Some(mid)) = (on, mid) {
            // What waits for the user in Redis (pushes while no node held
            // them) comes with the add.
            let e = registry::user_entry(mid);
            let Some(i) = self.cluster_instance(&e) else { return };
            self.join_registry(i, vec![e], node);
        }
    }

    /// Adds this node to registry `entries` (all on instance `i`) and
    /// pushes what the users among them are owed (`registry::add`) to
    /// their connections here, oldest first.
    pub(super) fn join_registry(&mut self, i: usize, entries: Vec<String>, node: String) {
        let now = self.clock.unix;
        self.emit(i, Call::Add { entries, node, now }, Then::Owed);
    }

    /// What users were owed, read from Redis as this node joined their
    /// entries: to their connections here, oldest first.
    pub(in crate::shard) fn owed_from_redis(&mut self, owed: crate::redis::registry::Owed) {
        for (mid, pushes) in owed {
            ShardStats::add(&self.stats().inbox_owed, pushes.len() as u64);
            for p in pushes {
                self.route_cluster_push(Push {
                    target: Target::Mids(vec![mid]),
                    ..p
                });
            }
        }
    }

    /// This node's last connection of user `mid` went: the node leaves the
    /// user's registry entry, and what the user did not acknowledge here
    /// leaves the node's inbox for the user's inbox in Redis (unless another
    /// node holds the user), so that it follows the user to the next node.
    pub(super) fn user_leaves(&mut self, mid: i64) {
        let tick = self.conns.wheel.now();
        let owed: Vec<(Push, u64)> = (self.store.inbox.take(mid, tick).iter())
            .filter_map(|e| {
                let tcp = e.frames.v2.for_transport(crate::proto::wire::Form::Tcp);
                let env = crate::proto::v2::decode_push(tcp.get(binary::HEADER_LEN..)?).ok()?;
                let left = e.ttl_end.saturating_sub(tick);
                let push = Push {
                    target: Target::Mids(vec![mid]),
                    op: env.op,
                    ttl: left,
                    id: env.id.to_string(),
                    payload: Bytes::copy_from_slice(env.payload),
                };
                Some((push, u64::from(left)))
            })
            .collect();
        self.store.count_inbox(&self.shared.stats[self.id]);
        let Some(c) = self.cluster.as_ref() else { return };
        let ib = &self.shared.config.inbox;
        let limits = registry::InboxLimits {
            messages: ib.messages,
            secs: owed.iter().map(|(_, left)| *left as u32).max().unwrap_or(1),
        };
        let (node, now) = (c.node.clone(), self.clock.unix);
        let Some(i) = self.cluster_instance(&registry::user_entry(mid)) else {
            return;
        };
        let call = Call::Leave {
            mid,
            node,
            owed,
            inbox: limits,
            now,
        };
        // A lost leave only costs a push the node does not deliver (the
        // entry) and the owed pushes (kept nowhere).
        self.emit(i, call, Then::Logged { what: "user's leave" });
    }

    /// Once a sweep: on every instance whose link has (re)connected since
    /// this shard last did, or where the node was taken for dead, registers
    /// all its users and keys again (Redis may have lost them), a thousand
    /// entries a command, delivering what the users were owed meanwhile.
    /// Shard 0 also marks the node alive on every instance, and takes the
    /// node's queue where it is still to be taken.
    pub(super) fn register_all(&mut self) {
        let Some(c) = self.cluster.as_ref() else { return };
        let n = c.links.len();
        let stale: Vec<usize> = (0..n)
            .filter(|&i| c.links[i].is_up() && c.links[i].connects() != c.registered[i])
            .collect();
        if self.id == 0 {
            let up: Vec<usize> = (0..n).filter(|&i| c.links[i].is_up()).collect();
            for i in up {
                self.mark_alive(i);
            }
            let Some(c) = self.cluster.as_ref() else { return };
            let queued: Vec<usize> = (0..n).filter(|&i| c.queued[i]).collect();
            for i in queued {
                self.take_queue(i);
            }
        }
        if stale.is_empty() {
            return;
        }
        let mut by: Vec<Vec<String>> = vec![Vec::new(); n];
        let (mids, keys) = self.owners.dir.entries();
        let keys = keys
            .filter(|k| registry::node_of_assigned_key(k).is_none())
            .map(|k| registry::key_entry(k));
        for e in mids.map(registry::user_entry).chain(keys) {
            let i = instance_of(e.as_bytes(), n);
            if stale.contains(&i) {
                by[i].push(e);
            }
        }
        let Some(c) = self.cluster.as_mut() else { return };
        for &i in &stale {
            c.registered[i] = c.links[i].connects();
        }
        let node = c.node.clone();
        for (i, entries) in by.into_iter().enumerate() {
            for chunk in entries.chunks(1000) {
                self.join_registry(i, chunk.to_vec(), node.clone());
            }
        }
    }

    /// Shard 0: marks the node alive on instance `i` (on the first, lists
    /// it among the nodes, and the node has joined once its channel there
    /// is subscribed); if it had been taken for dead there, every shard
    /// registers its users and keys there again.
    pub(super) fn mark_alive(&mut self, i: usize) {
        let Some(c) = self.cluster.as_ref() else { return };
        let (node, listening) = (c.node.clone(), c.listening);
        let call = Call::Alive { node, first: i == 0 };
        self.emit(i, call, Then::Alive { instance: i, listening });
    }

    /// Shard 0: the node is marked alive on instance `i`; `gone`: it had
    /// been taken for dead there.
    pub(in crate::shard) fn alive(&mut self, i: usize, listening: bool, gone: bool) {
        if i == 0 && listening {
            if let Some(h) = &self.shared.cluster {
                h.set_joined();
            }
        }
        if gone {
            tracing::warn!(instance = i, "this node was taken for dead; registering again");
            for s in 0..self.nr() {
                self.route(s, ShardMsg::Reregister { instance: i });
            }
        }
    }

    /// The node was taken for dead on instance `i`: this shard's users and
    /// keys there are registered again at the next sweep.
    pub(in crate::shard) fn reregister(&mut self, i: usize) {
        if let Some(r) = self.cluster.as_mut().and_then(|c| c.registered.get_mut(i)) {
            *r = u64::MAX;
        }
    }

    /// Shard 0: takes the node's queue on instance `i` (what was sent on its
    /// channel there while it was not subscribed) and handles it as heard;
    /// tried again each sweep until it is read.
    pub(super) fn take_queue(&mut self, i: usize) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.queued[i] = true;
        if !c.links[i].is_up() {
            return;
        }
        let node = c.node.clone();
        self.emit(i, Call::TakeQueue { node }, Then::Queue { instance: i });
    }

    /// Shard 0: the node's queue on instance `i` was read: handled as
    /// heard, in order.
    pub(in crate::shard) fn queue_taken(&mut self, i: usize, queued: Vec<Bytes>) {
        let Some(c) = self.cluster.as_mut() else { return };
        c.queued[i] = false;
        let channel = Bytes::from(c.node_channel.clone());
        ShardStats::add(&self.stats().cluster_queued, queued.len() as u64);
        for payload in queued {
            let channel = channel.clone();
            self.on_redis(i, Event::Message { channel, payload });
        }
    }
}
