//! A room in cluster mode: where its state lives in Redis, the scripts and
//! reads that publish, sync, mark and page it. (The forms in which its
//! messages reach every node are `redis::forms`; `Script` and `eval` are
//! `redis::script`; both re-exported here.)
//!
//! Owns the key layout of a room `R` (all on the instance
//! `instance_of(R)`; the braces keep them in one Redis Cluster slot):
//!
//! ```text
//! vly:{R}:o        offset counter (INCR)
//! vly:{R}:e        epoch, set once by the first publish (or sync)
//! vly:{R}:h        history: a Stream, entry id <offset>-0, fields op ttl id p t
//! vly:{R}:d:<id>   a publisher message id seen, -> its offset (EX dedup window)
//! vly:{R}:p:<n>    pattern publish n reached the room (EX 60 s)
//! vly:{R}:m        read marks: user id -> offset read up to
//! vly:{R}:w        some node watches R's presence (`redis::presence`)
//! vly:{R}          pub/sub channel every node with members subscribes to
//!                  (and a node with pattern subscribers, by glob: `glob_of`)
//! ```
//!
//! `PUBLISH_SCRIPT` does all of it in one atomic step, one command per
//! message whatever the number of nodes and connections: the epoch (set if
//! missing), the dedup check, the next offset, the Stream entry (trimmed to
//! about the history bound) and the `PUBLISH` of the message
//! (`forms::encode_message`'s form, read back by `forms::decode_message`).
//!
//! `SYNC_SCRIPT` reads a room's position once a node's subscription to it
//! is confirmed, `range` reads its Stream for a resume the node's cache
//! cannot serve, and a pattern publish travels to every node's channel
//! (`encode_pattern`; `redis::registry::to_nodes`), where each node
//! publishes it to the matching rooms it knows.
//!
//! Runs wherever a publish enters (any shard, through its own link), and
//! on the shard whose subscription received a message (`shard::cluster`).
//! Invariants: a message's offset and epoch come from Redis only; every
//! reply is checked before use (`RedisError::Unexpected` otherwise).

pub(super) use super::forms::Reader;
pub use super::forms::{
    decode_message, decode_pattern, encode_message, encode_pattern, is_pattern, BadMessage, Message,
};
use super::link::{Frame, Link, RedisError};
pub use super::script::Script;
pub(super) use super::script::{eval, number};
use bytes::Bytes;

/// The publish script. KEYS: offset, epoch, history, dedup. ARGV: channel,
/// op, ttl, id, payload, history bound, a new epoch (used if the room has
/// none), dedup seconds, `1` to check and remember the dedup key (`0`: no
/// dedup). Returns {offset, epoch, duplicate (0/1)}. The Stream entry keeps
/// the Unix second it was stored at (`t`), for TTLs and age limits on
/// replay.
pub static PUBLISH_SCRIPT: Script = Script::new(
    r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[2], epoch)
end
if ARGV[9] == '1' then
  local seen = redis.call('GET', KEYS[4])
  if seen then return {tonumber(seen), epoch, 1} end
end
local offset = redis.call('INCR', KEYS[1])
-- %d: Lua would write a large number in exponent form.
local o = string.format('%d', offset)
local now = redis.call('TIME')[1]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], o .. '-0',
  'op', ARGV[2], 'ttl', ARGV[3], 'id', ARGV[4], 'p', ARGV[5], 't', now)
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], o, 'EX', ARGV[8])
end
redis.call('PUBLISH', ARGV[1], o .. ' ' .. epoch .. ' ' .. ARGV[2] .. ' ' ..
  ARGV[3] .. ' ' .. string.format('%d', string.len(ARGV[4])) .. ' ' .. ARGV[4] .. ARGV[5])
return {offset, epoch, 0}
"#,
);

/// The sync script, run by a node once its subscription to a room's
/// channel is confirmed: the room's epoch (set if missing, ARGV[1]), its
/// newest offset (0: none yet) and whether some node watches its presence
/// (1/0). KEYS: offset, epoch, watch. Every message after that offset
/// reaches the node on the channel.
pub static SYNC_SCRIPT: Script = Script::new(
    r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
return {redis.call('GET', KEYS[1]) or '0', epoch, redis.call('EXISTS', KEYS[3])}
"#,
);

