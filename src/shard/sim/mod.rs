//! The simulated-time harness: one or more `Shard`s driven in memory, with
//! no socket and no wall clock, in the spirit of quinn-proto's test `Pair`.
//!
//! A test connects clients to a shard, feeds them bytes, advances time in
//! whole ticks (each tick is one `sweep` of every shard), and reads what each
//! connection would have been sent. Between steps the harness plays every
//! other part of the server: it delivers mesh messages until none is left
//! (`pump`), and plays each connection's driver (`flush`): takes everything
//! queued as written, unless the client is stalled, and removes connections
//! that are closing after taking their goodbye.
//!
//! Cluster mode runs in the same harness: `cluster::ClusterSim` is several
//! such nodes around a simulated Redis (`redis::FakeRedis`) that answers
//! the operations their shards emit and carries their channel messages.
//!
//! Test-only (`cfg(test)`). Deterministic: same steps, same bytes.

#[cfg(test)]
mod access_tests;
#[cfg(test)]
pub(crate) mod cluster;
#[cfg(test)]
mod cluster_failure_tests;
#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod inbox_tests;
#[cfg(test)]
pub(crate) mod redis;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod v2_tests;

use super::conns::Transport;
use super::mesh::ConnRef;
use super::state::Shard;
use super::view::Shared;
use crate::api::{Meta, Target};
use crate::config::Config;
use crate::metrics::StatsSnapshot;
use crate::proto::binary::{self, Frame};
use crate::proto::close::CloseReason;
use crate::proto::ws;
use std::collections::HashMap;
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;

/// Simulated µs per tick (a sweep is once a second).
const TICK_US: u32 = 1_000_000;

/// A client of the simulation: where its connection lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Peer {
    /// The shard holding it.
    pub shard: usize,
    /// Its record there.
    pub conn: ConnRef,
}

/// One frame a client received, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Got {
    pub ver: u16,
    pub op: u32,
    pub seq: u32,
    pub body: Vec<u8>,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Shards, their clients, and simulated time.
pub(crate) struct Sim {
    pub shards: Vec<Shard>,
    shared: Arc<Shared>,
    /// Bytes each client has been "sent" and not yet read by the test.
    wire: HashMap<Peer, Vec<u8>>,
    /// Clients that do not read (their queues only grow).
    stalled: Vec<Peer>,
    /// Why each removed connection closed.
    closed: HashMap<Peer, CloseReason>,
    /// Simulated clock, µs.
    now_us: u32,
    /// Simulated wall clock (Unix seconds), one second per tick.
    pub unix: u64,
}

/// A process's shared state for `cfg`, with its token keys loaded.
fn shared_for(cfg: Config) -> Shared {
    let mut shared = Shared::new(cfg);
    if shared.config.auth.mode == crate::config::AuthMode::Jwt {
        let a = &shared.config.auth;
        let v = crate::auth::jwt::Verifier::new(&a.jwt_secret, &a.jwt_public_key, a.leeway_secs);
        shared.verifier = Some(v.expect("test keys load"));
    }
    shared
}

/// Where the simulated wall clock starts.
pub const SIM_UNIX_START: u64 = 1_700_000_000;

impl Sim {
    /// `nr` shards with the test defaults, then `tweak`.
    pub fn new(nr: usize, tweak: impl FnOnce(&mut Config)) -> Sim {
        let mut cfg = Config {
            shards: nr,
            ..Config::default()
        };
        tweak(&mut cfg);
        cfg.validate().expect("valid test config");
        let shared = Arc::new(shared_for(cfg));
        let mut shards: Vec<Shard> = (0..nr).map(|i| Shard::new(i, shared.clone())).collect();
        for sh in &mut shards {
            sh.set_unix(SIM_UNIX_START);
        }
        Sim {
            shards,
            shared,
            wire: HashMap::new(),
            stalled: Vec::new(),
            closed: HashMap::new(),
            now_us: 0,
            unix: SIM_UNIX_START,
        }
    }

