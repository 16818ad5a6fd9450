//! `Config`: every knob of `volley serve`, grouped as the TOML file groups
//! them, with its default and its cost; `validate` checks what types cannot.
//!
//! Parsed once on the main thread before any shard starts; shards get an
//! immutable copy inside `Shared`. One naming rule ties the three ways to
//! set a knob: key `k` in section `[s]` of the file is flag `--s-k` and
//! environment variable `VOLLEY_S_K` (dashes and underscores swapped as
//! needed); a top-level key `k` is `--k` and `VOLLEY_K`. So `[ws] path` is
//! `--ws-path` and `VOLLEY_WS_PATH`. Precedence: flags > environment > file >
//! defaults (`layer` does the layering; `check` refuses and warns at
//! start; this module only declares).
//!
//! ```text
//! shards cpus backlog shutdown_grace_secs transparent_hugepages   (top level)
//! [log]     level format
//! [tcp]     listen
//! [ws]      listen path origins echo echo_path echo_max_message
//! [client]  handshake_timeout_secs heartbeat_timeout_secs max_rooms publish_rate
//!           publish_burst room_op_rate room_op_burst max_patterns pattern_memory
//!           max_publish_payload
//!           presence_limit flush_delay_ms
//! [limits]  max_body outbound_limit replay_limit outbound_budget socket_sndbuf
//!           max_conns max_conns_per_ip conn_rate_per_ip max_handshakes_per_ip
//!           max_conns_per_user user_conn_policy
//! [api]     listen publish_listen key max_body max_push_body idle_timeout_secs
//!           header_timeout_secs request_timeout_secs max_conns body_memory
//!           dedup_window_secs dedup_max
//! [history] messages max_age_secs max_bytes memory overrides max_marks
//! [inbox]   messages bytes ttl_secs memory
//! [auth]    mode jwt_secret jwt_public_key leeway_secs refresh_secs grace_secs dev_tokens
//! [redis]   urls
//! ```
//!
//! Invariants: `Config::default()` is the embedded defaults and reads
//! nothing from the environment (clap here knows no environment variables;
//! `layer` injects them), so a `VOLLEY_*` variable in a developer's shell
//! cannot change what tests run with. Keys of the flat layout before the
//! sections keep working, with a note naming the new key (`layer::LEGACY`).

mod check;
mod layer;

pub use layer::{parse_cli, LEGACY};

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The `volley` command line.
#[derive(Debug, Parser)]
#[command(
    name = "volley",
    version,
    about = "Thread-per-core push server (goim-compatible)",
    after_help = "Every flag --s-k is also the environment variable VOLLEY_S_K and key k in section [s] of the --config file."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
// Parsed once at start-up; boxing the server knobs would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Cmd {
    /// Run the server.
    #[command(args_override_self = true)]
    Serve(ServeArgs),
    /// Report what on this host is not tuned for many connections, and how to
    /// fix it; exits 1 when anything is.
    CheckHost(CheckHostArgs),
}

/// Arguments of `volley check-host`.
#[derive(Debug, Args)]
pub struct CheckHostArgs {
    /// Connections one volley process should hold.
    #[arg(long, default_value_t = 1_000_000)]
    pub conns: u64,
    /// Shards the server will run (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub shards: u64,
}

/// Arguments of `volley serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the knobs below (environment: VOLLEY_CONFIG).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// The server knobs.
    #[command(flatten)]
    pub server: Config,
    /// Notes for the operator found while layering (old key names), to log
    /// once logging is up.
    #[arg(skip)]
    pub notes: Vec<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every server knob. Defaults are the embedded defaults `volley serve` runs
