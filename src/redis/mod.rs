//! The Redis side of cluster mode: a node's links to the Redis instances
//! of `[redis] urls`, through which several volley nodes form one cluster
//! (SPEC section 5). Named for what it talks to: "cluster" is
//! `shard::cluster`.
//!
//! Owns: where each Redis instance is (`RedisUrl`), which instance a room
//! or user name belongs to (`instance_of`), the pipelined connection a
//! shard keeps to each instance (`link`), what every shard's links report
//! about each instance (`Health`, read by `/healthz`), a room message's
//! keys, scripts, Stream reads and channel forms (`room`), the channel form
//! of key, user and everyone pushes (`push`), which nodes hold which users
//! and keys (`registry`), each node's counts and their cluster-wide sums
//! (`counts`), the notes nodes leave each other about rooms' members
//! (`presence`), a shard's pub/sub connection to each instance
//! (`subscriber`), and Redis operations as values with the driver that runs
//! them for a shard (`ops`). What a shard does
//! with them is `shard::cluster`.
//!
//! Runs on every shard: each shard keeps a link of its own to each instance
//! (a shard's requests never hop to another shard on their way to Redis),
//! started with the shard; `Health` is shared by all shards and read from
//! any.
//!
//! Invariants: an empty `urls` is single-node mode: no link is made and
//! nothing here runs. A name maps to the same instance on every node that
//! has the same `urls` in the same order. A link that is down answers every
//! command at once with `RedisError::Down` (never a reply it did not get).

pub mod counts;
pub mod driver;
pub mod forms;
pub mod link;
pub mod ops;
pub mod presence;
pub mod push;
pub mod registry;
pub mod room;
pub mod script;
pub mod subscriber;

use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Default Redis port.
const DEFAULT_PORT: u16 = 6379;

/// One Redis instance as `[redis] urls` names it:
/// `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `host:port`, as given (a name is resolved at each connect).
    pub addr: String,
    /// ACL user (`AUTH user password`); `None` with a password alone.
    pub user: Option<String>,
    /// Password sent with `AUTH` after each connect.
    pub password: Option<String>,
    /// Database selected after each connect (`SELECT`), 0 by default.
    pub db: u32,
}

impl RedisUrl {
    /// `url` as it may be shown (logs, `/healthz`, `volley config`): the
    /// address and database, or, if it does not parse, the reason with the
    /// password masked. Never the password.
    pub fn shown(url: &str) -> String {
        RedisUrl::parse(url).map_or_else(|e| e, |u| u.to_string())
    }

    /// Parses `redis://...`; the reason names what is wrong (and shows
    /// the URL with its password masked: it lands in logs).
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let masked = mask_password(url);
        let s = masked.as_str();
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("`{s}`: must start with redis:// (TLS is not supported)"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some(("", p)) => (None, Some(p.to_string())),
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => return Err(format!("`{s}`: user without a password (redis://user:password@host)")),
            },
        };
        if hostport.is_empty() {
            return Err(format!("`{s}`: no host"));
        }
        // A bracketed IPv6 host keeps its colons.
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("`{s}`: bad port `{p}`"))?,
            ),
            _ => (hostport, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(format!("`{s}`: no host"));
        }
        let db = match path {
            "" => 0,
            p => p.parse().map_err(|_| format!("`{s}`: bad database number `{p}`"))?,
        };
        Ok(RedisUrl {
            addr: format!("{host}:{port}"),
            user,
            password,
            db,
        })
    }
}

