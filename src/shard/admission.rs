//! `Admission`: the process-wide connection limits checked when a client
//! connection is accepted — connections in total, per source IP, those of
//! an IP not yet authenticated, and connection attempts per source IP per
//! second.
//!
//! Shared by every shard (in `Shared`); each accept and each removal of a
//! record touches it once. The total is one atomic; the per-IP figures sit
//! in one of `STRIPES` small mutex-guarded maps chosen by the IP's hash, so
//! two shards contend only when they accept from IPs of the same stripe at
//! the same moment, for a few hundred nanoseconds.
//!
//! Invariants: every `admit` is matched by exactly one `release` of the same
//! IP (refused connections too: they hold a record until their goodbye is
//! written), so the counts are the records that exist; a record counts as
//! handshaking from its `admit` until its `authenticated` or, failing that,
//! its `release`; an IP entry with no
//! open connection and no attempt this second is dropped by `release` or by
//! `forget_idle`, so the maps hold only IPs with something to count.

use crate::config::Limits;
use crate::proto::close::CloseReason;
use fnv::FnvHashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Mutex-guarded maps the per-IP figures are spread over.
const STRIPES: usize = 64;

#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    /// Records open from this IP.
    open: u32,
    /// Of those, the ones not authenticated (yet).
    handshaking: u32,
    /// The second `attempts` counts in (Unix seconds).
    second: u64,
    /// Connections accepted from this IP in `second`.
    attempts: u32,
}

