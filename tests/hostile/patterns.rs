//! Room patterns are bounded in depth and wildcards, counted, and capped:
//! deep patterns are refused, a connection holds at most `[client]
//! max_patterns`, the index at most `[client] pattern_memory`, and matching
//! a deep room against the worst index the bounds allow leaves other
//! clients' pushes on time.

use super::common::{self, frame, op, op2, Client};
use super::{rss, total, Bystander};
use serde_json::{json, Value};
use std::io::Write;

/// Joins `patterns` on `c` in one op 9 batch; returns the error reasons of
/// the refused ones (empty: all joined).
fn join_patterns(c: &mut Client, patterns: &[String]) -> Vec<String> {
    let mut refused = Vec::new();
    for chunk in patterns.chunks(10) {
        let inner: Vec<u8> = chunk
            .iter()
            .flat_map(|p| frame(2, op2::JOIN, 1, json!({ "room": p }).to_string().as_bytes()))
            .collect();
        c.s.write_all(&frame(2, op::RAW, 0, &inner)).unwrap();
        for _ in chunk {
            let g = c.read().expect("an answer");
            if g.op == op2::ERROR {
                let v: Value = serde_json::from_slice(&g.body).unwrap();
                refused.push(v["reason"].as_str().unwrap().to_string());
            } else {
                assert_eq!(g.op, op2::JOIN_REPLY, "{}", g.text());
            }
        }
    }
    refused
}

#[test]
fn deep_patterns_are_refused_and_the_index_is_capped() {
    let _alone = super::measuring();
    let h = common::start_server(|c| {
        c.client.pattern_memory = 4 << 20;
        // 250 connections from one address at once: the subject here is
        // patterns, not the attempt rate.
        c.limits.conn_rate_per_ip = 0;
    });
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let before = rss();
    // The attack: 64 patterns of ~120 segments per connection.
    let mut held = Vec::new();
    for i in 0..250 {
        let (mut c, _) = Client::authed_v2(h.tcp_addr, &json!({ "mid": 1000 + i }).to_string());
        let deep: Vec<String> = (0..64)
            .map(|j| {
                // 120 segments in 239 bytes, a `*` every seventh.
                let segs: Vec<&str> = (0..120).map(|k| if (k + j) % 7 == 3 { "*" } else { "a" }).collect();
                segs.join("/")
            })
            .collect();
        let refused = join_patterns(&mut c, &deep);
        assert_eq!(refused.len(), 64);
        assert!(refused.iter().all(|r| r == "bad_request"), "{refused:?}");
        held.push(c);
    }
    // Within the bounds: 16 patterns per connection, then pattern_limit.
    let mut within = 0;
    let mut limited = 0;
    for (i, c) in held.iter_mut().enumerate() {
        let ps: Vec<String> = (0..20)
            .map(|j| {
                // 16 short segments, distinct per connection and pattern.
                let segs: Vec<String> = (0..16)
                    .map(|k| if k % 6 == 5 { "*".into() } else { format!("{i}.{j}.{k}") })
                    .collect();
                segs.join("/")
            })
            .collect();
        let refused = join_patterns(c, &ps);
        within += 20 - refused.len();
        limited += refused.iter().filter(|r| *r == "pattern_limit").count();
        assert!(refused.iter().all(|r| r == "pattern_limit"), "{refused:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let bytes = total(&h, |s| s.pattern_bytes) as usize;
    let grew = rss().saturating_sub(before);
    eprintln!(
        "patterns: {within} held, {limited} refused, index {bytes} B (cap {}), RSS +{} MiB",
        4 << 20,
        grew >> 20
    );
    assert!(bytes <= 4 << 20, "{bytes}");
    assert!(limited >= 250 * 4, "max_patterns and the cap refused {limited}");
    assert!(total(&h, |s| s.pattern_refused) > 0, "the memory cap was reached");
    assert!(grew < 64 << 20, "RSS grew {grew} bytes");
    by.finish();
}

#[test]
fn matching_the_worst_index_the_bounds_allow_keeps_others_on_time() {
    let h = common::start_server(|c| {
        c.client.publish_rate = 1000;
        c.client.publish_burst = 1000;
    });
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    // 44 connections of 16 patterns each: together every way of putting 1
    // to 3 `*` in 16 segments, the worst index a room of 16 or more
    // segments can meet (every node on a matching path; all of them match
    // the 16-segment room).
    let mut all = Vec::new();
    for mask in 1u32..1 << 16 {
        if mask.count_ones() <= 3 {
            let p: Vec<&str> = (0..16).map(|i| if mask & (1 << i) != 0 { "*" } else { "a" }).collect();
            all.push(p.join("/"));
        }
    }
    // First the attack: patterns mixing `*` over a 100-segment
    // room, which made every publish to it cost ~49 ms of shard CPU. They
    // are refused now.
    let deep: Vec<String> = (0..4)
        .map(|j| {
            (0..100)
                .map(|k| if (k + j) % 3 == 0 { "*" } else { "a" })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let mut subs = Vec::new();
    for (i, chunk) in all.chunks(16).enumerate() {
        let (mut c, _) = Client::authed_v2(h.tcp_addr, &json!({ "mid": 3000 + i }).to_string());
        let refused = join_patterns(&mut c, &deep);
        assert_eq!(refused, ["bad_request"; 4], "patterns of 100 segments");
        assert!(join_patterns(&mut c, chunk).is_empty());
        subs.push(c);
    }
    // Publishers: 20 connections at 10 publishes a second to that room for
    // three seconds, over the client protocol (op 52).
    let room = vec!["a"; 16].join("/");
    let conns = subs.len();
    let publishers: Vec<_> = (0..20)
        .map(|i| {
            let (addr, room) = (h.tcp_addr, room.clone());
            std::thread::spawn(move || {
                let (mut c, _) = Client::authed_v2(addr, &json!({ "mid": 4000 + i }).to_string());
                c.s.set_read_timeout(Some(std::time::Duration::from_millis(50)))
                    .unwrap();
                let mut body = Vec::new();
                body.extend_from_slice(&1000u32.to_be_bytes());
                body.extend_from_slice(&(room.len() as u16).to_be_bytes());
                body.extend_from_slice(&0u16.to_be_bytes());
                body.extend_from_slice(room.as_bytes());
                body.extend_from_slice(b"x");
                for n in 0..30 {
                    c.send_as(2, 52, n, &body);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    while c.read().is_some() {}
                }
            })
        })
        .collect();
    // Each subscriber drains what it gets meanwhile.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                c.s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
                let mut n = 0;
                while let Some(g) = c.read() {
                    if g.op == op2::PUSH {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let got: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    eprintln!("pattern subscribers got {got} pushes");
    assert_eq!(got, conns * 600, "each of 600 messages once per subscriber");
    by.finish();
}
