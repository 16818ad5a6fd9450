//! A room message in cluster mode: where its state lives in Redis, the one
//! script that publishes it, and the form in which it reaches every node.
//!
//! Owns the key layout of a room `R` (all on the instance
//! `instance_of(R)`; the braces keep them in one Redis Cluster slot):
//!
//! ```text
//! vly:{R}:o        offset counter (INCR)
//! vly:{R}:e        epoch, set once by the first publish
//! vly:{R}:h        history: a Stream, entry id <offset>-0, fields op ttl id p
//! vly:{R}:d:<id>   a publisher message id seen, -> its offset (EX dedup window)
//! vly:{R}          pub/sub channel every node with members subscribes to
//! ```
//!
//! `PUBLISH_SCRIPT` does all of it in one atomic step, one command per
//! message whatever the number of nodes and connections: the epoch (set if
//! missing), the dedup check, the next offset, the Stream entry (trimmed to
//! about the history bound) and the `PUBLISH` of the message
//! (`encode_message`'s form, read back by `decode_message`).
//!
//! Meant to run wherever a publish enters (any shard, through its own link),
//! `decode_message` on the shard whose subscription received it; the server
//! does not call it yet (publishes stay on their node until the cluster publish
//! path uses it). Invariants: a message's offset and epoch come from Redis
//! only; the published form is self-delimiting and every byte of it is checked
//! before use (fuzzed: fuzz/fuzz_targets/cluster_message.rs).

use super::link::{Frame, Link, RedisError};
use bytes::Bytes;

/// The publish script. KEYS: offset, epoch, history, dedup. ARGV: channel,
/// op, ttl, id, payload, history bound, a new epoch (used if the room has
/// none), dedup seconds. Returns {offset, epoch, duplicate (0/1)}.
pub const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[2], epoch)
end
if ARGV[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {tonumber(seen), epoch, 1} end
end
local offset = redis.call('INCR', KEYS[1])
-- %d: Lua would write a large number in exponent form.
local o = string.format('%d', offset)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], o .. '-0',
  'op', ARGV[2], 'ttl', ARGV[3], 'id', ARGV[4], 'p', ARGV[5])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], o, 'EX', ARGV[8])
end
redis.call('PUBLISH', ARGV[1], o .. ' ' .. epoch .. ' ' .. ARGV[2] .. ' ' ..
  ARGV[3] .. ' ' .. string.format('%d', string.len(ARGV[4])) .. ' ' .. ARGV[4] .. ARGV[5])
return {offset, epoch, 0}
"#;

/// The keys and channel of room `room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomKeys {
    /// Offset counter.
    pub offset: String,
    /// Epoch.
    pub epoch: String,
    /// History stream.
    pub history: String,
    /// Pub/sub channel.
    pub channel: String,
}

impl RoomKeys {
    /// The keys of `room`.
    pub fn of(room: &str) -> RoomKeys {
        RoomKeys {
            offset: format!("vly:{{{room}}}:o"),
            epoch: format!("vly:{{{room}}}:e"),
            history: format!("vly:{{{room}}}:h"),
            channel: format!("vly:{{{room}}}"),
        }
    }

    /// The key remembering publisher message id `id` (empty: none).
    pub fn dedup(&self, id: &str) -> String {
        format!("{}:d:{id}", self.channel)
    }
}

/// A room message as every node receives it from the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the room.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: u64,
    /// Business operation code.
    pub op: u32,
    /// Seconds it stays in history (0: the room's own limits only).
    pub ttl: u32,
    /// The publisher's message id ("" for none).
    pub id: String,
    /// The payload.
    pub payload: Bytes,
}

/// What a publish got from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The message's offset (a duplicate's: the first one's).
    pub offset: u64,
    /// The room's epoch.
    pub epoch: u64,
    /// A message id seen within the dedup window: nothing was published.
    pub duplicate: bool,
}

/// Why a channel message was refused (a node that is not volley, or not
/// this version, published on a volley channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cluster message: {0}")]
pub struct BadMessage(&'static str);

/// The published form: `offset epoch op ttl idlen ` then the id, then the
/// payload (what `PUBLISH_SCRIPT` builds; tests and tools use this).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = format!("{} {} {} {} {} {}", m.offset, m.epoch, m.op, m.ttl, m.id.len(), m.id).into_bytes();
    out.extend_from_slice(&m.payload);
    out
}

/// Reads the published form; the payload shares `b`'s bytes.
pub fn decode_message(b: &Bytes) -> Result<Message, BadMessage> {
    let mut at = 0;
    let mut field = |what: &'static str, max: u64| -> Result<u64, BadMessage> {
        let rest = &b[at..];
        let end = memchr::memchr(b' ', rest).ok_or(BadMessage(what))?;
        let digits = &rest[..end];
        // Canonical decimal only (no sign, no leading zero), as the script
        // writes it: one message has one form.
        let canonical = !digits.is_empty() && (digits[0] != b'0' || digits.len() == 1);
        if !canonical || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(BadMessage(what));
        }
        let v: u64 = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&v| v <= max)
            .ok_or(BadMessage(what))?;
        at += end + 1;
        Ok(v)
    };
    let offset = field("offset", u64::MAX)?;
    let epoch = field("epoch", u64::MAX)?;
    let op = field("op", u64::from(u32::MAX))? as u32;
    let ttl = field("ttl", u64::from(u32::MAX))? as u32;
    let idlen = field("id length", crate::proto::v2::MAX_ID_LEN as u64)? as usize;
    if offset == 0 || epoch == 0 {
        return Err(BadMessage("offset and epoch start at 1"));
    }
    let id = b.get(at..at + idlen).ok_or(BadMessage("id past the end"))?;
    let id = std::str::from_utf8(id)
        .map_err(|_| BadMessage("id not UTF-8"))?
        .to_string();
    Ok(Message {
        offset,
        epoch,
        op,
        ttl,
        id,
        payload: b.slice(at + idlen..),
    })
}

