//! The command line: the modes and every flag, each documented with its
//! default (quinn's `perf` style). Parsed once on the main thread.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;

/// volley-loadgen: drives volley (or any WebSocket broadcast server) and
/// measures it.
#[derive(Parser)]
#[command(name = "volley-loadgen", about = "Load generator for volley")]
pub struct Cli {
    /// The mode.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options every mode takes.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// volley client addresses, comma-separated (the TCP listeners, or the
    /// WebSocket ones with --ws); connections go round-robin over them.
    #[arg(long, default_value = "127.0.0.1:3101", value_delimiter = ',')]
    pub target: Vec<SocketAddr>,
    /// Spread connections over this many loopback source addresses
    /// (127.1.x.y); 0 = let the kernel pick (127.0.0.1).
    #[arg(long, default_value_t = 0)]
    pub sources: usize,
    /// Speak the protocol over WebSocket at this path (e.g. /sub) instead of
    /// raw TCP: one frame per binary message.
    #[arg(long)]
    pub ws: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connections opened per second.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Room every connection joins.
    #[arg(long, default_value = "live://bench")]
    pub room: String,
    /// Worker threads (each a glommio executor owning its connections).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// PIDs of the volley servers (comma-separated), to report their RSS and
    /// CPU (summed).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The modes.
#[derive(Subcommand)]
pub enum Cmd {
    /// Hold N idle authenticated connections.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold the connections after the last one is up.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    /// Room broadcast: N subscribers, a publisher at a fixed rate.
    Broadcast {
        #[command(flatten)]
        common: Common,
        /// volley HTTP API addresses (comma-separated): every message is
        /// published to each (one room per server process).
        #[arg(long, default_value = "127.0.0.1:3111", value_delimiter = ',')]
        http: Vec<SocketAddr>,
        /// Publish over volley's TCP publisher connections at these addresses
        /// (comma-separated, one per server process) instead of HTTP:
        /// pipelined, no reply per message, an op 2 barrier at the end.
        #[arg(long, value_delimiter = ',')]
        publish_tcp: Vec<SocketAddr>,
        /// API key for publishing (HTTP header or TCP publisher auth).
        #[arg(long, default_value = "")]
        api_key: String,
        #[command(flatten)]
        load: Load,
    },
    /// Resume under churn: version-2 subscribers in --room, of which
    /// --churn-pct percent disconnect and reconnect (resuming from their
    /// last offset) every --churn-period-secs while a room broadcast runs.
    /// Exits 1 on any loss, duplicate, offset gap or unrecovered resume.
    Churn {
        #[command(flatten)]
        common: Common,
        /// volley HTTP API addresses to publish to (unless --publish-tcp).
        #[arg(long, default_value = "127.0.0.1:3111", value_delimiter = ',')]
        http: Vec<SocketAddr>,
        /// Publish over volley's TCP publisher connections at these addresses.
        #[arg(long, value_delimiter = ',')]
        publish_tcp: Vec<SocketAddr>,
        /// API key for publishing.
        #[arg(long, default_value = "")]
        api_key: String,
        /// Percentage of subscribers that reconnect each period.
        #[arg(long, default_value_t = 10)]
        churn_pct: u64,
        /// Seconds between reconnect rounds.
        #[arg(long, default_value_t = 2.0)]
        churn_period_secs: f64,
        /// Retry each publish for up to this many seconds while the server
        /// is away (HTTP, with message ids: exactly once across a restart of
        /// a server with the durable store); 0: a failed publish ends the run.
        #[arg(long, default_value_t = 0.0)]
        retry_secs: f64,
        /// Subscribers per load generator thread (the first ones) that join
        /// with presence events on (op 58), counted in the report.
        #[arg(long, default_value_t = 0)]
        watchers: usize,
        #[command(flatten)]
        mix: MixArgs,
        #[command(flatten)]
        load: Load,
    },
    /// Hostile clients (docs/LIMITS.md): one attack against a running
    /// volley for --secs seconds, beside a bystander client (127.0.0.2)
    /// getting a push a second; reports what the attack got, the server's
    /// RSS and CPU (--server-pid), its counters, and the bystander's delays.
    Attack {
        /// Which attack.
        #[arg(value_enum)]
        kind: crate::attack::Kind,
        /// volley's client TCP listener.
        #[arg(long, default_value = "127.0.0.1:3101")]
        target: SocketAddr,
        /// volley's client WebSocket listener.
        #[arg(long, default_value = "127.0.0.1:3102")]
        ws: SocketAddr,
        /// volley's HTTP API.
        #[arg(long, default_value = "127.0.0.1:3111")]
        http: SocketAddr,
        /// volley's TCP publisher listener.
        #[arg(long, default_value = "127.0.0.1:3112")]
        publish_tcp: SocketAddr,
        /// API key (HTTP header), for the bystander's pushes and the
        /// attacks that publish.
        #[arg(long, default_value = "")]
        api_key: String,
        /// The attacker's source address (127.0.0.0/8).
        #[arg(long, default_value = "127.0.0.3")]
        from: String,
        /// Seconds the attack lasts.
        #[arg(long, default_value_t = 40)]
        secs: u64,
        /// PIDs of the volley server (comma-separated), for its RSS and CPU.
        #[arg(long, value_delimiter = ',')]
        server_pid: Vec<u32>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Offline inboxes: --conns users get --messages pushes each while
    /// offline (over the TCP publisher), then connect over version 2,
    /// receive and acknowledge them. Reports store and delivery time and
    /// the server's memory per stored message.
    Inbox {
        #[command(flatten)]
        common: Common,
        /// volley HTTP API address (its stats are read).
        #[arg(long, default_value = "127.0.0.1:3111")]
        http: SocketAddr,
        /// volley TCP publisher address.
        #[arg(long, default_value = "127.0.0.1:3112")]
        publish_tcp: SocketAddr,
        /// API key.
        #[arg(long, default_value = "")]
        api_key: String,
        /// Pushes each user gets while offline.
        #[arg(long, default_value_t = 10)]
        messages: u64,
        /// Payload size in bytes (at least 16).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Users named in one push.
        #[arg(long, default_value_t = 1000)]
        per_push: usize,
        /// Seconds to wait for every user to receive everything.
        #[arg(long, default_value_t = 120)]
        drain_secs: u64,
        /// Most users connected at once (0: all): each disconnects once it
        /// has acknowledged everything, making room for the next, so one
        /// server process (20,000 descriptors here) can serve 100,000 users.
        #[arg(long, default_value_t = 0)]
        concurrent: usize,
    },
    /// volley's durable store: publish with message ids to many rooms and
    /// users and log what was acknowledged; verify a server (restarted or
    /// killed since) against that log. `verify` exits 1 on any acknowledged
    /// message missing, duplicated or moved, an offset gap or a changed epoch.
    Durable {
        /// Which step.
        #[command(subcommand)]
        step: DurableStep,
    },
    /// Generic WebSocket broadcast: drives any WebSocket broadcast server
    /// (volley, NATS, a tokio server...) with the same load. Subscribers
    /// upgrade at --ws, send --first-message, and count every message holding
    /// a payload marker; a publisher sends time-stamped payloads over its own
    /// WebSocket (--publish ws) or an HTTP POST (--publish http).
    Ws {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        generic: Generic,
        #[command(flatten)]
        load: Load,
    },
}

/// The steps of the `durable` mode.
#[derive(Subcommand)]
pub enum DurableStep {
    /// Publish for --secs (or until the server goes away) and append every
    /// acknowledged publish to --log.
    Publish {
        /// volley's HTTP API.
        #[arg(long, default_value = "127.0.0.1:3111")]
        http: SocketAddr,
        /// API key.
        #[arg(long, default_value = "")]
        api_key: String,
        /// Rooms (`durable://0` ..).
        #[arg(long, default_value_t = 1000)]
        rooms: u64,
        /// Users (1 ..).
        #[arg(long, default_value_t = 10_000)]
        users: u64,
        /// Percent of publishes that are pushes to a user.
        #[arg(long, default_value_t = 50)]
        user_pct: u64,
        /// Publishes per second in all (0: each connection as fast as it is answered).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seconds to publish for.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// HTTP connections publishing at once.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// File the acknowledged publishes are appended to.
        #[arg(long)]
        log: std::path::PathBuf,
        /// Prefix of the message ids (tells runs apart; the default is the process id).
        #[arg(long)]
        run: Option<String>,
    },
    /// Acknowledged room pushes through volley's TCP publisher connection:
    /// each connection keeps --window pushes (with message ids) in flight and
    /// counts the replies the server sends once they are kept.
    Pipeline(Pipeline),
    /// The same load against NATS JetStream (a file-storage stream; each
    /// connection keeps --window publishes waiting for JetStream's acks:
    /// 1, the default, waits for each ack before the next publish), for
    /// comparison.
    Jetstream {
        /// nats-server's client port (run with JetStream on: `-js`).
        #[arg(long, default_value = "127.0.0.1:4222")]
        nats: SocketAddr,
        /// Connections publishing at once.
        #[arg(long, default_value_t = 16)]
        conns: usize,
        /// Seconds to publish for.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Payload bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Publishes in flight per connection.
        #[arg(long, default_value_t = 1)]
        window: usize,
    },
    /// Check that every publish in --log is stored exactly once.
    Verify {
        /// volley's HTTP API (room histories).
        #[arg(long, default_value = "127.0.0.1:3111")]
        http: SocketAddr,
        /// volley's client TCP listener (user inboxes, read over version 2).
        #[arg(long, default_value = "127.0.0.1:3101")]
        target: SocketAddr,
        /// API key.
        #[arg(long, default_value = "")]
        api_key: String,
        /// The log `publish` wrote.
        #[arg(long)]
        log: std::path::PathBuf,
    },
}

/// The generic WebSocket mode's hello and publisher options.
#[derive(clap::Args, Clone)]
pub struct Generic {
    /// Text each subscriber sends after the upgrade (\r \n \t unescaped),
    /// e.g. "CONNECT {}\r\nSUB bench 1\r\n" for NATS.
    #[arg(long)]
    pub first_message: Option<String>,
    /// Binary message each subscriber sends after the upgrade, in hex
    /// (instead of --first-message), e.g. a volley auth frame.
    #[arg(long)]
    pub first_binary_hex: Option<String>,
    /// Each subscriber authenticates into --room with a volley auth frame
    /// after the upgrade (instead of --first-message or --first-binary-hex),
    /// as volley's WebSocket endpoint expects.
    #[arg(long)]
    pub volley: bool,
    /// How messages are published (the default, tcp, is volley's TCP
    /// publisher port; other servers take ws or http).
    #[arg(long, value_enum, default_value_t = PublishVia::Tcp)]
    pub publish: PublishVia,
    /// Text the WebSocket publisher sends after its upgrade.
    #[arg(long)]
    pub publisher_first_message: Option<String>,
    /// What the WebSocket publisher sends per message: `{payload}` and
    /// `{len}` are replaced, e.g. "PUB bench {len}\r\n{payload}\r\n".
    #[arg(long, default_value = "{payload}")]
    pub publish_template: String,
    /// HTTP APIs to POST each payload to (--publish http).
    #[arg(long, value_delimiter = ',')]
    pub publish_http: Vec<SocketAddr>,
    /// Path of that POST.
    #[arg(long, default_value = "/goim/push/room?operation=1000&type=live&room=bench")]
    pub publish_path: String,
    /// volley TCP publisher addresses (--publish tcp); the default is
    /// volley's own.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3112")]
    pub publish_tcp: Vec<SocketAddr>,
}

/// Publisher transport of the generic WebSocket mode.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PublishVia {
    /// One more WebSocket connection sends each message.
    Ws,
    /// An HTTP POST per message to every --publish-http address.
    Http,
    /// A room push to --room over volley's TCP publisher connection at every
    /// --publish-tcp address (pipelined, open loop like a WebSocket publisher).
    Tcp,
}

/// Message rate, size and timing of a broadcast run.
#[derive(clap::Args, Clone, Copy)]
pub struct Load {
    /// Messages published per second.
    #[arg(long, default_value_t = 10)]
    pub msg_rate: u64,
    /// Payload size in bytes: at least 16 (sequence + time stamp), 34 in the
    /// ws mode (plus its marker).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds to wait after the last publish for deliveries to finish.
    #[arg(long, default_value_t = 10)]
    pub drain_secs: u64,
}

/// The churn mode's mix: by default every connection is a version-2 room
/// member over raw TCP.
#[derive(clap::Args, Clone, Debug)]
pub struct MixArgs {
    /// volley's WebSocket listeners (comma-separated), for the --ws-pct
    /// share of the connections.
    #[arg(long, value_delimiter = ',')]
    pub ws_target: Vec<SocketAddr>,
    /// The WebSocket path (`[ws] path`).
    #[arg(long, default_value = "/sub")]
    pub ws_path: String,
    /// Percentage of connections over WebSocket (any kind).
    #[arg(long, default_value_t = 0)]
    pub ws_pct: u64,
    /// Percentage of connections speaking version 1 (the room in the auth,
    /// checked by payload sequence).
    #[arg(long, default_value_t = 0)]
    pub v1_pct: u64,
    /// Percentage of connections subscribing to --pattern instead of
    /// joining the room.
    #[arg(long, default_value_t = 0)]
    pub pattern_pct: u64,
    /// The pattern those subscribe to; it must match --room.
    #[arg(long, default_value = "live://*")]
    pub pattern: String,
    /// Every connection sends a heartbeat this often (seconds) while the
    /// broadcast runs, and every one must be answered; 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub heartbeat_secs: f64,
    /// Pushes to users per second while the broadcast runs (HTTP, with
    /// message ids), each to the next version-2 subscriber's user, who
    /// acknowledges it; every one must arrive once.
    #[arg(long, default_value_t = 0)]
    pub push_rate: u64,
}

/// `\r`, `\n` and `\t` in a command-line text, unescaped.
pub fn unescape(s: &str) -> Vec<u8> {
    s.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\t", "\t")
        .into_bytes()
}

/// Bytes from hex text (`--first-binary-hex`).
pub fn decode_hex(h: &str) -> anyhow::Result<Vec<u8>> {
    if h.len() % 2 == 1 || !h.is_ascii() {
        anyhow::bail!("hex must be an even number of ASCII digits");
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|e| anyhow::anyhow!("bad hex: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_hex() {
        assert_eq!(unescape("A\\r\\nB\\t"), b"A\r\nB\t");
        assert_eq!(decode_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("é0").is_err());
        let cli = Cli::try_parse_from(["volley-loadgen", "broadcast", "--conns", "3", "--msg-rate", "7"]).unwrap();
        let Cmd::Broadcast { common, load, .. } = cli.cmd else {
            panic!("broadcast")
        };
        assert_eq!((common.conns, load.msg_rate, load.size), (3, 7, 64));
        let cli = Cli::try_parse_from([
            "volley-loadgen",
            "churn",
            "--conns",
            "19000",
            "--publish-tcp",
            "127.0.0.1:3112",
            "--churn-pct",
            "10",
        ])
        .unwrap();
        let Cmd::Churn {
            common,
            churn_pct,
            churn_period_secs,
            publish_tcp,
            ..
        } = cli.cmd
        else {
            panic!("churn")
        };
        assert_eq!(
            (common.conns, churn_pct, churn_period_secs, publish_tcp.len()),
            (19000, 10, 2.0, 1)
        );
    }
}

/// `durable pipeline`'s options.
#[derive(clap::Args)]
pub struct Pipeline {
    /// volley's TCP publisher port (`[api] publish_listen`).
    #[arg(long, default_value = "127.0.0.1:3112")]
    pub publish_tcp: SocketAddr,
    /// API key.
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Rooms (`durable://0` ..).
    #[arg(long, default_value_t = 1000)]
    pub rooms: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Pushes in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Prefix of the message ids (tells runs apart; the default is the process id).
    #[arg(long)]
    pub run: Option<String>,
}
