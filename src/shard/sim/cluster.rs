//! The nodes of a simulated cluster around the simulated Redis
//! (`sim::redis::FakeRedis`): cluster mode on simulated time, with no
//! socket and no executor.
//!
//! Each node is a `Sim` whose shards hold a `ShardCluster` with one or more
//! instances. `ClusterSim` plays what runs beside the shards in a real
//! process: the driver (`redis::driver::drive`: every operation a shard
//! emits is answered by the fake, at once, or held while the test says so)
//! and the subscribers (`redis::subscriber`: a channel a shard wants is
//! confirmed, `Event::Subscribed`, and from then on gets what is published
//! on it), and lets a test cut, restore, take down or restart parts.
//!
//! Test-only. Deterministic but for node ids (each node's key tag).

use super::redis::{kind, FakeRedis, From};
use super::Sim;
use crate::config::Config;
use crate::redis::link::RedisError;
use crate::redis::ops::{Call, Ops, RedisAnswer, RedisOp};
use crate::redis::subscriber::Event;
use crate::redis::{registry, RedisUrl};
use crate::shard::cluster::state::{ShardCluster, Then};
use bytes::Bytes;

/// Nodes of one cluster and their Redis.
pub(crate) struct ClusterSim {
    pub nodes: Vec<Sim>,
    pub redis: FakeRedis,
}

impl ClusterSim {
    /// `nodes` nodes of `shards` shards each, the test defaults, then
    /// `tweak`; one Redis instance, every link and subscriber up.
    pub fn new(nodes: usize, shards: usize, tweak: impl Fn(&mut Config)) -> ClusterSim {
        Self::with_instances(nodes, shards, 1, tweak)
    }

    /// As `new`, with `instances` Redis instances (rooms, users and keys
    /// spread over them by `redis::instance_of`, as in a real cluster).
    pub fn with_instances(nodes: usize, shards: usize, instances: usize, tweak: impl Fn(&mut Config)) -> ClusterSim {
        let urls: Vec<String> = (1..=instances)
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        let parsed: Vec<RedisUrl> = urls.iter().map(|u| RedisUrl::parse(u).expect("a test URL")).collect();
        let nodes = (0..nodes)
            .map(|_| {
                let mut sim = Sim::new(shards, |c| {
                    c.redis.urls = urls.clone();
                    tweak(c);
                });
                let tag = sim.shared.keys.tag();
                for (i, sh) in sim.shards.iter_mut().enumerate() {
                    let c = ShardCluster::new(i, &parsed, tag);
                    c.links.iter().for_each(|l| l.simulate(true));
                    c.subs.iter().for_each(|s| s.simulate(true));
                    sh.cluster = Some(c);
                }
                sim
            })
            .collect();
        let mut cs = ClusterSim {
            nodes,
            redis: FakeRedis::default(),
        };
        cs.settle();
        cs
    }

    /// Node `k`'s id in the registry.
    pub fn node_id(&self, k: usize) -> String {
        registry::node_id(self.nodes[k].shared.keys.tag())
    }

    /// `n` ticks on every node, the cluster settling after each.
    pub fn tick(&mut self, n: u32) {
        for _ in 0..n {
            for node in &mut self.nodes {
                node.tick(1);
            }
            for w in &mut self.redis.waits {
                w.1 = w.1.saturating_sub(super::TICK_US / 1000);
            }
            for (from, then) in self.redis.take_ended() {
                self.answer(from, then, RedisAnswer::Waited);
            }
            self.settle();
        }
    }

    /// The instances of this cluster's Redis.
    fn instances(&self) -> usize {
        self.nodes[0].shards[0].cluster.as_ref().map_or(1, |c| c.subs.len())
    }

    /// Node `k`'s subscribers lose their connections (`Event::Down` to
    /// every shard, per instance); what is published meanwhile does not
    /// reach them.
    pub fn cut(&mut self, k: usize) {
        for i in 0..self.instances() {
            self.cut_on(k, i);
        }
        self.settle();
    }

    /// Node `k`'s subscribers to instance `i` lose their connection.
    fn cut_on(&mut self, k: usize, i: usize) {
        for (s, sh) in self.nodes[k].shards.iter_mut().enumerate() {
            if let Some(c) = &sh.cluster {
                c.subs[i].simulate(false);
            }
            self.redis.confirmed.remove(&(k, s, i));
            self.redis.events.push_back(((k, s, i), Event::Down));
        }
    }

    /// Node `k`'s subscribers are back: every channel they want is
    /// subscribed (and confirmed) again.
    pub fn restore(&mut self, k: usize) {
        for sh in &mut self.nodes[k].shards {
            if let Some(c) = &sh.cluster {
                c.subs.iter().for_each(|s| s.simulate(true));
            }
        }
        self.settle();
    }

