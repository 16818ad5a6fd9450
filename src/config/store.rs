//! The knobs of what volley keeps: `[history]` (room logs, their limits
//! and per-room overrides, read marks) and `[inbox]` (user inboxes), and
//! the per-room history policy they resolve to.

use clap::Args;

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
