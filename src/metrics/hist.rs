//! `Histogram`: a latency histogram cheap enough for the hot path — fixed
//! power-of-two buckets of microseconds, one relaxed atomic add per record
//! plus the sum and count.
//!
//! Written by one shard, read by anyone (like the counters). Bucket i holds
//! values v with 2^(i-1) < v <= 2^i µs (bucket 0: v <= 1 µs); the last bucket
//! holds everything above 2^(BUCKETS-2) µs (~16.8 s). That is coarse (a
//! factor of two) but needs no allocation, no lock and no clock of its own.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Number of buckets: ≤ 1 µs, ≤ 2 µs, ... ≤ 2^23 µs, and above.
pub const BUCKETS: usize = 25;

/// Upper bound of bucket `i` in µs (`None` for the last, unbounded one).
pub fn bucket_bound_us(i: usize) -> Option<u64> {
    (i + 1 < BUCKETS).then(|| 1u64 << i)
}

/// A histogram of µs values.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// The bucket `us` falls in.
fn bucket_of(us: u32) -> usize {
    if us <= 1 {
        0
    } else {
        // ceil(log2(us)): 2 → 1, 3..=4 → 2, 5..=8 → 3, ...
        ((32 - (us - 1).leading_zeros()) as usize).min(BUCKETS - 1)
    }
}

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&self, us: u32) {
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.sum.fetch_add(u64::from(us), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// A plain copy.
    pub fn snapshot(&self) -> HistSnapshot {
        HistSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_us: self.sum.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

/// A serialisable copy of a `Histogram` (per-bucket counts, not cumulative).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistSnapshot {
    /// Count per bucket (see `bucket_bound_us`).
    pub buckets: [u64; BUCKETS],
    /// Sum of all values, µs.
    pub sum_us: u64,
    /// Number of values.
    pub count: u64,
}

impl HistSnapshot {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &HistSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_us += other.sum_us;
        self.count += other.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_power_of_two_buckets() {
        for (us, want) in [(0, 0), (1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (1024, 10), (1025, 11)] {
            assert_eq!(bucket_of(us), want, "{us} µs");
            if let Some(bound) = bucket_bound_us(want) {
                assert!(u64::from(us) <= bound);
            }
        }
        assert_eq!(bucket_of(u32::MAX), BUCKETS - 1);
        assert_eq!(bucket_bound_us(BUCKETS - 1), None);
        let h = Histogram::default();
        h.record(3);
        h.record(3);
        h.record(100);
        let s = h.snapshot();
        assert_eq!((s.count, s.sum_us, s.buckets[2], s.buckets[7]), (3, 106, 2, 1));
        let mut t = HistSnapshot::default();
        t.add(&s);
        t.add(&s);
        assert_eq!((t.count, t.buckets[2]), (6, 4));
    }
}
