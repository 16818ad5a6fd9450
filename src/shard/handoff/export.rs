//! Taking a quiet shard's connections and directory slice as records
//! (see the parent module).

use super::{ConnState, HandoffError, Input, SessionState, ShardState, TokenState};
use crate::shard::conns::Session;
use crate::shard::mesh::ConnRef;
use crate::shard::state::Shard;
use bytes::Bytes;
use std::os::fd::RawFd;

fn owned(frames: impl Iterator<Item = Bytes>) -> Vec<Vec<u8>> {
    frames.map(|f| f.to_vec()).collect()
}

impl Shard {
    /// Every connection this shard holds.
    pub fn conn_ids(&self) -> Vec<ConnRef> {
        self.conn_refs().map(|(r, _)| r).collect()
    }

    /// Whether nothing this shard started waits to finish: no join waits
    /// for its owner, no answer for the journal. A shard that no longer
    /// reads anything gets there, and stays there.
    pub fn settled(&self) -> bool {
        let joining = self
            .conn_refs()
            .any(|(_, c)| c.v2().is_some_and(|v| !v.joining.is_empty()));
        !joining && self.store.disk.as_ref().is_none_or(|d| d.settled())
    }

    /// This shard's connections and directory slice as records, with each
    /// connection's socket in the same order; `input_of` gives what each
    /// one's driver holds.
    pub fn export(&self, mut input_of: impl FnMut(ConnRef) -> Input) -> Result<(ShardState, Vec<RawFd>), HandoffError> {
        let mut conns = Vec::with_capacity(self.nr_conns());
        let mut fds = Vec::with_capacity(self.nr_conns());
        for (r, c) in self.conn_refs() {
            let session = match &c.session {
                Session::V1 { room, accepts } => SessionState::V1 {
                    room: room.as_ref().map(|(n, _)| n.to_string()),
                    accepts: accepts.to_vec(),
                },
                Session::V2(v) => {
                    if !v.joining.is_empty() {
                        return Err(HandoffError::Joining(r));
                    }
                    SessionState::V2 {
                        rooms: v.rooms.iter().map(|(n, _)| n.to_string()).collect(),
                        patterns: v.patterns.iter().map(|p| p.to_string()).collect(),
                        held: owned(v.held.frames().cloned()),
                        limit: v.limit as u64,
                        publish_left: v.publish_left,
                        publish_at: v.publish_at,
                        ops_left: v.ops_left,
                        ops_at: v.ops_at,
                    }
                }
            };
            let token = c.token.as_deref().map(|t| TokenState {
                mid: t.grant.mid,
                exp: t.grant.exp,
                rooms: t
                    .grant
                    .rooms
                    .as_ref()
                    .map(|g| g.iter().map(|s| s.to_string()).collect()),
                publish: t.grant.publish.iter().map(|s| s.to_string()).collect(),
                keys: t.grant.keys.iter().map(|s| s.to_string()).collect(),
                info: t.grant.info.as_ref().map(|s| s.to_string()),
                refresh_at: t.refresh_at,
                expire_at: t.expire_at,
                asked: t.asked,
            });
            conns.push(ConnState {
                conn: r,
                transport: c.transport,
                authed: c.authed,
                ver: c.ver,
                key: c.key.as_ref().map(|k| k.to_string()),
                mid: c.mid,
                ip: c.ip,
                deadline: c.deadline,
                pinged: c.pinged,
                blocked: c.blocked,
                close: c.close.map(|r| r.name().to_string()),
                token,
                session,
                out: owned(c.out.unwritten()),
                input: input_of(r),
            });
            fds.push(c.fd);
        }
        let (keys, users) = self.owners.dir.all();
        let state = ShardState {
            shard: self.id as u32,
            tick: self.conns.wheel.now(),
            next_gen: self.conns.next_gen,
            conns,
            keys: keys.into_iter().map(|(k, at, mid)| (k.to_string(), at, mid)).collect(),
            users,
            push_seq: self.owners.push_seq,
            // The publishers are not the shard's: `api::tcp_handoff` adds
            // them.
            publishers: Vec::new(),
            cluster_rooms: self.cluster_positions(),
            watching: self
                .index
                .watched
                .mine
                .iter()
                .map(|(room, who)| (room.to_string(), who.clone()))
                .collect(),
        };
        Ok((state, fds))
    }
}