/// with when given nothing.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Number of shards (one pinned executor thread each); 0 = one per
    /// available CPU.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,

    /// CPUs to pin shard i to (`cpus[i]`), comma-separated. Empty = shard i on
    /// CPU i modulo the CPU count.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub cpus: Vec<usize>,

    /// listen() backlog per shard for the client listeners (the kernel caps
    /// it at net.core.somaxconn; API listeners use at most 4096). Costs
    /// nothing until connections queue.
    #[arg(long, default_value_t = 65535)]
    pub backlog: u32,

    /// Seconds shutdown waits for connections to flush their goodbye.
    #[arg(long, default_value_t = 5)]
    pub shutdown_grace_secs: u64,

    /// Let the kernel back the heap with transparent huge pages. Off by
    /// default: the allocator asks for them, and with many small per-connection
    /// records half-filled 2 MiB pages doubled RSS at 19,000 connections
    /// (BENCHMARKS.md). Applied by the `volley` binary to the whole process.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub transparent_hugepages: bool,

    /// `[log]`: what is logged and how.
    #[command(flatten)]
    pub log: LogConfig,

    /// `[tcp]`: the raw TCP client listener.
    #[command(flatten)]
    pub tcp: TcpConfig,

    /// `[ws]`: the WebSocket client listener.
    #[command(flatten)]
    pub ws: WsConfig,

    /// `[client]`: timing rules for client connections.
    #[command(flatten)]
    pub client: ClientConfig,

    /// `[limits]`: what one client connection may send and hold.
    #[command(flatten)]
    pub limits: Limits,

    /// `[api]`: the application-server side (HTTP API, TCP publishers).
    #[command(flatten)]
    pub api: ApiConfig,

    /// `[history]`: what each room's owner keeps for version-2 resumes and
    /// `GET /v1/history`.
    #[command(flatten)]
    pub history: HistoryConfig,

    /// `[inbox]`: what each user's owner keeps of pushes to the user until a
    /// version-2 connection of the user acknowledges them.
    #[command(flatten)]
    pub inbox: InboxConfig,

    /// `[auth]`: who a client is and what it may do.
    #[command(flatten)]
    pub auth: AuthConfig,

    /// `[redis]`: the Redis instances that join nodes into a cluster
    /// (none: a single node).
    #[command(flatten)]
    pub redis: RedisConfig,
}

/// `[auth] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// The auth body names the user, as in goim (development, trusted
    /// networks).
    Off,
    /// The auth body carries a JWT (`token`) that names the user and what
    /// it may join and publish to.
    Jwt,
}

/// `[auth]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[auth]")]
pub struct AuthConfig {
    /// `off`: the auth body names the user (goim's behaviour); `jwt`: it
    /// must carry a signed token (docs/PROTOCOL.md, "Tokens").
    #[arg(id = "auth-mode", long = "auth-mode", alias = "auth", value_enum, default_value_t = AuthMode::Off)]
    pub mode: AuthMode,

    /// HS256 secrets (at least 32 bytes each), comma-separated; a token
    /// signed with any of them is accepted (list the new one beside the old
    /// one while rotating). The development token endpoint signs with the
    /// first.
    #[arg(
        id = "auth-jwt-secret",
        long = "auth-jwt-secret",
        alias = "jwt-secret",
        value_delimiter = ',',
        action = clap::ArgAction::Set
    )]
    pub jwt_secret: Vec<String>,

    /// PEM files of RS256 (RSA) or ES256 (P-256) public keys,
    /// comma-separated; a token verified by any key of its algorithm is
    /// accepted.
    #[arg(
        id = "auth-jwt-public-key",
        long = "auth-jwt-public-key",
        alias = "jwt-public-key",
        value_delimiter = ',',
        action = clap::ArgAction::Set
    )]
    pub jwt_public_key: Vec<PathBuf>,

    /// Seconds of clock difference allowed when checking `exp` and `nbf`.
    #[arg(id = "auth-leeway-secs", long = "auth-leeway-secs", default_value_t = 5)]
    pub leeway_secs: u64,

    /// Seconds before its token's `exp` a version-2 connection is asked for
    /// a new one (op 56).
    #[arg(id = "auth-refresh-secs", long = "auth-refresh-secs", default_value_t = 60)]
    pub refresh_secs: u32,

    /// Seconds after `exp` (beyond the leeway) a connection that sent no
    /// new token is closed as `token_expired`.
    #[arg(id = "auth-grace-secs", long = "auth-grace-secs", default_value_t = 10)]
    pub grace_secs: u32,

    /// Serve `POST /v1/dev/token` on the API listener, which signs a token
    /// for any user with the first HS256 secret (the demo signs in with
    /// it). Development only: anyone who can reach the API can then be
    /// anyone.
    #[arg(id = "auth-dev-tokens", long = "auth-dev-tokens", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_tokens: bool,
}

