//! The knobs of what a client may do and hold: `[client]` (deadlines,
//! rooms, publishing, patterns, presence) and `[limits]` (connections,
//! per-IP and per-user limits, queues and the outbound budget). Each knob
//! is one declaration: its flag, environment name and default (see
//! `config::layer` for how files, environment and flags combine).

use clap::{Args, ValueEnum};

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
