//! `Config`: every knob of `volley serve`, with its default and its cost, and
//! the layering of defaults < TOML file < environment < flags.
//!
//! Parsed once in the main thread before any shard starts; shards get an
//! immutable copy inside `Shared`. Every knob is a long flag `--some-knob`,
//! an environment variable `VOLLEY_SOME_KNOB`, and a key `some_knob` in the
//! file given by `--config` / `VOLLEY_CONFIG`.
//!
//! The file is applied by turning each key into the flag it names and placing
//! those flags before the real ones (clap's `args_override_self` makes the
//! later flag win); a key whose environment variable is set is skipped, so the
//! environment beats the file. Unknown keys are an error, never ignored.

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The `volley` command line.
#[derive(Debug, Parser)]
#[command(name = "volley", version, about = "Thread-per-core push server (goim-compatible)")]
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
    /// TOML file with any of the knobs below (snake_case keys).
    #[arg(long, short = 'c', env = "VOLLEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// The server knobs.
    #[command(flatten)]
    pub server: Config,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every server knob. Defaults are the embedded defaults `volley serve` runs
/// with when given nothing.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Config {
    /// Client TCP listener (goim protocol).
    #[arg(long, env = "VOLLEY_TCP_LISTEN", default_value = "0.0.0.0:3101")]
    pub tcp_listen: SocketAddr,

    /// HTTP API listener (publish, online, stats). Keep it on loopback or
    /// behind an API key: it can push to every client.
    #[arg(long, env = "VOLLEY_HTTP_LISTEN", default_value = "127.0.0.1:3111")]
    pub http_listen: SocketAddr,

    /// TCP publisher listener: trusted application servers publish over the
    /// client protocol's frames (docs/API.md). Same exposure as the HTTP API:
    /// keep it on loopback or set `api_key`.
    #[arg(long, env = "VOLLEY_PUBLISH_LISTEN", default_value = "127.0.0.1:3112")]
    pub publish_listen: SocketAddr,

    /// Client WebSocket listener (same protocol, one frame per binary message).
    #[arg(long, env = "VOLLEY_WS_LISTEN", default_value = "0.0.0.0:3102")]
    pub ws_listen: SocketAddr,

    /// Path of the WebSocket endpoint (goim's is `/sub`).
    #[arg(long, env = "VOLLEY_WS_PATH", default_value = "/sub")]
    pub ws_path: String,

    /// Allowed `Origin` values for WebSocket upgrades, comma-separated; empty =
    /// any origin (and none). A refused origin gets HTTP 403.
    #[arg(long, env = "VOLLEY_WS_ORIGINS", value_delimiter = ',')]
    pub ws_origins: Vec<String>,

    /// Serve a WebSocket echo endpoint at `ws_echo_path` on the WebSocket
    /// listener, for conformance suites (Autobahn). Off in production.
    #[arg(long, env = "VOLLEY_WS_ECHO", default_value_t = false, action = clap::ArgAction::Set)]
    pub ws_echo: bool,

    /// Path of the echo endpoint.
    #[arg(long, env = "VOLLEY_WS_ECHO_PATH", default_value = "/echo")]
    pub ws_echo_path: String,

    /// Largest message the echo endpoint takes (it buffers whole messages).
    #[arg(long, env = "VOLLEY_WS_ECHO_MAX_MESSAGE", default_value_t = 16 << 20)]
    pub ws_echo_max_message: usize,

    /// Number of shards (one pinned executor thread each); 0 = one per
    /// available CPU.
    #[arg(long, env = "VOLLEY_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// CPUs to pin shard i to (`cpus[i]`), comma-separated. Empty = shard i on
    /// CPU i modulo the CPU count.
    #[arg(long, env = "VOLLEY_CPUS", value_delimiter = ',')]
    pub cpus: Vec<usize>,

    /// listen() backlog per shard listener (the kernel caps it at
    /// net.core.somaxconn). Costs nothing until connections queue.
    #[arg(long, env = "VOLLEY_BACKLOG", default_value_t = 65535)]
    pub backlog: u32,

    /// Seconds a new connection has to send its auth frame.
    #[arg(long, env = "VOLLEY_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u32,

    /// Seconds after auth or the last heartbeat (op 2) before the server closes
    /// the connection. goim clients heartbeat every 30 s (JS) to 240 s (Go).
    #[arg(long, env = "VOLLEY_HEARTBEAT_TIMEOUT_SECS", default_value_t = 600)]
    pub heartbeat_timeout_secs: u32,

    /// Largest frame body a client may send, in bytes (goim: 4096). A longer
    /// announced body closes the connection before any of it is buffered.
    #[arg(long, env = "VOLLEY_MAX_BODY", default_value_t = 4096)]
    pub max_body: usize,

    /// Largest push body the API accepts per message, in bytes.
    #[arg(long, env = "VOLLEY_MAX_PUSH_BODY", default_value_t = 65536)]
    pub max_push_body: usize,

    /// Bytes a connection may have queued and unwritten (plus 32 bytes of
    /// bookkeeping per frame) before it is closed as a slow consumer. Worst
    /// case memory per connection; shared broadcast frames are counted in
    /// full for every connection although stored once.
    #[arg(long, env = "VOLLEY_OUTBOUND_LIMIT", default_value_t = 1 << 20)]
    pub outbound_limit: usize,

    /// API key required on every API request (`Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY`) and in a TCP publisher's auth frame. Unset = no check.
    #[arg(long, env = "VOLLEY_API_KEY")]
    pub api_key: Option<String>,

    /// Largest HTTP request body the API reads, in bytes.
    #[arg(long, env = "VOLLEY_MAX_HTTP_BODY", default_value_t = 4 << 20)]
    pub max_http_body: usize,

    /// Seconds an API connection may wait for bytes before it is closed.
    #[arg(long, env = "VOLLEY_HTTP_IDLE_TIMEOUT_SECS", default_value_t = 30)]
    pub http_idle_timeout_secs: u64,

    /// Seconds shutdown waits for connections to flush their goodbye.
    #[arg(long, env = "VOLLEY_SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u64,

    /// Let the kernel back the heap with transparent huge pages. Off by
    /// default: the allocator asks for them, and with many small per-connection
    /// records half-filled 2 MiB pages doubled RSS at 19,000 connections
    /// (BENCHMARKS.md). Applied by the `volley` binary to the whole process.
    #[arg(long, env = "VOLLEY_TRANSPARENT_HUGEPAGES", default_value_t = false, action = clap::ArgAction::Set)]
    pub transparent_hugepages: bool,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `volley=debug`.
    #[arg(long, env = "VOLLEY_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "VOLLEY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
        /// The knob.
        knob: &'static str,
        /// What is wrong.
        msg: String,
    },
}

