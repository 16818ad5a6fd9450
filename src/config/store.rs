//! The knobs of what volley keeps: `[history]` (room logs, their limits
//! and per-room overrides, read marks), `[inbox]` (user inboxes),
//! `[storage]` (where: memory, or a durable store on disk, and how it
//! syncs), and the per-room history policy they resolve to.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

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

/// `[storage] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageMode {
    /// History, inboxes, marks and publisher ids live in memory and end
    /// with the process.
    Memory,
    /// They are also written to a journal per shard under `dir` and read
    /// back at start.
    Disk,
}

/// `[storage] sync`: when a write to the journal counts as kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// Group commit: answered once on disk, one synchronous write (O_DSYNC:
    /// data and the disk's cache flushed) per batch per shard.
    Batch,
    /// Answered once written to the OS; an fdatasync every
    /// `sync_interval_ms`.
    Interval,
    /// Answered once written to the OS; syncing is left to the OS.
    None,
}

/// `[storage]`
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "[storage]")]
pub struct StorageConfig {
    /// `memory`: everything kept ends with the process; `disk`: history,
    /// inboxes, read marks and publisher ids are written to a journal per
    /// shard under `dir` and come back at start (a single node; cluster
    /// mode keeps them in Redis).
    #[arg(id = "storage-mode", long = "storage-mode", value_enum, default_value_t = StorageMode::Disk)]
    pub mode: StorageMode,

    /// Folder of the durable store (created if missing; one server at a
    /// time: a second one is refused).
    #[arg(id = "storage-dir", long = "storage-dir", default_value = "volley-data")]
    pub dir: PathBuf,

    /// `batch`: a publish, an inbox push and an ack are answered once on
    /// disk (crash- and power-safe); `interval`: once written (crash-safe;
    /// a power loss loses up to `sync_interval_ms`); `none`: once written
    /// (crash-safe; a power loss loses what the OS had not written).
    #[arg(id = "storage-sync", long = "storage-sync", value_enum, default_value_t = SyncMode::Batch)]
    pub sync: SyncMode,

    /// `batch`: microseconds a write waits for others to share its sync
    /// (0: it starts as soon as the previous one ends; writes that arrive
    /// meanwhile share the next).
    #[arg(id = "storage-sync-window-us", long = "storage-sync-window-us", default_value_t = 0)]
    pub sync_window_us: u32,

    /// `interval`: milliseconds between syncs.
    #[arg(
        id = "storage-sync-interval-ms",
        long = "storage-sync-interval-ms",
        default_value_t = 1000
    )]
    pub sync_interval_ms: u32,

    /// Bytes the journals may take on disk, all shards together (split
    /// evenly); past it publishes are refused as `storage full` until a
    /// checkpoint frees space. 0: no bound.
    #[arg(id = "storage-max-bytes", long = "storage-max-bytes", default_value_t = 8 << 30)]
    pub max_bytes: u64,

    /// Bytes per journal segment file (preallocated).
    #[arg(id = "storage-segment-bytes", long = "storage-segment-bytes", default_value_t = 64 << 20)]
    pub segment_bytes: u64,
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
