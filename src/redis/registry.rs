//! Where users and connection keys are: the registry of which nodes hold a
//! connection of a user id or a client-chosen key, and the script that
//! sends a push to exactly those nodes (goim's `mid_` / `key_` maps).
//!
//! Owns the keys (a user's and a key's entry on the instance
//! `instance_of` its entry name; a node's liveness and channel on every
//! instance):
//!
//! ```text
//! vly:u:<mid>        hash node -> 1: nodes with a connection of the user
//! vly:k:<key>        hash node -> 1: nodes with a connection with the key
//! vly:i:<mid>        inbox of a user no node held when pushed to, or
//!                    that left a node owing acknowledgements
//!                    (on the user's entry's instance)
//! vly:alive:<node>   the node is up (EX LIVE_SECS, set every second)
//! vly:gone:<node>    a script took the node for dead and dropped it from
//!                    an entry (read and cleared by the node's next mark)
//! vly:n:<node>       channel of the pushes for that node
//! vly:q:<node>       what was sent on that channel while the node was
//!                    not subscribed to it (QUEUE_MAX, QUEUE_SECS)
//! vly:nodes          (first instance) the nodes, for pushes to everyone
//! ```
//!
//! A user's (key's) owner shard on a node adds the node to the entry when
//! the node gets its first connection of the user (key) and removes it with
//! the last (`leave`, which moves what the user did not acknowledge on the
//! node to the user's inbox in Redis); after a link reconnects, each owner adds its users and keys
//! again (Redis may have lost them). A node that died leaves its fields
//! behind until a push finds it not alive and removes them; a node that
//! was only slow (its mark expired while it lived) hears so with its next
//! mark (`alive`) and registers all its users and keys again. Adding a node
//! to an entry also marks it alive, so that a node that got connections
//! before its first mark (shard 0 marks it every second) is not taken for
//! dead by a push or a claim in that second.
//!
//! A node that gets its first connection with a client-chosen key claims
//! it (`claim`): the other live nodes holding it are told to close theirs,
//! so a key is held by one connection in the cluster, as on one node.
//!
//! `ROUTE_SCRIPT` looks the targets up and publishes, on each live node's
//! channel, the push with the targets that node holds (the
//! `redis::push` form): one command per push and instance, whatever the
//! number of nodes, and nodes without a target hear nothing. A user held by
//! no live node gets the push in an inbox in Redis instead, which the next
//! node to add itself to the user's entry takes (`add`) and delivers: the
//! node of the user's next connection, or a node that was taken for dead
//! and registers its users again. A push to everyone or to a node's
//! server-assigned keys goes to the nodes' channels the same way
//! (`to_nodes`).
//!
//! Whatever the scripts send on a live node's channel while the node is
//! not subscribed to it (Redis counted no receiver: the node's subscriber
//! is reconnecting) waits in the node's queue, which the node takes and
//! handles as heard once it is subscribed again (`take_queue`); so a push
//! Redis took reaches a node that lost its subscription for a while.
//!
//! Invariants: a node id is the 48-bit tag its server-assigned keys carry
//! (`node_of_assigned_key`), so an assigned key needs no entry.

use super::link::{Frame, Link, RedisError};
use super::room::Script;
use crate::proto::publish::Target;

/// Seconds a node counts as alive after its last sign of life.
pub const LIVE_SECS: u32 = 5;

/// Most entries in a node's queue (the oldest go first).
pub const QUEUE_MAX: usize = 4096;

/// Seconds a node's queue outlives its last entry.
pub const QUEUE_SECS: u32 = 60;

