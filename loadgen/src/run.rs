//! What every thread of a run shares: the options, the hello each
//! subscriber sends, the counters, the stop flag and the run's one clock.
//!
//! Built once on the main thread (`Run::new`), cloned into every worker and
//! receive thread (all `Arc`s).

use crate::cli::Common;
use crate::hello::Hello;
use crate::stats::Totals;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Nanoseconds since `base` (the run's one clock).
pub fn now_ns(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

/// What every worker of a run shares.
#[derive(Clone)]
pub struct Run {
    /// The command line's common options.
    pub common: Common,
    /// What each subscriber sends first.
    pub hello: Arc<Hello>,
    /// Counters.
    pub totals: Arc<Totals>,
    /// Set when the run is over.
    pub stop: Arc<AtomicBool>,
    /// The run's clock.
    pub base: Instant,
}

impl Run {
    /// The shared state of a run whose subscribers send `hello`.
    pub fn new(common: Common, hello: Hello) -> Run {
        let totals = Arc::new(Totals::new(common.workers, common.target.len()));
        Run {
            common,
            hello: Arc::new(hello),
            totals,
            stop: Arc::new(AtomicBool::new(false)),
            base: Instant::now(),
        }
    }
}
