//! Presence across nodes: the notes volley nodes leave each other about a
//! room's members, on the room's own channel (`vly:{R}`, which every node
//! with members of R hears already) and on a node's channel (`vly:n:<node>`).
//!
//! Owns the forms of those notes (`Note`, `encode`, `decode`), the watch
//! key `vly:{R}:w` and the script that sets it and announces a watch:
//!
//! ```text
//! node A: R watched (first watcher on A) ── WATCH_SCRIPT ──> SET vly:{R}:w PX 15 s, PUBLISH vly:{R} "P{watch A}"
//!         ... again every WATCH_EVERY s while watched
//! node B (members of R): hears the watch (or reads vly:{R}:w when it subscribes to R)
//!         once a second: its changes ── PUBLISH vly:{R} "P{changes B ...}" ──> A merges them into its event
//! node A: GET /v1/presence ── PUBLISH vly:{R} "P{ask A q}" (answered: N subscribed nodes)
//! every node with members ── PUBLISH vly:n:A "P{answer q count members}" ──> A waits for N answers
//! ```
//!
//! Sans-IO apart from `watch` and `ask`, generic over what a node's changes
//! and member lists are (`shard::members` gives them), so this layer does
//! not depend on the shard's types. A note starts with `P` then JSON; a room
//! message starts with a digit, a push with a lowercase letter, so one byte
//! tells the forms apart.
//!
//! Invariants: every note is checked before use (a node id is 12 lowercase
//! hex digits as `registry::node_id` makes them; the JSON is one object of
//! the expected shape; fuzzed in fuzz/fuzz_targets/cluster_message.rs); a
//! watch key outlives its last refresh by less than `WATCH_TTL_MS`.

use super::link::{Frame, Link, RedisError};
use super::room::{eval, BadMessage, Script};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Seconds between a watching node's announcements of its watch.
pub const WATCH_EVERY: u32 = 5;
/// How long a watch key (and a heard watch) lasts without a refresh:
/// three announcements, so one lost on the way ends nothing.
pub const WATCH_TTL_MS: u64 = 15_000;

/// The first byte of every presence note.
pub const TAG: u8 = b'P';

/// Sets a room's watch key and announces the watch on the room's channel.
/// KEYS: the watch key. ARGV: channel, note, milliseconds. Returns the
/// number of nodes that heard it.
pub static WATCH_SCRIPT: Script = Script::new(
    r#"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"#,
);

/// A note between nodes. `C`: one node's changes to a room's members in
/// one second; `L`: a node's list of a room's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase", deny_unknown_fields)]
pub enum Note<C, L> {
    /// On a room's channel: `node` has watchers of the room.
    Watch {
        /// The watching node.
        node: String,
    },
    /// On a room's channel: `node`'s changes to the room's members.
    Changes {
        /// The node they happened on.
        node: String,
        /// What changed.
        changes: C,
    },
    /// On a room's channel: `node` asks every node with members of the
    /// room for up to `limit` of them, answered on its own channel.
    Ask {
        /// Where the answers go.
        node: String,
        /// The question's number, echoed in the answers.
        q: u64,
        /// Most members an answer lists.
        limit: u32,
    },
    /// On the asking node's channel: one node's members of the room.
    Answer {
        /// The question answered.
        q: u64,
        /// How many members of the room the node has.
        count: u64,
        /// The first `limit` of them.
        members: L,
    },
}

impl<C, L> Note<C, L> {
    /// The node a room-channel note comes from (`None` for an answer).
    pub fn from_node(&self) -> Option<&str> {
        match self {
            Note::Watch { node } | Note::Changes { node, .. } | Note::Ask { node, .. } => Some(node),
            Note::Answer { .. } => None,
        }
    }
}

/// Whether `payload` is a presence note (and not a room message or a push).
pub fn is_note(payload: &[u8]) -> bool {
    payload.first() == Some(&TAG)
}

/// The published form: `P` then the note as JSON.
pub fn encode<C: Serialize, L: Serialize>(n: &Note<C, L>) -> Vec<u8> {
    let mut out = vec![TAG];
    serde_json::to_writer(&mut out, n).expect("a note serializes");
    out
}

/// Reads a published note, checking its node id.
pub fn decode<C: DeserializeOwned, L: DeserializeOwned>(b: &[u8]) -> Result<Note<C, L>, BadMessage> {
    let json = b.strip_prefix(&[TAG]).ok_or(BadMessage("not a presence note"))?;
    let n: Note<C, L> = serde_json::from_slice(json).map_err(|_| BadMessage("presence note not of its form"))?;
    if let Some(node) = n.from_node() {
        let hex = node.len() == 12 && node.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(BadMessage("presence note from a node id not of its form"));
        }
    }
    Ok(n)
}

/// Announces `node`'s watch of the room with channel `channel` and watch
/// key `key` (through the room's instance).
pub async fn watch(link: &Link, key: &str, channel: &str, node: &str) -> Result<(), RedisError> {
    let note = encode::<(), ()>(&Note::Watch { node: node.into() });
    let ms = WATCH_TTL_MS.to_string();
    let args: [&[u8]; 5] = [b"1", key.as_bytes(), channel.as_bytes(), &note, ms.as_bytes()];
    eval(link, &WATCH_SCRIPT, &args).await.map(drop)
}

/// Publishes `note` on `channel`; the number of subscribers (nodes, as
/// each node subscribes to a channel once) that got it.
pub async fn publish(link: &Link, channel: &str, note: &[u8]) -> Result<u64, RedisError> {
    match link.call(&[b"PUBLISH", channel.as_bytes(), note]).await? {
        Frame::Integer(n) if n >= 0 => Ok(n as u64),
        other => Err(RedisError::Unexpected(format!("unexpected PUBLISH reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type N = Note<Vec<u32>, Vec<String>>;

    #[test]
    fn notes_read_back_as_written() {
        let node = "00000000abcd".to_string();
        for n in [
            N::Watch { node: node.clone() },
            N::Changes {
                node: node.clone(),
                changes: vec![1, 2],
            },
            N::Ask { node, q: 7, limit: 100 },
            N::Answer {
                q: 7,
                count: 3,
                members: vec!["a".into()],
            },
        ] {
            let b = encode(&n);
            assert!(is_note(&b));
            assert_eq!(decode::<Vec<u32>, Vec<String>>(&b).unwrap(), n);
        }
    }

    #[test]
    fn notes_not_of_their_form_are_refused() {
        for bad in [
            &b"{\"t\":\"watch\",\"node\":\"00000000abcd\"}"[..],
            b"P{\"t\":\"watch\",\"node\":\"ABCDEF000000\"}",
            b"P{\"t\":\"watch\",\"node\":\"00000000abcd\",\"x\":1}",
            b"P{\"t\":\"watch\"}",
            b"P{\"t\":\"ask\",\"node\":\"00000000abcd\",\"q\":-1,\"limit\":1}",
            b"P{\"t\":\"changes\",\"node\":\"00000000abcd\",\"changes\":\"x\"}",
            b"P[1]",
            b"P",
            b"",
            b"1 2 3 0 0 x",
        ] {
            assert!(
                decode::<Vec<u32>, Vec<String>>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
