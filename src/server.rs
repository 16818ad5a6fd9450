//! `Server::start`: binds the listeners, starts one pinned glommio executor per
//! shard, and returns a `ServerHandle` once every shard is serving.
//!
//! Runs on the caller's thread; the shards run on their own threads until
//! `ServerHandle::shutdown` (or drop). Listening sockets are built here with
//! socket2 (SO_REUSEPORT, configurable backlog — glommio's own `bind` fixes the
//! backlog at 1024): shard 0's socket binds the requested address, possibly
//! port 0, and every other shard binds the port it got, so tests can use an
//! ephemeral port and still spread connections over every shard. Four
//! listeners per shard: client TCP, client WebSocket, HTTP API, TCP publisher.
//!
//! Per shard, two glommio task queues: connection drivers in the default
//! one; the API, TCP publishers, the mesh inbox (which does the fan-out) and
//! the sweep in a latency-sensitive "control" queue, so a publish is answered
//! within a few milliseconds even while every subscriber's driver is
//! runnable. Each shard also runs a `wake_keeper`.
//!
//! Shutdown, per shard: stop accepting (the listeners are shut, which fails
//! the pending accept), queue op 6 "shutdown" (then close 1001 on WebSocket)
//! to every client and TCP publisher, let them flush it, close, and end the
//! executor after at most `shutdown_grace_secs`.

use crate::config::{Config, ConfigError};
use crate::conn::tcp::TcpDriver;
use crate::http_api;
use crate::metrics::{ShardStats, StatsSnapshot};
use crate::publish;
use crate::shard::mesh::ShardMsg;
use crate::shard::{Shard, Shared, Transport};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest the control queue (API, mesh inbox, sweep) waits for the CPU while
/// connection drivers run.
const CONTROL_LATENCY: Duration = Duration::from_millis(2);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// An executor could not start (CPU list, memlock limit...).
    #[error("cannot start shard {shard}: {msg}")]
    Executor {
        /// Shard index.
        shard: usize,
        /// The error.
        msg: String,
    },
}

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
    shared: Arc<Shared>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

fn listen(addr: SocketAddr, backlog: u32) -> Result<Socket, StartError> {
    let err = |source| StartError::Bind { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_cloexec(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX)).map_err(err)?;
    Ok(s)
}

/// Binds one socket per shard on `addr` (port 0 resolved by the first).
fn listen_all(addr: SocketAddr, backlog: u32, n: usize) -> Result<(SocketAddr, Vec<Socket>), StartError> {
    let first = listen(addr, backlog)?;
    let actual = first
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or(StartError::Bind {
            addr,
            source: std::io::Error::other("no local address"),
        })?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listen(actual, backlog)?);
    }
    Ok((actual, all))
}

