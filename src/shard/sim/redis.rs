//! A simulated Redis and the nodes of a cluster around it: cluster mode on
//! simulated time, with no socket and no executor.
//!
//! Each node is a `Sim` whose shards hold a `ShardCluster` with one or more
//! instances. The harness plays what runs beside the shards in a real
//! process: the driver (`redis::driver::drive`: every operation a shard
//! emits is answered here, at once, or held while the test says so) and
//! the subscribers (`redis::subscriber`: a channel a shard wants is
//! confirmed, `Event::Subscribed`, and from then on gets what is published
//! on it). `FakeRedis` keeps what the scripts keep in the real one, as far
//! as the shards can tell: each room's offset, epoch, Stream (bounded by
//! the publish's history length, exactly where the real one trims about),
//! read marks and publish ids; the rooms' watch keys and notes; the node
//! queues; which nodes were taken for dead. User and key pushes routed
//! through the registry are counted, not delivered (the end-to-end tests
//! against redis-server cover them).
//!
//! Test-only. Deterministic but for node ids (each node's key tag).

use super::Sim;
use crate::config::Config;
use crate::redis::counts::Counts;
use crate::redis::link::RedisError;
use crate::redis::ops::{Call, Ops, RedisAnswer, RedisOp};
use crate::redis::room::{encode_message, Position, Published, RoomKeys, Stored};
use crate::redis::subscriber::Event;
use crate::redis::{registry, RedisUrl};
use crate::shard::cluster::state::{ShardCluster, Then};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Unix seconds the simulated Redis stamps Stream entries with (fixed:
/// nothing here expires by age unless a test sets it).
const STORED_AT: u64 = super::SIM_UNIX_START;

/// One room as the scripts keep it.
#[derive(Default)]
struct Room {
    offset: u64,
    epoch: u64,
    stream: VecDeque<Stored>,
    marks: HashMap<i64, u64>,
}

/// A node's counts as its last report left them: conns, ips, rooms.
type Reported = (u64, u64, HashMap<Arc<str>, u64>);

/// Where an operation came from: node, shard.
type From = (usize, usize);

/// A shard's subscriber to one instance: node, shard, instance.
type Sub = (usize, usize, usize);

/// What the real Redis would hold for a cluster's nodes (see the module
/// doc).
#[derive(Default)]
pub(crate) struct FakeRedis {
    rooms: HashMap<Arc<str>, Room>,
    dedup: HashMap<String, u64>,
    next_epoch: u64,
    /// Channels each subscriber has had confirmed.
    confirmed: HashMap<Sub, BTreeSet<String>>,
    /// Messages on their way to subscribers.
    events: VecDeque<(Sub, Event)>,
    /// Instances unreachable: their operations fail, their subscribers are
    /// down.
    down: BTreeSet<usize>,
    /// Kinds of operation (`kind`) whose answers are held until
    /// `release`: Redis ran them when they came (as the real one runs a
    /// script at once), their replies are slow to arrive.
    pub hold: Vec<&'static str>,
    held: Vec<(From, Then, RedisAnswer)>,
    /// Waits (`Call::Wait`) and the simulated ms each has left.
    waits: Vec<(From, u32, Then)>,
    /// Each operation answered: the node that sent it and its kind.
    pub calls: Vec<(usize, &'static str)>,
    /// Subscriptions are not confirmed (the SUBSCRIBE is in flight) while
    /// set.
    pub unconfirmed: bool,
    /// Kinds of operation answered with an error instead (`kind`).
    pub fail: Vec<(&'static str, RedisError)>,
    /// Nodes whose notes (`Call::Note`) are lost: answered as sent to no
    /// one, published nowhere.
    pub mute: BTreeSet<usize>,
    /// Node ids taken for dead (answered by their next `Alive`).
    pub gone: BTreeSet<String>,
    /// What waits in each node's queue.
    pub queues: HashMap<String, Vec<Bytes>>,
    /// Watch keys set (`vly:{R}:w`; no expiry here: a test lasts less
    /// than their 15 s).
    watches: BTreeSet<String>,
    /// Each node's last counts report: totals and rooms.
    reports: HashMap<String, Reported>,
}

/// The name of a call's kind.
pub(crate) fn kind(c: &Call) -> &'static str {
    match c {
        Call::Publish { .. } => "publish",
        Call::ToNodes { .. } => "to_nodes",
        Call::Route { .. } => "route",
        Call::Claim { .. } => "claim",
        Call::Remove { .. } => "remove",
        Call::Add { .. } => "add",
        Call::Leave { .. } => "leave",
        Call::Alive { .. } => "alive",
        Call::TakeQueue { .. } => "take_queue",
        Call::Watch { .. } => "watch",
        Call::Note { .. } => "note",
        Call::MarkOf { .. } => "mark_of",
        Call::Range { .. } => "range",
        Call::Sync { .. } => "sync",
        Call::Counts { .. } => "counts",
        Call::History { .. } => "history",
        Call::Mark { .. } => "mark",
        Call::Unread { .. } => "unread",
        Call::Wait { .. } => "wait",
    }
}

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

impl FakeRedis {
    /// The waits whose time is up, oldest first.
    fn take_ended(&mut self) -> Vec<(From, Then)> {
        let (ended, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waits).into_iter().partition(|w| w.1 == 0);
        self.waits = left;
        ended.into_iter().map(|(from, _, then)| (from, then)).collect()
    }

    /// What the real scripts would answer to `call`.
    fn answer(&mut self, instance: usize, call: Call) -> RedisAnswer {
        match call {
            Call::Publish {
                room,
                mut msg,
                history,
                dedup,
            } => {
                if let Some(d) = &dedup {
                    if let Some(&offset) = self.dedup.get(&d.key) {
                        let epoch = self.rooms[&room].epoch;
                        let p = Published {
                            offset,
                            epoch,
                            duplicate: true,
                        };
                        return RedisAnswer::Publish(Ok(p));
                    }
                }
                let r = self.room(&room);
                r.offset += 1;
                msg.offset = r.offset;
                msg.epoch = r.epoch;
                r.stream.push_back(Stored {
                    msg: msg.clone(),
                    at: STORED_AT,
                });
                while r.stream.len() > history as usize {
                    r.stream.pop_front();
                }
                let p = Published {
                    offset: msg.offset,
                    epoch: msg.epoch,
                    duplicate: false,
                };
                if let Some(d) = dedup {
                    self.dedup.insert(d.key, p.offset);
                }
                self.publish(
                    instance,
                    &RoomKeys::of(&room).channel,
                    Bytes::from(encode_message(&msg)),
                );
                RedisAnswer::Publish(Ok(p))
            }
            Call::Sync { room } => {
                let watched = self.watches.contains(&RoomKeys::of(&room).watch());
                let r = self.room(&room);
                let p = Position {
                    offset: r.offset,
                    epoch: r.epoch,
                    watched,
                };
                RedisAnswer::Sync(Ok(p))
            }
            Call::Range {
                room,
                epoch,
                from,
                through,
            } => RedisAnswer::Range(Ok(self.stored(&room, epoch, from, through, u64::MAX))),
            Call::History { room, since, count } => {
                let Some(r) = self.rooms.get(&room) else {
                    return RedisAnswer::History(Ok(None));
                };
                let (last, epoch) = (r.offset, r.epoch);
                let stored = self.stored(&room, epoch, since + 1, last, count);
                RedisAnswer::History(Ok(Some(((last, epoch), stored))))
            }
            Call::MarkOf { room, mid } => {
                let mark = self.rooms.get(&room).and_then(|r| r.marks.get(&mid).copied());
                RedisAnswer::MarkOf(Ok(mark.unwrap_or(0)))
            }
            Call::Mark {
                room,
                mid,
                offset,
                max_marks,
            } => {
                let r = self.room(&room);
                let last = r.offset;
                if !r.marks.contains_key(&mid) && r.marks.len() >= max_marks {
                    return RedisAnswer::Mark(Ok(None));
                }
                let m = r.marks.entry(mid).or_default();
                *m = (*m).max(offset.min(last));
                RedisAnswer::Mark(Ok(Some((*m, last))))
            }
            Call::Unread { rooms, mid } => {
                let marks = rooms
                    .iter()
                    .map(|room| {
                        let r = self.rooms.get(room)?;
                        Some((r.marks.get(&mid).copied().unwrap_or(0), r.offset))
                    })
                    .collect();
                RedisAnswer::Unread(Ok(marks))
            }
            Call::ToNodes { body, nodes } => {
                // None named: every node (the ones listening, here).
                let channels: BTreeSet<String> = if nodes.is_empty() {
                    let every = self.confirmed.values().flatten();
                    every.filter(|ch| ch.starts_with("vly:n:")).cloned().collect()
                } else {
                    nodes.iter().map(|n| registry::channel(n)).collect()
                };
                for ch in &channels {
                    self.publish(instance, ch, body.clone());
                }
                RedisAnswer::Sent(Ok(channels.len() as u64))
            }
            Call::Note { channel, note } => RedisAnswer::Sent(Ok(self.publish(instance, &channel, Bytes::from(note)))),
            Call::Route { .. } => RedisAnswer::Sent(Ok(0)),
            Call::Watch { key, channel, node } => {
                // WATCH_SCRIPT: the key for nodes that subscribe later, the
                // note for those subscribed now.
                self.watches.insert(key);
                let note = crate::redis::presence::encode::<(), ()>(&crate::redis::presence::Note::Watch { node });
                self.publish(instance, &channel, Bytes::from(note.to_vec()));
                RedisAnswer::Done(Ok(()))
            }
            Call::Claim { .. } | Call::Remove { .. } | Call::Leave { .. } => RedisAnswer::Done(Ok(())),
            Call::Add { .. } => RedisAnswer::Owed(Ok(Vec::new())),
            Call::Alive { node, .. } => RedisAnswer::Alive(Ok(self.gone.remove(&node))),
            Call::TakeQueue { node } => RedisAnswer::Queue(Ok(self.queues.remove(&node).unwrap_or_default())),
            Call::Counts { node, report } => {
                let entry = self.reports.entry(node).or_default();
                if report.full {
                    entry.2.clear();
                }
                entry.0 = report.conns;
                entry.1 = report.ips;
                for (room, n) in report.rooms {
                    if n == 0 {
                        entry.2.remove(&room);
                    } else {
                        entry.2.insert(room, n);
                    }
                }
                let mut sums = Counts::default();
                for (conns, ips, rooms) in self.reports.values() {
                    sums.conns += conns;
                    sums.ips += ips;
                    for (room, n) in rooms {
                        *sums.rooms.entry(room.clone()).or_default() += n;
                    }
                }
                RedisAnswer::Counts(Ok(sums))
            }
            // Taken by `ClusterSim::run` before it gets here.
            Call::Wait { .. } => RedisAnswer::Waited,
        }
    }

    /// A room, made with a new epoch if Redis had none (as the publish and
    /// sync scripts set it).
    fn room(&mut self, room: &Arc<str>) -> &mut Room {
        let next = &mut self.next_epoch;
        self.rooms.entry(room.clone()).or_insert_with(|| {
            *next += 1;
            Room {
                epoch: 0x00e0_0000 + *next,
                ..Room::default()
            }
        })
    }

    /// The stored messages `from..=through` of `room`, at most `count`.
    fn stored(&self, room: &str, epoch: u64, from: u64, through: u64, count: u64) -> Vec<Stored> {
        let Some(r) = self.rooms.get(room).filter(|r| r.epoch == epoch) else {
            return Vec::new();
        };
        r.stream
            .iter()
            .filter(|s| (from..=through).contains(&s.msg.offset))
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .cloned()
            .collect()
    }

    /// `PUBLISH channel payload` on instance `instance`: to every
    /// subscriber there that has the channel confirmed; how many.
    fn publish(&mut self, instance: usize, channel: &str, payload: Bytes) -> u64 {
        let to: Vec<Sub> = self
            .confirmed
            .iter()
            .filter(|(sub, set)| sub.2 == instance && set.contains(channel))
            .map(|(sub, _)| *sub)
            .collect();
        let channel = Bytes::from(channel.to_string());
        for from in &to {
            let e = Event::Message {
                channel: channel.clone(),
                payload: payload.clone(),
            };
            self.events.push_back((*from, e));
        }
        to.len() as u64
    }

    /// The room's newest offset and epoch in Redis.
    pub fn position(&self, room: &str) -> Option<(u64, u64)> {
        self.rooms.get(room).map(|r| (r.offset, r.epoch))
    }

    /// How many operations of `kind` node `k` sent.
    pub fn count(&self, k: usize, kind: &str) -> usize {
        self.calls.iter().filter(|(n, c)| *n == k && *c == kind).count()
    }
}