/// `[redis]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[redis]")]
pub struct RedisConfig {
    /// Redis instances of the cluster, `redis://[[user]:password@]host[:port][/db]`
    /// (repeat the flag, or comma-separate); rooms and users are spread
    /// over them by a hash of their name, so every node must list the same
    /// instances in the same order. Empty: a single node, no Redis.
    #[arg(
        id = "redis-urls",
        long = "redis-urls",
        alias = "redis-url",
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub urls: Vec<String>,
}

/// `[log]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[log]")]
pub struct LogConfig {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `volley=debug`.
    #[arg(id = "log-level", long = "log-level", alias = "log", default_value = "info")]
    pub level: String,

    /// Log line format.
    #[arg(id = "log-format", long = "log-format", value_enum, default_value_t = LogFormat::Text)]
    pub format: LogFormat,
}

/// `[tcp]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[tcp]")]
pub struct TcpConfig {
    /// Client TCP listener (goim protocol).
    #[arg(id = "tcp-listen", long = "tcp-listen", default_value = "0.0.0.0:3101")]
    pub listen: SocketAddr,
}

/// `[ws]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[ws]")]
pub struct WsConfig {
    /// Client WebSocket listener (same protocol, one frame per binary message).
    #[arg(id = "ws-listen", long = "ws-listen", default_value = "0.0.0.0:3102")]
    pub listen: SocketAddr,

    /// Path of the WebSocket endpoint (goim's is `/sub`).
    #[arg(id = "ws-path", long = "ws-path", default_value = "/sub")]
    pub path: String,

    /// Allowed `Origin` values for WebSocket upgrades, comma-separated; empty =
    /// any origin (and none). A refused origin gets HTTP 403.
    #[arg(id = "ws-origins", long = "ws-origins", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub origins: Vec<String>,

    /// Serve a WebSocket echo endpoint at `echo_path` on the WebSocket
    /// listener, for conformance suites (Autobahn). Off in production.
    #[arg(id = "ws-echo", long = "ws-echo", default_value_t = false, action = clap::ArgAction::Set)]
    pub echo: bool,

    /// Path of the echo endpoint.
    #[arg(id = "ws-echo-path", long = "ws-echo-path", default_value = "/echo")]
    pub echo_path: String,

    /// Largest message the echo endpoint takes (it buffers whole messages).
    #[arg(id = "ws-echo-max-message", long = "ws-echo-max-message", default_value_t = 16 << 20)]
    pub echo_max_message: usize,
}

