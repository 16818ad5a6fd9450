//! `durable pipeline`: acknowledged publishes through volley's TCP publisher
//! connection, the way an application server that cares about throughput
//! publishes: each connection keeps up to `--window` room pushes in flight
//! (version-2 frames, a message id on each, a sequence number each) and
//! counts the replies, which the server sends once the push and every one
//! before it are kept (docs/API.md, *TCP publisher*; with `sync = "batch"`:
//! on disk). Reports acknowledged publishes per second and the time from a
//! push's write to its reply, as `durable jetstream --window` does for
//! JetStream's asynchronous publishes. Plain threads and blocking sockets;
//! loopback only.

use crate::cli::Pipeline;
use crate::publish::TcpPublisher;
use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use serde_json::json;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use volley::proto::binary::{self, op};
use volley::proto::publish::{self, Target};

/// `durable pipeline`.
pub fn run(o: Pipeline) -> Result<()> {
    let acked = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(crate::stats::new_hist()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.secs);
    let run = o.run.clone().unwrap_or_else(|| format!("t{}", std::process::id()));
    let o = Arc::new(o);
    let threads: Vec<_> = (0..o.conns.max(1))
        .map(|c| {
            let (o, acked, hist, run) = (o.clone(), acked.clone(), hist.clone(), run.clone());
            std::thread::spawn(move || publisher(&o, &run, c, deadline, &acked, &hist))
        })
        .collect();
    let fields = json!({"mode": "durable pipeline", "conns": o.conns, "window": o.window, "payload_bytes": o.size});
    crate::stats::report_acks(threads, fields, &acked, &hist, start)
}

/// One connection: fills its window, then tops it up as replies come.
fn publisher(
    o: &Pipeline,
    run: &str,
    c: usize,
    deadline: Instant,
    acked: &AtomicU64,
    hist: &Mutex<hdrhistogram::Histogram<u64>>,
) -> Result<()> {
    let mut s = TcpPublisher::connect(o.publish_tcp, &o.api_key)?.into_stream();
    let mut out = BytesMut::new();
    let mut input = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    let payload = vec![b'x'; o.size];
    let mut body = BytesMut::new();
    let mut inflight: VecDeque<(u32, Instant)> = VecDeque::with_capacity(o.window);
    let mut lat = crate::stats::new_hist();
    let (mut n, mut mine) = (0u64, 0u64);
    loop {
        out.clear();
        while inflight.len() < o.window.max(1) && Instant::now() < deadline {
            // Sequence numbers 1.. (0 asks for no reply).
            let seq = (n % u64::from(u32::MAX)) as u32 + 1;
            let id = format!("{run}-{c}-{n}");
            let room = format!(
                "durable://{}",
                (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % o.rooms.max(1)
            );
            body.clear();
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(&0u32.to_be_bytes());
            let pub_op = publish::encode(&mut body, &Target::Room(room), 1000, &payload);
            binary::encode(&mut out, binary::VERSION_NATIVE, pub_op, seq, &body);
            inflight.push_back((seq, Instant::now()));
            n += 1;
        }
        if !out.is_empty() {
            s.write_all(&out).context("publisher write")?;
        }
        if inflight.is_empty() {
            break;
        }
        let got = s.read(&mut chunk).context("publisher read")?;
        if got == 0 {
            bail!("the server closed the publisher connection");
        }
        input.extend_from_slice(&chunk[..got]);
        let mut used = 0;
        while let Some((f, len)) =
            binary::decode(&input[used..], 1 << 20).map_err(|e| anyhow::anyhow!("a bad frame from the server: {e}"))?
        {
            used += len;
            match f.op {
                op::DISCONNECT => bail!("the server closed the publisher: {}", String::from_utf8_lossy(f.body)),
                _ => {
                    let Some((seq, t)) = inflight.pop_front() else {
                        bail!("a reply (op {}) to nothing in flight", f.op)
                    };
                    if f.seq != seq || f.op != publish::op::PUSH_ROOM + 1 {
                        bail!(
                            "reply op {} seq {} where op {} seq {seq} was due",
                            f.op,
                            f.seq,
                            publish::op::PUSH_ROOM + 1
                        );
                    }
                    let _ = lat.record(t.elapsed().as_micros().max(1) as u64);
                    mine += 1;
                }
            }
        }
        input.drain(..used);
    }
    acked.fetch_add(mine, Relaxed);
    let _ = hist.lock().unwrap().add(&lat);
    Ok(())
}
