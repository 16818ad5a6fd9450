//! A simulated Redis for cluster mode on simulated time (`sim::cluster`
//! puts the nodes around it). `FakeRedis` answers the operations shards
//! emit as the real scripts would, as far as the shards can tell: each
//! room's offset, epoch, Stream (bounded by the publish's history length,
//! exactly where the real one trims about), read marks and publish ids; the
//! rooms' watch keys and notes; the node queues; which nodes were taken for
//! dead; the nodes' counts. User and key pushes routed through the
//! registry are counted, not delivered (the end-to-end tests against
//! redis-server cover them). It carries channel messages to the
//! subscriptions it has confirmed, on the instance they were published on.
//!
//! Test-only. Deterministic.

use crate::redis::counts::Counts;
use crate::redis::link::RedisError;
use crate::redis::ops::{Call, RedisAnswer};
use crate::redis::registry;
use crate::redis::room::{encode_message, Position, Published, RoomKeys, Stored};
use crate::redis::subscriber::Event;
use crate::shard::cluster::state::Then;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Unix seconds the simulated Redis stamps Stream entries with (fixed:
/// nothing here expires by age unless a test sets it).
const STORED_AT: u64 = super::SIM_UNIX_START;

/// One room as the scripts keep it.
#[derive(Default)]
pub(super) struct Room {
    offset: u64,
    epoch: u64,
    stream: VecDeque<Stored>,
    marks: HashMap<i64, u64>,
}

/// A node's counts as its last report left them: conns, ips, rooms.
pub(super) type Reported = (u64, u64, HashMap<Arc<str>, u64>);

/// Where an operation came from: node, shard.
pub(super) type From = (usize, usize);

/// A shard's subscriber to one instance: node, shard, instance.
pub(super) type Sub = (usize, usize, usize);

/// What the real Redis would hold for a cluster's nodes (see the module
/// doc).
#[derive(Default)]
pub(crate) struct FakeRedis {
    pub(super) rooms: HashMap<Arc<str>, Room>,
    pub(super) dedup: HashMap<String, u64>,
    pub(super) next_epoch: u64,
    /// Channels each subscriber has had confirmed.
    pub(super) confirmed: HashMap<Sub, BTreeSet<String>>,
    /// Messages on their way to subscribers.
    pub(super) events: VecDeque<(Sub, Event)>,
    /// Instances unreachable: their operations fail, their subscribers are
    /// down.
    pub(super) down: BTreeSet<usize>,
    /// Kinds of operation (`kind`) whose answers are held until
    /// `release`: Redis ran them when they came (as the real one runs a
    /// script at once), their replies are slow to arrive.
    pub hold: Vec<&'static str>,
    pub(super) held: Vec<(From, Then, RedisAnswer)>,
    /// Waits (`Call::Wait`) and the simulated ms each has left.
    pub(super) waits: Vec<(From, u32, Then)>,
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
    pub(super) watches: BTreeSet<String>,
    /// Each node's last counts report: totals and rooms.
    pub(super) reports: HashMap<String, Reported>,
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

impl FakeRedis {
    /// The waits whose time is up, oldest first.
    pub(super) fn take_ended(&mut self) -> Vec<(From, Then)> {
        let (ended, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waits).into_iter().partition(|w| w.1 == 0);
        self.waits = left;
        ended.into_iter().map(|(from, _, then)| (from, then)).collect()
    }

    /// What the real scripts would answer to `call`.
    pub(super) fn answer(&mut self, instance: usize, call: Call) -> RedisAnswer {
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
    pub(super) fn publish(&mut self, instance: usize, channel: &str, payload: Bytes) -> u64 {
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