    /// A new raw TCP connection on `shard`.
    pub fn connect(&mut self, shard: usize) -> Peer {
        self.connect_as(shard, Transport::Tcp)
    }

    /// A new connection on `shard` whose WebSocket upgrade was answered.
    pub fn connect_ws(&mut self, shard: usize) -> Peer {
        let p = self.connect_as(shard, Transport::WsUpgrading);
        self.shards[shard].ws_upgraded(p.conn, false, false);
        p
    }

    fn connect_as(&mut self, shard: usize, t: Transport) -> Peer {
        let ip: IpAddr = [127, 0, 0, 1].into();
        let conn = self.shards[shard].new_conn(ip, t, -1);
        let p = Peer { shard, conn };
        self.wire.insert(p, Vec::new());
        p
    }

    /// A connection authenticated with `auth` (JSON); its op 8 is read.
    pub fn authed(&mut self, shard: usize, auth: &str) -> Peer {
        let p = self.connect(shard);
        self.send(p, binary::VERSION_GOIM, binary::op::AUTH, 1, auth.as_bytes());
        let got = self.first_frame(p);
        assert_eq!((got.op, got.seq), (binary::op::AUTH_REPLY, 1), "{}", got.text());
        p
    }

    /// The first frame `p` was sent; the rest stay to be read.
    fn first_frame(&mut self, p: Peer) -> Got {
        let bytes = self.take(p);
        let (f, n) = binary::decode(&bytes, usize::MAX >> 1)
            .expect("the server sends valid frames")
            .expect("a whole frame");
        let got = Got {
            ver: f.ver,
            op: f.op,
            seq: f.seq,
            body: f.body.to_vec(),
        };
        self.wire.insert(p, bytes[n..].to_vec());
        got
    }

    /// Feeds `bytes` as if read from `p`'s socket; returns what `feed`
    /// consumed. Then plays the rest of the server (`settle`).
    pub fn feed(&mut self, p: Peer, bytes: &[u8]) -> usize {
        let sh = &mut self.shards[p.shard];
        sh.set_clock(self.now_us);
        let n = sh.feed(p.conn, bytes);
        self.settle();
        n
    }

    /// Sends one frame from `p`.
    pub fn send(&mut self, p: Peer, ver: u16, op: u32, seq: u32, body: &[u8]) {
        let f = binary::encode_to_bytes(ver, op, seq, body);
        assert_eq!(self.feed(p, &f), f.len(), "a whole frame is consumed");
    }

    /// One WebSocket binary message from `p` (whole frames, per protocol).
    pub fn send_message(&mut self, p: Peer, payload: &[u8]) {
        self.shards[p.shard].feed_message(p.conn, payload);
        self.settle();
    }

    /// A WebSocket pong from `p`.
    pub fn pong(&mut self, p: Peer) {
        self.shards[p.shard].ws_pong(p.conn);
        self.settle();
    }

    /// A room publish arriving on shard `at` (routed to the room's owner).
    pub fn publish_room(&mut self, at: usize, room: &str, op: u32, payload: &[u8]) {
        self.publish(at, Target::Room(room.into()), op, payload, Meta::default());
    }

    /// A push to every connection accepting `op`, arriving on shard `at`.
    pub fn publish_all(&mut self, at: usize, op: u32, payload: &[u8]) {
        self.publish(at, Target::All, op, payload, Meta::default());
    }

    /// A publish as the API makes it, arriving on shard `at`, without the
    /// server settling afterwards (`pump` does that): lets a test interleave
    /// publishes with other messages still queued.
    pub fn publish_unsettled(&mut self, at: usize, target: Target, op: u32, payload: &[u8], meta: Meta) {
        let sh = &mut self.shards[at];
        sh.set_clock(self.now_us);
        crate::api::publish(sh, target, op, payload, meta, false).expect("a valid test publish");
    }

    /// A publish as the API makes it, arriving on shard `at`.
    pub fn publish(&mut self, at: usize, target: Target, op: u32, payload: &[u8], meta: Meta) {
        self.publish_unsettled(at, target, op, payload, meta);
        self.settle();
    }

