//! `Server::start`: binds the configured listeners, starts one pinned glommio
//! executor per shard, and returns a `ServerHandle` once every shard serves.
//!
//! Runs on the caller's thread; the shards run on their own threads until
//! `ServerHandle::shutdown` (or drop). Which listeners exist is data
//! (`net::ListenerSpec::from_config`); this module binds each on every shard
//! (`net::bind`), then on each shard creates the readiness ring
//! (`conn::ring`) and spawns its reactor (`conn::reactor`), one acceptor
//! per listener — client ones in the default task queue, application-server
//! ones in the control queue — the flusher, and in cluster mode the shard's
//! cluster state (`shard::cluster`) with one link and one subscriber per
//! Redis instance, with `[storage] mode = "disk"` reads the shard's journal
//! back (`shard::recovery`, the store's folder locked and laid out by
//! `disk::layout` first), and hands the shard to its runtime (`shard::run::serve`),
//! which owns the inbox, the sweep and the shutdown drain; after it, the
//! drivers left are dropped.
//!
//! Starting from what a previous process handed over (`Server::adopt`:
//! its listeners, and its durable store once it lets go) is `adopt`.
//!
//! Nothing here runs per connection or per message.

use crate::config::{Config, ConfigError};
use crate::handoff::Adoption;
use adopt::{adopted_listeners, take_store_later, wait_for, StoreFiles};

mod adopt;
use crate::metrics::{ShardStats, StatsSnapshot};
use crate::net::{self, BindError, ListenerKind, ListenerSpec};
use crate::shard::cluster::state::ShardCluster;
use crate::shard::mesh::ShardMsg;
use crate::shard::{run, Shard, Shared};
use crate::{api, conn, redis};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The token keys could not be read (`[auth]`).
    #[error("[auth]: {0}")]
    Auth(String),
    /// The durable store cannot be used (`[storage]`).
    #[error("{0}")]
    Storage(String),
    /// What the previous process handed over cannot be taken (`volley
    /// upgrade`).
    #[error("hand-off: {0}")]
    Handoff(String),
    /// An executor could not start (CPU list, memlock limit...).
    #[error("cannot start shard {shard}: {source}")]
    Executor {
        /// Shard index.
        shard: usize,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Depth of each shard's io_uring rings (glommio's default is 128). Every
/// idle connection keeps a poll request outstanding on its shard's ring, and
/// the kernel finds one to cancel by walking a hash bucket of those; it
/// sizes the table by the completion queue (2 x depth), up to 256 buckets
/// at 4,096. With 128, 19,000 connections meant ~2,400 entries per bucket
/// and cancels (glommio cancels a poll each time the executor parks) took
/// 6 % of a shard's time at 50 msg/s (perf, BENCHMARKS.md).
const RING_DEPTH: usize = 4096;

/// Descriptors kept beside `[api] max_conns` for what is not a connection
/// (listeners, rings, Redis links, files) when `[limits] max_conns` is
/// derived from the open-file limit.
const FD_RESERVE: usize = 64;

/// The running server.
pub struct Server;

/// Handle to a running server: its addresses, its stats, and its stop.
pub struct ServerHandle {
    /// Client TCP listener's actual address.
    pub tcp_addr: SocketAddr,
    /// HTTP API listener's actual address.
    pub http_addr: SocketAddr,
    /// Client WebSocket listener's actual address.
    pub ws_addr: SocketAddr,
    /// TCP publisher listener's actual address.
    pub publish_addr: SocketAddr,
    /// Every listener, its address resolved.
    pub listeners: Vec<ListenerSpec>,
    shared: Arc<Shared>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The durable store's folder, locked while the server lives (taken
    /// later by a server that took over from another one).
    _store: Arc<std::sync::Mutex<Option<crate::disk::layout::Store>>>,
}

