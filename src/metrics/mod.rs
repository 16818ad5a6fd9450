//! Operator-facing counters: one `ShardStats` block per shard, written only by
//! its shard and read by anyone (the stats API runs on every shard), each
//! defined once in `shard_stats!` and exposed twice — as JSON (`/v1/stats`,
//! `ServerHandle::stats`) and as Prometheus text (`/metrics`, `prometheus`).
//!
//! Every counter is a relaxed atomic on the writing shard's own cache lines,
//! so counting costs a plain add and never contends; a reader sees each value
//! a moment late, which is all a stats page needs. Histograms (`hist`) are
//! the same: fixed buckets, one add per record.
//!
//! Close reasons come from `proto::close::CloseReason` (one counter each,
//! for clients and for TCP publishers), version-2 refusals from
//! `proto::v2::ErrorCode` (one counter each). Time for the histograms comes from
//! `clock_us`, the one clock the server stamps frames with.

mod hist;
pub mod prometheus;

pub use hist::{bucket_bound_us, HistSnapshot, Histogram, BUCKETS};

use crate::proto::close::CloseReason;
use crate::proto::v2::ErrorCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Microseconds on a process-wide monotonic clock, wrapping every ~71
/// minutes: only differences of nearby stamps mean anything.
pub fn clock_us() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u32
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a value is exposed to Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down (a level).
    Gauge,
    /// Only goes up (a total since start).
    Counter,
}

macro_rules! shard_stats {
    ($($kind:ident $field:ident: $help:literal;)*) => {
        /// Counters for one shard.
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $(#[doc = $help] pub $field: AtomicU64,)*
            /// Closes, indexed like `CloseReason::ALL`.
            pub closes: Counts<{ CloseReason::ALL.len() }>,
            /// TCP publisher connections closed, indexed like `CloseReason::ALL`.
            pub publisher_closes: Counts<{ CloseReason::ALL.len() }>,
            /// Version-2 requests refused with an error (op 50), indexed
            /// like `ErrorCode::ALL`.
            pub errors: Counts<{ ErrorCode::ALL.len() }>,
            /// Time one fan-out message (a room frame, a direct delivery, a
            /// push to all) takes to queue to every local recipient, µs.
            pub fanout_us: Histogram,
            /// At each write to a client socket, how long the oldest byte it
            /// writes had been queued (since it was queued or since the last
            /// write left it behind), µs.
            pub queue_wait_us: Histogram,
        }

        /// Serialisable copy of `ShardStats` (see its fields for meaning).
        #[derive(Debug, Default, Clone, Serialize)]
        #[allow(missing_docs)]
        pub struct StatsSnapshot {
            $(pub $field: u64,)*
            pub closes: BTreeMap<&'static str, u64>,
            pub publisher_closes: BTreeMap<&'static str, u64>,
            pub errors: BTreeMap<&'static str, u64>,
            pub fanout_us: HistSnapshot,
            pub queue_wait_us: HistSnapshot,
        }

        impl ShardStats {
            /// A plain copy for serialisation.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($field: self.$field.load(Relaxed),)*
                    closes: by_name(CloseReason::ALL.iter().map(|r| r.name()), &self.closes.0),
                    publisher_closes: by_name(CloseReason::ALL.iter().map(|r| r.name()), &self.publisher_closes.0),
                    errors: by_name(ErrorCode::ALL.iter().map(|e| e.name()), &self.errors.0),
                    fanout_us: self.fanout_us.snapshot(),
                    queue_wait_us: self.queue_wait_us.snapshot(),
                }
            }
        }

        impl StatsSnapshot {
            /// Every plain value: name, kind, help, and its value here.
            pub fn values(&self) -> [(&'static str, Kind, &'static str, u64); [$(stringify!($field)),*].len()] {
                [$((stringify!($field), Kind::$kind, $help, self.$field)),*]
            }

            /// Sums shard snapshots into a total.
            pub fn sum<'a>(all: impl IntoIterator<Item = &'a StatsSnapshot>) -> StatsSnapshot {
                let mut t = StatsSnapshot::default();
                for s in all {
                    $(t.$field += s.$field;)*
                    for (k, v) in &s.closes {
                        *t.closes.entry(k).or_default() += v;
                    }
                    for (k, v) in &s.publisher_closes {
                        *t.publisher_closes.entry(k).or_default() += v;
                    }
                    for (k, v) in &s.errors {
                        *t.errors.entry(k).or_default() += v;
                    }
                    t.fanout_us.add(&s.fanout_us);
                    t.queue_wait_us.add(&s.queue_wait_us);
                }
                t
            }
        }
    };
}

