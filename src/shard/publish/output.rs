//! `Output`: the shard's component for what its connections' queues hold
//! against the outbound budget, and the work lists of connections waiting
//! for the flusher (`conn::flush`) or the reactor (`conn::reactor`).
//!
//! Plain data owned by one shard; `queue` keeps it (every change to a
//! connection's queue changes `queued` by the same amount).

use crate::shard::worklist::Worklist;

/// What a shard's connections' queues hold against its outbound budget,
/// and which connections wait for the flusher or the reactor.
#[derive(Debug)]
pub(in crate::shard) struct Output {
    /// Sum of every local connection's `Conn::charge`: what their output
    /// costs in memory (kept by each change to a queue).
    pub(in crate::shard) queued: usize,
    /// This shard's share of `[limits] outbound_budget` (`usize::MAX` when
    /// the configuration left it unresolved, as the simulated-time harness
    /// does).
    pub(in crate::shard) budget: usize,
    /// Above this, the next queued frame sheds the largest queues
    /// (`Shard::shed`): `high_water`, or more while what keeps the shard
    /// over it cannot be shed yet.
    pub(in crate::shard) shed_above: usize,
    /// Connections whose queue went from empty to non-empty since the
    /// flusher last ran (`Shard::mark_dirty`).
    pub(in crate::shard) dirty: Worklist,
    /// Connections whose driver must run: closes, and the flusher handing
    /// a queue over (`Shard::wake_conn`), for the reactor (`conn::reactor`).
    pub(in crate::shard) woken: Worklist,
}

impl Output {
    /// Nothing queued, under a share (of `nr` shards) of `outbound_budget`
    /// (0: unresolved).
    pub(in crate::shard) fn new(outbound_budget: usize, nr: usize) -> Self {
        let budget = match outbound_budget {
            0 => usize::MAX,
            b => (b / nr).max(1),
        };
        Output {
            queued: 0,
            budget,
            shed_above: budget - budget / 4,
            dirty: Worklist::default(),
            woken: Worklist::default(),
        }
    }
}
