//! Presence across a cluster's nodes: member lists for `GET /v1/presence`
//! and the joins and leaves of op 58, through the notes of
//! `redis::presence` on the rooms' channels and the nodes' channels.
//!
//! Runs on a room's owner shard (which holds the room's subscription, so
//! hears its notes: watches, other nodes' changes, questions) and on shard
//! 0 (which hears the node's channel, so gathers the answers to this node's
//! questions). What the presence data is and how one node coalesces it is
//! `shard::presence`; this file only carries it between nodes.
//!
//! ```text
//! GET /v1/presence on node A ─PresenceAsk─> A's shard 0: PUBLISH "ask" on vly:{R} ─> N nodes heard it
//! each node's owner of R: PresenceReq to its shards, PresencePart back ─> PUBLISH "answer" on vly:n:A
//! A's shard 0: N answers (or ASK_WAIT_MS, a Call::Wait) ─> the route's reply
//! ```
//!
//! Invariants: a watch or changes note from this node itself is ignored
//! (a question of its own it answers like any node); an answer is
//! expected from every node Redis says heard the question, and the route is
//! answered after `ASK_WAIT_MS` whatever came (marked incomplete); an answer
//! lists at most the asked limit, and the gathered list never exceeds it.

use crate::metrics::ShardStats;
use crate::redis::ops::Call;
use crate::redis::presence::{self, Note};
use crate::redis::registry;
use crate::redis::room::RoomKeys;
use crate::shard::cluster::state::{Ask, Gather, Then};
use crate::shard::members::{Changes, Member};
use crate::shard::mesh::{MembersTo, NodesPage, Reply, ShardMsg};
use crate::shard::state::Shard;
use serde_json::value::RawValue;
use std::sync::Arc;

/// How long a question waits for the nodes' answers, in milliseconds.
pub const ASK_WAIT_MS: u32 = 2_000;

/// A note as this node reads it.
type Heard = Note<Changes, Vec<Member>>;

impl Shard {
    /// On the owner of `room`, in a cluster: tells the other nodes that
    /// this one watches the room (and sets the room's watch key, for
    /// nodes that subscribe later).
    pub(in crate::shard) fn announce_watch(&mut self, room: &Arc<str>) {
        let now = self.conns.wheel.now();
        let Some(c) = self.cluster.as_ref() else { return };
        if let Some(e) = self.index.watched.owned.get_mut(room) {
            e.announced = Some(now);
        }
        let node = c.node.clone();
        let keys = RoomKeys::of(room);
        let Some(i) = self.cluster_instance(room) else { return };
        let call = Call::Watch {
            key: keys.watch(),
            channel: keys.channel,
            node,
        };
        self.emit(i, call, Then::Logged { what: "presence watch" });
    }

    /// On the owner of `room`, in a cluster: this node's changes of the
    /// last second, for the other nodes' watchers.
    pub(in crate::shard) fn publish_presence_changes(&mut self, room: &Arc<str>, changes: Box<RawValue>) {
        let Some(c) = self.cluster.as_ref() else { return };
        let note = presence::encode::<_, ()>(&Note::Changes {
            node: c.node.clone(),
            changes,
        });
        let channel = RoomKeys::of(room).channel;
        let Some(i) = self.cluster_instance(room) else { return };
        let call = Call::Note {
            channel,
            note: note.to_vec(),
        };
        self.emit(
            i,
            call,
            Then::Logged {
                what: "presence changes",
            },
        );
    }

