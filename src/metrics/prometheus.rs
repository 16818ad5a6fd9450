//! The Prometheus text exposition (format 0.0.4) of every shard's stats,
//! served at `GET /metrics` on the API listener.
//!
//! Pure: snapshots in, text out; runs on whichever shard serves the request.
//! Every value carries a `shard` label; close counters also a `reason`.
//!
//! ```text
//! volley_<gauge>{shard="0"} 12                       (conns, authed, rooms, publishers)
//! volley_<counter>_total{shard="0"} 34               (everything else)
//! volley_closes_total{shard="0",reason="slow_consumer"} 1
//! volley_publisher_closes_total{shard="0",reason="bad_api_key"} 0
//! volley_fanout_seconds_bucket{shard="0",le="0.000001"} 0 ... le="+Inf", _sum, _count
//! volley_queue_wait_seconds_bucket{...}               (the same shape)
//! ```

use super::{bucket_bound_us, HistSnapshot, Kind, StatsSnapshot, BUCKETS};
use crate::proto::close::CloseReason;
use crate::proto::v2::ErrorCode;
use std::fmt::Write;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition of `shards` (index = shard id).
pub fn render(shards: &[StatsSnapshot]) -> String {
    let mut out = String::with_capacity(4096 + shards.len() * 8192);
    let Some(first) = shards.first() else {
        return out;
    };
    for (i, (name, kind, help, _)) in first.values().iter().enumerate() {
        let (full, typ) = match kind {
            Kind::Gauge => (format!("volley_{name}"), "gauge"),
            Kind::Counter => (format!("volley_{name}_total"), "counter"),
        };
        family(&mut out, &full, help, typ);
        for (shard, s) in shards.iter().enumerate() {
            let _ = writeln!(out, "{full}{{shard=\"{shard}\"}} {}", s.values()[i].3);
        }
    }
    for (full, help, pick) in [
        (
            "volley_closes_total",
            "Client connections closed, by reason.",
            (|s: &StatsSnapshot| &s.closes) as fn(&StatsSnapshot) -> &std::collections::BTreeMap<&'static str, u64>,
        ),
        (
            "volley_publisher_closes_total",
            "TCP publisher connections closed, by reason.",
            |s: &StatsSnapshot| &s.publisher_closes,
        ),
    ] {
        labelled(
            &mut out,
            full,
            help,
            shards,
            pick,
            CloseReason::ALL.iter().map(|r| r.name()),
        );
    }
    labelled(
        &mut out,
        "volley_errors_total",
        "Version-2 requests refused with an error reply (op 50), by reason.",
        shards,
        |s| &s.errors,
        ErrorCode::ALL.iter().map(|e| e.name()),
    );
    histogram(
        &mut out,
        "volley_fanout_seconds",
        "Time to queue one fan-out message to every local recipient.",
        shards.iter().map(|s| &s.fanout_us),
    );
    histogram(
        &mut out,
        "volley_queue_wait_seconds",
        "At each write to a client socket, how long the oldest byte written had been queued.",
        shards.iter().map(|s| &s.queue_wait_us),
    );
    out
}

fn labelled(
    out: &mut String,
    full: &str,
    help: &str,
    shards: &[StatsSnapshot],
    pick: fn(&StatsSnapshot) -> &std::collections::BTreeMap<&'static str, u64>,
    names: impl Iterator<Item = &'static str> + Clone,
) {
    family(out, full, help, "counter");
    for (shard, s) in shards.iter().enumerate() {
        for name in names.clone() {
            let n = pick(s).get(name).copied().unwrap_or(0);
            let _ = writeln!(out, "{full}{{shard=\"{shard}\",reason=\"{name}\"}} {n}");
        }
    }
}

fn family(out: &mut String, name: &str, help: &str, typ: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {typ}");
}

fn histogram<'a>(out: &mut String, name: &str, help: &str, shards: impl Iterator<Item = &'a HistSnapshot>) {
    family(out, name, help, "histogram");
    for (shard, h) in shards.enumerate() {
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate().take(BUCKETS) {
            cumulative += n;
            let le = bucket_bound_us(i).map_or("+Inf".to_string(), seconds);
            let _ = writeln!(out, "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {}", seconds(h.sum_us));
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {}", h.count);
    }
}

/// µs as seconds, exactly (six decimals, trailing zeros trimmed).
fn seconds(us: u64) -> String {
    let s = format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// HELP text escaping: backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(1), "0.000001");
        assert_eq!(seconds(1_500_000), "1.5");
        assert_eq!(seconds(2_000_000), "2");
        assert_eq!(seconds(0), "0");
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_the_count() {
        let mut s = StatsSnapshot::default();
        s.fanout_us.buckets[0] = 2;
        s.fanout_us.buckets[3] = 1;
        s.fanout_us.count = 3;
        s.fanout_us.sum_us = 9;
        let text = render(&[s.clone(), StatsSnapshot::default()]);
        assert!(text.contains("volley_fanout_seconds_bucket{shard=\"0\",le=\"0.000001\"} 2\n"));
        assert!(text.contains("volley_fanout_seconds_bucket{shard=\"0\",le=\"0.000008\"} 3\n"));
        assert!(text.contains("volley_fanout_seconds_bucket{shard=\"0\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("volley_fanout_seconds_sum{shard=\"0\"} 0.000009\n"));
        assert!(text.contains("volley_conns{shard=\"1\"} 0\n"));
        assert!(text.contains("volley_closes_total{shard=\"1\",reason=\"slow_consumer\"} 0\n"));
        assert_eq!(text.matches("# TYPE volley_deliveries_total counter").count(), 1);
    }
}