/// The mark script: user ARGV[1] has read the room up to ARGV[2] (clamped
/// to the newest offset; a mark never moves back), unless the room has
/// ARGV[3] marks of other users. KEYS: marks, offset. Returns {mark,
/// newest offset}, the mark -1 when refused.
pub static MARK_SCRIPT: Script = Script::new(
    r#"
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return {-1, last} end
local m = math.max(tonumber(cur or '0'), math.min(tonumber(ARGV[2]), last))
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', m))
return {m, last}
"#,
);

/// The unread script: for each room (KEYS in pairs: marks, offset; the
/// epoch key's existence is read by name) user ARGV[1]'s mark and the
/// room's newest offset, -1 -1 for a room nothing was published to or
/// joined.
pub static UNREAD_SCRIPT: Script = Script::new(
    r#"
local out = {}
for i = 1, #KEYS, 2 do
  local o = redis.call('GET', KEYS[i + 1])
  if not o and redis.call('EXISTS', string.sub(KEYS[i + 1], 1, -2) .. 'e') == 1 then o = '0' end
  if o then
    out[#out + 1] = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0')
    out[#out + 1] = tonumber(o)
  else
    out[#out + 1] = -1
    out[#out + 1] = -1
  end
end
return out
"#,
);

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
    /// Read marks: a hash of user id -> offset read up to.
    pub marks: String,
}

impl RoomKeys {
    /// The keys of `room`.
    pub fn of(room: &str) -> RoomKeys {
        RoomKeys {
            offset: format!("vly:{{{room}}}:o"),
            epoch: format!("vly:{{{room}}}:e"),
            history: format!("vly:{{{room}}}:h"),
            channel: format!("vly:{{{room}}}"),
            marks: format!("vly:{{{room}}}:m"),
        }
    }

    /// The key that says some node watches the room's presence
    /// (`redis::presence`).
    pub fn watch(&self) -> String {
        format!("{}:w", self.channel)
    }

    /// The key remembering publisher message id `id`.
    pub fn dedup(&self, id: &str) -> String {
        format!("{}:d:{id}", self.channel)
    }

    /// The key remembering that pattern publish `token` reached the room
    /// (every node with members of a matching room publishes it; the first
    /// one does).
    pub fn pattern_dedup(&self, token: u64) -> String {
        format!("{}:p:{token}", self.channel)
    }

    /// The channel glob (`PSUBSCRIBE`) that covers the channels of every
    /// room room pattern `pattern` matches: the channels of the rooms
    /// starting with the pattern's literal part (up to its first wildcard
    /// segment), Redis's glob characters in it escaped. It also covers
    /// rooms the pattern does not match (`live://*` covers `live://1/x`);
    /// whoever hears them checks with `proto::pattern::matches`.
    pub fn glob_of(pattern: &str) -> String {
        let mut literal = 0;
        for seg in pattern.split('/') {
            if seg == "*" || seg == ">" {
                break;
            }
            literal += seg.len() + 1;
        }
        let prefix = &pattern[..literal.min(pattern.len())];
        let mut glob = String::with_capacity(prefix.len() + 8);
        glob.push_str("vly:{");
        for ch in prefix.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                glob.push('\\');
            }
            glob.push(ch);
        }
        glob.push('*');
        glob
    }

    /// The room whose channel is `channel`; `None` for any other channel.
    pub fn room_of(channel: &[u8]) -> Option<&str> {
        let inner = channel.strip_prefix(b"vly:{")?.strip_suffix(b"}")?;
        std::str::from_utf8(inner).ok()
    }
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

/// How a publish is deduplicated: its key (`RoomKeys::dedup`,
/// `RoomKeys::pattern_dedup`) and how long the key is remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedup {
    /// The key.
    pub key: String,
    /// Seconds it is remembered.
    pub secs: u32,
}

/// Publishes `msg` to room `room` through `link` (its instance): one
/// `EVALSHA` (`EVAL` the first time on a connection that has not the
/// script). `history` bounds the Stream (about); with `dedup`, a publish
/// whose key was seen answers the first one's offset and publishes nothing.
pub async fn publish(
    link: &Link,
    room: &str,
    msg: &Message,
    history: u32,
    dedup: Option<&Dedup>,
) -> Result<Published, RedisError> {
    let keys = RoomKeys::of(room);
    let (op, ttl, bound) = (msg.op.to_string(), msg.ttl.to_string(), history.max(1).to_string());
    let (dedup_key, secs, check) = match dedup {
        Some(d) => (d.key.clone(), d.secs.max(1).to_string(), &b"1"[..]),
        None => (keys.dedup(""), "1".into(), &b"0"[..]),
    };
    let epoch = fastrand::u64(1..).to_string();
    let args: [&[u8]; 14] = [
        b"4",
        keys.offset.as_bytes(),
        keys.epoch.as_bytes(),
        keys.history.as_bytes(),
        dedup_key.as_bytes(),
        keys.channel.as_bytes(),
        op.as_bytes(),
        ttl.as_bytes(),
        msg.id.as_bytes(),
        &msg.payload,
        bound.as_bytes(),
        epoch.as_bytes(),
        secs.as_bytes(),
        check,
    ];
    let reply = eval(link, &PUBLISH_SCRIPT, &args).await?;
    parse_published(&reply).ok_or_else(|| RedisError::Unexpected(format!("unexpected publish reply {reply:?}")))
}

/// Where a room stands as `SYNC_SCRIPT` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its newest offset (0: none yet).
    pub offset: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Some node watches its presence.
    pub watched: bool,
}