    /// Sends one frame from `p` without the server settling afterwards.
    pub fn send_unsettled(&mut self, p: Peer, ver: u16, op: u32, seq: u32, body: &[u8]) {
        let f = binary::encode_to_bytes(ver, op, seq, body);
        let sh = &mut self.shards[p.shard];
        sh.set_clock(self.now_us);
        assert_eq!(sh.feed(p.conn, &f), f.len(), "a whole frame is consumed");
    }

    /// Handles at most one queued mesh message on `shard`; false if none.
    pub fn step(&mut self, shard: usize) -> bool {
        match self.shared.mesh.try_recv(shard) {
            Some(m) => {
                self.shards[shard].set_clock(self.now_us);
                self.shards[shard].handle(m);
                true
            }
            None => false,
        }
    }

    /// Lets the server settle: every queued message handled, every driver
    /// played.
    pub fn pump(&mut self) {
        self.settle();
    }

    /// A version-2 connection authenticated with `auth` (JSON); returns it
    /// and the key its op 8 named.
    pub fn authed_v2(&mut self, shard: usize, auth: &str) -> (Peer, String) {
        let p = self.connect(shard);
        self.send(p, binary::VERSION_NATIVE, binary::op::AUTH, 1, auth.as_bytes());
        let got = self.first_frame(p);
        assert_eq!((got.ver, got.op, got.seq), (2, binary::op::AUTH_REPLY, 1));
        let v: serde_json::Value = serde_json::from_slice(&got.body).expect("JSON auth reply");
        (p, v["key"].as_str().expect("a key").to_string())
    }

    /// `n` ticks: each a sweep of every shard, the server settling after.
    pub fn tick(&mut self, n: u32) {
        for _ in 0..n {
            self.now_us = self.now_us.wrapping_add(TICK_US);
            self.unix += 1;
            for sh in &mut self.shards {
                sh.set_clock(self.now_us);
                sh.set_unix(self.unix);
                sh.sweep();
            }
            self.settle();
        }
    }

    /// `p` stops reading: its queue is no longer taken as written.
    pub fn stall(&mut self, p: Peer) {
        self.stalled.push(p);
    }

