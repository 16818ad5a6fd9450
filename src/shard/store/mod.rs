//! What a shard keeps for its rooms and users, each bounded and counted:
//! one bounded store (`bounded`: per-key FIFO, per-key limits, the shard's
//! cap, the expiry heap, evictions by cause) under room logs (`history`:
//! offsets, epochs, history and its limits, marks) and user inboxes
//! (`inbox`); publisher message ids seen (`dedup`); what kept data costs in
//! memory as the limits count it (`cost`); the expiry marks and
//! order-queue compaction the stores share (`due`); and the durable store
//! under them all (`durable`: a journal of every change, read back at
//! start).
//!
//! Pure data, owned by one shard; time arrives as ticks.

pub mod bounded;
pub mod cost;
pub mod dedup;
pub mod due;
pub mod durable;
pub mod history;
pub mod inbox;

use crate::config::Config;
use crate::metrics::ShardStats;
use std::sync::atomic::Ordering::Relaxed;

/// Every this many ticks the sweep drops idle room logs (see `history::gc`).
const GC_TICKS: u32 = 60;

/// What a shard keeps for the rooms and users it owns.
#[derive(Debug)]
pub(in crate::shard) struct Store {
    /// Offsets, epochs and history of the rooms this shard owns.
    pub(in crate::shard) logs: history::Logs,
    /// Inboxes of the users this shard owns.
    pub(in crate::shard) inbox: inbox::Inboxes,
    /// Publisher message ids seen lately, of what this shard acted on first.
    pub(in crate::shard) dedup: dedup::Dedup,
    /// The durable store's journal and what waits for it (`[storage] mode
    /// = "disk"` on a single node; set once recovered).
    pub(in crate::shard) disk: Option<durable::Durable>,
}

impl Store {
    /// One shard's stores, each with its share (of `nr` shards) of the
    /// configured memory; `in_use` tells whether a room has members
    /// anywhere (its idle log stays).
    pub(in crate::shard) fn new(config: &Config, nr: usize, in_use: impl Fn(&str) -> bool + 'static) -> Self {
        let mut logs = history::Logs::new(config.history.memory / nr);
        logs.set_in_use(in_use);
        let ib = &config.inbox;
        let policy = inbox::Policy {
            messages: ib.messages,
            bytes: ib.bytes,
            ttl: ib.ttl_secs,
        };
        Store {
            logs,
            inbox: inbox::Inboxes::new(policy, ib.memory / nr),
            dedup: dedup::Dedup::new(config.api.dedup_window_secs, config.api.dedup_max / nr),
            disk: None,
        }
    }

    /// Once a tick: what is due leaves each store, idle room logs go every
    /// `GC_TICKS`, and the figures go into the shard's stats `st`.
    pub(in crate::shard) fn sweep(&mut self, tick: u32, st: &ShardStats) {
        self.logs.expire(tick);
        self.inbox.expire(tick);
        if tick % GC_TICKS == 0 {
            self.logs.gc(tick);
        }
        self.dedup.expire(tick);
        ShardStats::add(&st.dedup_forgotten, self.dedup.take_forgotten());
        self.count_inbox(st);
        self.count_history(st);
    }

    /// Publishes the inbox figures into `st`.
    pub(in crate::shard) fn count_inbox(&mut self, st: &ShardStats) {
        let e = self.inbox.take_evicted();
        ShardStats::add(&st.inbox_evicted_limit, e.limit);
        ShardStats::add(&st.inbox_evicted_memory, e.memory);
        ShardStats::add(&st.inbox_expired, e.ttl);
        st.inbox_messages.store(self.inbox.messages() as u64, Relaxed);
        st.inbox_bytes.store(self.inbox.bytes() as u64, Relaxed);
        st.inbox_users.store(self.inbox.users() as u64, Relaxed);
    }

    /// Publishes the history figures into `st`.
    pub(in crate::shard) fn count_history(&mut self, st: &ShardStats) {
        let e = self.logs.take_evicted();
        ShardStats::add(&st.history_evicted_limit, e.limit);
        ShardStats::add(&st.history_evicted_memory, e.memory);
        ShardStats::add(&st.history_expired, e.ttl);
        ShardStats::add(&st.history_logs_evicted, e.rooms);
        st.history_messages.store(self.logs.messages() as u64, Relaxed);
        st.history_bytes.store(self.logs.charged() as u64, Relaxed);
        st.room_logs.store(self.logs.rooms() as u64, Relaxed);
    }
}