/// The scripts' way to a node's channel: `send` publishes, and `queue`s
/// when Redis counted no receiver; it returns how many there were (the
/// queue's constants are `QUEUE_MAX` and `QUEUE_SECS`).
macro_rules! lua_send {
    () => {
        r#"
local function queue(node, body)
  local q = 'vly:q:' .. node
  redis.call('RPUSH', q, body)
  redis.call('LTRIM', q, -4096, -1)
  redis.call('EXPIRE', q, 60)
end
local function send(node, body)
  local heard = redis.call('PUBLISH', 'vly:n:' .. node, body)
  if heard == 0 then queue(node, body) end
  return heard
end
"#
    };
}

/// The route script. KEYS: the targets' entries (all on this instance).
/// ARGV: the push kind (`u` or `k`), its head `op ttl idlen id`, its
/// payload, the inbox's message limit (0: no inbox), seconds an inbox
/// entry is kept, then each target as the push form writes it (`mid ` or
/// `len key`), in KEYS order. A user held by no live node gets the push in
/// their inbox (`vly:i:<mid>`: entries `<expiry unix second> <push form>`,
/// the newest `limit` kept). Returns the number of nodes published to.
pub static ROUTE_SCRIPT: Script = Script::new(concat!(
    lua_send!(),
    r#"
local by, order = {}, {}
local now = tonumber(redis.call('TIME')[1])
for i, key in ipairs(KEYS) do
  local held = false
  for _, node in ipairs(redis.call('HKEYS', key)) do
    if redis.call('EXISTS', 'vly:alive:' .. node) == 1 then
      held = true
      if not by[node] then
        by[node] = {}
        order[#order + 1] = node
      end
      local t = by[node]
      t[#t + 1] = ARGV[i + 5]
    else
      redis.call('HDEL', key, node)
      redis.call('SET', 'vly:gone:' .. node, '1', 'EX', 3600)
    end
  end
  if not held and ARGV[1] == 'u' and tonumber(ARGV[4]) > 0 then
    local inbox = 'vly:i:' .. string.sub(key, 7)
    local entry = string.format('%d', now + tonumber(ARGV[5])) .. ' u ' .. ARGV[2] .. '1 ' .. ARGV[i + 5] .. ARGV[3]
    redis.call('RPUSH', inbox, entry)
    redis.call('LTRIM', inbox, -tonumber(ARGV[4]), -1)
    redis.call('EXPIRE', inbox, ARGV[5])
  end
end
for _, node in ipairs(order) do
  local t = by[node]
  send(node, ARGV[1] .. ' ' .. ARGV[2] .. #t .. ' ' .. table.concat(t) .. ARGV[3])
end
return #order
"#,
));

/// A node's id: the low 48 bits of its tag, hex.
pub fn node_id(node_tag: u64) -> String {
    format!("{:012x}", node_tag & 0xffff_ffff_ffff)
}

/// The node whose server-assigned key `key` is (any node's: the form
/// `shard::addr` writes, 61 characters whose first twelve hex digits are
/// the node's id), `None` for a client-chosen key. Only the node itself can
/// tell whether the key's signature is its own.
pub fn node_of_assigned_key(key: &str) -> Option<String> {
    let b = key.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let shaped = b.len() == 61 && [8, 13, 18, 23, 36].iter().all(|&i| b[i] == b'-');
    (shaped && hex(&b[..8]) && hex(&b[9..13])).then(|| format!("{}{}", &key[..8], &key[9..13]))
}

/// A node's channel.
pub fn channel(node: &str) -> String {
    format!("vly:n:{node}")
}

/// A user's registry entry.
pub fn user_entry(mid: i64) -> String {
    format!("vly:u:{mid}")
}

/// A key's registry entry.
pub fn key_entry(key: &str) -> String {
    format!("vly:k:{key}")
}

/// The add script: node ARGV[1] into every entry of KEYS, and marked
/// alive for ARGV[2] seconds (a node that holds connections is alive).
/// What waits in the inbox of each user whose entry it is (pushes while no
/// live node held the user) is taken in the same step, so that a push lands
/// either there or on this node's channel, never nowhere. Returns, per
/// user with such pushes, `[mid, entry, ...]` (entries oldest first).
static ADD_SCRIPT: Script = Script::new(
    r#"
local out = {}
for _, k in ipairs(KEYS) do
  redis.call('HSET', k, ARGV[1], '1')
  if string.sub(k, 1, 6) == 'vly:u:' then
    local inbox = 'vly:i:' .. string.sub(k, 7)
    local e = redis.call('LRANGE', inbox, 0, -1)
    if #e > 0 then
      redis.call('DEL', inbox)
      table.insert(e, 1, string.sub(k, 7))
      out[#out + 1] = e
    end
  end
end
redis.call('SET', 'vly:alive:' .. ARGV[1], '1', 'EX', ARGV[2])
return out
"#,
);

/// Pushes a user is owed, as `add` takes them from the user's inbox.
pub type Owed = Vec<(i64, Vec<super::push::Push>)>;

/// Adds node `node` to every entry of `entries` (all on `link`'s
/// instance), and takes what waits in the inboxes of the users among them:
/// each push not past its expiry at Unix second `now`, oldest first (an
/// entry that does not read is skipped). One command.
pub async fn add(link: &Link, entries: &[String], node: &str, now: u64) -> Result<Owed, RedisError> {
    let n = entries.len().to_string();
    let mut args: Vec<&[u8]> = Vec::with_capacity(entries.len() + 2);
    args.push(n.as_bytes());
    args.extend(entries.iter().map(|e| e.as_bytes()));
    args.push(node.as_bytes());
    let secs = LIVE_SECS.to_string();
    args.push(secs.as_bytes());
    let reply = super::room::eval(link, &ADD_SCRIPT, &args).await?;
    let Frame::Array(users) = reply else {
        return Err(RedisError::Unexpected(format!("unexpected add reply {reply:?}")));
    };
    let mut owed = Vec::new();
    for user in users {
        let Frame::Array(v) = user else { continue };
        let Some((Frame::BulkString(mid), rest)) = v.split_first() else {
            continue;
        };
        let Some(mid) = std::str::from_utf8(mid).ok().and_then(|m| m.parse().ok()) else {
            continue;
        };
        let pushes: Vec<_> = rest
            .iter()
            .filter_map(|f| match f {
                Frame::BulkString(b) => inbox_entry(b, now),
                _ => None,
            })
            .collect();
        if !pushes.is_empty() {
            owed.push((mid, pushes));
        }
    }
    Ok(owed)
}

/// The claim script: node ARGV[1] got a connection with the key of entry
/// KEYS[1]; every other live node holding the key is told on its channel
/// (ARGV[2], `replace_note`) to close its connection with the key, as one
/// node replaces a key's connection; ARGV[1] is marked alive for ARGV[3]
/// seconds (as by the add script). Returns how many nodes were told.
static CLAIM_SCRIPT: Script = Script::new(concat!(
    lua_send!(),
    r#"
local told = 0
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if node ~= ARGV[1] then
    if redis.call('EXISTS', 'vly:alive:' .. node) == 1 then
      send(node, ARGV[2])
      told = told + 1
    else
      redis.call('HDEL', KEYS[1], node)
      redis.call('SET', 'vly:gone:' .. node, '1', 'EX', 3600)
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('SET', 'vly:alive:' .. ARGV[1], '1', 'EX', ARGV[3])
return told
"#,
));

/// Node `node` got its first connection with client-chosen key `key`: it
/// joins the key's entry, and the other nodes holding the key close
/// theirs (`replaced`).
pub async fn claim(link: &Link, key: &str, node: &str) -> Result<u64, RedisError> {
    let (entry, note) = (key_entry(key), replace_note(key));
    let secs = LIVE_SECS.to_string();
    let args: [&[u8]; 5] = [b"1", entry.as_bytes(), node.as_bytes(), &note, secs.as_bytes()];
    match super::room::eval(link, &CLAIM_SCRIPT, &args).await? {
        Frame::Integer(n) => Ok(n.max(0) as u64),
        other => Err(RedisError::Unexpected(format!("unexpected claim reply {other:?}"))),
    }
}

/// What a node's channel carries to have the node close its connection
/// with client-chosen key `key`: `R ` then the key.
pub fn replace_note(key: &str) -> Vec<u8> {
    let mut out = b"R ".to_vec();
    out.extend_from_slice(key.as_bytes());
    out
}

/// The key of a `replace_note`; `None` for anything else (a push, a
/// presence note) and for a key that is not one (empty, too long, not
/// UTF-8).
pub fn read_replace(b: &[u8]) -> Option<&str> {
    let key = std::str::from_utf8(b.strip_prefix(b"R ")?).ok()?;
    (!key.is_empty() && key.len() <= crate::proto::body::MAX_KEY_LEN).then_some(key)
}

/// Removes node `node` from entry `entry`.
pub async fn remove(link: &Link, entry: &str, node: &str) -> Result<(), RedisError> {
    link.call(&[b"HDEL", entry.as_bytes(), node.as_bytes()]).await.map(drop)
}

/// The leave script: node ARGV[1] no longer holds the user of entry
/// KEYS[1]; what the user had not acknowledged there (ARGV[4..], inbox
/// entries as `ROUTE_SCRIPT` writes them, oldest first) goes to the user's
/// inbox KEYS[2] (the newest ARGV[2] kept, for at least ARGV[3] seconds) unless a
/// live node still holds the user (it had those pushes live). Returns the
/// number of entries kept.
static LEAVE_SCRIPT: Script = Script::new(
    r#"
redis.call('HDEL', KEYS[1], ARGV[1])
if #ARGV < 4 then return 0 end
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', 'vly:alive:' .. node) == 1 then return 0 end
end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return #ARGV - 3
"#,
);

/// This node's last connection of user `mid` went: the node leaves the
/// user's entry, and `owed` (pushes the user did not acknowledge here, the
/// `redis::push` form for that user, each with its TTL left) go to the
/// user's inbox in Redis for whichever node the user connects to next,
/// unless another node holds the user. Returns how many were kept.
pub async fn leave(
    link: &Link,
    mid: i64,
    node: &str,
    owed: &[(super::push::Push, u64)],
    inbox: InboxLimits,
    now: u64,
) -> Result<u64, RedisError> {
    let (entry, key) = (user_entry(mid), format!("vly:i:{mid}"));
    let (max, secs) = (inbox.messages.max(1).to_string(), inbox.secs.max(1).to_string());
    let forms: Vec<Vec<u8>> = owed
        .iter()
        .filter_map(|(p, left)| {
            let mut e = format!("{} ", now.saturating_add(*left)).into_bytes();
            e.extend(super::push::encode_push(p)?);
            Some(e)
        })
        .collect();
    let mut args: Vec<&[u8]> = vec![
        b"2",
        entry.as_bytes(),
        key.as_bytes(),
        node.as_bytes(),
        max.as_bytes(),
        secs.as_bytes(),
    ];
    args.extend(forms.iter().map(|f| &f[..]));
    match super::room::eval(link, &LEAVE_SCRIPT, &args).await? {
        Frame::Integer(n) => Ok(n.max(0) as u64),
        other => Err(RedisError::Unexpected(format!("unexpected leave reply {other:?}"))),
    }
}

/// The alive script: node ARGV[1] is up for ARGV[2] seconds; on the first
/// instance (ARGV[3] `1`) it is also one of the nodes pushes to everyone
/// go to. Returns 1 if a script had taken the node for dead since the last
/// mark (and dropped it from some entry), else 0.
static ALIVE_SCRIPT: Script = Script::new(
    r#"
redis.call('SET', 'vly:alive:' .. ARGV[1], '1', 'EX', ARGV[2])
if ARGV[3] == '1' then redis.call('SADD', 'vly:nodes', ARGV[1]) end
return redis.call('DEL', 'vly:gone:' .. ARGV[1])
"#,
);

/// Marks node `node` alive for `LIVE_SECS` on `link`'s instance, and on
/// the `first` instance lists it among the nodes. `true`: the node had
/// been taken for dead there, and its entries there are to be added again.
pub async fn alive(link: &Link, node: &str, first: bool) -> Result<bool, RedisError> {
    let secs = LIVE_SECS.to_string();
    let first: &[u8] = if first { b"1" } else { b"0" };
    let args: [&[u8]; 4] = [b"0", node.as_bytes(), secs.as_bytes(), first];
    match super::room::eval(link, &ALIVE_SCRIPT, &args).await? {
        Frame::Integer(n) => Ok(n > 0),
        other => Err(RedisError::Unexpected(format!("unexpected alive reply {other:?}"))),
    }
}

/// The nodes script: ARGV[1] to the channel of each node of ARGV[2..], or
/// of every node in `vly:nodes` when none is named; where Redis counts no
/// receiver, into the node's queue if the node is alive, else nowhere (and
/// a node of the set that is neither subscribed nor alive leaves it).
/// Returns how many nodes heard it or will.
static NODES_SCRIPT: Script = Script::new(concat!(
    lua_send!(),
    r#"
local nodes, all = {}, #ARGV == 1
if all then
  nodes = redis.call('SMEMBERS', 'vly:nodes')
else
  for i = 2, #ARGV do nodes[#nodes + 1] = ARGV[i] end
end
local sent = 0
for _, node in ipairs(nodes) do
  if redis.call('PUBLISH', 'vly:n:' .. node, ARGV[1]) > 0 then
    sent = sent + 1
  elseif redis.call('EXISTS', 'vly:alive:' .. node) == 1 then
    queue(node, ARGV[1])
    sent = sent + 1
  elseif all then
    redis.call('SREM', 'vly:nodes', node)
  end
end
return sent
"#,
));

/// Sends `body` (a push in the `redis::push` form, or a pattern publish)
/// to `nodes`, or to every node when `nodes` is empty (run on the first
/// instance, where `vly:nodes` is): to those subscribed now, and into the
/// queue of the live ones that are not. Returns how many it went to.
pub async fn to_nodes(link: &Link, body: &[u8], nodes: &[String]) -> Result<u64, RedisError> {
    let mut args: Vec<&[u8]> = Vec::with_capacity(nodes.len() + 2);
    args.extend([&b"0"[..], body]);
    args.extend(nodes.iter().map(|n| n.as_bytes()));
    match super::room::eval(link, &NODES_SCRIPT, &args).await? {
        Frame::Integer(n) => Ok(n.max(0) as u64),
        other => Err(RedisError::Unexpected(format!("unexpected nodes reply {other:?}"))),
    }
}

/// Where a push to users no node holds is kept: at most `messages` per
/// user (0: not kept), each for `secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    /// Entries per user.
    pub messages: usize,
    /// Seconds an entry is kept.
    pub secs: u32,
}

/// Publishes a push to users or keys (all of whose entries are on
/// `link`'s instance) on the channels of the live nodes that hold them,
/// and keeps it in the inbox of each user no node holds. Returns how many
/// nodes it went to.
pub async fn route(
    link: &Link,
    target: &Target,
    (head, payload): (&str, &[u8]),
    inbox: InboxLimits,
) -> Result<u64, RedisError> {
    let (kind, entries, tokens): (&[u8], Vec<String>, Vec<String>) = match target {
        Target::Mids(m) => (
            b"u",
            m.iter().map(|&m| user_entry(m)).collect(),
            m.iter().map(|m| format!("{m} ")).collect(),
        ),
        Target::Keys(k) => (
            b"k",
            k.iter().map(|k| key_entry(k)).collect(),
            k.iter().map(|k| format!("{} {k}", k.len())).collect(),
        ),
        Target::Room(_) | Target::All => return Ok(0),
    };
    let n = entries.len().to_string();
    let (max, secs) = (inbox.messages.to_string(), inbox.secs.max(1).to_string());
    let mut args: Vec<&[u8]> = Vec::with_capacity(2 * entries.len() + 6);
    args.push(n.as_bytes());
    args.extend(entries.iter().map(|e| e.as_bytes()));
    args.extend([kind, head.as_bytes(), payload, max.as_bytes(), secs.as_bytes()]);
    args.extend(tokens.iter().map(|t| t.as_bytes()));
    match super::room::eval(link, &ROUTE_SCRIPT, &args).await? {
        Frame::Integer(n) => Ok(n.max(0) as u64),
        other => Err(RedisError::Unexpected(format!("unexpected route reply {other:?}"))),
    }
}

/// The take script: a list, whole, emptied in the same step (so that of
/// two takers one gets it). KEYS: the list.
static TAKE_SCRIPT: Script = Script::new(
    r#"
local all = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return all
"#,
);

/// Node `node`'s queue on `link`'s instance, taken (emptied): what was
/// sent on its channel there while it was not subscribed, oldest first,
/// as it would have been heard.
pub async fn take_queue(link: &Link, node: &str) -> Result<Vec<bytes::Bytes>, RedisError> {
    let key = format!("vly:q:{node}");
    let reply = super::room::eval(link, &TAKE_SCRIPT, &[b"1", key.as_bytes()]).await?;
    let Frame::Array(v) = reply else {
        return Err(RedisError::Unexpected("unexpected queue reply".into()));
    };
    Ok(v.into_iter()
        .filter_map(|f| match f {
            Frame::BulkString(b) => Some(b),
            _ => None,
        })
        .collect())
}

/// An inbox entry, `<expiry> <push form>`, if it reads and has not expired.
fn inbox_entry(b: &bytes::Bytes, now: u64) -> Option<super::push::Push> {
    let space = memchr::memchr(b' ', b)?;
    let expiry: u64 = std::str::from_utf8(&b[..space]).ok()?.parse().ok()?;
    (expiry > now).then(|| super::push::decode_push(&b.slice(space + 1..)).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_queue_as_the_constants_say() {
        let text = lua_send!();
        assert!(text.contains(&format!("'LTRIM', q, -{QUEUE_MAX}, -1")), "{text}");
        assert!(text.contains(&format!("'EXPIRE', q, {QUEUE_SECS})")), "{text}");
    }

    #[test]
    fn a_replace_note_names_its_key() {
        assert_eq!(read_replace(&replace_note("k 1")), Some("k 1"));
        for bad in [&b"R "[..], b"R\xff", b"u 1 0 0 1 7 x", b"Px", b""] {
            assert_eq!(read_replace(bad), None);
        }
        assert_eq!(
            read_replace(&replace_note(&"k".repeat(crate::proto::body::MAX_KEY_LEN + 1))),
            None
        );
    }

    #[test]
    fn an_assigned_key_names_its_node() {
        let tag = 0x1234_5678_9abc_def0;
        // `GlobalConn::assigned_key` of shard 3, slot 0x10002, gen 0xdeadbeef.
        let key = "56789abc-def0-0003-0001-0002deadbeef-0123456789abcdef01234567";
        assert_eq!(node_of_assigned_key(key), Some(node_id(tag)));
        assert_eq!(node_id(tag), "56789abcdef0");
        for chosen in [
            "k1",
            "",
            "56789abc-def0-0003-0001-0002deadbeef",
            "56789abc-def0-0003-0001-0002deadbeef-0123456789abcdef0123456",
            "XYZ89abc-def0-0003-0001-0002deadbeef-0123456789abcdef01234567",
        ] {
            assert_eq!(node_of_assigned_key(chosen), None, "{chosen}");
        }
    }
}