shard_stats! {
    Gauge conns: "Connections currently open (accepted and not yet closed).";
    Gauge authed: "Connections that completed auth and are still open.";
    Counter accepted: "Connections accepted since start.";
    Gauge rooms: "Rooms with at least one member on this shard.";
    Counter frames_in: "Frames received from clients.";
    Counter bytes_in: "Bytes received from clients.";
    Counter published: "Messages published into this shard by the API (as first hop).";
    Counter deliveries: "Frames queued to connections (replies and pushes).";
    Counter bytes_out: "Bytes written to client sockets.";
    Counter writes: "Write syscalls issued (deliveries / writes = coalescing factor).";
    Counter flush_holds: "Rounds of writes the flusher held for [client] flush_delay_ms after a busy round.";
    Counter dropped: "Frames dropped because a connection was closing or over its limit.";
    Gauge outbound_queued: "Bytes charged to this shard's connection queues ([limits] outbound_budget counts these).";
    Counter publish_duplicates: "Publishes (or targets of one) not delivered again: their message id was seen within [api] dedup_window_secs.";
    Counter dedup_forgotten: "Publisher message ids forgotten before their window ended because [api] dedup_max was reached.";
    Counter budget_closes: "Connections closed as slow consumers because the shard's queues passed its share of [limits] outbound_budget.";
    Counter left_ungranted: "Rooms and patterns version-2 connections were taken out of because a refreshed token no longer allowed them.";
    Counter client_publishes: "Version-2 client publishes (op 52) accepted and sent to the room's owner.";
    Counter ws_compressed: "Pushes compressed (permessage-deflate), once each for every WebSocket connection that agreed it.";
    Counter ws_inflated: "Compressed WebSocket messages from clients inflated (permessage-deflate).";
    Gauge pattern_bytes: "Bytes the shard's pattern index takes ([client] pattern_memory counts these).";
    Counter pattern_refused: "Pattern subscriptions refused because the shard's index held its share of [client] pattern_memory.";
    Counter pattern_publishes: "Rooms an API publish to a pattern reached on this shard (as their owner).";
    Counter unknown_ops: "Frames from clients with an operation volley does not serve.";
    Counter accept_errors: "Accept errors (EMFILE and the like).";
    Counter api_refused: "HTTP API and TCP publisher connections refused at [api] max_conns (every place in a request), and HTTP requests refused for [api] body_memory.";
    Counter api_evicted: "HTTP API and TCP publisher connections closed to make room at [api] max_conns (the one waiting longest for a request, or for its auth).";
    Counter api_timeouts: "HTTP API connections closed by a deadline: [api] header_timeout_secs, request_timeout_secs or idle_timeout_secs.";
    Gauge publishers: "TCP publisher connections currently open.";
    Gauge history_messages: "Messages stored in the history of the rooms this shard owns.";
    Gauge history_bytes: "Bytes of history counted against [history] memory: messages, and the room logs' own bookkeeping and read marks, as allocated.";
    Gauge room_logs: "Rooms this shard owns that have an offset and epoch (a log).";
    Counter history_evicted_limit: "Messages that left history by a room's message, byte or age limit.";
    Counter history_evicted_memory: "Messages that left history because `[history] memory` was full (oldest first).";
    Counter history_expired: "Messages that left history when their own TTL ended.";
    Counter history_logs_evicted: "Idle room logs (nothing stored, nobody in the room) dropped because [history] memory was full, least recently used first.";
    Counter resumes: "Version-2 joins that asked to resume from an offset.";
    Counter resumes_failed: "Resumes answered `recovered: false` (epoch changed, history gone, offset ahead).";
    Counter replayed: "Messages sent to resuming connections from history.";
    Gauge inbox_messages: "Pushes waiting in the inboxes of the users this shard owns.";
    Gauge inbox_bytes: "Bytes of inboxes counted against [inbox] memory: the pushes and the inboxes, as allocated.";
    Gauge inbox_users: "Users with something in their inbox.";
    Counter inbox_stored: "Pushes kept in a user's inbox (one per user).";
    Counter inbox_owed: "Inbox pushes sent to a user's connection when it authenticated.";
    Counter inbox_acked: "Inbox pushes acknowledged by a version-2 connection.";
    Counter inbox_evicted_limit: "Inbox pushes that left by a user's message or byte limit.";
    Counter inbox_evicted_memory: "Inbox pushes that left because `[inbox] memory` was full (oldest first).";
    Counter inbox_expired: "Inbox pushes that left at the end of their TTL.";
    Counter storage_records: "Durable store: records appended to this shard's journal.";
    Counter storage_writes: "Durable store: journal writes (each a group commit: everything appended while the one before ran).";
    Counter storage_syncs: "Durable store: fdatasyncs of the journal.";
    Counter storage_written_bytes: "Durable store: bytes written to the journal (whole 4 KiB blocks).";
    Gauge storage_bytes: "Durable store: bytes in this shard's journal segments now.";
    Gauge storage_held: "Durable store: publishes waiting for their records to be on disk before they are answered and sent.";
    Counter storage_failures: "Durable store: journal operations that failed (retried in place every 0.5 s; logged).";
    Counter storage_refused: "Durable store: room publishes refused because the journal was failing or full ([storage] max_bytes).";
    Counter storage_checkpoints: "Durable store: checkpoints written (older segments then removed).";
    Counter storage_replayed: "Durable store: records read back at start.";
    Counter storage_lost: "Durable store: stretches of the journal not read back at start (torn or damaged; each logged with its place).";
    Gauge cluster_rooms: "Cluster mode: rooms this shard owns whose channel the node is subscribed to (it has members of them).";
    Counter cluster_publish_failed: "Cluster mode: publishes Redis did not take (unreachable, or an error), each answered as failed.";
    Counter cluster_filled: "Cluster mode: messages read back from a room's Stream for the node's members after its subscription was lost.";
    Counter cluster_queued: "Cluster mode: pushes and notes sent to this node while it was not subscribed to its channel, read from its queue in Redis once it was again.";
    Counter cluster_bad_messages: "Cluster mode: messages on a volley channel that did not decode (refused, logged).";
    Counter cluster_redis_down: "Cluster mode: Redis operations that failed because their instance was unreachable.";
    Counter cluster_redis_busy: "Cluster mode: Redis operations refused because too many commands were waiting to be written to their instance.";
    Counter cluster_redis_error_replies: "Cluster mode: Redis operations Redis answered with an error reply.";
    Counter cluster_redis_unexpected: "Cluster mode: Redis operations answered with a reply of a shape the command never gives.";
}