/// `[client]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[client]")]
pub struct ClientConfig {
    /// Seconds a new connection has to send its auth frame.
    #[arg(
        id = "client-handshake-timeout-secs",
        long = "client-handshake-timeout-secs",
        alias = "handshake-timeout-secs",
        default_value_t = 10
    )]
    pub handshake_timeout_secs: u32,

    /// Seconds after auth or the last heartbeat (op 2) before the server closes
    /// the connection. goim clients heartbeat every 30 s (JS) to 240 s (Go).
    #[arg(
        id = "client-heartbeat-timeout-secs",
        long = "client-heartbeat-timeout-secs",
        alias = "heartbeat-timeout-secs",
        default_value_t = 600
    )]
    pub heartbeat_timeout_secs: u32,

    /// Rooms one version-2 connection may be in (joined or joining) at once;
    /// a join past it is answered with error `room_limit`. Each membership
    /// costs about 40 bytes on the connection's shard.
    #[arg(id = "client-max-rooms", long = "client-max-rooms", default_value_t = 64)]
    pub max_rooms: usize,

    /// Client publishes (op 52) one version-2 connection may make per
    /// second, sustained; past it they are answered `rate_limited`.
    #[arg(id = "client-publish-rate", long = "client-publish-rate", default_value_t = 10)]
    pub publish_rate: u32,

    /// Client publishes a connection may make at once after being quiet
    /// (the bucket's size).
    #[arg(id = "client-publish-burst", long = "client-publish-burst", default_value_t = 20)]
    pub publish_burst: u32,

    /// Room patterns one version-2 connection may hold (they count against
    /// `max_rooms` too); one more is answered `pattern_limit`. A pattern
    /// costs up to 16 index nodes (about 200 bytes each) that no other
    /// connection shares unless it holds the same pattern.
    #[arg(id = "client-max-patterns", long = "client-max-patterns", default_value_t = 16)]
    pub max_patterns: usize,

    /// Bytes the pattern index may take, all shards (each an even share);
    /// past it a pattern that needs new nodes is answered `pattern_limit`.
    #[arg(id = "client-pattern-memory", long = "client-pattern-memory", default_value_t = 64 << 20)]
    pub pattern_memory: usize,

    /// Joins and read marks (op 40, op 48) one version-2 connection may make
    /// per second, sustained; past it they are answered `rate_limited`.
    /// Each may make a room's owner create or keep state (a log, a mark),
    /// so a connection's pace is what it can make the server create.
    #[arg(id = "client-room-op-rate", long = "client-room-op-rate", default_value_t = 20)]
    pub room_op_rate: u32,

    /// Joins and read marks a connection may make at once after being
    /// quiet: enough to join `max_rooms` rooms again after a reconnect.
    #[arg(id = "client-room-op-burst", long = "client-room-op-burst", default_value_t = 100)]
    pub room_op_burst: u32,

    /// Largest payload of a client publish, bytes; a larger one is answered
    /// `payload_too_large` (the frame itself is bounded by `[limits] max_body`).
    #[arg(
        id = "client-max-publish-payload",
        long = "client-max-publish-payload",
        default_value_t = 2048
    )]
    pub max_publish_payload: usize,

    /// Members a presence answer (`GET /v1/presence`) lists at most, and
    /// join/leave changes a presence event carries per room per second
    /// before it says only the count.
    #[arg(id = "client-presence-limit", long = "client-presence-limit", default_value_t = 100)]
    pub presence_limit: usize,

    /// Milliseconds of quiet the shard's flusher keeps after a busy round
    /// of writes (at least half the connections it wrote got new frames
    /// meanwhile, at a rate that should bring each another within the
    /// window): the next round waits for the window's end, so that more
    /// messages share each connection's write: less CPU per delivery when
    /// messages come faster than a round lasts, up to a window more
    /// latency. A paced message is written at once. 0 never waits.
    #[arg(id = "client-flush-delay-ms", long = "client-flush-delay-ms", default_value_t = 100)]
    pub flush_delay_ms: u64,
}

