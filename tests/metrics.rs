//! `/metrics` is valid Prometheus text, checked by a real parser
//! (openmetrics-parser's `parse_prometheus`), and says what `/v1/stats` says.

mod common;
use common::*;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusType, PrometheusValue};
use std::io::{Read, Write};

fn scrape(h: &volley::ServerHandle) -> String {
    let mut s = std::net::TcpStream::connect(h.http_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

fn number(v: &PrometheusValue) -> f64 {
    match v {
        PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
        PrometheusValue::Counter(c) => c.value.as_f64(),
        other => panic!("not a number: {other:?}"),
    }
}

#[test]
fn metrics_parse_and_agree_with_the_stats() {
    let h = start_server(|_| {});
    let mut members = spread(&h, |_| Client::authed(h.tcp_addr, r#"{"room_id":"live://m"}"#));
    let mut bad = Client::connect(h.tcp_addr);
    bad.send(op::HEARTBEAT, 0, b"");
    assert!(bad.expect_closed().is_some());
    for i in 0..5 {
        post(
            &h,
            "/goim/push/room?operation=1000&type=live&room=m",
            format!("m{i}").as_bytes(),
        );
    }
    for c in &mut members {
        for _ in 0..5 {
            c.read_push();
        }
    }
    let n = members.len() as f64;
    // Counts settle once every shard has published its view (the members
    // have read every push, so the writes are done; how many writes carried
    // them depends on coalescing, so they are not counted here).
    wait_until("stats settle", || {
        let total = volley::metrics::StatsSnapshot::sum(&h.stats());
        total.deliveries >= 5 * members.len() as u64 && total.rooms == 2 && closes(&h, "auth_required") == 1
    });

    let text = scrape(&h);
    let parsed = parse_prometheus(&text).unwrap_or_else(|e| panic!("not valid Prometheus text: {e:?}\n{text}"));
    let fam = |name: &str| parsed.families.get(name).unwrap_or_else(|| panic!("no family {name}"));
    let sum_over_shards = |name: &str| -> f64 {
        let f = fam(name);
        assert_eq!(f.get_label_names(), ["shard"], "{name}");
        (0..h.nr_shards())
            .map(|s| {
                let sample = f
                    .get_sample_by_label_values(&[s.to_string()])
                    .unwrap_or_else(|| panic!("{name}: no shard {s}"));
                number(&sample.value)
            })
            .sum()
    };
    assert_eq!(fam("volley_authed").family_type, PrometheusType::Gauge);
    assert_eq!(sum_over_shards("volley_authed"), n);
    assert_eq!(sum_over_shards("volley_rooms"), 2.0, "one room on each shard");
    assert_eq!(fam("volley_published_total").family_type, PrometheusType::Counter);
    assert_eq!(sum_over_shards("volley_published_total"), 5.0);
    let stats = volley::metrics::StatsSnapshot::sum(&h.stats());
    assert!(sum_over_shards("volley_deliveries_total") >= 5.0 * n);
    assert_eq!(sum_over_shards("volley_accepted_total"), stats.accepted as f64);

    let closes = fam("volley_closes_total");
    // The parser keeps label names sorted.
    assert_eq!(closes.get_label_names(), ["reason", "shard"]);
    let auth_required: f64 = (0..h.nr_shards())
        .map(|s| {
            number(
                &closes
                    .get_sample_by_label_values(&["auth_required".into(), s.to_string()])
                    .expect("every reason on every shard")
                    .value,
            )
        })
        .sum();
    assert_eq!(auth_required, 1.0);

    for name in ["volley_fanout_seconds", "volley_queue_wait_seconds"] {
        let f = fam(name);
        assert_eq!(f.family_type, PrometheusType::Histogram, "{name}");
        let mut count = 0;
        for s in 0..h.nr_shards() {
            let sample = f.get_sample_by_label_values(&[s.to_string()]).expect("a shard");
            let PrometheusValue::Histogram(hist) = &sample.value else {
                panic!("{name} is a histogram")
            };
            let c = hist.count.expect("a _count");
            let inf = hist.buckets.last().expect("buckets");
            assert_eq!(inf.upper_bound, f64::INFINITY);
            assert_eq!(inf.count.as_f64() as u64, c, "{name}: +Inf bucket = count");
            let bounds: Vec<f64> = hist.buckets.iter().map(|b| b.upper_bound).collect();
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name}: ascending le");
            count += c;
        }
        assert!(count > 0, "{name}: something was measured");
    }
    assert!(fam("volley_fanout_seconds").help.contains("fan-out"));
}

#[test]
fn metrics_need_the_api_key_when_one_is_set() {
    let h = start_server(|c| c.api.key = Some("k".into()));
    let (status, _) = http(h.http_addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 401);
    let mut s = std::net::TcpStream::connect(h.http_addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Api-Key: k\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
