//! What servers send, read from the client side with volley's own decoders:
//! protocol frames over raw TCP, WebSocket frames (unmasked, from a server),
//! and what each means for the subscriber that got it.
//!
//! Pure functions over buffers, used by the handshake tasks (`subscribe`)
//! and by the receive threads (`recv`) alike. A server that breaks a framing
//! rule ends that subscriber (its bytes cannot be read further).

use crate::payload::{markers, read_stamp};
use crate::stats::{Totals, Track};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use volley::proto::binary::{self, op, Frame};
use volley::proto::ws::frame::{client_frame, parse_header_from, Sender};
use volley::proto::ws::opcode;

/// The business operation code the benchmark publishes with.
pub const BENCH_OP: u32 = 1000;
/// Largest frame body accepted from a server.
const MAX_BODY: usize = 16 << 20;
/// The mask of the load generator's WebSocket frames: masking guards
/// proxies' caches, which loopback benchmarks do not have.
pub const MASK: [u8; 4] = [0x5a, 0xc3, 0x3c, 0xa5];

/// Where received payloads are counted.
pub struct Sink<'a> {
    /// The run's shared counters.
    pub totals: &'a Totals,
    /// This thread's latency histogram.
    pub hist: &'a RefCell<Histogram<u64>>,
    /// When the bytes were read (ns since the run began): frames read
    /// together arrived together.
    pub now: u64,
}