/// The room's position (`SYNC_SCRIPT`).
pub async fn sync(link: &Link, room: &str) -> Result<Position, RedisError> {
    let keys = RoomKeys::of(room);
    let watch = keys.watch();
    let epoch = fastrand::u64(1..).to_string();
    let args: [&[u8]; 5] = [
        b"3",
        keys.offset.as_bytes(),
        keys.epoch.as_bytes(),
        watch.as_bytes(),
        epoch.as_bytes(),
    ];
    let reply = eval(link, &SYNC_SCRIPT, &args).await?;
    let bad = || RedisError::Unexpected(format!("unexpected sync reply {reply:?}"));
    let Frame::Array(v) = &reply else { return Err(bad()) };
    match v.as_slice() {
        [o, e, w] => Ok(Position {
            offset: number(o).ok_or_else(bad)?,
            epoch: number(e).filter(|&e| e != 0).ok_or_else(bad)?,
            watched: number(w).ok_or_else(bad)? == 1,
        }),
        _ => Err(bad()),
    }
}

/// User `mid` has read `room` up to `offset`: (mark, newest offset), or
/// `None` when the room holds `max_marks` marks of other users.
pub async fn mark(
    link: &Link,
    room: &str,
    mid: i64,
    offset: u64,
    max_marks: usize,
) -> Result<Option<(u64, u64)>, RedisError> {
    let keys = RoomKeys::of(room);
    let (mid, offset, max) = (mid.to_string(), offset.to_string(), max_marks.to_string());
    let args: [&[u8]; 6] = [
        b"2",
        keys.marks.as_bytes(),
        keys.offset.as_bytes(),
        mid.as_bytes(),
        offset.as_bytes(),
        max.as_bytes(),
    ];
    let reply = eval(link, &MARK_SCRIPT, &args).await?;
    let bad = || RedisError::Unexpected(format!("unexpected mark reply {reply:?}"));
    let Frame::Array(v) = &reply else { return Err(bad()) };
    match v.as_slice() {
        [Frame::Integer(-1), l] => number(l).map(|_| None).ok_or_else(bad),
        [m, l] => Ok(Some((number(m).ok_or_else(bad)?, number(l).ok_or_else(bad)?))),
        _ => Err(bad()),
    }
}