/// A counter per name of a fixed list (close reasons, error codes).
#[derive(Debug)]
pub struct Counts<const N: usize>(pub [AtomicU64; N]);

impl<const N: usize> Default for Counts<N> {
    fn default() -> Self {
        Counts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

fn by_name(names: impl Iterator<Item = &'static str>, counters: &[AtomicU64]) -> BTreeMap<&'static str, u64> {
    names.zip(counters).map(|(n, c)| (n, c.load(Relaxed))).collect()
}

impl ShardStats {
    /// Adds `n` to `c`.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Counts one close.
    pub fn close(&self, r: CloseReason) {
        self.closes.0[r.index()].fetch_add(1, Relaxed);
    }

    /// Counts one TCP publisher close.
    pub fn publisher_close(&self, r: CloseReason) {
        self.publisher_closes.0[r.index()].fetch_add(1, Relaxed);
    }

    /// Counts one version-2 error reply.
    pub fn error(&self, e: ErrorCode) {
        self.errors.0[e.index()].fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_listed_once_and_sums_add_up() {
        let a = ShardStats::default();
        ShardStats::add(&a.deliveries, 3);
        a.close(CloseReason::SlowConsumer);
        a.fanout_us.record(10);
        let b = ShardStats::default();
        ShardStats::add(&b.deliveries, 4);
        b.close(CloseReason::SlowConsumer);
        let t = StatsSnapshot::sum(&[a.snapshot(), b.snapshot()]);
        assert_eq!(t.deliveries, 7);
        assert_eq!(t.closes["slow_consumer"], 2);
        assert_eq!(t.fanout_us.count, 1);
        let names: std::collections::HashSet<_> = t.values().iter().map(|v| v.0).collect();
        assert_eq!(names.len(), t.values().len());
        assert!(t.values().iter().any(|v| v == &("deliveries", Kind::Counter, v.2, 7)));
    }
}