impl Default for Config {
    /// The embedded defaults (plus any `VOLLEY_*` environment variables).
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
    /// Checks ranges that clap's types do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |knob, msg: &str| {
            Err(ConfigError::Invalid {
                knob,
                msg: msg.to_string(),
            })
        };
        if self.shards > 1024 {
            return bad("shards", "at most 1024");
        }
        if !self.cpus.is_empty() && self.shards != 0 && self.cpus.len() < self.shards {
            return bad("cpus", "fewer CPUs listed than shards");
        }
        if self.handshake_timeout_secs == 0 || self.heartbeat_timeout_secs == 0 {
            return bad("timeouts", "must be at least 1 second");
        }
        if self.max_body < 64 || self.max_body > 16 << 20 {
            return bad("max_body", "must be between 64 bytes and 16 MiB");
        }
        if self.max_push_body == 0 || self.max_push_body > 16 << 20 {
            return bad("max_push_body", "must be between 1 byte and 16 MiB");
        }
        if self.outbound_limit < self.max_push_body + 64 {
            return bad("outbound_limit", "must hold at least one push of max_push_body");
        }
        if !self.ws_path.starts_with('/') || !self.ws_echo_path.starts_with('/') {
            return bad("ws_path", "WebSocket paths start with /");
        }
        if self.ws_echo && self.ws_echo_path == self.ws_path {
            return bad("ws_echo_path", "must differ from ws_path");
        }
        if self.ws_echo_max_message > 1 << 30 {
            return bad("ws_echo_max_message", "at most 1 GiB");
        }
        if self.api_key.as_deref() == Some("") {
            return bad("api_key", "empty; unset it to disable the check");
        }
        Ok(())
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

/// Parses the full command line, applying `--config` if given.
pub fn parse_cli<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let cli = Cli::try_parse_from(&args)?;
    let Cmd::Serve(serve) = &cli.cmd else {
        return Ok(cli);
    };
    let Some(path) = serve.config.clone() else {
        return Ok(cli);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let injected = file_args(&path, &text)?;
    // Insert the file's flags right after "serve" so every real flag follows.
    let at = args.iter().position(|a| a == "serve").map_or(args.len(), |i| i + 1);
    let mut merged = args[..at].to_vec();
    merged.extend(injected.into_iter().map(Into::into));
    merged.extend_from_slice(&args[at..]);
    Ok(Cli::try_parse_from(merged)?)
}

fn file_args(path: &std::path::Path, text: &str) -> Result<Vec<String>, ConfigError> {
    let err = |msg: String| ConfigError::File {
        path: path.to_path_buf(),
        msg,
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string()))?;
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand exists");
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let known = serve
            .get_arguments()
            .any(|a| a.get_long() == Some(flag.as_str()) && flag != "config");
        if !known {
            return Err(err(format!("unknown key `{key}`")));
        }
        if std::env::var_os(format!("VOLLEY_{}", key.to_ascii_uppercase())).is_some() {
            continue;
        }
        let v = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for it in items {
                    match it {
                        toml::Value::String(s) => parts.push(s),
                        toml::Value::Integer(i) => parts.push(i.to_string()),
                        other => return Err(err(format!("`{key}`: unsupported list item {other}"))),
                    }
                }
                parts.join(",")
            }
            other => return Err(err(format!("`{key}`: unsupported value {other}"))),
        };
        out.push(format!("--{flag}={v}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(cli: Cli) -> Config {
        let Cmd::Serve(s) = cli.cmd else { panic!("not serve") };
        s.server
    }

    #[test]
    fn defaults() {
        let c = serve(parse_cli(["volley", "serve"]).unwrap());
        assert_eq!(c.tcp_listen, "0.0.0.0:3101".parse().unwrap());
        assert_eq!(c.http_listen, "127.0.0.1:3111".parse().unwrap());
        assert_eq!(c.backlog, 65535);
        assert_eq!(c.max_body, 4096);
        c.validate().unwrap();
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("volley-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("v.toml");
        std::fs::write(
            &f,
            "max_body = 8192\nbacklog = 100\ncpus = [0, 1]\nlog_format = \"json\"\ntransparent_hugepages = true\n",
        )
        .unwrap();
        let c = serve(parse_cli(["volley", "serve", "-c", f.to_str().unwrap(), "--backlog", "7"]).unwrap());
        assert_eq!(c.max_body, 8192);
        assert_eq!(c.backlog, 7, "flag beats file");
        assert_eq!(c.cpus, vec![0, 1]);
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.transparent_hugepages);

        std::fs::write(&f, "no_such_knob = 1\n").unwrap();
        let e = parse_cli(["volley", "serve", "-c", f.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown key `no_such_knob`"), "{e}");
    }

    #[test]
    fn validation() {
        let c = Config {
            max_body: 10,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