/// User `mid`'s read mark in each of `rooms` (all on `link`'s instance)
/// and the room's newest offset; `None` for a room nothing was published
/// to or joined.
pub async fn unread(
    link: &Link,
    rooms: &[std::sync::Arc<str>],
    mid: i64,
) -> Result<Vec<Option<(u64, u64)>>, RedisError> {
    let keys: Vec<RoomKeys> = rooms.iter().map(|r| RoomKeys::of(r)).collect();
    let (n, mid) = ((2 * keys.len()).to_string(), mid.to_string());
    let mut args: Vec<&[u8]> = vec![n.as_bytes()];
    for k in &keys {
        args.extend([k.marks.as_bytes(), k.offset.as_bytes()]);
    }
    args.push(mid.as_bytes());
    let reply = eval(link, &UNREAD_SCRIPT, &args).await?;
    let bad = || RedisError::Unexpected("unexpected unread reply".into());
    let Frame::Array(v) = &reply else { return Err(bad()) };
    if v.len() != 2 * rooms.len() {
        return Err(bad());
    }
    v.chunks(2)
        .map(|p| match p {
            [Frame::Integer(-1), Frame::Integer(-1)] => Ok(None),
            [m, l] => Ok(Some((number(m).ok_or_else(bad)?, number(l).ok_or_else(bad)?))),
            _ => Err(bad()),
        })
        .collect()
}

/// `room`'s (newest offset, epoch), read without setting anything;
/// `None` when nothing was published to or joined in it.
pub async fn position(link: &Link, room: &str) -> Result<Option<(u64, u64)>, RedisError> {
    let keys = RoomKeys::of(room);
    let reply = link
        .call(&[b"MGET", keys.offset.as_bytes(), keys.epoch.as_bytes()])
        .await?;
    let bad = || RedisError::Unexpected(format!("unexpected MGET reply {reply:?}"));
    let Frame::Array(v) = &reply else { return Err(bad()) };
    match v.as_slice() {
        [_, Frame::Null] => Ok(None),
        [Frame::Null, e] => Ok(Some((0, number(e).ok_or_else(bad)?))),
        [o, e] => Ok(Some((number(o).ok_or_else(bad)?, number(e).ok_or_else(bad)?))),
        _ => Err(bad()),
    }
}

/// User `mid`'s read mark in `room` (0: none).
pub async fn mark_of(link: &Link, room: &str, mid: i64) -> Result<u64, RedisError> {
    let keys = RoomKeys::of(room);
    let mid = mid.to_string();
    match link.call(&[b"HGET", keys.marks.as_bytes(), mid.as_bytes()]).await? {
        Frame::Null => Ok(0),
        f => number(&f).ok_or_else(|| RedisError::Unexpected(format!("unexpected mark {f:?}"))),
    }
}

/// One stored message read back from a room's Stream, with the Unix
/// second it was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message (its epoch: the one asked with).
    pub msg: Message,
    /// Unix seconds when Redis stored it.
    pub at: u64,
}

impl Stored {
    /// Whether its own TTL (none: 0) has ended at Unix second `unix` (read
    /// truncated, as `at` was): only once a whole second past `at + ttl`,
    /// since both seconds may be up to one short of the real times.
    pub fn ttl_over(&self, unix: u64) -> bool {
        self.msg.ttl != 0 && self.at.saturating_add(u64::from(self.msg.ttl)) < unix
    }
}

/// The stored messages of `room` with offsets `from..=through`, oldest
/// first (what the Stream still holds of them: a trimmed start is simply
/// missing), given `epoch` as theirs.
pub async fn range(link: &Link, room: &str, epoch: u64, from: u64, through: u64) -> Result<Vec<Stored>, RedisError> {
    let count = through.saturating_sub(from).saturating_add(1);
    range_at_most(link, room, epoch, (from, through), count).await
}

/// The first `count` stored messages of `room` with offsets
/// `from..=through`, oldest first.
pub async fn range_at_most(
    link: &Link,
    room: &str,
    epoch: u64,
    (from, through): (u64, u64),
    count: u64,
) -> Result<Vec<Stored>, RedisError> {
    let keys = RoomKeys::of(room);
    let (start, end) = (format!("{from}-0"), format!("{through}-0"));
    let count = count.to_string();
    let reply = link
        .call(&[
            b"XRANGE",
            keys.history.as_bytes(),
            start.as_bytes(),
            end.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ])
        .await?;
    let Frame::Array(entries) = &reply else {
        return Err(RedisError::Unexpected(format!("unexpected XRANGE reply {reply:?}")));
    };
    entries
        .iter()
        .map(|e| stored(e, epoch).ok_or_else(|| RedisError::Unexpected(format!("unexpected Stream entry {e:?}"))))
        .collect()
}