    /// Redis becomes unreachable (`up` false) or reachable again, every
    /// instance: links and subscribers of every node follow.
    pub fn redis_up(&mut self, up: bool) {
        for i in 0..self.instances() {
            self.instance_up(i, up);
        }
    }

    /// Instance `i` becomes unreachable or reachable again.
    pub fn instance_up(&mut self, i: usize, up: bool) {
        if up {
            self.redis.down.remove(&i);
        } else {
            self.redis.down.insert(i);
        }
        for k in 0..self.nodes.len() {
            for sh in &mut self.nodes[k].shards {
                if let Some(c) = &sh.cluster {
                    c.links[i].simulate(up);
                    c.subs[i].simulate(up);
                }
            }
            if !up {
                self.cut_on(k, i);
            }
        }
        self.settle();
    }

    /// Redis restarts without persistence: every connection drops, and
    /// what it held is gone when they come back.
    pub fn restart_redis(&mut self) {
        for k in 0..self.nodes.len() {
            self.cut(k);
        }
        self.redis.rooms.clear();
        self.redis.dedup.clear();
        self.redis.queues.clear();
        self.redis.reports.clear();
        self.redis.watches.clear();
        for k in 0..self.nodes.len() {
            self.restore(k);
        }
    }

    /// `PUBLISH channel payload` from outside volley (on the first
    /// instance).
    pub fn inject(&mut self, channel: &str, payload: &[u8]) {
        self.redis.publish(0, channel, Bytes::copy_from_slice(payload));
        self.settle();
    }

    /// Hands over every held answer, in the order the operations came.
    pub fn release(&mut self) {
        self.redis.hold.clear();
        for (from, then, answer) in std::mem::take(&mut self.redis.held) {
            self.answer(from, then, answer);
        }
        self.settle();
    }

    /// Plays every part until nothing moves: each node settles, wanted
    /// channels are confirmed, channel messages delivered, operations
    /// answered.
    pub fn settle(&mut self) {
        loop {
            for node in &mut self.nodes {
                node.settle();
            }
            let mut any = self.confirm();
            while let Some(((k, s, i), e)) = self.redis.events.pop_front() {
                any = true;
                let now = self.nodes[k].now_us;
                let sh = &mut self.nodes[k].shards[s];
                sh.set_clock(now);
                sh.on_redis(i, e);
                self.nodes[k].settle();
            }
            for k in 0..self.nodes.len() {
                for s in 0..self.nodes[k].shards.len() {
                    while let Some(op) = self.nodes[k].shards[s].cluster.as_mut().and_then(|c| c.ops.pop()) {
                        any = true;
                        self.run((k, s), op);
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Confirms the channels subscribers want and Redis has not confirmed;
    /// forgets those no longer wanted. Whether anything was confirmed.
    fn confirm(&mut self) -> bool {
        let mut any = false;
        for (k, node) in self.nodes.iter().enumerate() {
            for (s, sh) in node.shards.iter().enumerate() {
                let Some(c) = &sh.cluster else { continue };
                for (i, sub) in c.subs.iter().enumerate() {
                    if self.redis.down.contains(&i) || self.redis.unconfirmed || !sub.is_up() {
                        continue;
                    }
                    let (wanted, _globs) = sub.wanted();
                    let confirmed = self.redis.confirmed.entry((k, s, i)).or_default();
                    confirmed.retain(|ch| wanted.contains(ch));
                    for ch in wanted {
                        if confirmed.insert(ch.clone()) {
                            any = true;
                            let e = Event::Subscribed(Bytes::from(ch));
                            self.redis.events.push_back(((k, s, i), e));
                        }
                    }
                }
            }
        }
        any
    }

    /// One operation: run at once (or failed while Redis is down) and
    /// answered, or its answer held; a wait kept for the ticks.
    fn run(&mut self, from: From, op: RedisOp<Then>) {
        let what = kind(&op.call);
        self.redis.calls.push((from.0, what));
        if let Call::Wait { ms } = op.call {
            self.redis.waits.push((from, ms, op.then));
            return;
        }
        if let (Call::Note { .. }, true) = (&op.call, self.redis.mute.contains(&from.0)) {
            return self.answer(from, op.then, RedisAnswer::Sent(Ok(0)));
        }
        let answer = if self.redis.down.contains(&op.instance) {
            op.call
                .failed(RedisError::Down("redis://127.0.0.1:1".into(), "simulated down".into()))
        } else if let Some((_, e)) = self.redis.fail.iter().find(|(k, _)| *k == what) {
            op.call.failed(e.clone())
        } else {
            self.redis.answer(op.instance, op.call)
        };
        if self.redis.hold.contains(&what) {
            self.redis.held.push((from, op.then, answer));
        } else {
            self.answer(from, op.then, answer);
        }
    }

    fn answer(&mut self, (k, s): From, then: Then, answer: RedisAnswer) {
        let now = self.nodes[k].now_us;
        self.nodes[k].shards[s].answered(then, answer, now);
        self.nodes[k].settle();
    }
}