/// `[limits]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[limits]")]
pub struct Limits {
    /// Largest frame body a client may send, in bytes (goim: 4096). A longer
    /// announced body closes the connection before any of it is buffered.
    #[arg(
        id = "limits-max-body",
        long = "limits-max-body",
        alias = "max-body",
        default_value_t = 4096
    )]
    pub max_body: usize,

    /// Bytes a connection may have queued and unwritten (plus 64 bytes of
    /// bookkeeping per frame) before it is closed as a slow consumer. Worst
    /// case memory per connection; shared broadcast frames are counted in
    /// full for every connection although stored once.
    #[arg(id = "limits-outbound-limit", long = "limits-outbound-limit", alias = "outbound-limit", default_value_t = 1 << 20)]
    pub outbound_limit: usize,

    /// Bytes of replayed history (and of the pushes that follow it) a
    /// resuming version-2 connection may have waiting beyond
    /// `outbound_limit`; they enter its queue as it drains. A resume needing
    /// more is answered `replay_too_large`. The frames are shared with
    /// history, so each costs the connection a 64-byte handle, not its size.
    #[arg(id = "limits-replay-limit", long = "limits-replay-limit", default_value_t = 4 << 20)]
    pub replay_limit: usize,

    /// Memory all connections' queued, unwritten output may take together:
    /// 64 bytes per queued frame per connection (its handle and queue slot)
    /// and the frame's bytes, counted once per shard however many members
    /// share them. Past three quarters of it, the connections whose socket
    /// is full (the client is not reading) are closed as slow consumers,
    /// largest queue first, until the total is under five eighths; if it
    /// is still over a second later, the largest queues go whatever their
    /// socket. The last quarter is headroom for bursts and the allocator.
    /// Each shard enforces its share (budget / shards). 0 = a quarter of the
    /// host's memory (or of the cgroup's limit, when lower), resolved at
    /// start.
    #[arg(id = "limits-outbound-budget", long = "limits-outbound-budget", default_value_t = 0)]
    pub outbound_budget: usize,

    /// Kernel send buffer of each client socket (SO_SNDBUF; the kernel
    /// doubles it), bytes. 0 = the kernel's autotuning (net.ipv4.tcp_wmem,
    /// up to 4 MiB per socket by default), which lets a client that stops
    /// reading pin megabytes of kernel memory before anything queues in
    /// volley. A cap bounds that and shows a stalled client sooner.
    #[arg(id = "limits-socket-sndbuf", long = "limits-socket-sndbuf", default_value_t = 0)]
    pub socket_sndbuf: usize,

    /// Client connections the server holds at once, all shards. One more
    /// is told `conn_limit` and closed. 0 = the process's open-file limit
    /// less what the API, publishers, Redis links and files need (`[api]
    /// max_conns` + 64), resolved at start: past the open-file limit the
    /// kernel refuses accepts without a word to the client, and the API
    /// would have no descriptor left.
    #[arg(id = "limits-max-conns", long = "limits-max-conns", default_value_t = 0)]
    pub max_conns: usize,

    /// Client connections one source IP may hold at once (0: no limit).
    /// One more is told `ip_conn_limit` and closed. The default leaves room
    /// for a carrier NAT's many users behind one address while keeping one
    /// host from taking the server; behind a proxy that connects from one
    /// address, set 0 here and limit in the proxy.
    #[arg(
        id = "limits-max-conns-per-ip",
        long = "limits-max-conns-per-ip",
        default_value_t = 1000
    )]
    pub max_conns_per_ip: u32,

    /// Connection attempts one source IP may make per second (0: no
    /// limit). Past it, a new connection is told `ip_rate_limit` and closed.
    /// 100 lets a NAT's thousand users back in within seconds of a restart.
    #[arg(
        id = "limits-conn-rate-per-ip",
        long = "limits-conn-rate-per-ip",
        default_value_t = 100
    )]
    pub conn_rate_per_ip: u32,

    /// Connections one source IP may hold that have not authenticated yet
    /// (WebSocket upgrade and auth in progress, and echo connections), 0:
    /// no limit. One more is told `ip_handshake_limit` and closed. An
    /// honest client is in that state for one round trip; one that opens
    /// sockets and sends nothing holds a descriptor and up to one auth
    /// frame each until `[client] handshake_timeout_secs`.
    #[arg(
        id = "limits-max-handshakes-per-ip",
        long = "limits-max-handshakes-per-ip",
        default_value_t = 64
    )]
    pub max_handshakes_per_ip: u32,

    /// Connections one user id may hold at once (0: no limit); what happens
    /// to one more is `user_conn_policy`.
    #[arg(
        id = "limits-max-conns-per-user",
        long = "limits-max-conns-per-user",
        default_value_t = 0
    )]
    pub max_conns_per_user: u32,

    /// `refuse`: the user's newest connection is closed as
    /// `user_conn_limit` right after its auth; `close-oldest`: its oldest is.
    #[arg(
        id = "limits-user-conn-policy",
        long = "limits-user-conn-policy",
        value_enum,
        default_value_t = UserConnPolicy::CloseOldest
    )]
    pub user_conn_policy: UserConnPolicy,
}

/// `[limits] user_conn_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UserConnPolicy {
    /// Close the user's oldest connection (a new device wins).
    CloseOldest,
    /// Close the new connection (the devices already on keep their place).
    Refuse,
}

