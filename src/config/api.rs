//! The knobs of the application-server side: `[api]` (listeners, key,
//! bodies, connections and their deadlines, dedup). One declaration per
//! knob, as in `config::client`.

use clap::Args;
use std::net::SocketAddr;

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
        default_value = "127.0.0.1:3111",
        value_parser = super::listen_addr
    )]
    pub listen: SocketAddr,

    /// TCP publisher listener: trusted application servers publish over the
    /// client protocol's frames (docs/API.md). Same exposure as the HTTP API:
    /// keep it on loopback or set `key`.
    #[arg(
        id = "api-publish-listen",
        long = "api-publish-listen",
        alias = "publish-listen",
        default_value = "127.0.0.1:3112",
        value_parser = super::listen_addr
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
