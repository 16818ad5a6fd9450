//! The `volley` command line: the subcommands and the arguments of each
//! (`serve` takes every server knob, `Config`; the operator's commands
//! find the running server's API from the same flags, environment and
//! file). Parsed once, at start, by `layer::parse_cli`.

use super::Config;
use clap::{Args, Parser, Subcommand};
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
    /// Print a configuration: `--example`, a complete `volley.toml` with
    /// every knob at its default; `--print`, what `volley serve` given the
    /// same flags, environment and file would run with.
    #[command(args_override_self = true)]
    Config(ConfigArgs),
    /// Join rooms on a volley server and print what arrives, a line per
    /// push; on a lost connection, reconnect and resume each room from the
    /// last message printed.
    Sub(crate::sub::SubArgs),
    /// Drain a running server: every client connection is told to
    /// reconnect (elsewhere, if there is an elsewhere) at its own moment of
    /// the window, so the reconnects do not arrive at once. Finds the
    /// server's API as `serve` would be configured (same flags,
    /// environment and file); follows the drain until it is done.
    #[command(args_override_self = true)]
    Drain(DrainArgs),
    /// Upgrade a running server in place: it starts a new process of its
    /// binary (as named when it started: replace the file first) and hands
    /// it every listening socket and connection, with their sessions;
    /// clients stay connected. Finds the server's API as `serve` would be
    /// configured; returns once the new process answers, or says why not
    /// (the old one then serves on).
    #[command(args_override_self = true)]
    Upgrade(UpgradeArgs),
}

/// Arguments of `volley upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Seconds to wait for the new process.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Start this binary instead of the server's own: an absolute path in
    /// the same folder, an executable owned by root or the server's user
    /// that nobody else may write (docs/UPGRADE.md).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// The server's configuration: where its API listens, its key.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Arguments of `volley drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Seconds over which the clients are told to reconnect.
    #[arg(long, default_value_t = 30)]
    pub over: u64,
    /// Return once the drain has begun instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    /// The server's configuration: where its API listens, its key.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Arguments of `volley config`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["example", "print"])))]
pub struct ConfigArgs {
    /// Print a complete `volley.toml`: every knob at its default, with what
    /// it does, its flag and its environment variable.
    #[arg(long)]
    pub example: bool,
    /// Print the configuration in force for the flags given here (any of
    /// `serve`'s), the environment and the file, secrets masked.
    #[arg(long)]
    pub print: bool,
    /// What `serve` would be given.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// What to print, made while layering.
    #[arg(skip)]
    pub text: String,
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
