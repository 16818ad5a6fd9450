//! Draining (`volley drain`, `POST /v1/drain`): every client connection
//! open on the shard when the drain begins is told to reconnect (`restart`,
//! WebSocket close 1012) at a moment of its own, spread evenly over the
//! window with jitter, so that the reconnects do not arrive at once.
//!
//! `Plan` is pure (times in milliseconds on the driver's monotonic clock);
//! the shard holds one while a drain runs (`Conns::drain`, begun and
//! carried out in `lifecycle`) and its runtime (`shard::run`) calls
//! `Shard::drain_due` until the plan is spent.
//!
//! ```text
//! n connections, window W from t0:  connection i (in a shuffled order)
//!     is due at t0 + W·(i + u_i)/n,  u_i uniform in [0, 1)
//! ```
//!
//! so exactly one falls in each n-th of the window (even), at a random
//! point of it (jitter), and the order says nothing about when a client
//! connected. Connections that arrive after the drain began are not in the
//! plan: a client with nowhere else to go comes back and stays (a load
//! balancer stops sending new ones: `/healthz` answers 503 "draining").
//!
//! Invariants: due times never decrease along the plan; a connection is
//! told at most once (its record may be gone or already closing by its
//! turn: then it is skipped, and counted as told, since it left anyway).

use crate::shard::mesh::ConnRef;
use std::collections::VecDeque;

/// Fractions of a connection's slot, for the jitter.
const JITTER_STEPS: u64 = 1 << 16;

/// Who is told when: connections in due order.
#[derive(Debug, Default)]
pub struct Plan {
    due: VecDeque<(u64, ConnRef)>,
}

impl Plan {
    /// A plan for `conns` over `over_ms` from `start_ms`; `seed` chooses
    /// the order and the jitter.
    pub fn new(mut conns: Vec<ConnRef>, start_ms: u64, over_ms: u64, seed: u64) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        rng.shuffle(&mut conns);
        let n = conns.len() as u128;
        let due = conns
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let at = (i as u128 * u128::from(JITTER_STEPS) + u128::from(rng.u64(..JITTER_STEPS)))
                    * u128::from(over_ms)
                    / (n * u128::from(JITTER_STEPS));
                (start_ms + at as u64, c)
            })
            .collect();
        Plan { due }
    }

    /// Takes the connections due at `now_ms`.
    pub fn take_due(&mut self, now_ms: u64) -> Vec<ConnRef> {
        let mut out = Vec::new();
        while let Some(&(at, c)) = self.due.front() {
            if at > now_ms {
                break;
            }
            self.due.pop_front();
            out.push(c);
        }
        out
    }

    /// When the next connection is due; `None` once every one was told.
    pub fn next_due(&self) -> Option<u64> {
        self.due.front().map(|&(at, _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(n: u32) -> Vec<ConnRef> {
        (0..n).map(|idx| ConnRef { idx, gen: 1 }).collect()
    }

    #[test]
    fn every_connection_is_due_once_inside_the_window_one_per_slot() {
        let n = 1000;
        let mut plan = Plan::new(refs(n), 5_000, 30_000, 7);
        let mut seen = std::collections::HashSet::new();
        let mut per_slot = vec![0u32; n as usize];
        let mut last = 0;
        let mut t = 5_000;
        while let Some(next) = plan.next_due() {
            assert!(next >= last, "due times never go back");
            assert!((5_000..35_000).contains(&next), "{next} outside the window");
            last = next;
            t = t.max(next);
            for c in plan.take_due(t) {
                assert!(seen.insert(c), "{c:?} told twice");
                let slot = (next - 5_000) * u64::from(n) / 30_000;
                per_slot[slot as usize] += 1;
            }
        }
        assert_eq!(seen.len(), n as usize);
        // Even: each n-th of the window holds one connection (a due time
        // rounded down to the millisecond may fall in the slot before).
        assert!(per_slot.iter().all(|&k| k <= 2), "{per_slot:?}");
        // Per second of the window: 1000 / 30, give or take one.
        let mut per_sec = [0u32; 30];
        let mut plan = Plan::new(refs(n), 0, 30_000, 11);
        while let Some(next) = plan.next_due() {
            per_sec[(next / 1000) as usize] += plan.take_due(next).len() as u32;
        }
        assert!(per_sec.iter().all(|&k| (32..=35).contains(&k)), "{per_sec:?}");
    }

    #[test]
    fn the_order_is_shuffled_and_the_jitter_differs_by_seed() {
        let due = |seed| {
            let mut plan = Plan::new(refs(100), 0, 10_000, seed);
            let mut order = Vec::new();
            while let Some(next) = plan.next_due() {
                order.extend(plan.take_due(next).into_iter().map(|c| (next, c.idx)));
            }
            order
        };
        let (a, b) = (due(1), due(2));
        assert_ne!(a, b);
        assert_ne!(a.iter().map(|x| x.1).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn nothing_is_due_before_its_time_and_an_empty_plan_is_spent() {
        let mut plan = Plan::new(refs(3), 100, 3_000, 3);
        assert!(plan.take_due(99).is_empty());
        assert_eq!(plan.due.len(), 3);
        assert_eq!(plan.take_due(10_000).len(), 3);
        assert!(plan.due.is_empty() && plan.next_due().is_none());
        let empty = Plan::new(Vec::new(), 0, 1_000, 1);
        assert!(empty.next_due().is_none());
    }
}