/// Process-wide connection counts.
#[derive(Debug)]
pub struct Admission {
    total: AtomicUsize,
    ips: Vec<Mutex<FnvHashMap<IpAddr, PerIp>>>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            total: AtomicUsize::new(0),
            ips: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Admission {
    fn stripe(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, FnvHashMap<IpAddr, PerIp>> {
        let mut h = fnv::FnvHasher::default();
        ip.hash(&mut h);
        let m = &self.ips[(h.finish() as usize) % STRIPES];
        // A panic while holding a stripe cannot leave it half-updated (plain
        // integer writes), so a poisoned lock is still good.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection accepted from `ip` at Unix second `now`; `Err`
    /// names the limit it passes (the caller closes it, and still
    /// `release`s it when its record goes).
    pub fn admit(&self, ip: IpAddr, now: u64, limits: &Limits) -> Result<(), CloseReason> {
        let total = self.total.fetch_add(1, Relaxed);
        let mut map = self.stripe(&ip);
        let e = map.entry(ip).or_default();
        e.open += 1;
        e.handshaking += 1;
        if e.second != now {
            e.second = now;
            e.attempts = 0;
        }
        e.attempts += 1;
        if limits.conn_rate_per_ip > 0 && e.attempts > limits.conn_rate_per_ip {
            return Err(CloseReason::IpRateLimit);
        }
        if limits.max_conns_per_ip > 0 && e.open > limits.max_conns_per_ip {
            return Err(CloseReason::IpConnLimit);
        }
        if limits.max_handshakes_per_ip > 0 && e.handshaking > limits.max_handshakes_per_ip {
            return Err(CloseReason::IpHandshakeLimit);
        }
        if limits.max_conns > 0 && total >= limits.max_conns {
            return Err(CloseReason::ConnLimit);
        }
        Ok(())
    }

    /// Counts a connection handed over from the previous process (`volley
    /// upgrade`): open, and handshaking unless `authed`; no limit applies
    /// (it was admitted once) and it is no attempt of this second.
    pub fn adopt(&self, ip: IpAddr, authed: bool) {
        self.total.fetch_add(1, Relaxed);
        let mut map = self.stripe(&ip);
        let e = map.entry(ip).or_default();
        e.open += 1;
        if !authed {
            e.handshaking += 1;
        }
    }

    /// A record from `ip` authenticated: it no longer counts as
    /// handshaking.
    pub fn authenticated(&self, ip: IpAddr) {
        if let Some(e) = self.stripe(&ip).get_mut(&ip) {
            e.handshaking = e.handshaking.saturating_sub(1);
        }
    }

    /// A record from `ip` is gone (`authed`: it had authenticated).
    pub fn release(&self, ip: IpAddr, now: u64, authed: bool) {
        self.total.fetch_sub(1, Relaxed);
        let mut map = self.stripe(&ip);
        if let Some(e) = map.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if !authed {
                e.handshaking = e.handshaking.saturating_sub(1);
            }
            if e.open == 0 && e.second != now {
                map.remove(&ip);
            }
        }
    }

    /// Drops entries of IPs with nothing open and no attempt at `now`
    /// (one stripe per call: the sweep walks them in turn).
    pub fn forget_idle(&self, stripe: usize, now: u64) {
        let m = &self.ips[stripe % STRIPES];
        m.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| e.open > 0 || e.second == now);
    }

    /// Records open (admitted or being refused), all shards.
    pub fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Distinct IPs with an entry (for tests and stats).
    pub fn tracked_ips(&self) -> usize {
        self.ips
            .iter()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
        // Only the limit under test.
        let mut l = Config::default().limits;
        (l.max_conns_per_ip, l.conn_rate_per_ip, l.max_handshakes_per_ip) = (0, 0, 0);
        f(&mut l);
        l
    }

    #[test]
    fn each_limit_refuses_by_name_and_releases_balance() {
        let a = Admission::default();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let per_ip = limits(|l| l.max_conns_per_ip = 2);
        assert_eq!(a.admit(ip, 1, &per_ip), Ok(()));
        assert_eq!(a.admit(ip, 1, &per_ip), Ok(()));
        assert_eq!(a.admit(ip, 1, &per_ip), Err(CloseReason::IpConnLimit));
        assert_eq!(a.admit(other, 1, &per_ip), Ok(()), "another IP is not touched");
        for _ in 0..3 {
            a.release(ip, 2, false);
        }
        a.release(other, 2, false);
        assert_eq!((a.total(), a.tracked_ips()), (0, 0));

        let rate = limits(|l| l.conn_rate_per_ip = 2);
        assert_eq!(a.admit(ip, 5, &rate), Ok(()));
        a.release(ip, 5, false);
        assert_eq!(a.admit(ip, 5, &rate), Ok(()));
        assert_eq!(
            a.admit(ip, 5, &rate),
            Err(CloseReason::IpRateLimit),
            "attempts, not open ones"
        );
        assert_eq!(a.admit(ip, 6, &rate), Ok(()), "a new second");
        for _ in 0..3 {
            a.release(ip, 6, false);
        }
        assert_eq!(a.tracked_ips(), 1, "attempted this second: kept");
        a.forget_idle(0, 7);
        for s in 0..STRIPES {
            a.forget_idle(s, 7);
        }
        assert_eq!(a.tracked_ips(), 0);

        let hs = limits(|l| l.max_handshakes_per_ip = 2);
        assert_eq!(a.admit(ip, 8, &hs), Ok(()));
        assert_eq!(a.admit(ip, 8, &hs), Ok(()));
        a.authenticated(ip);
        assert_eq!(a.admit(ip, 8, &hs), Ok(()), "one of three authenticated");
        assert_eq!(a.admit(ip, 8, &hs), Err(CloseReason::IpHandshakeLimit));
        a.release(ip, 8, true);
        for _ in 0..3 {
            a.release(ip, 8, false);
        }
        assert_eq!(a.admit(ip, 8, &hs), Ok(()), "released handshakes count no more");
        a.release(ip, 8, false);

        let total = limits(|l| l.max_conns = 1);
        assert_eq!(a.admit(ip, 9, &total), Ok(()));
        assert_eq!(a.admit(other, 9, &total), Err(CloseReason::ConnLimit));
        a.release(ip, 9, false);
        a.release(other, 9, false);
        assert_eq!(a.total(), 0);
    }
}
