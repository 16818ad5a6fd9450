//! The `durable` mode, for volley's durable store: `publish` sends pushes
//! with message ids to many rooms and users from several keep-alive HTTP
//! connections (at a fixed or the highest rate) and appends every one the
//! server acknowledged to a log; `verify` checks a server (restarted since,
//! killed or not) against that log: every acknowledged room message in its
//! room's history exactly once at the offset and epoch it was answered
//! with, each room's stored offsets without a gap or a reuse, and every
//! acknowledged user push in its user's inbox exactly once.
//!
//! Log lines: `r ROOM OFFSET EPOCH ID` and `u MID ID`. A publish whose
//! answer was lost (the server died first) is not in the log: it may or may
//! not be stored, but at most once. Plain threads and blocking sockets,
//! loopback only; a publisher stops at the first error (the server went
//! away) or at the deadline.

use crate::publish::{get_json, HttpPublisher};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use volley::proto::binary::{self, op};
use volley::proto::v2;

/// Options of `durable publish`.
pub struct PublishOpts {
    /// The HTTP API.
    pub http: SocketAddr,
    /// API key.
    pub api_key: String,
    /// Rooms `durable://0` .. published to.
    pub rooms: u64,
    /// Users 1 .. pushed to.
    pub users: u64,
    /// Percent of publishes that go to a user.
    pub user_pct: u64,
    /// Publishes per second, all connections together (0: as fast as answered).
    pub rate: u64,
    /// Seconds to publish for.
    pub secs: f64,
    /// Payload bytes.
    pub size: usize,
    /// HTTP connections publishing at once.
    pub conns: usize,
    /// The log acknowledged publishes are appended to.
    pub log: PathBuf,
    /// Prefix of every message id (tells runs apart).
    pub run: String,
}