impl Server {
    /// Validates `config`, binds, starts every shard, and returns when all
    /// are serving.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        Self::start_with(config, None)
    }

    /// As `start`, but with the listeners and connections of `adoption`
    /// (a previous process's) instead of binding: every shard imports its
    /// connections before it serves. The listeners' addresses are the
    /// ones in force, whatever the configuration names.
    pub fn adopt(config: Config, adoption: Adoption) -> Result<ServerHandle, StartError> {
        Self::start_with(config, Some(adoption))
    }

    fn start_with(config: Config, adoption: Option<Adoption>) -> Result<ServerHandle, StartError> {
        config.validate()?;
        let n = config.nr_shards();
        // Before binding: a second server on the same store is refused
        // without touching the first one's ports. A server taking over
        // from another one takes the store once that one lets go of it
        // (`StoreLater`).
        let mut store = if config.durable() && adoption.is_none() {
            Some(crate::disk::layout::open(&config.storage.dir, n).map_err(|e| StartError::Storage(e.to_string()))?)
        } else {
            None
        };
        let (bound, mut adopted) = match adoption {
            None => {
                let bound = ListenerSpec::from_config(&config)
                    .iter()
                    .map(|spec| net::bind(spec, n))
                    .collect::<Result<Vec<_>, _>>()?;
                (bound, None)
            }
            Some(a) => {
                let bound = adopted_listeners(&config, a.listeners, n)?;
                if a.shards.len() != n {
                    return Err(StartError::Handoff(format!(
                        "connections of {} shards handed to {n}",
                        a.shards.len()
                    )));
                }
                (bound, Some((a.keys, a.shards)))
            }
        };
        let specs: Vec<ListenerSpec> = bound.iter().map(|b| b.spec.clone()).collect();
        let addr_of = |kind| {
            specs
                .iter()
                .find(|s| s.kind == kind)
                .map(|s| s.addr)
                .expect("every kind is configured")
        };
        // From here on the configuration names the bound addresses (port 0
        // resolved), which is what the demo page and the logs need.
        let mut config = config;
        config.tcp.listen = addr_of(ListenerKind::ClientTcp);
        config.ws.listen = addr_of(ListenerKind::ClientWs);
        config.api.listen = addr_of(ListenerKind::Api);
        config.api.publish_listen = addr_of(ListenerKind::Publisher);
        if config.limits.max_conns == 0 {
            config.limits.max_conns = crate::host::default_max_conns(config.api.max_conns + FD_RESERVE);
        }
        if config.limits.outbound_budget == 0 {
            config.limits.outbound_budget = crate::host::default_outbound_budget().max(config.limits.outbound_limit);
        }
        // Per shard: (kind, descriptor) of every listener.
        let mut per_shard: Vec<Vec<(ListenerKind, RawFd)>> = vec![Vec::new(); n];
        for b in bound {
            for (i, sock) in b.sockets.into_iter().enumerate() {
                per_shard[i].push((b.spec.kind, sock.into_raw_fd()));
            }
        }
        let available = std::thread::available_parallelism().map_or(1, |c| c.get());
        let verifier = match config.auth.mode {
            crate::config::AuthMode::Off => None,
            crate::config::AuthMode::Jwt => Some(
                crate::auth::jwt::Verifier::new(
                    &config.auth.jwt_secret,
                    &config.auth.jwt_public_key,
                    config.auth.leeway_secs,
                )
                .map_err(StartError::Auth)?,
            ),
        };
        let mut shared = Shared::new(config);
        shared.verifier = verifier;
        let mut handed: Vec<Option<_>> = (0..n).map(|_| None).collect();
        if let Some(((tag, secret), shards)) = adopted.take() {
            shared.keys = crate::shard::addr::KeyMaker::with_secret(tag, &secret);
            for (i, s) in shards.into_iter().enumerate() {
                handed[i] = Some(s);
            }
        }
        let later = shared.config.durable() && store.is_none();
        if shared.config.durable() {
            shared
                .recovery
                .shards_left
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
        let shared = Arc::new(shared);
        let held = Arc::new(std::sync::Mutex::new(None));
        let mut files: Vec<Option<StoreFiles>> = match &store {
            Some(s) => s.shards.iter().cloned().map(|f| Some(StoreFiles::Now(f))).collect(),
            None if later => {
                let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| std::sync::mpsc::channel()).unzip();
                take_store_later(shared.config.storage.dir.clone(), n, txs, held.clone());
                rxs.into_iter().map(|rx| Some(StoreFiles::Later(rx))).collect()
            }
            None => (0..n).map(|_| None).collect(),
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::with_capacity(n);
        for (id, fds) in per_shard.into_iter().enumerate() {
            let cpu = shared.config.cpus.get(id).copied().unwrap_or(id % available);
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let files = files[id].take();
            let handed = handed[id].take();
            let t = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("volley-shard-{id}"))
                // Keep locked memory far below the common 8 MiB
                // RLIMIT_MEMLOCK: the journal's DMA buffers past it come
                // from the heap (disk::driver).
                .io_memory(512 << 10)
                .ring_depth(RING_DEPTH)
                .preempt_timer(Duration::from_millis(10))
                .spawn(move || shard_main(id, shared, fds, files, handed, ready))
                .map_err(|e| StartError::Executor {
                    shard: id,
                    source: e.to_string().into(),
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        for id in 0..n {
            let failed = |msg: String| StartError::Executor {
                shard: id,
                source: msg.into(),
            };
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => return Err(failed(msg)),
                Err(_) => return Err(failed("shard thread died".into())),
            }
        }
        if let Some(s) = &mut store {
            s.moved().map_err(|e| StartError::Storage(e.to_string()))?;
        }
        if store.is_some() {
            *held.lock().unwrap_or_else(|p| p.into_inner()) = store;
        }
        let c = &shared.config;
        for line in crate::config::summary(c) {
            tracing::info!("{line}");
        }
        tracing::info!(tcp = %c.tcp.listen, ws = %c.ws.listen, api = %c.api.listen,
            publishers = %c.api.publish_listen, shards = n,
            outbound_budget = c.limits.outbound_budget, max_conns = c.limits.max_conns, "volley serving");
        for warning in c.warnings() {
            tracing::warn!("{warning}");
        }
        Ok(ServerHandle {
            tcp_addr: c.tcp.listen,
            http_addr: c.api.listen,
            ws_addr: c.ws.listen,
            publish_addr: c.api.publish_listen,
            listeners: specs,
            shared: shared.clone(),
            threads,
            _store: held,
        })
    }
}

/// One shard's start: its `Shard`, the connections handed over to it if
/// any, an acceptor per listener, then its runtime until shutdown.
async fn shard_main(
    id: usize,
    shared: Arc<Shared>,
    fds: Vec<(ListenerKind, RawFd)>,
    files: Option<StoreFiles>,
    handed: Option<(crate::shard::handoff::ShardState, Vec<std::os::fd::OwnedFd>)>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let shard = Rc::new(RefCell::new(Shard::new(id, shared.clone())));
    let control = run::control_queue();
    if let Err(e) = conn::ring::install() {
        let _ = ready.send(Err(format!(
            "cannot create the readiness ring (io_uring, Linux 5.13+): {e}"
        )));
        return;
    }
    // In the default queue, as the connections' reads always were: the
    // control queue (mesh inbox, API, flusher) goes first.
    glommio::spawn_local(conn::reactor::reactor(shard.clone())).detach();
    // Cluster state before any connection handed over is imported: their
    // rooms and patterns subscribe as they go in (the connections to
    // Redis start below).
    let redis_conns = shared.cluster.as_ref().map(|health| {
        let urls: Vec<redis::RedisUrl> = shared
            .config
            .redis
            .urls
            .iter()
            .map(|u| redis::RedisUrl::parse(u).expect("checked by Config::validate"))
            .collect();
        let state = ShardCluster::new(id, &urls, shared.keys.tag());
        let (links, subs) = state.connections();
        shard.borrow_mut().cluster = Some(state);
        (health.clone(), links, subs)
    });
    let mut publishers = None;
    if let Some((mut state, mut sockets)) = handed {
        // The publishers' sockets follow the connections'.
        let theirs = sockets.split_off(state.conns.len().min(sockets.len()));
        publishers = Some((std::mem::take(&mut state.publishers), theirs));
        shard.borrow_mut().set_unix(crate::metrics::unix_now());
        shard.borrow_mut().set_clock(crate::metrics::clock_us());
        match conn::adopt(&shard, state, sockets) {
            Ok(n) => tracing::info!(
                shard = id,
                connections = n,
                "took over the previous process's connections"
            ),
            Err(e) => {
                let _ = ready.send(Err(format!("cannot take over the connections handed over: {e}")));
                return;
            }
        }
    }
    let sh = shard.clone();
    let start: net::StartAcceptor = Box::new(move |kind, listener| {
        let sh = sh.clone();
        match kind {
            ListenerKind::ClientTcp | ListenerKind::ClientWs => {
                Ok(glommio::spawn_local(conn::accept(listener, sh, kind)))
            }
            ListenerKind::Api => glommio::spawn_local_into(api::http::accept(listener, sh), control),
            ListenerKind::Publisher => glommio::spawn_local_into(api::tcp::accept(listener, sh), control),
        }
        .map_err(|e| format!("cannot spawn the {} acceptor: {e}", kind.name()))
    });
    // The descriptors were created by `net::bind` (or handed over) and
    // given up with into_raw_fd: the acceptors own them from here.
    if let Err(e) = net::start_acceptors(start, &fds) {
        let _ = ready.send(Err(e));
        return;
    }
    if let Some((records, sockets)) = publishers {
        match api::tcp::adopt(&shard, control, records, sockets) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                shard = id,
                publishers = n,
                "took over the previous process's publishers"
            ),
            Err(e) => {
                let _ = ready.send(Err(format!("cannot take over the publishers handed over: {e}")));
                return;
            }
        }
    }
    if let Err(e) = glommio::spawn_local_into(conn::flush::flusher(shard.clone()), control).map(|t| t.detach()) {
        let _ = ready.send(Err(format!("cannot spawn the flusher: {e}")));
        return;
    }
    if let Some((health, links, subs)) = redis_conns {
        let ops = redis::driver::drive(Rc::downgrade(&shard), links.clone(), control);
        if let Err(e) = glommio::spawn_local_into(ops, control).map(|t| t.detach()) {
            let _ = ready.send(Err(format!("cannot spawn the Redis operations' driver: {e}")));
            return;
        }
        for (i, (link, sub)) in links.into_iter().zip(subs).enumerate() {
            let sh = shard.clone();
            let on_event = move |e| sh.borrow_mut().on_redis(i, e);
            let spawned = glommio::spawn_local_into(link.run(health.clone(), id, i), control)
                .map(|t| {
                    t.detach();
                })
                .and_then(|()| {
                    glommio::spawn_local_into(sub.run(on_event), control).map(|t| {
                        t.detach();
                    })
                });
            if let Err(e) = spawned {
                let _ = ready.send(Err(format!("cannot spawn the Redis connections: {e}")));
                return;
            }
        }
    }
    let mut ready = ready;
    if let Some(files) = files {
        // Acceptors run meanwhile (`/healthz` says "recovering"); what
        // this shard owns waits in its inbox until it is read back.
        let recovered = match files {
            StoreFiles::Now(files) => crate::shard::recovery::recover(&shard, files, control).await,
            StoreFiles::Later(rx) => {
                // Taking over: serving the connections handed over does
                // not wait for the previous process to let go of the store.
                shard.borrow_mut().begin_recovery();
                let _ = ready.send(Ok(()));
                ready = std::sync::mpsc::channel().0;
                match wait_for(rx).await {
                    Some(files) => crate::shard::recovery::recover(&shard, files, control).await,
                    None => Err("the durable store was not free in time".into()),
                }
            }
        };
        if let Err(e) = recovered {
            tracing::error!(shard = id, error = %e, "cannot read the durable store back");
            let _ = ready.send(Err(e));
            return;
        }
        shared
            .recovery
            .shards_left
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    run::serve(shard.clone(), control, net::listener_fds, ready).await;
    conn::driver::clear(&shard);
    net::detach_acceptors();
}

