//! `Token`: a connection's verified token with its two timers (wheel
//! ticks): when a version-2 connection is asked for a new one, and when the
//! connection is closed without one.
//!
//! Pure data, in the connection's record on its shard; `access` sets it
//! (auth, refresh) and the sweep acts on `due`.
//!
//! Invariant: `refresh_at <= expire_at`; an ask is made at most once per
//! token.

use crate::auth::jwt::Grant;

/// A connection's verified token and its timers (wheel ticks).
#[derive(Debug)]
pub struct Token {
    /// What it grants.
    pub grant: Grant,
    /// Tick at which a version-2 connection is asked for a new token.
    pub refresh_at: u32,
    /// Tick at which the connection is closed unless it refreshed.
    pub expire_at: u32,
    /// Op 56 was sent for this token.
    pub asked: bool,
}

/// What the sweep does about a connection's token now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStep {
    /// Ask for a new one (op 56), saying when this one expires.
    Ask(u64),
    /// Close the connection.
    Expire,
}

impl Token {
    /// The next tick the sweep must look at the token.
    pub fn next_check(&self, v2: bool) -> u32 {
        if v2 && !self.asked {
            self.refresh_at.min(self.expire_at)
        } else {
            self.expire_at
        }
    }

    /// What is due at `tick` for a connection of version 2 (`v2`) or 1;
    /// marks an ask as made.
    pub fn due(&mut self, tick: u32, v2: bool) -> Option<TokenStep> {
        if tick >= self.expire_at {
            return Some(TokenStep::Expire);
        }
        if v2 && !self.asked && tick >= self.refresh_at {
            self.asked = true;
            return Some(TokenStep::Ask(self.grant.exp));
        }
        None
    }
}