/// `url` with the password of its user part replaced by `***`.
fn mask_password(url: &str) -> String {
    let Some(rest) = url.strip_prefix("redis://") else {
        return url.to_string();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let path = &rest[authority.len()..];
            format!("redis://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

impl std::fmt::Display for RedisUrl {
    /// The address and database, never the password (logs, `/healthz`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}/{}", self.addr, self.db)
    }
}

/// The instance (index into `urls`) that holds `name`'s keys and channel:
/// FNV-1a of the name, so every node with the same list agrees.
pub fn instance_of(name: &[u8], instances: usize) -> usize {
    let mut h = fnv::FnvHasher::default();
    h.write(name);
    (h.finish() % instances.max(1) as u64) as usize
}

/// What the shards' links report about each instance: up, or down since
/// when and why. One entry per (shard, instance).
pub struct Health {
    instances: usize,
    slots: Vec<Slot>,
    /// The node hears what is sent to it: subscribed to its channel on
    /// the first instance and listed among the nodes there (set once).
    joined: AtomicBool,
}

#[derive(Default)]
struct Slot {
    up: AtomicBool,
    /// Unix seconds of the last change (0: never connected yet).
    since: AtomicU64,
    /// Why it is down (the last error).
    reason: Mutex<String>,
}

impl Health {
    /// Every link down ("not connected yet") until it connects.
    pub fn new(shards: usize, instances: usize) -> Health {
        let slots = (0..shards * instances)
            .map(|_| Slot {
                reason: Mutex::new("not connected yet".into()),
                ..Slot::default()
            })
            .collect();
        Health {
            instances,
            slots,
            joined: AtomicBool::new(false),
        }
    }

    /// The node now hears pushes to everyone and pattern publishes (its
    /// channel is subscribed and it is listed among the nodes).
    pub fn set_joined(&self) {
        self.joined.store(true, Relaxed);
    }

    /// Whether the node has joined (`set_joined`); until then it is not
    /// healthy, so that a load balancer sends it no clients that would
    /// miss pushes to everyone.
    pub fn joined(&self) -> bool {
        self.joined.load(Relaxed)
    }

    /// Shard `shard`'s link to instance `i` connected.
    pub fn set_up(&self, shard: usize, i: usize) {
        let s = &self.slots[shard * self.instances + i];
        if !s.up.swap(true, Relaxed) {
            s.since.store(crate::metrics::unix_now(), Relaxed);
        }
    }

    /// Shard `shard`'s link to instance `i` is down because of `why`.
    pub fn set_down(&self, shard: usize, i: usize, why: &str) {
        let s = &self.slots[shard * self.instances + i];
        if s.up.swap(false, Relaxed) || s.since.load(Relaxed) == 0 {
            s.since.store(crate::metrics::unix_now(), Relaxed);
        }
        if let Ok(mut r) = s.reason.lock() {
            why.clone_into(&mut r);
        }
    }

    /// Whether shard `shard`'s link to instance `i` is up.
    pub fn is_up(&self, shard: usize, i: usize) -> bool {
        self.slots[shard * self.instances + i].up.load(Relaxed)
    }

    /// Instances some shard cannot reach: (instance, reason, down since
    /// (Unix seconds)), the first shard's reason for each.
    pub fn down(&self) -> Vec<(usize, String, u64)> {
        let mut out: Vec<(usize, String, u64)> = Vec::new();
        for (k, s) in self.slots.iter().enumerate() {
            let i = k % self.instances;
            if s.up.load(Relaxed) || out.iter().any(|d| d.0 == i) {
                continue;
            }
            let reason = s.reason.lock().map(|r| r.clone()).unwrap_or_default();
            out.push((i, reason, s.since.load(Relaxed)));
        }
        out.sort_by_key(|d| d.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_defaults() {
        let u = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!(u.addr, "127.0.0.1:6379");
        assert_eq!((u.user, u.password, u.db), (None, None, 0));
        let u = RedisUrl::parse("redis://app:s3cret@cache.local:6380/2").unwrap();
        assert_eq!(u.addr, "cache.local:6380");
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        assert_eq!(u.db, 2);
        let u = RedisUrl::parse("redis://:pw@[::1]:7000").unwrap();
        assert_eq!(
            (u.addr.as_str(), u.user, u.password.as_deref()),
            ("[::1]:7000", None, Some("pw"))
        );
        assert_eq!(RedisUrl::parse("redis://[::1]").unwrap().addr, "[::1]:6379");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("127.0.0.1:6379", "redis://"),
            ("rediss://h", "redis://"),
            ("redis://", "no host"),
            ("redis://:6379", "no host"),
            ("redis://h:0", "bad port"),
            ("redis://h:x", "bad port"),
            ("redis://h/x", "database"),
            ("redis://user@h", "password"),
        ] {
            let e = RedisUrl::parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn the_password_stays_out_of_logs() {
        let u = RedisUrl::parse("redis://:hunter2@h:1/3").unwrap();
        assert_eq!(u.to_string(), "redis://h:1/3");
        for bad in ["redis://app:hunter2@h:0", "redis://:hunter2@h/x", "redis://:hunter2@"] {
            let e = RedisUrl::parse(bad).unwrap_err();
            assert!(!e.contains("hunter2") && e.contains(":***@"), "{e}");
        }
    }

    #[test]
    fn names_spread_over_instances_the_same_way_everywhere() {
        let mut seen = [0usize; 3];
        for i in 0..3000 {
            let name = format!("live://room-{i}");
            let a = instance_of(name.as_bytes(), 3);
            assert_eq!(a, instance_of(name.as_bytes(), 3));
            seen[a] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
        assert_eq!(instance_of(b"x", 1), 0);
    }

    #[test]
    fn health_reports_each_instance_down_once_with_a_reason() {
        let h = Health::new(2, 2);
        assert_eq!(h.down().len(), 2, "nothing connected yet");
        assert!(!h.joined());
        h.set_joined();
        assert!(h.joined());
        for s in 0..2 {
            for i in 0..2 {
                h.set_up(s, i);
            }
        }
        assert!(h.down().is_empty());
        h.set_down(1, 1, "connection refused");
        h.set_down(0, 1, "connection refused");
        let d = h.down();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].0, d[0].1.as_str()), (1, "connection refused"));
        assert!(!h.is_up(0, 1) && h.is_up(0, 0));
    }
}
