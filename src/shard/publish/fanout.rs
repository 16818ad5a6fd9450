//! Step 3 of the publish path. Each shard's fan-out: a `RoomFrame`,
//! `Deliver` or `All` reaches the shard's receivers (a room's members and
//! the pattern subscribers it matches, once each; directory hits; every
//! connection accepting the op), each queued once (`queue`).
//!
//! Runs on every shard, in the mesh inbox task.

use crate::proto::wire::Frames;
use crate::shard::conns::{Conn, Session};
use crate::shard::mesh::{ConnRef, Reach, ShardMsg};
use crate::shard::state::Shard;
use fnv::FnvHashMap;

impl Shard {
    /// Every local member of `room`, and every local subscriber of a
    /// pattern it matches, gets `frames` (in its version's form), once.
    pub(in crate::shard) fn deliver_room(&mut self, room: &str, frames: &Frames, reach: Reach) {
        // Collect first: enqueue may close a slow member, which edits the
        // member list we would be iterating.
        let members = self.receivers(room, reach);
        let among = members.len();
        for m in members {
            self.enqueue(m, frames, among);
        }
    }

    /// The local connections that get `room`'s messages as `reach` says:
    /// its members, the subscribers of patterns it matches, each once.
    pub(in crate::shard) fn receivers(&self, room: &str, reach: Reach) -> Vec<ConnRef> {
        let mut members: Vec<ConnRef> = match reach {
            Reach::All | Reach::Members => self.index.rooms.members(room).to_vec(),
            Reach::Patterns => Vec::new(),
        };
        let direct = members.len();
        if reach != Reach::Members {
            self.index.patterns.lookup(room, &mut members);
        }
        if members.len() > direct {
            // A member of the room may also hold a matching pattern, or two.
            members.sort_unstable_by_key(|r| (r.idx, r.gen));
            members.dedup();
        }
        members
    }

    /// These local connections get `frames` if authenticated and, on
    /// version 1, accepting `op` (and, for targets found by decoding an
    /// assigned key, only if their key is server-assigned).
    pub(in crate::shard) fn deliver_to(&mut self, conns: Vec<ConnRef>, assigned_only: bool, op: u32, frames: &Frames) {
        let among = conns.len();
        for r in conns {
            if self
                .conn(r)
                .is_some_and(|c| wants(c, op) && (!assigned_only || c.key.is_none()))
            {
                self.enqueue(r, frames, among);
            }
        }
    }

    /// Every authenticated local connection accepting `op` (version 1) and
    /// every version-2 one gets `frames`.
    pub(in crate::shard) fn deliver_all(&mut self, op: u32, frames: &Frames) {
        let targets: Vec<ConnRef> = self.conn_refs().filter(|(_, c)| wants(c, op)).map(|(r, _)| r).collect();
        let among = targets.len();
        for r in targets {
            self.enqueue(r, frames, among);
        }
    }

    /// Sends each holding shard the directory hits that live there.
    pub(in crate::shard) fn forward(
        &mut self,
        by_shard: FnvHashMap<u16, Vec<ConnRef>>,
        op: u32,
        frames: &Frames,
        assigned_only: bool,
    ) {
        for (s, conns) in by_shard {
            self.route(
                usize::from(s),
                ShardMsg::Deliver {
                    conns,
                    assigned_only,
                    op,
                    frames: frames.clone(),
                },
            );
        }
    }
}

/// Whether an authenticated connection takes a key, user or global push of
/// `op`: version 2 always, version 1 if it accepts the op (goim's rule).
pub(in crate::shard) fn wants(c: &Conn, op: u32) -> bool {
    c.authed
        && match &c.session {
            Session::V1 { accepts, .. } => accepts.binary_search(&op).is_ok(),
            Session::V2(_) => true,
        }
}