/// `durable publish`.
pub fn publish(o: PublishOpts) -> Result<()> {
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let hist = Arc::new(Mutex::new(crate::stats::new_hist()));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.secs);
    let o = Arc::new(o);
    let threads: Vec<_> = (0..o.conns.max(1))
        .map(|_| {
            let (o, seq, stop, acked, hist, errors) = (
                o.clone(),
                seq.clone(),
                stop.clone(),
                acked.clone(),
                hist.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || {
                let mut p = match HttpPublisher::connect(o.http, &o.api_key) {
                    Ok(p) => p,
                    Err(e) => {
                        errors.lock().unwrap().push(format!("{e:#}"));
                        return;
                    }
                };
                let payload = "x".repeat(o.size);
                let mut mine = Vec::new();
                let mut lat = crate::stats::new_hist();
                // Runs count from 0 each: a salt from the run's name spreads
                // their targets over every room and user.
                let salt = o
                    .run
                    .bytes()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
                while !stop.load(Relaxed) && Instant::now() < deadline {
                    let n = seq.fetch_add(1, Relaxed);
                    let pick = n.wrapping_add(salt.wrapping_mul(1_000_003));
                    if o.rate > 0 {
                        let due = start + Duration::from_secs_f64(n as f64 / o.rate as f64);
                        if let Some(d) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                    }
                    let id = format!("{}-{n}", o.run);
                    let to_user = n % 100 < o.user_pct;
                    let (path, body, room, mid) = if to_user {
                        let mid = 1 + (pick.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 17) % o.users.max(1);
                        let body = json!({"mids": [mid], "op": 1000, "body": payload, "id": id});
                        ("/v1/push/mids", body, String::new(), mid)
                    } else {
                        // Spread over every room whatever --user-pct picks.
                        let room = format!(
                            "durable://{}",
                            (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % o.rooms.max(1)
                        );
                        let body = json!({"room": room, "op": 1000, "body": payload, "id": id});
                        ("/v1/push/room", body, room, 0)
                    };
                    let t = Instant::now();
                    match p.post_json(path, body.to_string().as_bytes()) {
                        Ok(v) => {
                            let _ = lat.record(t.elapsed().as_micros().max(1) as u64);
                            if to_user {
                                mine.push(format!("u {mid} {id}"));
                            } else {
                                let d = &v["data"];
                                let (Some(offset), Some(epoch)) = (d["offset"].as_u64(), d["epoch"].as_str()) else {
                                    errors.lock().unwrap().push(format!("an answer without an offset: {v}"));
                                    break;
                                };
                                mine.push(format!("r {room} {offset} {epoch} {id}"));
                            }
                        }
                        Err(e) => {
                            // The server went away (or refused): stop here;
                            // what was answered so far is logged.
                            errors.lock().unwrap().push(format!("{e:#}"));
                            stop.store(true, Relaxed);
                            break;
                        }
                    }
                }
                acked.lock().unwrap().extend(mine);
                let _ = hist.lock().unwrap().add(&lat);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&o.log)
        .with_context(|| format!("open {}", o.log.display()))?;
    for line in &acked {
        writeln!(f, "{line}")?;
    }
    f.sync_all()?;
    let h = hist.lock().unwrap();
    let errors = errors.lock().unwrap();
    let report = json!({
        "mode": "durable publish",
        "attempted": seq.load(Relaxed),
        "acknowledged": acked.len(),
        "acknowledged_per_sec": acked.len() as f64 / elapsed,
        "secs": elapsed,
        "latency_us": {"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "max": h.max()},
        "stopped_by": errors.first(),
    });
    println!("{report}");
    Ok(())
}

/// Options of `durable verify`.
pub struct VerifyOpts {
    /// The HTTP API.
    pub http: SocketAddr,
    /// The client TCP listener (user inboxes are read over version 2).
    pub target: SocketAddr,
    /// API key.
    pub api_key: String,
    /// The log `publish` wrote.
    pub log: PathBuf,
}

/// What the log says was acknowledged.
#[derive(Default)]
struct Acked {
    /// Per room: (offset, epoch, id).
    rooms: BTreeMap<String, Vec<(u64, String, String)>>,
    /// Per user: ids.
    users: BTreeMap<i64, Vec<String>>,
}

fn read_log(path: &PathBuf) -> Result<Acked> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut a = Acked::default();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        let w: Vec<&str> = line.split(' ').collect();
        match w.as_slice() {
            ["r", room, offset, epoch, id] => {
                a.rooms
                    .entry(room.to_string())
                    .or_default()
                    .push((offset.parse()?, epoch.to_string(), id.to_string()))
            }
            ["u", mid, id] => a.users.entry(mid.parse()?).or_default().push(id.to_string()),
            _ => bail!("{}: a line this mode does not write: {line:?}", path.display()),
        }
    }
    Ok(a)
}

/// `durable verify`.
pub fn verify(o: VerifyOpts) -> Result<()> {
    let acked = read_log(&o.log)?;
    let (mut missing, mut moved, mut dups, mut gaps, mut epochs) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut stored_rooms = 0u64;
    for (room, want) in &acked.rooms {
        // Every stored message of the room, oldest first.
        let mut stored: Vec<(u64, String)> = Vec::new();
        let mut since = 0;
        let mut epoch;
        loop {
            let d = get_json(
                o.http,
                &o.api_key,
                &format!("/v1/history?room={room}&since={since}&limit=1000"),
            )?;
            epoch = d["epoch"].as_str().unwrap_or_default().to_string();
            let page = d["messages"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                break;
            }
            for m in &page {
                let offset = m["offset"].as_u64().context("a message without an offset")?;
                stored.push((offset, m["id"].as_str().unwrap_or_default().to_string()));
                since = offset;
            }
        }
        stored_rooms += stored.len() as u64;
        gaps += stored.windows(2).filter(|w| w[1].0 != w[0].0 + 1).count() as u64;
        let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
        for (offset, id) in &stored {
            by_id.entry(id.as_str()).or_default().push(*offset);
        }
        dups += by_id.values().filter(|o| o.len() > 1).count() as u64;
        for (offset, e, id) in want {
            if *e != epoch {
                epochs += 1;
            }
            match by_id.get(id.as_str()).map(Vec::as_slice) {
                None => missing += 1,
                Some([o]) if o == offset => {}
                Some(_) => moved += 1,
            }
        }
    }
    let users: Vec<i64> = acked.users.keys().copied().collect();
    let got = read_inboxes(o.target, &users)?;
    let (mut user_missing, mut user_dups) = (0u64, 0u64);
    for (mid, want) in &acked.users {
        let have = got.get(mid).cloned().unwrap_or_default();
        let mut count: HashMap<&str, u64> = HashMap::new();
        for id in &have {
            *count.entry(id.as_str()).or_default() += 1;
        }
        user_dups += count.values().filter(|&&c| c > 1).count() as u64;
        user_missing += want.iter().filter(|id| !count.contains_key(id.as_str())).count() as u64;
    }
    let acked_rooms: usize = acked.rooms.values().map(Vec::len).sum();
    let acked_users: usize = acked.users.values().map(Vec::len).sum();
    let report = json!({
        "mode": "durable verify",
        "rooms": acked.rooms.len(),
        "acknowledged_room_messages": acked_rooms,
        "stored_room_messages": stored_rooms,
        "missing": missing,
        "at_another_offset": moved,
        "duplicated": dups,
        "offset_gaps": gaps,
        "epoch_changed": epochs,
        "users": acked.users.len(),
        "acknowledged_user_pushes": acked_users,
        "user_missing": user_missing,
        "user_duplicated": user_dups,
    });
    println!("{report}");
    if missing + moved + dups + gaps + epochs + user_missing + user_dups > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Every user's inbox, as the publisher ids of what a version-2
/// connection of the user is sent on connect (nothing is acknowledged, so
/// it can be read again). Users are read by 32 threads, each holding its
/// share of connections open until none has had anything for a second.
fn read_inboxes(target: SocketAddr, users: &[i64]) -> Result<HashMap<i64, Vec<String>>> {
    let out: Arc<Mutex<HashMap<i64, Vec<String>>>> = Arc::default();
    let chunks: Vec<Vec<i64>> = users
        .chunks(users.len().div_ceil(32).max(1))
        .map(<[i64]>::to_vec)
        .collect();
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|mids| {
            let out = out.clone();
            std::thread::spawn(move || -> Result<()> {
                for group in mids.chunks(200) {
                    let mut conns = Vec::new();
                    for &mid in group {
                        let mut s = std::net::TcpStream::connect(target).context("connect for an inbox")?;
                        let mut f = bytes::BytesMut::new();
                        binary::encode(
                            &mut f,
                            binary::VERSION_NATIVE,
                            op::AUTH,
                            1,
                            format!(r#"{{"mid":{mid}}}"#).as_bytes(),
                        );
                        s.write_all(&f)?;
                        s.set_read_timeout(Some(Duration::from_millis(20)))?;
                        conns.push((mid, s, Vec::<u8>::new()));
                    }
                    let mut quiet_since = Instant::now();
                    while quiet_since.elapsed() < Duration::from_secs(1) {
                        for (mid, s, buf) in conns.iter_mut() {
                            let mut chunk = [0u8; 65536];
                            match s.read(&mut chunk) {
                                Ok(0) => bail!("the server closed user {mid}'s connection"),
                                Ok(n) => {
                                    buf.extend_from_slice(&chunk[..n]);
                                    quiet_since = Instant::now();
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(e) => return Err(e.into()),
                            }
                            while let Ok(Some((fr, n))) = binary::decode(buf, 1 << 20) {
                                if fr.op == v2::op::PUSH {
                                    let env = v2::decode_push(fr.body).map_err(|e| anyhow::anyhow!("{e}"))?;
                                    out.lock().unwrap().entry(*mid).or_default().push(env.id.to_string());
                                }
                                buf.drain(..n);
                            }
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("an inbox reader panicked"))??;
    }
    let out = std::mem::take(&mut *out.lock().unwrap());
    Ok(out)
}
