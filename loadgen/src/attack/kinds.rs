//! The attacks themselves, one function each (`Kind` says what each does);
//! each returns what it got as JSON. They are the issue's probes, re-run
//! for BENCHMARKS.md ("Hostile clients").

use super::{connect_from, frame, post, read_frame, Kind, Target};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use volley::proto::binary::op;
use volley::proto::v2::op as op2;

/// Runs one attack until `t.until`.
pub fn run(kind: Kind, t: &Target) -> Result<Value> {
    match kind {
        Kind::Marks => room_ops(t, false),
        Kind::Joins => room_ops(t, true),
        Kind::DeepPatterns => deep_patterns(t),
        Kind::PatternCpu => pattern_cpu(t),
        Kind::PublisherPreauth => publisher_preauth(t),
        Kind::SlowHeaders => slow_headers(t),
        Kind::Bodies => bodies(t),
        Kind::Handshakes => handshakes(t),
        Kind::InboxCap => inbox_cap(t),
        Kind::HistoryCap => history_cap(t),
    }
}

/// A version-2 connection from the attacker's address, authenticated; a
/// refusal by a per-IP limit is tried again a second later, as a persistent
/// attacker would (until the attack's end).
fn v2(t: &Target, mid: u64) -> Result<TcpStream> {
    loop {
        let mut s = connect_from(t.tcp, &t.from)?;
        s.write_all(&frame(2, op::AUTH, 1, json!({ "mid": mid }).to_string().as_bytes()))?;
        let (o, body) = read_frame(&mut s)?;
        if o == op::AUTH_REPLY {
            return Ok(s);
        }
        let why = String::from_utf8_lossy(&body).into_owned();
        anyhow::ensure!(why.starts_with("ip_") && t.on(), "auth refused: {why}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sends `frames` as one op 9 batch and reads one answer each: (answered,
/// refused with op 50).
fn batch(s: &mut TcpStream, frames: &[Vec<u8>]) -> Result<(u64, u64)> {
    s.write_all(&frame(2, op::RAW, 0, &frames.concat()))?;
    let (mut ok, mut refused) = (0, 0);
    for _ in frames {
        match read_frame(s)?.0 {
            op2::ERROR => refused += 1,
            _ => ok += 1,
        }
    }
    Ok((ok, refused))
}

fn room_ops(t: &Target, joins: bool) -> Result<Value> {
    let mut s = v2(t, 31)?;
    let (mut ok, mut refused, mut n) = (0, 0, 0u64);
    let frames = |o: u32, rooms: &[String], body: &dyn Fn(&String) -> Value| -> Vec<Vec<u8>> {
        rooms
            .iter()
            .map(|r| frame(2, o, 1, body(r).to_string().as_bytes()))
            .collect()
    };
    while t.on() {
        let rooms: Vec<String> = (0..30).map(|i| format!("live://new-{n}-{i}")).collect();
        n += 1;
        let (a, b) = if joins {
            let room = |r: &String| json!({ "room": r });
            let got = batch(&mut s, &frames(op2::JOIN, &rooms, &room))?;
            batch(&mut s, &frames(op2::LEAVE, &rooms, &room))?;
            got
        } else {
            let mark = |r: &String| json!({"room": r, "offset": 1});
            batch(&mut s, &frames(op2::READ, &rooms, &mark))?
        };
        (ok, refused) = (ok + a, refused + b);
    }
    Ok(json!({"sent": ok + refused, "answered": ok, "refused": refused}))
}

fn join_all(s: &mut TcpStream, patterns: &[String]) -> Result<(u64, u64)> {
    let (mut ok, mut refused) = (0, 0);
    for chunk in patterns.chunks(10) {
        let f: Vec<Vec<u8>> = chunk
            .iter()
            .map(|p| frame(2, op2::JOIN, 1, json!({ "room": p }).to_string().as_bytes()))
            .collect();
        let (a, b) = batch(s, &f)?;
        (ok, refused) = (ok + a, refused + b);
    }
    Ok((ok, refused))
}

fn deep_patterns(t: &Target) -> Result<Value> {
    let (mut ok, mut refused) = (0, 0);
    let mut held = Vec::new();
    for i in 0..250 {
        let mut s = v2(t, 1000 + i)?;
        let deep: Vec<String> = (0..64).map(|j| deep_pattern(120, i as usize, j)).collect();
        let (a, b) = join_all(&mut s, &deep)?;
        (ok, refused) = (ok + a, refused + b);
        held.push(s);
    }
    while t.on() {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(json!({"conns": held.len(), "patterns_joined": ok, "patterns_refused": refused}))
}

/// A pattern of `segments` segments, mostly `a` with a `*` here and
/// there, different for each (connection, pattern): it matches the room of
/// as many `a` segments, and patterns like it fill the index with nodes on
/// that room's paths.
fn deep_pattern(segments: usize, conn: usize, j: usize) -> String {
    let star = |k: usize| {
        // splitmix64 of (conn, j, k): a `*` at one place in four,
        // scattered, so no two patterns share more than a short prefix.
        let mut z = ((conn as u64) << 40 | (j as u64) << 20 | k as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).is_multiple_of(4)
    };
    let segs: Vec<&str> = (0..segments).map(|k| if star(k) { "*" } else { "a" }).collect();
    segs.join("/")
}

/// Every way of putting 1 to 3 `*` in 16 segments: the worst index a room
/// of 16 segments can meet within the pattern bounds.
fn worst_patterns() -> Vec<String> {
    (1u32..1 << 16)
        .filter(|m| m.count_ones() <= 3)
        .map(|m| {
            (0..16)
                .map(|i| if m & (1 << i) != 0 { "*" } else { "a" })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}

fn pattern_cpu(t: &Target) -> Result<Value> {
    let all = worst_patterns();
    let mut subs = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..100usize {
        let mut s = v2(t, 2000 + i as u64)?;
        // The issue's: 64 patterns of 100 segments matching the room; what
        // is refused is replaced by the worst the bounds allow (16 of them).
        let deep: Vec<String> = (0..64).map(|j| deep_pattern(100, i, j)).collect();
        let (a, b) = join_all(&mut s, &deep)?;
        let bounded: Vec<String> = (0..(b as usize).min(16))
            .map(|j| all[(i * 16 + j) % all.len()].clone())
            .collect();
        let (c, d) = join_all(&mut s, &bounded)?;
        (ok, refused) = (ok + a + c, refused + b + d);
        subs.push(s);
    }
    // Each publisher sends to both rooms: the issue's, which the deep
    // patterns match, and the 16-segment one the bounded patterns match,
    // so each build meets the worst an attacker can make it match.
    let rooms = [vec!["a"; 100].join("/"), vec!["a"; 16].join("/")];
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut n = 0u64;
                while let Ok((o, _)) = read_frame(&mut s) {
                    n += u64::from(o == op2::PUSH);
                }
                n
            })
        })
        .collect();
    let publishers: Vec<_> = (0..20u64)
        .map(|i| {
            let (t, rooms) = (t.clone(), rooms.clone());
            std::thread::spawn(move || -> Result<(u64, u64)> {
                let mut s = v2(&t, 3000 + i)?;
                let frames: Vec<Vec<u8>> = rooms
                    .iter()
                    .map(|room| {
                        frame(
                            2,
                            op2::PUBLISH,
                            1,
                            &volley::proto::v2::publish_body(1000, room, "", b"x"),
                        )
                    })
                    .collect();
                let (mut ok, mut refused) = (0, 0);
                while t.on() {
                    // Two a batch, five batches a second: within the
                    // default 10 publishes per second.
                    let (a, b) = batch(&mut s, &frames)?;
                    (ok, refused) = (ok + a, refused + b);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok((ok, refused))
            })
        })
        .collect();
    let (mut published, mut pub_refused) = (0, 0);
    for p in publishers {
        let (a, b) = p.join().map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        (published, pub_refused) = (published + a, pub_refused + b);
    }
    let delivered: u64 = readers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    Ok(json!({
        "subscribers": 100, "patterns_joined": ok, "patterns_refused": refused,
        "published": published, "publishes_refused": pub_refused, "delivered": delivered,
    }))
}

fn publisher_preauth(t: &Target) -> Result<Value> {
    let mut head = frame(1, op::AUTH, 1, b"");
    head[..4].copy_from_slice(&((4u32 << 20) + 16).to_be_bytes());
    let chunk = vec![b'x'; 64 << 10];
    let (mut conns, mut told, mut ms) = (0u64, 0u64, Vec::new());
    while t.on() {
        let round: Vec<_> = (0..100)
            .map(|_| {
                let (addr, from, head, chunk) = (t.publish, t.from.clone(), head.clone(), chunk.clone());
                std::thread::spawn(move || -> Option<(bool, f64)> {
                    let start = Instant::now();
                    let mut s = connect_from(addr, &from).ok()?;
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_all(&head);
                    for _ in 0..64 {
                        if s.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                    let why = String::from_utf8_lossy(rest.get(16..).unwrap_or_default()).into_owned();
                    Some((
                        why.starts_with("body_too_large"),
                        start.elapsed().as_secs_f64() * 1000.0,
                    ))
                })
            })
            .collect();
        for r in round {
            if let Ok(Some((ok, t))) = r.join() {
                conns += 1;
                told += u64::from(ok);
                ms.push(t);
            }
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(json!({
        "conns": conns, "told_body_too_large": told,
        "conn_lifetime_ms_p50": ms.get(ms.len() / 2), "conn_lifetime_ms_max": ms.last(),
    }))
}

fn slow_headers(t: &Target) -> Result<Value> {
    let mut open: Vec<TcpStream> = Vec::new();
    let (mut opened, mut closed, mut last_beat) = (0u64, 0u64, Instant::now());
    while t.on() {
        while open.len() < 1_100 && t.on() {
            match connect_from(t.http, &t.from) {
                Ok(mut s) => {
                    let _ = s.write_all(b"GET /v1/stats HTTP/1.1\r\n");
                    let _ = s.set_nonblocking(true);
                    open.push(s);
                    opened += 1;
                }
                Err(_) => break,
            }
        }
        if last_beat.elapsed() >= Duration::from_secs(5) {
            last_beat = Instant::now();
            open.retain_mut(|s| {
                let mut b = [0u8; 64];
                let gone = s.read(&mut b).is_ok() || s.write_all(b"X").is_err();
                closed += u64::from(gone);
                !gone
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(json!({"opened": opened, "closed_by_server": closed, "open_at_end": open.len()}))
}

fn bodies(t: &Target) -> Result<Value> {
    let head = "POST /goim/push/all?operation=1000 HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n";
    let chunk = vec![b'x'; 64 << 10];
    let (mut sent, mut refused_early, mut reads) = (0u64, 0u64, 0u64);
    while t.on() {
        let round: Vec<_> = (0..100)
            .map(|_| {
                let (addr, from, chunk) = (t.http, t.from.clone(), chunk.clone());
                let until = t.until;
                std::thread::spawn(move || -> Option<bool> {
                    let mut s = connect_from(addr, &from).ok()?;
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = s.write_all(head.as_bytes());
                    let mut wrote_all = true;
                    for _ in 0..63 {
                        if s.write_all(&chunk).is_err() {
                            wrote_all = false;
                            break;
                        }
                    }
                    // Hold it unfinished until the server lets go.
                    let _ = s.set_read_timeout(Some(
                        until
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(1)),
                    ));
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                    Some(!wrote_all || rest.starts_with(b"HTTP/1.1 503"))
                })
            })
            .collect();
        for r in round {
            if let Ok(Some(early)) = r.join() {
                sent += 1;
                if early {
                    refused_early += 1;
                } else {
                    reads += 1;
                }
            }
        }
    }
    Ok(json!({"requests": sent, "refused_before_the_body": refused_early, "bodies_read_then_dropped": reads}))
}

fn handshakes(t: &Target) -> Result<Value> {
    let mut held = Vec::new();
    let (mut opened, mut legit_ok, mut legit_tries) = (0u64, 0u64, 0u64);
    let mut next_legit = Instant::now();
    while t.on() {
        // Raw TCP sockets that say nothing, and WebSocket ones that begin
        // their upgrade and stop.
        for i in 0..200 {
            let ws = i % 2 == 1;
            if let Ok(mut s) = connect_from(if ws { t.ws } else { t.tcp }, &t.from) {
                if ws {
                    let _ = s.write_all(b"GET /sub HTTP/1.1\r\nHost: x\r\n");
                }
                held.push(s);
                opened += 1;
            }
        }
        held.retain_mut(|s| {
            let _ = s.set_nonblocking(true);
            let mut b = [0u8; 256];
            s.read(&mut b).is_err()
        });
        if Instant::now() >= next_legit {
            next_legit += Duration::from_secs(1);
            legit_tries += 1;
            let ok = (|| -> Result<bool> {
                let mut s = connect_from(t.tcp, "127.0.0.4")?;
                s.write_all(&frame(1, op::AUTH, 1, br#"{"mid":77}"#))?;
                Ok(read_frame(&mut s)?.0 == op::AUTH_REPLY)
            })()
            .unwrap_or(false);
            legit_ok += u64::from(ok);
        }
    }
    Ok(json!({"opened": opened, "held_at_end": held.len(), "legit_tries": legit_tries, "legit_ok": legit_ok}))
}

fn inbox_cap(t: &Target) -> Result<Value> {
    let body = "x".repeat(64);
    let pushes = publish_batches(
        t,
        2_000_000,
        |n| json!({"target": "mids", "mids": [1 + n], "op": 1000, "body": body}),
    )?;
    Ok(json!({ "user_pushes": pushes }))
}

fn history_cap(t: &Target) -> Result<Value> {
    let body = "x".repeat(64);
    let rooms = publish_batches(
        t,
        300_000,
        |n| json!({"target": "room", "room": format!("live://h-{n}"), "op": 1000, "body": body}),
    )?;
    Ok(json!({ "rooms_published": rooms }))
}

/// Publishes `message(n)` for n = 0, 1, ... up to `most`, a thousand per
/// `/v1/publish`, until the attack's end; returns how many.
fn publish_batches(t: &Target, most: u64, message: impl Fn(u64) -> Value) -> Result<u64> {
    let mut n = 0u64;
    while t.on() && n < most {
        let messages: Vec<Value> = (n..n + 1000).map(&message).collect();
        let body = json!({ "messages": messages }).to_string();
        let status = post(t.http, &t.api_key, "/v1/publish", body.as_bytes()).context("publish")?;
        anyhow::ensure!(status == 200, "status {status}");
        n += 1000;
    }
    Ok(n)
}
