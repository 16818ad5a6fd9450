//! Cluster-wide online counts: each node's room and connection counts in
//! Redis, and their sum over the live nodes.
//!
//! Owns the keys (on the first instance):
//!
//! ```text
//! vly:nodes        set of node ids that reported counts
//! vly:c:<node>     hash room -> members on that node (EX a few sweeps)
//! vly:t:<node>     hash conns, ips of that node (same expiry)
//! ```
//!
//! Once a second each node's shard 0 runs `COUNTS_SCRIPT` once: it writes
//! what changed in the node's counts since the last run (all of them after
//! a reconnect, and now and then) and reads back the sums over every node
//! whose hashes have not expired, which the node's readers use until the
//! next run (`Shared::cluster_counts`). A node that stops reporting drops
//! out when its hashes expire. Cost: per node and second, one command whose
//! work grows with the rooms that changed and the rooms of the cluster.
//!
//! Invariants: a dead node's counts are gone within `TTL_SECS`; the sums
//! are those of one moment of Redis (the script is atomic); the reply is
//! checked before use.

use super::link::{Frame, Link, RedisError};
use fnv::FnvHashMap;
use std::sync::Arc;

/// Seconds a node's counts outlive its last report.
pub const TTL_SECS: u32 = 5;

/// The counts script. KEYS: the node set, the node's room hash, its totals
/// hash. ARGV: node id, expiry seconds, `1` to replace the node's rooms
/// (`0`: apply changes), conns, ips, then room/count pairs (count 0 removes
/// the room). Returns {conns, ips, room, count, room, count, ...} summed
/// over the live nodes.
pub const COUNTS_SCRIPT: &str = r#"
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
local i = 6
while i < #ARGV do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
redis.call('HSET', KEYS[3], 'conns', ARGV[4], 'ips', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
local conns, ips, rooms = 0, 0, {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local t = redis.call('HMGET', 'vly:t:' .. node, 'conns', 'ips')
  if not t[1] then
    redis.call('SREM', KEYS[1], node)
  else
    conns = conns + tonumber(t[1])
    ips = ips + tonumber(t[2])
    local h = redis.call('HGETALL', 'vly:c:' .. node)
    for j = 1, #h, 2 do
      rooms[h[j]] = (rooms[h[j]] or 0) + tonumber(h[j + 1])
    end
  end
end
local out = {conns, ips}
for room, n in pairs(rooms) do
  out[#out + 1] = room
  out[#out + 1] = n
end
return out
"#;

/// The cluster's counts as of the last run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Authenticated connections, all nodes.
    pub conns: u64,
    /// Client IPs, summed over nodes (an IP on two nodes counts twice).
    pub ips: u64,
    /// Room → members, all nodes (rooms with none are absent).
    pub rooms: FnvHashMap<Arc<str>, u64>,
}

/// What a node reports: its totals and the rooms whose count changed
/// (0: no member left), or all of them when `full`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Replace the node's rooms in Redis with `rooms`.
    pub full: bool,
    /// Authenticated connections on the node.
    pub conns: u64,
    /// Distinct client IPs on the node.
    pub ips: u64,
    /// Room → members on the node.
    pub rooms: Vec<(Arc<str>, u64)>,
}

/// Runs `COUNTS_SCRIPT` for node `node` on `link` (the first instance).
pub async fn report(link: &Link, node: &str, r: &Report) -> Result<Counts, RedisError> {
    let set = "vly:nodes".to_string();
    let (rooms, totals) = (format!("vly:c:{node}"), format!("vly:t:{node}"));
    let (ttl, conns, ips) = (TTL_SECS.to_string(), r.conns.to_string(), r.ips.to_string());
    let counts: Vec<String> = r.rooms.iter().map(|(_, n)| n.to_string()).collect();
    let mut args: Vec<&[u8]> = vec![
        b"3",
        set.as_bytes(),
        rooms.as_bytes(),
        totals.as_bytes(),
        node.as_bytes(),
        ttl.as_bytes(),
        if r.full { b"1" } else { b"0" },
        conns.as_bytes(),
        ips.as_bytes(),
    ];
    for ((room, _), n) in r.rooms.iter().zip(&counts) {
        args.push(room.as_bytes());
        args.push(n.as_bytes());
    }
    let reply = super::room::eval(link, COUNTS_SCRIPT, counts_sha(), &args).await?;
    parse(&reply).ok_or_else(|| RedisError::Server(format!("unexpected counts reply of {} items", len(&reply))))
}

fn len(f: &Frame) -> usize {
    match f {
        Frame::Array(v) => v.len(),
        _ => 0,
    }
}

/// `{conns, ips, room, count, ...}`.
fn parse(f: &Frame) -> Option<Counts> {
    let Frame::Array(v) = f else { return None };
    let int = |f: &Frame| match f {
        Frame::Integer(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    let (head, rest) = v.split_at_checked(2)?;
    if rest.len() % 2 != 0 {
        return None;
    }
    let mut c = Counts {
        conns: int(&head[0])?,
        ips: int(&head[1])?,
        rooms: FnvHashMap::default(),
    };
    for pair in rest.chunks(2) {
        let Frame::BulkString(room) = &pair[0] else { return None };
        let room = std::str::from_utf8(room).ok()?;
        c.rooms.insert(Arc::from(room), int(&pair[1])?);
    }
    Some(c)
}

/// SHA1 of `COUNTS_SCRIPT` (computed once).
fn counts_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| super::room::sha_hex(COUNTS_SCRIPT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn the_reply_reads_as_totals_and_rooms() {
        let b = |s: &'static str| Frame::BulkString(Bytes::from_static(s.as_bytes()));
        let f = Frame::Array(vec![
            Frame::Integer(7),
            Frame::Integer(2),
            b("live://1"),
            Frame::Integer(5),
        ]);
        let c = parse(&f).unwrap();
        assert_eq!((c.conns, c.ips, c.rooms.get("live://1").copied()), (7, 2, Some(5)));
        for bad in [
            Frame::Array(vec![Frame::Integer(1)]),
            Frame::Array(vec![Frame::Integer(1), Frame::Integer(1), b("r")]),
            Frame::Array(vec![Frame::Integer(-1), Frame::Integer(1)]),
            Frame::Integer(3),
        ] {
            assert!(parse(&bad).is_none(), "{bad:?}");
        }
    }
}