/// One XRANGE entry: `[id, [field, value, ...]]`.
fn stored(e: &Frame, epoch: u64) -> Option<Stored> {
    let Frame::Array(v) = e else { return None };
    let [Frame::BulkString(id), Frame::Array(fields)] = v.as_slice() else {
        return None;
    };
    // Offsets start at 1 (a Stream id 0-0 is no message of volley's).
    let offset = std::str::from_utf8(id)
        .ok()?
        .strip_suffix("-0")?
        .parse()
        .ok()
        .filter(|&o: &u64| o > 0)?;
    let mut m = Message {
        offset,
        epoch,
        op: 0,
        ttl: 0,
        id: String::new(),
        payload: Bytes::new(),
    };
    let mut at = 0;
    for pair in fields.chunks(2) {
        let [Frame::BulkString(k), Frame::BulkString(v)] = pair else {
            return None;
        };
        let text = || std::str::from_utf8(v).ok();
        match &k[..] {
            b"op" => m.op = text()?.parse().ok()?,
            b"ttl" => m.ttl = text()?.parse().ok()?,
            b"id" => m.id = text()?.to_string(),
            b"p" => m.payload = v.clone(),
            b"t" => at = text()?.parse().ok()?,
            _ => {}
        }
    }
    Some(Stored { msg: m, at })
}

/// The script's reply: {offset, epoch, duplicate}.
fn parse_published(f: &Frame) -> Option<Published> {
    let Frame::Array(v) = f else { return None };
    match v.as_slice() {
        [o, e, d] => Some(Published {
            offset: number(o)?,
            epoch: number(e)?,
            duplicate: number(d)? == 1,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patterns_glob_covers_its_rooms_channels_with_redis_characters_escaped() {
        assert_eq!(RoomKeys::glob_of("live://*"), "vly:{live://*");
        assert_eq!(RoomKeys::glob_of("chat/>"), "vly:{chat/*");
        assert_eq!(RoomKeys::glob_of("chat/*/lobby"), "vly:{chat/*");
        assert_eq!(RoomKeys::glob_of("*/x"), "vly:{*");
        assert_eq!(RoomKeys::glob_of("a[1]?/\\/>"), "vly:{a\\[1\\]\\?/\\\\/*");
    }

    #[test]
    fn stream_entries_read_back_as_messages() {
        let f = |s: &'static str| Frame::BulkString(Bytes::from_static(s.as_bytes()));
        let e = Frame::Array(vec![
            f("12-0"),
            Frame::Array(vec![
                f("op"),
                f("7"),
                f("ttl"),
                f("30"),
                f("id"),
                f("a"),
                f("p"),
                f("hi"),
                f("t"),
                f("1700000000"),
            ]),
        ]);
        let s = stored(&e, 5).unwrap();
        assert_eq!(
            (s.msg.offset, s.msg.epoch, s.msg.op, s.msg.ttl, s.at),
            (12, 5, 7, 30, 1_700_000_000)
        );
        assert_eq!((s.msg.id.as_str(), &s.msg.payload[..]), ("a", &b"hi"[..]));
        assert!(stored(&Frame::Array(vec![f("x"), Frame::Array(vec![])]), 5).is_none());
        // Stored within second 1_700_000_000 with a TTL of 30 s: second
        // 1_700_000_030 may begin less than 30 s later.
        assert!(!s.ttl_over(1_700_000_030), "kept through the second its TTL may end in");
        assert!(s.ttl_over(1_700_000_031));
    }

    #[test]
    fn keys_share_one_cluster_slot() {
        let k = RoomKeys::of("live://1");
        assert_eq!(k.offset, "vly:{live://1}:o");
        assert_eq!(k.channel, "vly:{live://1}");
        assert_eq!(k.dedup("m-1"), "vly:{live://1}:d:m-1");
        assert_eq!(k.pattern_dedup(9), "vly:{live://1}:p:9");
        assert_eq!(RoomKeys::room_of(k.channel.as_bytes()), Some("live://1"));
        assert_eq!(RoomKeys::room_of(b"vly:n:0123456789ab"), None);
        assert_eq!(PUBLISH_SCRIPT.sha().len(), 40);
        assert_ne!(PUBLISH_SCRIPT.sha(), SYNC_SCRIPT.sha());
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
