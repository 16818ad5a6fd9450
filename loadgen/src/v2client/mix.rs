//! Which connection is what in a mixed run: the protocol version, what it
//! follows (the room itself or a pattern that matches it), and whether it
//! speaks over WebSocket. Decided from the connection's index alone, so the
//! main thread (which pushes to users) and the connection threads agree
//! without talking, and a reconnect keeps its connection's kind.

use std::net::SocketAddr;
use std::time::Duration;

/// What a room-following connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Version 2, joined to the room (resumes with its offset).
    Room,
    /// Version 2, subscribed to a pattern matching the room.
    Pattern,
    /// Version 1: the room named in its auth, pushes as plain frames.
    V1,
}

/// The shares of each kind and transport, and the heartbeat.
#[derive(Clone, Debug, Default)]
pub struct Mix {
    /// Percentage of connections that speak version 1.
    pub v1_pct: u64,
    /// Percentage of connections that subscribe to `pattern`.
    pub pattern_pct: u64,
    /// The pattern (must match the room).
    pub pattern: String,
    /// Percentage of connections over WebSocket, whatever their kind.
    pub ws_pct: u64,
    /// WebSocket listeners (round robin) and the upgrade path.
    pub ws_targets: Vec<SocketAddr>,
    /// The WebSocket path (`[ws] path`).
    pub ws_path: String,
    /// Every connection sends a heartbeat (op 2) this often while the
    /// broadcast runs, and counts the answers.
    pub heartbeat: Option<Duration>,
}

/// A fixed scramble of `index` into 0..100, different per `salt`, so
/// that the shares spread evenly over threads and over the ramp.
fn percentile(index: usize, salt: u64) -> u64 {
    let mut x = (index as u64 ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    x % 100
}

impl Mix {
    /// The kind of connection `index`.
    pub fn kind(&self, index: usize) -> Kind {
        let p = percentile(index, 0x6b1d);
        if p < self.v1_pct {
            Kind::V1
        } else if p < self.v1_pct + self.pattern_pct {
            Kind::Pattern
        } else {
            Kind::Room
        }
    }

    /// Whether connection `index` speaks over WebSocket.
    pub fn ws(&self, index: usize) -> bool {
        !self.ws_targets.is_empty() && percentile(index, 0x2c5e_1f03) < self.ws_pct
    }

    /// How many of `n` connections are of each kind, and over WebSocket.
    pub fn census(&self, n: usize) -> (usize, usize, usize, usize) {
        let (mut room, mut pattern, mut v1, mut ws) = (0, 0, 0, 0);
        for i in 0..n {
            match self.kind(i) {
                Kind::Room => room += 1,
                Kind::Pattern => pattern += 1,
                Kind::V1 => v1 += 1,
            }
            ws += usize::from(self.ws(i));
        }
        (room, pattern, v1, ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_come_out_near_their_percentages() {
        let mix = Mix {
            v1_pct: 20,
            pattern_pct: 10,
            ws_pct: 40,
            ws_targets: vec!["127.0.0.1:1".parse().unwrap()],
            ..Mix::default()
        };
        let (room, pattern, v1, ws) = mix.census(10_000);
        assert_eq!(room + pattern + v1, 10_000);
        assert!((1_800..2_200).contains(&v1), "{v1}");
        assert!((800..1_200).contains(&pattern), "{pattern}");
        assert!((3_700..4_300).contains(&ws), "{ws}");
        // Transport and kind are independent: version-1 connections are
        // over WebSocket in about the same share.
        let v1_ws = (0..10_000).filter(|&i| mix.kind(i) == Kind::V1 && mix.ws(i)).count();
        assert!((600..1_000).contains(&v1_ws), "{v1_ws}");
    }

    #[test]
    fn no_websocket_without_a_listener() {
        let mix = Mix {
            ws_pct: 100,
            ..Mix::default()
        };
        assert!(!(0..100).any(|i| mix.ws(i)));
    }
}