    /// Delivers mesh messages, then plays every driver, until quiet.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.shards.len() {
                while let Some(m) = self.shared.mesh.try_recv(i) {
                    any = true;
                    self.shards[i].set_clock(self.now_us);
                    self.shards[i].handle(m);
                }
            }
            any |= self.flush();
            if !any {
                return;
            }
        }
    }

    /// What each driver would do: write everything queued (not for stalled
    /// clients) and finish closing connections. Returns whether anything
    /// was removed (which may send directory messages).
    fn flush(&mut self) -> bool {
        let mut removed = false;
        for (shard, sh) in self.shards.iter_mut().enumerate() {
            let refs: Vec<ConnRef> = sh.conn_refs().map(|(r, _)| r).collect();
            for conn in refs {
                let p = Peer { shard, conn };
                let stalled = self.stalled.contains(&p);
                let Some(closing) = sh.conn(conn).map(|c| c.close) else {
                    continue;
                };
                if stalled && sh.conn(conn).is_some_and(|c| !c.out.is_empty()) {
                    sh.write_blocked(conn);
                }
                if !stalled || closing.is_some() {
                    let wire = self.wire.entry(p).or_default();
                    while let Some(c) = sh.conn(conn).filter(|c| !c.out.is_empty()) {
                        let mut iov = [IoSlice::new(&[]); 64];
                        let n = c.out.iovecs(&mut iov);
                        let len: usize = iov[..n].iter().map(|s| s.len()).sum();
                        for s in &iov[..n] {
                            wire.extend_from_slice(s);
                        }
                        sh.written(conn, len, self.now_us);
                    }
                }
                if let Some(reason) = closing {
                    sh.remove_conn(conn);
                    self.closed.insert(p, reason);
                    removed = true;
                }
            }
            // The flusher's and the reactor's lists: everything was written
            // and every closing connection removed above.
            let mut seen = Vec::new();
            sh.dirty().take_into(&mut seen);
            sh.woken().take_into(&mut seen);
            let charged: usize = sh.conn_refs().map(|(_, c)| c.charge()).sum();
            assert_eq!(sh.out.queued, charged, "shard {shard}'s total of queued bytes drifted");
        }
        removed
    }

    /// Everything `p` was sent since the last read, as raw bytes.
    pub fn take(&mut self, p: Peer) -> Vec<u8> {
        std::mem::take(self.wire.get_mut(&p).expect("a client of this simulation"))
    }

    /// Everything `p` was sent since the last read, as protocol frames
    /// (raw TCP connections).
    pub fn frames(&mut self, p: Peer) -> Vec<Got> {
        let bytes = self.take(p);
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let (f, n): (Frame<'_>, usize) = binary::decode(rest, usize::MAX >> 1)
                .expect("the server sends valid frames")
                .expect("the server sends whole frames");
            out.push(Got {
                ver: f.ver,
                op: f.op,
                seq: f.seq,
                body: f.body.to_vec(),
            });
            rest = &rest[n..];
        }
        out
    }

    /// Why `p` was closed, once its connection is gone.
    pub fn closed(&self, p: Peer) -> Option<CloseReason> {
        self.closed.get(&p).copied()
    }

    /// Bytes queued and not yet written for `p`.
    pub fn queued(&self, p: Peer) -> usize {
        self.shards[p.shard].conn(p.conn).map_or(0, |c| c.out.cost())
    }

    /// What `shard`'s connection queues cost in memory (its outbound
    /// budget's count).
    pub fn queued_on(&self, shard: usize) -> usize {
        self.shards[shard].out.queued
    }

    /// The next process after `volley upgrade`: every shard exported,
    /// encoded, decoded and imported into a fresh shard of a process with
    /// the same configuration and key secret. What history and inboxes
    /// hold moves as the durable store would bring it back; what clients
    /// had been sent and not read moves with their sockets.
    pub fn upgrade(mut self) -> Sim {
        self.settle();
        let mut shared = shared_for(self.shared.config.clone());
        shared.keys = self.shared.keys.clone();
        let shared = Arc::new(shared);
        let mut shards: Vec<Shard> = (0..self.shards.len()).map(|i| Shard::new(i, shared.clone())).collect();
        for (old, new) in self.shards.iter_mut().zip(&mut shards) {
            new.set_unix(self.unix);
            new.set_clock(self.now_us);
            // The harness's drivers hold nothing; a WebSocket one has its
            // session in the phase its record says.
            let input = |r| {
                let t = old.conn(r).map_or(Transport::Tcp, |c| c.transport);
                let state = match t {
                    Transport::WsUpgrading => ws::session::State::Upgrading,
                    t => ws::session::State::Open {
                        echo: t == Transport::WsEcho,
                    },
                };
                let ws = (t != Transport::Tcp).then_some(ws::session::Saved {
                    state,
                    assembling: None,
                    deflate: false,
                });
                super::handoff::Input {
                    partial: Vec::new(),
                    ws,
                }
            };
            let (state, fds) = old.export(input).expect("a quiet shard exports");
            let state = super::handoff::decode(&super::handoff::encode(&state)).expect("its records decode");
            std::mem::swap(&mut old.store, &mut new.store);
            let views = shared.clone();
            new.store.logs.set_in_use(move |room| views.room_count(room, None) > 0);
            new.import(state, &fds).expect("a fresh shard imports");
        }
        let mut next = Sim {
            shards,
            shared,
            wire: self.wire,
            stalled: self.stalled,
            closed: self.closed,
            now_us: self.now_us,
            unix: self.unix,
        };
        next.settle();
        next
    }

    /// `p` reads again.
    pub fn unstall(&mut self, p: Peer) {
        self.stalled.retain(|s| *s != p);
        self.settle();
    }

    /// Counters of all shards, summed.
    pub fn stats(&self) -> StatsSnapshot {
        let all: Vec<_> = self.shared.stats.iter().map(|s| s.snapshot()).collect();
        StatsSnapshot::sum(&all)
    }
}
