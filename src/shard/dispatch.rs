//! `Shard::handle`: one mesh message, one line each (what it does lives in
//! the file of its role).
//!
//! Runs on the shard the message was sent to, inside its mesh inbox task
//! (or inline from `route` when sent to itself); never awaits.

use crate::shard::mesh::{MembersTo, ShardMsg};
use crate::shard::state::Shard;
use crate::shard::store::durable::Held;

impl Shard {
    /// Acts on one mesh message.
    pub fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::PublishRoom { room, msg, reply } => self.publish_room(room, msg, reply),
            ShardMsg::PublishPattern { pattern, msg } => self.publish_pattern(&pattern, msg),
            ShardMsg::ClientPublished {
                conn,
                seq,
                room,
                published,
            } => self.client_published(conn, seq, &room, published),
            ShardMsg::Watch { room, delta } => self.on_watch(room, delta),
            ShardMsg::Watching { room, on } => self.on_watching(room, on),
            ShardMsg::PresenceDelta { room, changes } => self.on_presence_delta(&room, changes),
            ShardMsg::PresenceFrame { room, wire } => self.on_presence_frame(&room, &wire),
            ShardMsg::PresenceReq { room, limit, to } => {
                let (count, members) = self.presence_page(&room, limit);
                match to {
                    MembersTo::Api(reply) => reply.send((count, members)),
                    MembersTo::Gather { shard, id } => {
                        self.route(shard, ShardMsg::PresencePart { id, count, members });
                    }
                }
            }
            ShardMsg::PresencePart { id, count, members } => self.presence_part(id, count, members),
            ShardMsg::PresenceAsk { room, limit, reply } => self.cluster_presence(room, limit, reply),
            ShardMsg::RoomFrame { room, frames, reach } => self.deliver_room(&room, &frames, reach),
            ShardMsg::GlobInterest { glob, delta } => self.on_glob_interest(glob, delta),
            ShardMsg::Matched { room, message } => self.on_matched(room, message),
            ShardMsg::PushKeys {
                keys,
                op,
                frames,
                dedup,
            } => {
                let keys = self.first_seen(keys, dedup.as_deref(), |k| format!("k\0{k}"));
                let (by_entry, assigned) = self.owners.dir.lookup_keys(&keys, &self.shared.keys, self.nr());
                self.forward(by_entry, op, &frames, false);
                self.forward(assigned, op, &frames, true);
            }
            ShardMsg::PushMids {
                mids,
                op,
                frames,
                id,
                ttl,
                dedup,
                kept,
            } => {
                if let Some(why) = self.storage_refusal() {
                    if let Some(k) = kept {
                        k.send(Err(why));
                    }
                    return;
                }
                let mids = self.first_seen(mids, dedup.as_deref(), |m| format!("u\0{m}"));
                self.push_mids(&mids, op, &frames, id, ttl);
                if let Some(k) = kept {
                    self.after_kept(Held::Kept(k));
                }
            }
            ShardMsg::Owed { conn, pushes } => self.deliver_owed(conn, pushes),
            ShardMsg::Ack { mid, ids, from } => self.ack(mid, &ids, from),
            ShardMsg::AckReply { conn, seq, count } => self.ack_reply(conn, seq, count),
            ShardMsg::Deliver {
                conns,
                assigned_only,
                op,
                frames,
            } => self.deliver_to(conns, assigned_only, op, &frames),
            ShardMsg::All { op, frames, dedup } => {
                if !self
                    .first_seen(vec![()], dedup.as_deref(), |()| "a".to_string())
                    .is_empty()
                {
                    self.deliver_all(op, &frames);
                }
            }
            ShardMsg::JoinReq {
                room,
                at,
                seq,
                resume,
                mid,
                presence,
            } => {
                self.join_at_owner(room, at, seq, (resume, mid, presence));
            }
            ShardMsg::MarkReq {
                room,
                at,
                seq,
                mid,
                offset,
            } => self.mark_req(room, at, seq, mid, offset),
            ShardMsg::MarkReply { conn, seq, room, mark } => self.mark_reply(conn, seq, &room, mark),
            ShardMsg::UnreadReq { mid, rooms, reply } => {
                reply.send(rooms.iter().map(|r| self.store.logs.unread(r, mid)).collect());
            }
            ShardMsg::JoinReply {
                conn,
                seq,
                room,
                asked,
                resumed,
                presence,
            } => self.join_reply(conn, seq, room, (asked, presence), resumed),
            ShardMsg::HistoryReq {
                room,
                since,
                limit,
                reply,
            } => reply.send(self.history_page(&room, since, limit)),
            ShardMsg::Register { key, mid, at, v2 } => self.register(key, mid, at, v2),
            ShardMsg::Unregister { key, mid, at } => {
                // A key's message names the user only to say whose it is.
                let mid = if key.is_some() { 0 } else { mid };
                let (key_gone, user_gone) = self.owners.dir.unregister(key.as_deref(), mid, at);
                self.registry_change(key.as_deref().filter(|_| key_gone), user_gone.then_some(mid), false);
            }
            ShardMsg::Kick {
                conn,
                reason,
                assigned_only,
            } => self.kick(conn, reason, assigned_only),
            ShardMsg::Interest { room } => self.want_room(&room),
            ShardMsg::Reregister { instance } => self.reregister(instance),
            ShardMsg::RoomGap { room } => self.room_gap(&room),
            ShardMsg::KeyTaken { key } => {
                let (held, _) = self.owners.dir.lookup_keys(&[key], &self.shared.keys, self.nr());
                for (shard, conns) in held {
                    for conn in conns {
                        let reason = crate::proto::close::CloseReason::Replaced;
                        let kick = ShardMsg::Kick {
                            conn,
                            reason,
                            assigned_only: false,
                        };
                        self.route(usize::from(shard), kick);
                    }
                }
            }
            ShardMsg::JoinFailed { conn, seq, room, why } => self.on_join_failed(conn, seq, &room, &why),
            // The runtime takes these before this (`shard::run`): a drain
            // needs its clock and timer, the others the runtime itself. A
            // shard driven without one has no connections to tell.
            ShardMsg::Drain { .. } | ShardMsg::Run(_) | ShardMsg::LetGo => {}
            ShardMsg::Shutdown => self.shutdown(),
        }
    }
}