    /// A presence note on `room`'s channel (this shard owns the room).
    pub(in crate::shard) fn on_room_note(&mut self, channel: &[u8], room: &str, payload: &[u8]) {
        let note: Heard = match presence::decode(payload) {
            Ok(n) => n,
            Err(e) => return self.bad_note(channel, e),
        };
        let Some(c) = self.cluster.as_ref() else { return };
        // A node's own watch and changes are known to it; its own question
        // it answers as every node does.
        let own = note.from_node() == Some(c.node.as_str());
        if own && !matches!(note, Note::Ask { .. }) {
            return;
        }
        let room: Arc<str> = c
            .rooms
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(r, _)| r.clone());
        match note {
            Note::Watch { .. } => self.remote_watch(&room),
            Note::Changes { changes, .. } => self.on_presence_heard(&room, changes),
            Note::Ask { node, q, limit } => self.answer_ask(room, &node, q, limit),
            Note::Answer { .. } => self.bad_note(channel, crate::redis::room::BadMessage("an answer on a room")),
        }
    }

    /// A presence note on this node's channel (shard 0): an answer to one
    /// of its questions.
    pub(in crate::shard) fn on_node_note(&mut self, channel: &[u8], payload: &[u8]) {
        let (q, count, members) = match presence::decode::<Changes, Vec<Member>>(payload) {
            Ok(Note::Answer { q, count, members }) => (q, count, members),
            Ok(_) => return self.bad_note(channel, crate::redis::room::BadMessage("not an answer")),
            Err(e) => return self.bad_note(channel, e),
        };
        let Some(a) = self.cluster.as_mut().and_then(|c| c.asks.get_mut(&q)) else {
            return; // answered already (late), or not ours
        };
        a.got += 1;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        a.page.add(count, members, a.limit);
        self.ask_done(q, false);
    }

    fn bad_note(&mut self, channel: &[u8], e: crate::redis::room::BadMessage) {
        ShardStats::add(&self.stats().cluster_bad_messages, 1);
        tracing::warn!(channel = %String::from_utf8_lossy(channel), error = %e, "presence note refused");
    }

    /// On the owner of `room`: node `node` asks for this node's members.
    /// Every shard sends its own (`presence_part`), and the last one's
    /// completes the answer.
    fn answer_ask(&mut self, room: Arc<str>, node: &str, q: u64, limit: u32) {
        let limit = (limit as usize).min(self.cfg().client.presence_limit);
        let Some(instance) = self.cluster_instance(&room) else {
            return;
        };
        let (nr, me) = (self.nr(), self.id);
        let Some(c) = self.cluster.as_mut() else { return };
        c.next_gather += 1;
        let id = c.next_gather;
        let gather = Gather {
            asker: node.to_string(),
            q,
            limit,
            instance,
            left: nr,
            page: NodesPage::default(),
        };
        c.gathers.insert(id, gather);
        for s in 0..nr {
            let to = MembersTo::Gather { shard: me, id };
            let room = room.clone();
            self.route(s, ShardMsg::PresenceReq { room, limit, to });
        }
    }

    /// One shard's members for gathering `id`; the last one publishes the
    /// node's answer on the asking node's channel.
    pub(in crate::shard) fn presence_part(&mut self, id: u64, count: usize, members: Vec<Member>) {
        let Some(c) = self.cluster.as_mut() else { return };
        let Some(g) = c.gathers.get_mut(&id) else { return };
        g.page.add(count, members, g.limit);
        g.left -= 1;
        if g.left > 0 {
            return;
        }
        let Some(g) = c.gathers.remove(&id) else { return };
        let note = presence::encode::<(), _>(&Note::Answer {
            q: g.q,
            count: g.page.count as u64,
            members: g.page.members,
        });
        let call = Call::Note {
            channel: registry::channel(&g.asker),
            note: note.to_vec(),
        };
        self.emit(
            g.instance,
            call,
            Then::Logged {
                what: "presence answer",
            },
        );
    }

    /// On shard 0, in a cluster: asks every node with members of `room` for
    /// them; `reply` gets what the nodes answered (`None`: the room's Redis
    /// instance is unreachable).
    pub(in crate::shard) fn cluster_presence(&mut self, room: Arc<str>, limit: usize, reply: Reply<Option<NodesPage>>) {
        let Some(instance) = self.cluster_instance(&room) else {
            return reply.send(None);
        };
        let Some(c) = self.cluster.as_mut() else {
            return reply.send(None);
        };
        c.next_ask += 1;
        let q = c.next_ask;
        c.asks.insert(
            q,
            Ask {
                limit,
                want: None,
                got: 0,
                page: NodesPage::default(),
                reply,
            },
        );
        let note = presence::encode::<(), ()>(&Note::Ask {
            node: c.node.clone(),
            q,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        });
        let call = Call::Note {
            channel: RoomKeys::of(&room).channel,
            note: note.to_vec(),
        };
        self.emit(instance, call, Then::Asked { q });
    }

    /// The question went out to `heard` nodes (`None`: it did not go out);
    /// their answers are waited for `ASK_WAIT_MS` at most.
    pub(in crate::shard) fn asked(&mut self, q: u64, heard: Option<u64>) {
        let Some(c) = self.cluster.as_mut() else { return };
        match heard {
            Some(n) => {
                if let Some(a) = c.asks.get_mut(&q) {
                    a.want = Some(n);
                }
                let wait = Call::Wait { ms: ASK_WAIT_MS };
                self.emit(0, wait, Then::AskWaited { q });
                self.ask_done(q, false);
            }
            None => {
                if let Some(a) = c.asks.remove(&q) {
                    a.reply.send(None);
                }
            }
        }
    }

    /// Answers question `q` if every node did (or, `timed_out`, anyway).
    pub(in crate::shard) fn ask_done(&mut self, q: u64, timed_out: bool) {
        let Some(c) = self.cluster.as_mut() else { return };
        let complete = c.asks.get(&q).is_some_and(|a| a.want.is_some_and(|w| a.got >= w));
        if !complete && !timed_out {
            return;
        }
        if let Some(mut a) = c.asks.remove(&q) {
            a.page.complete = complete;
            a.reply.send(Some(a.page));
        }
    }
}