/// Publishes `msg` to room `room` through `link` (its instance): one
/// `EVALSHA` (`EVAL` the first time on a connection that has not the
/// script). `history` bounds the Stream (about), `dedup_secs` how long a
/// message id is remembered.
pub async fn publish(
    link: &Link,
    room: &str,
    msg: &Message,
    history: u32,
    dedup_secs: u32,
) -> Result<Published, RedisError> {
    let keys = RoomKeys::of(room);
    let dedup = keys.dedup(&msg.id);
    let (op, ttl, bound, secs) = (
        msg.op.to_string(),
        msg.ttl.to_string(),
        history.max(1).to_string(),
        dedup_secs.max(1).to_string(),
    );
    let epoch = fastrand::u64(1..).to_string();
    let mut args: [&[u8]; 15] = [
        b"EVALSHA",
        script_sha().as_bytes(),
        b"4",
        keys.offset.as_bytes(),
        keys.epoch.as_bytes(),
        keys.history.as_bytes(),
        dedup.as_bytes(),
        keys.channel.as_bytes(),
        op.as_bytes(),
        ttl.as_bytes(),
        msg.id.as_bytes(),
        &msg.payload,
        bound.as_bytes(),
        epoch.as_bytes(),
        secs.as_bytes(),
    ];
    let reply = match link.call(&args).await {
        Err(RedisError::Server(e)) if e.starts_with("NOSCRIPT") => {
            args[0] = b"EVAL";
            args[1] = PUBLISH_SCRIPT.as_bytes();
            link.call(&args).await?
        }
        r => r?,
    };
    parse_published(&reply).ok_or_else(|| RedisError::Server(format!("unexpected publish reply {reply:?}")))
}

/// The script's reply: {offset, epoch, duplicate}.
fn parse_published(f: &Frame) -> Option<Published> {
    let Frame::Array(v) = f else { return None };
    let int = |f: &Frame| match f {
        Frame::Integer(i) => u64::try_from(*i).ok(),
        Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    };
    match v.as_slice() {
        [o, e, d] => Some(Published {
            offset: int(o)?,
            epoch: int(e)?,
            duplicate: int(d)? == 1,
        }),
        _ => None,
    }
}

/// SHA1 of `PUBLISH_SCRIPT`, hex, as `EVALSHA` names it (computed once).
pub fn script_sha() -> &'static str {
    use sha1::{Digest, Sha1};
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| {
        let d = Sha1::digest(PUBLISH_SCRIPT.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, payload: &'static [u8]) -> Message {
        Message {
            offset: 7,
            epoch: 99,
            op: 1000,
            ttl: 30,
            id: id.into(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_message_reads_back_as_written() {
        for m in [msg("", b""), msg("order-17", b"{\"a\":1}"), msg("x", b"1 2 3 \x00\xff")] {
            let b = Bytes::from(encode_message(&m));
            assert_eq!(decode_message(&b).unwrap(), m);
        }
        assert_eq!(
            &encode_message(&msg("ab", b"pay"))[..],
            b"7 99 1000 30 2 abpay",
            "the form PUBLISH_SCRIPT builds"
        );
    }

    #[test]
    fn bad_messages_are_refused_by_name() {
        for (b, why) in [
            (&b""[..], "offset"),
            (b"x 1 1 1 0 ", "offset"),
            (b"1 1 1 1", "ttl"),
            (b"1 1 4294967296 0 0 ", "op"),
            (b"0 1 1 0 0 ", "offset and epoch start at 1"),
            (b"1 1 1 0 5 ab", "id past the end"),
            (b"1 1 1 0 1 \xff", "id not UTF-8"),
            (b"1 1 1 0 999 ", "id length"),
            (b"99999999999999999999999 1 1 0 0 ", "offset"),
            (b"01 1 1 0 0 ", "offset"),
            (b"1 1 +1 0 0 ", "op"),
        ] {
            let e = decode_message(&Bytes::copy_from_slice(b)).unwrap_err();
            assert_eq!(e.0, why, "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn keys_share_one_cluster_slot() {
        let k = RoomKeys::of("live://1");
        assert_eq!(k.offset, "vly:{live://1}:o");
        assert_eq!(k.channel, "vly:{live://1}");
        assert_eq!(k.dedup("m-1"), "vly:{live://1}:d:m-1");
        assert_eq!(script_sha().len(), 40);
    }

    #[test]
    fn the_script_reply_is_read_as_offset_epoch_and_duplicate() {
        let reply = Frame::Array(vec![
            Frame::Integer(12),
            Frame::BulkString("8822".into()),
            Frame::Integer(1),
        ]);
        assert_eq!(
            parse_published(&reply),
            Some(Published {
                offset: 12,
                epoch: 8822,
                duplicate: true
            })
        );
        assert_eq!(parse_published(&Frame::Integer(1)), None);
    }
}