/// `[api]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[api]")]
pub struct ApiConfig {
    /// HTTP API listener (publish, online, stats, metrics). Keep it on
    /// loopback or behind an API key: it can push to every client.
    #[arg(
        id = "api-listen",
        long = "api-listen",
        alias = "http-listen",
        default_value = "127.0.0.1:3111"
    )]
    pub listen: SocketAddr,

    /// TCP publisher listener: trusted application servers publish over the
    /// client protocol's frames (docs/API.md). Same exposure as the HTTP API:
    /// keep it on loopback or set `key`.
    #[arg(
        id = "api-publish-listen",
        long = "api-publish-listen",
        alias = "publish-listen",
        default_value = "127.0.0.1:3112"
    )]
    pub publish_listen: SocketAddr,

    /// API key required on every API request (`Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY`) and in a TCP publisher's auth frame. Unset = no check.
    #[arg(id = "api-key", long = "api-key")]
    pub key: Option<String>,

    /// Largest HTTP request body the API reads, and largest TCP publisher
    /// frame, in bytes.
    #[arg(id = "api-max-body", long = "api-max-body", alias = "max-http-body", default_value_t = 4 << 20)]
    pub max_body: usize,

    /// Largest push payload the API and TCP publishers accept per message,
    /// in bytes.
    #[arg(
        id = "api-max-push-body",
        long = "api-max-push-body",
        alias = "max-push-body",
        default_value_t = 65536
    )]
    pub max_push_body: usize,

    /// Seconds an HTTP API connection may stay open without a request: from
    /// its accept, and between requests, the next request must have begun
    /// by then.
    #[arg(
        id = "api-idle-timeout-secs",
        long = "api-idle-timeout-secs",
        alias = "http-idle-timeout-secs",
        default_value_t = 30
    )]
    pub idle_timeout_secs: u64,

    /// Seconds a request's headers have from its first byte: a connection
    /// that trickles them is closed then, however often a byte arrives.
    #[arg(
        id = "api-header-timeout-secs",
        long = "api-header-timeout-secs",
        default_value_t = 10
    )]
    pub header_timeout_secs: u64,

    /// Seconds an HTTP request may take from its headers to its answer
    /// (reading the body included); past it the connection is closed.
    #[arg(
        id = "api-request-timeout-secs",
        long = "api-request-timeout-secs",
        default_value_t = 30
    )]
    pub request_timeout_secs: u64,

    /// HTTP API and TCP publisher connections the server holds at once,
    /// all shards; one more is answered 503 (HTTP) or op 6 `conn_limit`
    /// (publisher) and closed. Application servers keep a few each.
    #[arg(id = "api-max-conns", long = "api-max-conns", default_value_t = 512)]
    pub max_conns: usize,

    /// Bytes of HTTP request bodies being read at once beyond the first
    /// 64 KiB of each (which every request may always read: their sum is
    /// bounded by `max_conns`), all shards, each shard an even share but
    /// at least `max_body`; a request whose declared length (or `max_body`,
    /// when it declares none) does not fit is answered 503 before its body
    /// is read.
    #[arg(id = "api-body-memory", long = "api-body-memory", default_value_t = 64 << 20)]
    pub body_memory: usize,

    /// Seconds a publisher message id (`id` on every publish route) is
    /// remembered: a publish repeating it within this window is not
    /// delivered again (a room publish is answered with the first one's
    /// offset). 0 = no deduplication.
    #[arg(id = "api-dedup-window-secs", long = "api-dedup-window-secs", default_value_t = 120)]
    pub dedup_window_secs: u32,

    /// Most message ids remembered at once, all shards together (past it
    /// the oldest are forgotten first, counted as `dedup_forgotten`).
    /// About 150 bytes each.
    #[arg(id = "api-dedup-max", long = "api-dedup-max", default_value_t = 1_000_000)]
    pub dedup_max: usize,
}

/// `[history]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[history]")]
pub struct HistoryConfig {
    /// Messages each room keeps (0: no history unless an override gives
    /// some). Every room message is stored once, as the frames fan-out sent.
    #[arg(id = "history-messages", long = "history-messages", default_value_t = 100)]
    pub messages: usize,

    /// Seconds a message stays in its room's history.
    #[arg(id = "history-max-age-secs", long = "history-max-age-secs", default_value_t = 300)]
    pub max_age_secs: u32,

    /// Bytes of history one room keeps (frames, both wire forms, plus 96
    /// bytes of bookkeeping per message).
    #[arg(id = "history-max-bytes", long = "history-max-bytes", default_value_t = 256 << 10)]
    pub max_bytes: usize,

    /// Bytes of history all rooms together keep, split evenly over the
    /// shards (each owns its rooms' history); past it the oldest stored
    /// message of any room goes first (counted as `history_evicted_memory`).
    #[arg(id = "history-memory", long = "history-memory", default_value_t = 256 << 20)]
    pub memory: usize,

    /// Per room prefix, comma-separated: `PREFIX=off` (no history) or
    /// `PREFIX=MESSAGES:MAX_AGE_SECS:MAX_BYTES`, e.g.
    /// `chat://=1000:3600:1048576,tmp://=off`. The longest matching prefix wins.
    #[arg(
        id = "history-overrides",
        long = "history-overrides",
        value_delimiter = ',',
        value_parser = parse_override,
        action = clap::ArgAction::Set
    )]
    pub overrides: Vec<HistoryOverride>,

    /// Read marks one room keeps (one per user who marked it, ~40 bytes
    /// each); a mark by one more user is answered with error `mark_limit`.
    #[arg(id = "history-max-marks", long = "history-max-marks", default_value_t = 100_000)]
    pub max_marks: usize,
}