impl Server {
    /// Validates `config`, binds, starts every shard, and returns when all
    /// are serving.
    pub fn start(config: Config) -> Result<ServerHandle, StartError> {
        config.validate()?;
        let n = config.nr_shards();
        let (tcp_addr, tcp_socks) = listen_all(config.tcp_listen, config.backlog, n)?;
        let (http_addr, http_socks) = listen_all(config.http_listen, config.backlog.min(4096), n)?;
        let (ws_addr, ws_socks) = listen_all(config.ws_listen, config.backlog, n)?;
        let (publish_addr, publish_socks) = listen_all(config.publish_listen, config.backlog.min(4096), n)?;
        // From here on the configuration names the bound addresses (port 0
        // resolved), which is what the demo page and the logs need.
        let mut config = config;
        (
            config.tcp_listen,
            config.http_listen,
            config.ws_listen,
            config.publish_listen,
        ) = (tcp_addr, http_addr, ws_addr, publish_addr);
        let available = std::thread::available_parallelism().map_or(1, |c| c.get());
        let shared = Arc::new(Shared::new(config));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::with_capacity(n);
        let socks = tcp_socks.into_iter().zip(http_socks).zip(ws_socks).zip(publish_socks);
        for (id, (((tcp, http), ws), publish)) in socks.enumerate() {
            let cpu = shared.config.cpus.get(id).copied().unwrap_or(id % available);
            let fds = Listeners {
                tcp: tcp.into_raw_fd(),
                http: http.into_raw_fd(),
                ws: ws.into_raw_fd(),
                publish: publish.into_raw_fd(),
            };
            let shared = shared.clone();
            let ready = ready_tx.clone();
            let t = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("volley-shard-{id}"))
                // File DMA is not used yet; keep locked memory far below the
                // common 8 MiB RLIMIT_MEMLOCK.
                .io_memory(512 << 10)
                .preempt_timer(Duration::from_millis(10))
                .spawn(move || run_shard(id, shared, fds, ready))
                .map_err(|e| StartError::Executor {
                    shard: id,
                    msg: e.to_string(),
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        for id in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => return Err(StartError::Executor { shard: id, msg }),
                Err(_) => {
                    return Err(StartError::Executor {
                        shard: id,
                        msg: "shard thread died".into(),
                    })
                }
            }
        }
        tracing::info!(%tcp_addr, %ws_addr, %http_addr, %publish_addr, shards = n, "volley serving");
        Ok(ServerHandle {
            tcp_addr,
            http_addr,
            ws_addr,
            publish_addr,
            shared,
            threads,
        })
    }
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

/// One shard's listening descriptors.
struct Listeners {
    tcp: RawFd,
    http: RawFd,
    ws: RawFd,
    publish: RawFd,
}

async fn run_shard(id: usize, shared: Arc<Shared>, fds: Listeners, ready: std::sync::mpsc::Sender<Result<(), String>>) {
    // SAFETY: the descriptors were just created by `listen` and handed over
    // with into_raw_fd; nothing else owns them.
    let (tcp, http, ws, publish) = unsafe {
        (
            TcpListener::from_raw_fd(fds.tcp),
            TcpListener::from_raw_fd(fds.http),
            TcpListener::from_raw_fd(fds.ws),
            TcpListener::from_raw_fd(fds.publish),
        )
    };
    let shard = Rc::new(RefCell::new(Shard::new(id, shared.clone())));
    // Connection drivers run in the default queue (they inherit the accept
    // loop's). The API, the mesh inbox (which does the fan-out) and the sweep
    // get a queue of their own that glommio switches to within
    // CONTROL_LATENCY even while thousands of drivers are runnable: otherwise a
    // publisher waits behind one write per subscriber for its reply.
    let control = glommio::executor().create_task_queue(
        glommio::Shares::default(),
        glommio::Latency::Matters(CONTROL_LATENCY),
        "control",
    );
    glommio::spawn_local(accept_clients(tcp, shard.clone(), Transport::Tcp)).detach();
    glommio::spawn_local(accept_clients(ws, shard.clone(), Transport::WsUpgrading)).detach();
    let spawned = glommio::spawn_local_into(http_api::accept(http, shard.clone()), control)
        .map(|t| t.detach())
        .and_then(|_| glommio::spawn_local_into(publish::tcp::accept(publish, shard.clone()), control))
        .map(|t| t.detach());
    if let Err(e) = spawned {
        let _ = ready.send(Err(format!("cannot spawn the API tasks: {e}")));
        return;
    }
    // A glommio executor here can sleep through its own expired timers
    // (see wake_keeper); a foreign wake every 100 ms bounds such a stall.
    let _keeper = match crate::wake_keeper::spawn(&format!("volley-keep-{id}"), crate::wake_keeper::PERIOD) {
        Ok(k) => k,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot spawn the wake keeper: {e}")));
            return;
        }
    };
    let sweeper = shard.clone();
    // Runs until the executor ends, shutdown included.
    let sweep = async move {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            sweeper.borrow_mut().sweep();
        }
    };
    let inbox_shard = shard.clone();
    let inbox_shared = shared.clone();
    let inbox = async move {
        let mut handled = 0u32;
        loop {
            let msg = std::future::poll_fn(|cx| inbox_shared.mesh.poll_recv(id, cx)).await;
            let stop = matches!(msg, ShardMsg::Shutdown);
            inbox_shard.borrow_mut().handle(msg);
            if stop {
                break;
            }
            handled = handled.wrapping_add(1);
            if handled % 64 == 0 {
                glommio::executor().yield_if_needed().await;
            }
        }
    };
    let tasks = glommio::spawn_local_into(sweep, control)
        .map(|t| t.detach())
        .and_then(|_| glommio::spawn_local_into(inbox, control));
    let inbox = match tasks {
        Ok(t) => t,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot spawn the shard's tasks: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    inbox.await;
    // Fail the pending accepts so the loops end; new clients are refused.
    // SAFETY: shutting a listening socket we own; no memory is involved.
    unsafe {
        libc::shutdown(fds.tcp, libc::SHUT_RDWR);
        libc::shutdown(fds.http, libc::SHUT_RDWR);
        libc::shutdown(fds.ws, libc::SHUT_RDWR);
        libc::shutdown(fds.publish, libc::SHUT_RDWR);
    }
    publish::tcp::stop_reading_all();
    let grace = Instant::now() + Duration::from_secs(shared.config.shutdown_grace_secs);
    let open = |sh: &Shard| sh.nr_conns() > 0 || sh.stats().publishers.load(std::sync::atomic::Ordering::Relaxed) > 0;
    while open(&shard.borrow()) && Instant::now() < grace {
        // Keep serving directory messages from shards still closing theirs.
        while let Some(m) = shared.mesh.try_recv(id) {
            if !matches!(m, ShardMsg::Shutdown) {
                shard.borrow_mut().handle(m);
            }
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    tracing::debug!(shard = id, left = shard.borrow().nr_conns(), "shard stopped");
}

/// Accepts on `listener` until the shard shuts down, handing each connection
/// to `take`. Accept errors (EMFILE and the like) are counted and back off
/// instead of spinning. `what` names the listener in logs.
pub(crate) async fn accept_each(
    listener: TcpListener,
    shard: Rc<RefCell<Shard>>,
    what: &'static str,
    mut take: impl FnMut(TcpStream, &Rc<RefCell<Shard>>),
) {
    loop {
        let res = listener.accept().await;
        if shard.borrow().shutting_down {
            break;
        }
        match res {
            Ok(stream) => take(stream, &shard),
            Err(e) => {
                ShardStats::add(&shard.borrow().stats().accept_errors, 1);
                tracing::warn!(error = %e, listener = what, "accept failed");
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn accept_clients(listener: TcpListener, shard: Rc<RefCell<Shard>>, transport: Transport) {
    accept_each(listener, shard, "clients", move |stream, shard| {
        let _ = stream.set_nodelay(true);
        let ip = stream
            .peer_addr()
            .map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |a| a.ip());
        let id = shard.borrow_mut().new_conn(ip, transport);
        glommio::spawn_local(TcpDriver::new(stream, shard.clone(), id, transport)).detach();
    })
    .await;
}
