//! `Config`: every knob of `volley serve`, grouped as the TOML file groups
//! them, with its default and its cost; `validate` checks what types cannot.
//!
//! Parsed once on the main thread before any shard starts; shards get an
//! immutable copy inside `Shared`. One naming rule ties the three ways to
//! set a knob: key `k` in section `[s]` of the file is flag `--s-k` and
//! environment variable `VOLLEY_S_K` (dashes and underscores swapped as
//! needed); a top-level key `k` is `--k` and `VOLLEY_K`. So `[ws] path` is
//! `--ws-path` and `VOLLEY_WS_PATH` (one more name: `RUST_LOG` is `[log]
//! level` where `VOLLEY_LOG_LEVEL` is unset). Precedence: flags >
//! environment > file > defaults (`layer` does the layering; `check`
//! refuses and warns at start; `show` prints the example file and the
//! configuration in force for `volley config`; `commands` declares the
//! subcommands and their arguments; this module and `client`, `api`,
//! `store` only declare: the groups of clients' limits, of the application
//! side, and of what volley keeps live in those three files).
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
//! [storage] mode dir sync sync_window_us sync_interval_ms max_bytes segment_bytes
//! [auth]    mode jwt_secret jwt_public_key leeway_secs refresh_secs grace_secs dev_tokens
//! [redis]   urls
//! ```
//!
//! Invariants: `Config::default()` is the embedded defaults and reads
//! nothing from the environment (clap here knows no environment variables;
//! `layer` injects them), so a `VOLLEY_*` variable in a developer's shell
//! cannot change what tests run with. Keys of the flat layout before the
//! sections keep working, with a note naming the new key (`layer::LEGACY`).

mod api;
mod check;
mod client;
mod commands;
mod layer;
mod show;
mod store;

pub use api::ApiConfig;
pub use client::{ClientConfig, Limits, UserConnPolicy};
pub use commands::{CheckHostArgs, Cli, Cmd, ConfigArgs, DrainArgs, ServeArgs, UpgradeArgs};
pub use layer::{parse_cli, LEGACY};
pub use show::summary;
pub use store::{HistoryConfig, HistoryOverride, HistoryPolicy, InboxConfig, StorageConfig, StorageMode, SyncMode};

use clap::{Args, Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

// The naming rule (module doc): one place for the layering and for what
// `volley config` prints.

/// The flag of `key` in `section` ("" for top level), without the dashes.
fn flag_of(section: &str, key: &str) -> String {
    let k = key.replace('_', "-");
    if section.is_empty() {
        k
    } else {
        format!("{section}-{k}")
    }
}

/// The key in `section` ("" for top level) of a flag: `flag_of` undone.
fn key_of(section: &str, flag: &str) -> String {
    let prefix = format!("{section}-");
    let bare = if section.is_empty() {
        flag
    } else {
        flag.strip_prefix(&prefix).unwrap_or(flag)
    };
    bare.replace('-', "_")
}

/// The file section of a flag of `serve` ("" for the top level): its help
/// heading, `[section]`, which each group declares.
fn section_of(arg: &clap::Arg) -> String {
    arg.get_help_heading()
        .map(|h| h.trim_matches(['[', ']']).to_string())
        .unwrap_or_default()
}

/// The environment variable of a flag.
fn env_of(flag: &str) -> String {
    format!("VOLLEY_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// Whether WebSocket clients may negotiate permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WsCompression {
    /// No extension is negotiated.
    Off,
    /// permessage-deflate is agreed with clients that offer it
    /// (docs/PROTOCOL.md, *WebSocket*).
    On,
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

    /// `[storage]`: where history, inboxes, marks and publisher ids live
    /// (memory, or a durable store on disk).
    #[command(flatten)]
    pub storage: StorageConfig,

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

/// A listener's address: an IP and a port. Host names are refused with
/// what to write instead, since a name can stand for several addresses
/// and binding must not depend on a resolver at start.
pub(crate) fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("`{s}` is not an IP:port; write e.g. 127.0.0.1:3101, 0.0.0.0:3101 or [::1]:3101 (host names such as localhost are not resolved)")
    })
}

/// `[tcp]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[tcp]")]
pub struct TcpConfig {
    /// Client TCP listener (goim protocol).
    #[arg(id = "tcp-listen", long = "tcp-listen", default_value = "0.0.0.0:3101", value_parser = listen_addr)]
    pub listen: SocketAddr,
}

/// `[ws]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[ws]")]
pub struct WsConfig {
    /// Client WebSocket listener (same protocol, one frame per binary message).
    #[arg(id = "ws-listen", long = "ws-listen", default_value = "0.0.0.0:3102", value_parser = listen_addr)]
    pub listen: SocketAddr,

    /// Path of the WebSocket endpoint (goim's is `/sub`).
    #[arg(id = "ws-path", long = "ws-path", default_value = "/sub")]
    pub path: String,

    /// Allowed `Origin` values for WebSocket upgrades, comma-separated; empty =
    /// any origin (and none). A refused origin gets HTTP 403.
    #[arg(id = "ws-origins", long = "ws-origins", value_delimiter = ',', action = clap::ArgAction::Set)]
    pub origins: Vec<String>,

    /// permessage-deflate (RFC 7692) with clients that offer it: "on" or
    /// "off". Pushes of `compression_min_bytes` or more are compressed once
    /// for all of them; their compressed messages are inflated (to at most
    /// the message limit).
    #[arg(id = "ws-compression", long = "ws-compression", value_enum, default_value = "on")]
    pub compression: WsCompression,

    /// Smallest push (its protocol frame, in bytes) that is compressed for
    /// connections that agreed permessage-deflate; smaller ones go plain.
    #[arg(id = "ws-compression-min-bytes", long = "ws-compression-min-bytes", default_value_t = crate::proto::wire::COMPRESS_MIN)]
    pub compression_min_bytes: usize,

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
    /// An environment variable's value is of a bad type.
    #[error("environment variable {var}: {msg}")]
    Env {
        /// The variable.
        var: String,
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
    /// Whether the durable store is on: `[storage] mode = "disk"` on a
    /// single node (cluster mode keeps what it keeps in Redis).
    pub fn durable(&self) -> bool {
        self.storage.mode == StorageMode::Disk && self.redis.urls.is_empty()
    }

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
