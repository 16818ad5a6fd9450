//! Cluster-wide online counts: each node's room and connection counts in
//! Redis, and their sum over the live nodes.
//!
//! Owns the keys (on the first instance):
//!
//! ```text
//! vly:nodes        set of node ids that reported counts or were marked
//!                  alive (`redis::registry`); a node leaves it when it
//!                  is neither
//! vly:c:<node>     hash room -> members on that node (EX a few sweeps)
//! vly:t:<node>     hash conns, ips, at (Redis time of the report, ms) of
//!                  that node (same expiry)
//! vly:sums         the sums, JSON, for `SUMS_MS`
//! ```
//!
//! Once a second each node's shard 0 runs `COUNTS_SCRIPT` once: it writes
//! what changed in the node's counts since the last run (all of them after
//! a reconnect, and now and then) and reads back the sums over every node
//! whose hashes have not expired, which the node's readers use until the
//! next run (`Shared::cluster_counts`). A node that stops reporting is left
//! out of the sums once its last report is `STALE_MS` old by Redis's clock
//! (one clock for every node, whatever theirs say), and its hashes expire
//! later. Cost: per node and second, one command whose work grows with the
//! rooms that changed and the rooms of the cluster.
//!
//! Invariants: a dead node's counts leave every node's figures within
//! `STALE_MS + SUMS_MS` plus one report period of its death (about 4 s;
//! docs/CLUSTER.md promises 5); the sums are those of one moment of Redis
//! (the script is atomic); the reply is checked before use.

use super::link::{Frame, Link, RedisError};
use super::room::Script;
use fnv::FnvHashMap;
use std::sync::Arc;

/// Seconds a node's counts are kept after its last report (cleanup; the
/// sums leave them out sooner, `STALE_MS`).
pub const TTL_SECS: u32 = 5;

/// Age of a node's last report past which the sums leave it out: two and
/// a half report periods, so one late sweep does not make a live node's
/// members flicker out of the counts.
pub const STALE_MS: u32 = 2_500;

/// How long one computation of the sums is served to every node that asks.
pub const SUMS_MS: u32 = 500;

/// The counts script. KEYS: the node set, the node's room hash, its totals
/// hash, the sums. ARGV: node id, expiry seconds, `1` to replace the node's
/// rooms (`0`: apply changes), conns, ips, staleness in ms, sums lifetime
/// in ms, then room/count pairs (count 0 removes the room). Returns, as
/// JSON, `[conns, ips, room, count, ...]` summed over the nodes that
/// reported within the staleness: computed by the first node to ask after
/// the sums expired, read by the others, so that the cluster sums at most
/// twice a second whatever the number of nodes. (A report without `at`,
/// from a node of an older build, counts until its hashes expire.)
pub static COUNTS_SCRIPT: Script = Script::new(
    r#"
if ARGV[3] == '1' then redis.call('DEL', KEYS[2]) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local stale, keep = tonumber(ARGV[6]), ARGV[7]
local i = 8
while i < #ARGV do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  i = i + 2
end
redis.call('HSET', KEYS[3], 'conns', ARGV[4], 'ips', ARGV[5], 'at', now)
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
local cached = redis.call('GET', KEYS[4])
if cached then return cached end
local conns, ips, rooms = 0, 0, {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local t = redis.call('HMGET', 'vly:t:' .. node, 'conns', 'ips', 'at')
  if not t[1] then
    if redis.call('EXISTS', 'vly:alive:' .. node) == 0 then redis.call('SREM', KEYS[1], node) end
  elseif not t[3] or now - tonumber(t[3]) <= stale then
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
local sums = cjson.encode(out)
redis.call('SET', KEYS[4], sums, 'PX', keep)
return sums
"#,
);

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
    let (set, sums) = ("vly:nodes".to_string(), "vly:sums".to_string());
    let (rooms, totals) = (format!("vly:c:{node}"), format!("vly:t:{node}"));
    let (ttl, conns, ips) = (TTL_SECS.to_string(), r.conns.to_string(), r.ips.to_string());
    let (stale, keep) = (STALE_MS.to_string(), SUMS_MS.to_string());
    let counts: Vec<String> = r.rooms.iter().map(|(_, n)| n.to_string()).collect();
    let mut args: Vec<&[u8]> = vec![
        b"4",
        set.as_bytes(),
        rooms.as_bytes(),
        totals.as_bytes(),
        sums.as_bytes(),
        node.as_bytes(),
        ttl.as_bytes(),
        if r.full { b"1" } else { b"0" },
        conns.as_bytes(),
        ips.as_bytes(),
        stale.as_bytes(),
        keep.as_bytes(),
    ];
    for ((room, _), n) in r.rooms.iter().zip(&counts) {
        args.push(room.as_bytes());
        args.push(n.as_bytes());
    }
    let reply = super::room::eval(link, &COUNTS_SCRIPT, &args).await?;
    let Frame::BulkString(b) = &reply else {
        return Err(RedisError::Unexpected(format!("unexpected counts reply {reply:?}")));
    };
    parse(b).ok_or_else(|| RedisError::Unexpected("unexpected counts reply".into()))
}

/// `[conns, ips, room, count, ...]` (JSON).
fn parse(b: &[u8]) -> Option<Counts> {
    let v: Vec<serde_json::Value> = serde_json::from_slice(b).ok()?;
    let (head, rest) = v.split_at_checked(2)?;
    if rest.len() % 2 != 0 {
        return None;
    }
    let mut c = Counts {
        conns: head[0].as_u64()?,
        ips: head[1].as_u64()?,
        rooms: FnvHashMap::default(),
    };
    for pair in rest.chunks(2) {
        c.rooms.insert(Arc::from(pair[0].as_str()?), pair[1].as_u64()?);
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_reads_as_totals_and_rooms() {
        let c = parse(br#"[7,2,"live://1",5]"#).unwrap();
        assert_eq!((c.conns, c.ips, c.rooms.get("live://1").copied()), (7, 2, Some(5)));
        for bad in [&b"[1]"[..], br#"[1,1,"r"]"#, b"[-1,1]", b"3", br#"[1,1,2,3]"#, b"{}"] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
