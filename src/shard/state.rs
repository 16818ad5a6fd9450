//! `Shard`: everything one core owns, as a few components that each own
//! their data, and `route`.
//!
//! ```text
//! conns    Conns    records (slab), deadline wheel, per-IP counts, publisher sockets   conns/
//! index    Index    rooms, patterns, watched presence                                   index/
//! store    Store    room logs and inboxes (one bounded store), dedup                    store/
//! owners   Owners   the key and user directory slice, push ids                          owners/
//! out      Output   queued bytes against the budget, flusher and reactor work lists    publish/queue
//! clock    Clock    the driver's µs and Unix clocks
//! cluster  Option<ShardCluster>   cluster mode's links and subscriptions                cluster/
//! ```
//!
//! What the shard does with them is spread by role over the folders, each
//! file an `impl Shard` block; `dispatch` acts on mesh messages.
//!
//! Runs on exactly one glommio executor thread and is shared by that
//! executor's tasks through `Rc<RefCell<Shard>>`. No method awaits, reads a
//! clock or touches a socket: time arrives as `sweep` ticks and `set_clock`
//! stamps, bytes as `feed`, and what connections are sent accumulates in
//! their records' queues. That is what lets the simulated-time harness
//! (`sim`) drive it without sockets.
//!
//! Routing: `route(to, msg)` handles a message inline when `to` is this
//! shard and sends it over the mesh otherwise (seastar's `invoke_on`).

use super::conns::Conns;
use super::dedup::Outcome;
use super::index::Index;
use super::mesh::ShardMsg;
use super::owners::Owners;
use super::publish::Output;
use super::store::Store;
use super::view::Shared;
use crate::config::Config;
use crate::metrics::ShardStats;
use std::sync::Arc;

/// One core's state: a few named components, each owning its data.
pub struct Shard {
    /// This shard's index.
    pub id: usize,
    /// Cross-shard state.
    pub shared: Arc<Shared>,
    /// Client connections, their deadlines, client addresses, publisher
    /// sockets (`conns`).
    pub(super) conns: Conns,
    /// Who is in which room, who holds which pattern, who watches whose
    /// presence (`index`).
    pub(super) index: Index,
    /// Room logs, inboxes and publisher ids seen of what this shard owns
    /// (`store`).
    pub(super) store: Store,
    /// This shard's slice of the key and user directory (`owners`).
    pub(super) owners: Owners,
    /// What the connections' queues hold against the outbound budget, and
    /// the work lists of the flusher and the reactor (`publish::queue`).
    pub(super) out: Output,
    /// The clocks as last set by whoever drives the shard.
    pub(super) clock: Clock,
    /// Set by `Shutdown`: accept loops stop, new connections are refused.
    pub shutting_down: bool,
    /// Its connections are being handed to the next process (`volley
    /// upgrade`): nothing reads or writes them; what they have queued
    /// stays queued for the records. The sweep goes on: what is under way
    /// in the journal (a checkpoint's turns) must finish for the shard to
    /// settle.
    pub handing_off: bool,
    /// The durable store is being read back (`shard::recovery`): what
    /// this shard would handle inline waits in its inbox instead, so that
    /// nothing it owns is touched before it is loaded.
    pub(super) recovering: bool,
    /// Cluster mode: links, subscribers, subscribed rooms (`None`: single
    /// node).
    pub cluster: Option<super::cluster::state::ShardCluster>,
}

/// The clocks a shard reads, as last set by its driver (the shard reads
/// none itself).
#[derive(Debug, Default)]
pub(super) struct Clock {
    /// What frames are stamped with when queued (µs, wrapping: `set_clock`).
    pub(super) now: u32,
    /// Unix seconds (`set_unix`): what token expiry and the per-IP attempt
    /// window are measured with.
    pub(super) unix: u64,
}

impl Shard {
    /// A new, empty shard.
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        let nr = shared.mesh.nr_shards().max(1);
        let store = Store::new(&shared.config, nr, {
            let views = shared.clone();
            move |room| views.room_count(room, None) > 0
        });
        Shard {
            id,
            conns: Conns::default(),
            index: Index::default(),
            store,
            owners: Owners::default(),
            out: Output::new(shared.config.limits.outbound_budget, nr),
            clock: Clock::default(),
            shared,
            shutting_down: false,
            handing_off: false,
            recovering: false,
            cluster: None,
        }
    }

    pub(super) fn cfg(&self) -> &Config {
        &self.shared.config
    }

    /// This shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.shared.mesh.nr_shards()
    }

    pub(super) fn nr(&self) -> usize {
        self.nr_shards()
    }

    /// Sets the clock that frames queued from now on are stamped with (µs
    /// on any monotonic clock, wrapping); the driver compares against the
    /// same clock when it writes them (queue-wait metric).
    pub fn set_clock(&mut self, now_us: u32) {
        self.clock.now = now_us;
    }

    /// Sets the wall-clock time (Unix seconds) tokens and per-IP windows
    /// are checked against.
    pub fn set_unix(&mut self, secs: u64) {
        self.clock.unix = secs;
    }

    /// Sends `msg` to shard `to`, or handles it inline when `to` is this
    /// shard (unless it is recovering: then it waits in its inbox).
    pub fn route(&mut self, to: usize, msg: ShardMsg) {
        if to == self.id && !self.recovering {
            self.handle(msg);
        } else {
            self.shared.mesh.send(to, msg);
        }
    }

    /// Of `targets` of a push with publisher message id `id`, those that
    /// have not had a push with that id within the dedup window (all of
    /// them when there is no id); remembers the id for each. `key` names a
    /// target in this shard's dedup set.
    pub(super) fn first_seen<T>(&mut self, targets: Vec<T>, id: Option<&str>, key: impl Fn(&T) -> String) -> Vec<T> {
        let Some(id) = id else { return targets };
        let now = self.conns.wheel.now();
        let before = targets.len();
        let fresh: Vec<T> = targets
            .into_iter()
            .filter(|t| {
                let k = format!("{}\0{id}", key(t));
                if self.store.dedup.seen(&k, now).is_some() {
                    return false;
                }
                self.store.dedup.record(&k, Outcome::Direct, now);
                if self.store.disk.is_some() {
                    let at = self.clock.unix;
                    self.log(&crate::disk::record::Record::Seen {
                        key: &k,
                        at,
                        offset: 0,
                        epoch: 0,
                    });
                }
                true
            })
            .collect();
        ShardStats::add(&self.stats().publish_duplicates, (before - fresh.len()) as u64);
        fresh
    }
}