/// `[inbox]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[inbox]")]
pub struct InboxConfig {
    /// Pushes kept per user until acknowledged (0: no inboxes: user pushes
    /// are at most once, to whoever is connected).
    #[arg(id = "inbox-messages", long = "inbox-messages", default_value_t = 100)]
    pub messages: usize,

    /// Bytes kept per user (frames of both versions plus 96 bytes each); the
    /// oldest push leaves first.
    #[arg(id = "inbox-bytes", long = "inbox-bytes", default_value_t = 256 << 10)]
    pub bytes: usize,

    /// Seconds a push is kept unless the publisher gave it a TTL.
    #[arg(id = "inbox-ttl-secs", long = "inbox-ttl-secs", default_value_t = 86_400)]
    pub ttl_secs: u32,

    /// Bytes all inboxes together keep, split evenly over the shards; past
    /// it the oldest stored push of any user goes first
    /// (`inbox_evicted_memory`).
    #[arg(id = "inbox-memory", long = "inbox-memory", default_value_t = 256 << 20)]
    pub memory: usize,
}

/// How much history one room keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Most messages kept (0: history off for the room).
    pub messages: usize,
    /// Most seconds a message is kept.
    pub max_age: u32,
    /// Most bytes kept.
    pub bytes: usize,
}

impl HistoryPolicy {
    /// No history.
    pub const OFF: HistoryPolicy = HistoryPolicy {
        messages: 0,
        max_age: 0,
        bytes: 0,
    };
}

/// `[history] overrides` item: rooms starting with `prefix` keep `policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOverride {
    /// Room key prefix, e.g. `chat://`.
    pub prefix: String,
    /// What those rooms keep.
    pub policy: HistoryPolicy,
}

/// Parses `PREFIX=off` or `PREFIX=MESSAGES:MAX_AGE_SECS:MAX_BYTES`.
fn parse_override(s: &str) -> Result<HistoryOverride, String> {
    let (prefix, spec) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected PREFIX=off or PREFIX=MESSAGES:MAX_AGE_SECS:MAX_BYTES"))?;
    let policy = if spec == "off" {
        HistoryPolicy::OFF
    } else {
        let n: Vec<&str> = spec.split(':').collect();
        let num = |i: usize| n.get(i).and_then(|v| v.parse::<u64>().ok());
        match (n.len(), num(0), num(1), num(2)) {
            (3, Some(messages), Some(age), Some(bytes)) => HistoryPolicy {
                messages: messages as usize,
                max_age: u32::try_from(age).map_err(|_| format!("{s:?}: age too large"))?,
                bytes: bytes as usize,
            },
            _ => {
                return Err(format!(
                    "{s:?}: expected PREFIX=off or PREFIX=MESSAGES:MAX_AGE_SECS:MAX_BYTES"
                ))
            }
        }
    };
    Ok(HistoryOverride {
        prefix: prefix.to_string(),
        policy,
    })
}

impl HistoryConfig {
    /// What `room` keeps: the longest matching override, else the defaults.
    pub fn policy(&self, room: &str) -> HistoryPolicy {
        self.overrides
            .iter()
            .filter(|o| room.starts_with(&o.prefix))
            .max_by_key(|o| o.prefix.len())
            .map_or(
                HistoryPolicy {
                    messages: self.messages,
                    max_age: self.max_age_secs,
                    bytes: self.max_bytes,
                },
                |o| o.policy,
            )
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading the config file failed.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not TOML, or a key is unknown or of a bad type.
    #[error("config file {path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Flags or values rejected by the parser.
    #[error("{0}")]
    Args(#[from] clap::Error),
    /// A value out of range.
    #[error("invalid {knob}: {msg}")]
    Invalid {
        /// The knob, as its file key (`[section] key` or `key`).
        knob: &'static str,
        /// What is wrong.
        msg: String,
    },
}

impl Default for Config {
    /// The embedded defaults. Reads no environment variable.
    fn default() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            c: Config,
        }
        Only::parse_from(["volley"]).c
    }
}

impl Config {
    /// Number of shards to run (resolves 0 to the CPU count).
    pub fn nr_shards(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else if !self.cpus.is_empty() {
            self.cpus.len()
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests;
