//! Registering connections with the owner of their key or user: where each
//! lives, a key already held elsewhere kicked as `replaced` (or refused),
//! the user's connection limit, and what waits in the user's inbox.
//!
//! Runs on the key's or user's owner shard inside its mesh inbox task;
//! never awaits.

use crate::config::AuthMode;
use crate::proto::close::CloseReason;
use crate::shard::directory::KeyRule;
use crate::shard::mesh::{GlobalConn, ShardMsg};
use crate::shard::state::Shard;
use std::sync::Arc;

impl Shard {
    /// On a key's or user's owner: records where the connection lives; a key
    /// already held elsewhere has its previous holder kicked as `replaced`;
    /// a user's new connection is sent what waits in the user's inbox.
    pub(in crate::shard) fn register(&mut self, key: Option<Arc<str>>, mid: i64, at: GlobalConn, v2: bool) {
        let n = self.nr();
        let rule = match self.cfg().auth.mode {
            AuthMode::Off => KeyRule::Anyone,
            AuthMode::Jwt => KeyRule::SameUser,
        };
        let (kick, mid) = match key {
            Some(key) => {
                let kick = self
                    .owners
                    .dir
                    .register_key(key.clone(), mid, at, (&self.shared.keys, n), rule);
                let refused = kick.is_some_and(|k| k.reason == CloseReason::KeyInUse);
                self.registry_change(Some(&*key).filter(|_| !refused), None, true);
                (kick, 0)
            }
            None => {
                let first = mid != 0 && self.owners.dir.user(mid).is_empty();
                self.owners.dir.register_user(mid, at, v2);
                self.registry_change(None, first.then_some(mid), true);
                (None, mid)
            }
        };
        if mid != 0 {
            let over = self.user_over_limit(mid, at);
            if let Some(gone) = over {
                // Out of the directory now, so that the user's next
                // connection does not count it (its own unregister, later,
                // finds nothing).
                // The user keeps `at`, so stays registered.
                let _ = self.owners.dir.unregister(None, mid, gone);
                self.route(
                    usize::from(gone.shard),
                    ShardMsg::Kick {
                        conn: gone.conn,
                        reason: CloseReason::UserConnLimit,
                        assigned_only: false,
                    },
                );
            }
            if over != Some(at) {
                self.send_owed(mid, at, v2);
            }
        }
        if let Some(k) = kick {
            self.route(
                usize::from(k.at.shard),
                ShardMsg::Kick {
                    conn: k.at.conn,
                    reason: k.reason,
                    assigned_only: k.assigned_only,
                },
            );
        }
    }
}