impl ServerHandle {
    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.shared.mesh.nr_shards()
    }

    /// Per-shard counters.
    pub fn stats(&self) -> Vec<StatsSnapshot> {
        self.shared.stats.iter().map(ShardStats::snapshot).collect()
    }

    /// Takes every shard's listeners and connections for the next process
    /// (`handoff::local::take`): from the call on, this server accepts and
    /// reads nothing. Once the next process has them, `let_go`.
    pub fn hand_off(&self, timeout: Duration) -> Result<Adoption, String> {
        crate::handoff::local::take(&self.shared, timeout)
    }

    /// As `hand_off`, with the connections' sockets lent, not copied
    /// (`handoff::local::Lent`): for handing them to another process.
    pub fn lend(&self, timeout: Duration) -> Result<crate::handoff::local::Lent, String> {
        crate::handoff::local::lend(&self.shared, timeout)
    }

    /// Serves again as before `hand_off`, when the next process did not
    /// take over (drop the `Adoption` it gave, unused).
    pub fn resume(&self, timeout: Duration) -> Result<(), String> {
        crate::handoff::local::resume(&self.shared, timeout)
    }

    /// Ends every shard without a word to anyone or a touch to any socket
    /// (the next process serves them now), and waits for them to end.
    pub fn let_go(mut self) {
        crate::handoff::local::let_go(&self.shared);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Asks every shard to shut down (returns at once; see `join`).
    pub fn shutdown(&self) {
        for s in 0..self.nr_shards() {
            self.shared.mesh.send(s, ShardMsg::Shutdown);
        }
    }

    /// Waits for every shard to end.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}