/// Calls `on` for every whole protocol frame at the front of `buf`; returns
/// the bytes consumed, or `None` when the server sent something that is not
/// a frame.
pub fn tcp_frames(buf: &[u8], mut on: impl FnMut(Frame<'_>)) -> Option<usize> {
    let mut at = 0;
    loop {
        match binary::decode(&buf[at..], MAX_BODY) {
            Ok(Some((f, n))) => {
                at += n;
                on(f);
            }
            Ok(None) => return Some(at),
            Err(_) => return None,
        }
    }
}

/// Calls `on(opcode, payload)` for every whole WebSocket frame a server sent
/// at the front of `buf`, until `on` returns false; returns the bytes
/// consumed, or `None` when the bytes break a framing rule.
pub fn ws_frames(buf: &[u8], mut on: impl FnMut(u8, &[u8]) -> bool) -> Option<usize> {
    let mut at = 0;
    loop {
        let h = match parse_header_from(&buf[at..], Sender::Server) {
            Ok(Some(h)) => h,
            Ok(None) => return Some(at),
            Err(_) => return None,
        };
        let len = usize::try_from(h.len).ok()?;
        let Some(payload) = buf.get(at + h.size..at + h.size + len) else {
            return Some(at);
        };
        at += h.size + len;
        if !on(h.op, payload) {
            return Some(at);
        }
    }
}

/// Accounts for one protocol frame received by a volley subscriber: the
/// auth reply subscribes it, a benchmark push is a delivery.
pub fn on_frame(f: Frame<'_>, track: &mut Track, sink: &Sink<'_>) {
    match f.op {
        op::AUTH_REPLY if !track.authed => {
            track.authed = true;
            sink.totals.connected.fetch_add(1, Relaxed);
            sink.totals.step(track.worker, track.target, |p| &p.connected);
        }
        BENCH_OP => {
            if let Some((seq, sent)) = read_stamp(f.body) {
                track.record(seq, sent, sink.now, sink.totals, sink.hist);
            }
        }
        _ => {}
    }
}

/// What a WebSocket read left to do.
#[derive(Debug, Default)]
pub struct WsRead {
    /// Bytes consumed.
    pub used: usize,
    /// The server sent a close frame (or broke the framing): the
    /// subscriber is done.
    pub closed: bool,
    /// Pongs to send back (masked client frames).
    pub pongs: Vec<Vec<u8>>,
}

/// Accounts for the server's WebSocket messages in `buf`: payload markers
/// anywhere in any data message (`generic`), or one volley frame per binary
/// message; pings are answered.
pub fn ws_messages(buf: &[u8], generic: bool, track: &mut Track, sink: &Sink<'_>) -> WsRead {
    let mut out = WsRead::default();
    let used = ws_frames(buf, |op, payload| {
        match op {
            opcode::TEXT | opcode::BINARY if generic => {
                for (seq, sent) in markers(payload) {
                    track.record(seq, sent, sink.now, sink.totals, sink.hist);
                }
            }
            opcode::BINARY => out.closed |= tcp_frames(payload, |f| on_frame(f, track, sink)).is_none(),
            opcode::PING => out.pongs.push(client_frame(true, opcode::PONG, MASK, payload)),
            opcode::CLOSE => out.closed = true,
            _ => {}
        }
        !out.closed
    });
    match used {
        Some(n) => out.used = n,
        None => out.closed = true,
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{generic_payload, stamp};
    use crate::stats::new_hist;
    use volley::proto::ws;

    fn push(seq: u64) -> Vec<u8> {
        let mut p = vec![0u8; 32];
        stamp(&mut p, seq, 5);
        binary::encode_to_bytes(1, BENCH_OP, 0, &p).to_vec()
    }

    fn sink<'a>(totals: &'a Totals, hist: &'a RefCell<Histogram<u64>>) -> Sink<'a> {
        Sink { totals, hist, now: 10 }
    }

    #[test]
    fn tcp_frames_count_pushes_and_leave_a_partial_frame() {
        let totals = Totals::new(1, 1);
        let hist = RefCell::new(new_hist());
        let sink = sink(&totals, &hist);
        let mut track = Track::default();
        let mut bytes = binary::encode_to_bytes(1, op::AUTH_REPLY, 1, b"").to_vec();
        bytes.extend(push(0));
        bytes.extend(push(2));
        let whole = bytes.len();
        bytes.extend(&push(3)[..20]);
        let used = tcp_frames(&bytes, |f| on_frame(f, &mut track, &sink));
        assert_eq!(used, Some(whole));
        assert!(track.authed);
        assert_eq!((track.unflushed, totals.gaps.load(Relaxed)), (2, 1));
        assert_eq!(totals.targets[0].snapshot().connected, 1);
        assert_eq!(tcp_frames(b"\0\0\0\x05xxxxxxxxxxxx", |_| {}), None, "not a frame");
    }

    #[test]
    fn ws_messages_answer_pings_and_find_markers() {
        let totals = Totals::new(1, 1);
        let hist = RefCell::new(new_hist());
        let sink = sink(&totals, &hist);
        let mut buf = ws::frame(opcode::PING, b"p").to_vec();
        buf.extend_from_slice(&ws::frame(opcode::TEXT, &generic_payload(0, 1, 40)));
        buf.extend_from_slice(&ws::frame(opcode::BINARY, &generic_payload(1, 1, 40)));
        let mut track = Track::default();
        let r = ws_messages(&buf, true, &mut track, &sink);
        assert_eq!(
            (r.used, r.closed, r.pongs.len(), track.unflushed),
            (buf.len(), false, 1, 2)
        );
        let pong = parse_header_from(&r.pongs[0], Sender::Client).unwrap().unwrap();
        assert_eq!(pong.op, opcode::PONG);

        // volley mode: one protocol frame per binary message; a close ends it.
        let mut buf = ws::frame(opcode::BINARY, &push(0)).to_vec();
        buf.extend_from_slice(&ws::close_frame(1001, "shutdown"));
        buf.extend_from_slice(&ws::frame(opcode::BINARY, &push(1)));
        let mut track = Track::default();
        let r = ws_messages(&buf, false, &mut track, &sink);
        assert!(r.closed);
        assert_eq!(track.unflushed, 1, "nothing after the close");
        // A masked frame from a "server" breaks the rules.
        let masked = client_frame(true, opcode::BINARY, MASK, b"x");
        assert!(ws_messages(&masked, false, &mut Track::default(), &sink).closed);
    }
}
