//! A subscriber's handshake, as one task on its worker's executor: connect,
//! send the hello (volley's auth frame, or a WebSocket upgrade and then the
//! hello), read until subscribed, then hand the socket to the worker's
//! receive thread with whatever it already read.
//!
//! The hello is built once per run (`hello`). No per-read timeout (a timer per connection per
//! read would cost more than the read): a stuck handshake shows up in the
//! ramp's progress report, and the worker ends by dropping its executor.

use crate::recv::Handoff;
use crate::run::{now_ns, Run};
use crate::stats::Track;
use crate::wire::{on_frame, tcp_frames, ws_messages, Sink};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use volley::proto::ws::upgrade::client_request;

/// Runs one subscriber's handshake on `stream` until it is handed off, the
/// server closes, or the run stops.
pub async fn subscribe(
    stream: TcpStream,
    run: &Run,
    track: &mut Track,
    hist: &RefCell<Histogram<u64>>,
    handoff: &Handoff,
) -> std::io::Result<()> {
    match &run.common.ws {
        Some(path) => ws_subscriber(stream, path, run, track, hist, handoff).await,
        None => tcp_subscriber(stream, run, track, hist, handoff).await,
    }
}

async fn tcp_subscriber(
    mut s: TcpStream,
    run: &Run,
    track: &mut Track,
    hist: &RefCell<Histogram<u64>>,
    handoff: &Handoff,
) -> std::io::Result<()> {
    s.write_all(&run.hello.bytes).await?;
    run.totals.step(track.worker, track.target, |p| &p.written);
    // Small on purpose: a million of these must fit; it grows for bursts.
    let mut buf = vec![0u8; 512];
    let mut have = 0usize;
    while read_more(&mut s, &mut buf, &mut have, &run.stop).await? {
        let sink = Sink {
            totals: &run.totals,
            hist,
            now: now_ns(run.base),
        };
        let Some(at) = tcp_frames(&buf[..have], |f| on_frame(f, track, &sink)) else {
            return Err(std::io::Error::other("the server sent something that is not a frame"));
        };
        track.flush(&run.totals);
        buf.copy_within(at..have, 0);
        have -= at;
        if track.authed {
            return handoff.give(&s, buf, have, false, false, track);
        }
    }
    Ok(())
}

/// Reads more of a handshake into `buf[have..]`, growing `buf` when full;
/// false once the run stops or the server closed.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, have: &mut usize, stop: &AtomicBool) -> std::io::Result<bool> {
    if stop.load(Relaxed) {
        return Ok(false);
    }
    if *have == buf.len() {
        buf.resize(buf.len() * 2, 0);
    }
    let n = s.read(&mut buf[*have..]).await?;
    *have += n;
    Ok(n > 0)
}

/// A subscriber over WebSocket: upgrade, the hello, then messages (one
/// protocol frame each for volley, payload markers anywhere otherwise);
/// pings are answered.
async fn ws_subscriber(
    mut s: TcpStream,
    path: &str,
    run: &Run,
    track: &mut Track,
    hist: &RefCell<Histogram<u64>>,
    handoff: &Handoff,
) -> std::io::Result<()> {
    let generic = run.hello.generic;
    s.write_all(client_request(path, "volley").as_bytes()).await?;
    run.totals.step(track.worker, track.target, |p| &p.written);
    let mut buf = vec![0u8; 512];
    let mut have = 0usize;
    let mut upgraded = false;
    while read_more(&mut s, &mut buf, &mut have, &run.stop).await? {
        let mut at = 0;
        if !upgraded {
            let Some(end) = memchr::memmem::find(&buf[..have], b"\r\n\r\n") else {
                continue;
            };
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other("upgrade refused"));
            }
            upgraded = true;
            // Only now: some servers (NATS) refuse data sent before their 101.
            if !run.hello.bytes.is_empty() {
                s.write_all(&run.hello.bytes).await?;
            }
            if generic {
                track.authed = true;
                run.totals.connected.fetch_add(1, Relaxed);
                run.totals.step(track.worker, track.target, |p| &p.connected);
            }
            at = end + 4;
        }
        let sink = Sink {
            totals: &run.totals,
            hist,
            now: now_ns(run.base),
        };
        let read = ws_messages(&buf[at..have], generic, track, &sink);
        track.flush(&run.totals);
        at += read.used;
        for p in read.pongs {
            s.write_all(&p).await?;
        }
        if read.closed {
            return Ok(());
        }
        buf.copy_within(at..have, 0);
        have -= at;
        if track.authed {
            return handoff.give(&s, buf, have, true, generic, track);
        }
    }
    Ok(())
}
