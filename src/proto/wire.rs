//! `Wire`: one server push, encoded once per transport; `Frames`: the same
//! push for both protocol versions.
//!
//! Built where a push enters the process (the API) and then only cloned
//! (a reference-count increment per connection): TCP connections get the
//! bare protocol frame, WebSocket connections the same frame inside one
//! binary message. Neither is ever copied per connection. WebSocket
//! connections that agreed permessage-deflate get the message compressed:
//! once, by the first shard that needs it (the stream starts over for each
//! message, so the same bytes serve every such connection), and only when
//! the frame is at least `[ws] compression_min_bytes` (`set_compress_min`)
//! and compressing shrinks it.

use crate::proto::{binary, ws};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

/// The default of `[ws] compression_min_bytes`: frames shorter than this go
/// uncompressed, deflate's own overhead and the CPU not being worth it.
pub const COMPRESS_MIN: usize = 128;

/// Frames shorter than this get no compressed form (`usize::MAX`:
/// compression is off). Process-wide: set once as the server starts.
static MIN: AtomicUsize = AtomicUsize::new(COMPRESS_MIN);

/// Sets the smallest frame that may be compressed (`None`: compression
/// off, no frame gets a compressed form or its cell).
pub fn set_compress_min(min: Option<usize>) {
    MIN.store(min.unwrap_or(usize::MAX), Relaxed);
}

/// The form a connection takes its pushes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The bare protocol frame (raw TCP).
    Tcp,
    /// One WebSocket binary message.
    Ws,
    /// One WebSocket binary message, compressed when that shrinks it
    /// (permessage-deflate agreed at the full window).
    WsDeflate,
}

/// A push frame in every wire format the server speaks.
#[derive(Debug, Clone)]
pub struct Wire {
    /// The protocol frame, as written to raw TCP connections.
    pub tcp: Bytes,
    /// The same frame as one WebSocket binary message.
    pub ws: Bytes,
    /// The same message compressed (RSV1 set), made the first time a
    /// connection that agreed permessage-deflate needs it; `None` inside:
    /// it would not shrink, the plain message goes. No cell at all for a
    /// frame under the minimum (most replies and small pushes), which then
    /// costs 8 bytes, not an allocation.
    wsz: Option<Arc<OnceLock<Option<Bytes>>>>,
}

thread_local! {
    /// The shard's compressor: each message compresses on its own, so one
    /// serves every message the shard compresses.
    static COMPRESSOR: std::cell::RefCell<ws::deflate::Compressor> = std::cell::RefCell::default();
}

impl Wire {
    /// Encodes a frame once for each transport.
    pub fn encode(ver: u16, op: u32, seq: u32, body: &[u8]) -> Wire {
        Wire::from_tcp(binary::encode_to_bytes(ver, op, seq, body))
    }

    /// The bytes for a connection that takes its pushes in `form`.
    pub fn for_transport(&self, form: Form) -> &Bytes {
        match form {
            Form::Tcp => &self.tcp,
            Form::Ws => &self.ws,
            Form::WsDeflate => self.compressed().unwrap_or(&self.ws),
        }
    }

    /// The compressed message, made on first use; `None` when the frame is
    /// short or does not shrink.
    fn compressed(&self) -> Option<&Bytes> {
        self.wsz
            .as_ref()?
            .get_or_init(|| {
                let z = COMPRESSOR.with(|c| c.borrow_mut().compress(&self.tcp))?;
                ws::deflate::count_compressed();
                Some(ws::frame::compressed_frame(ws::opcode::BINARY, &z))
            })
            .as_ref()
    }
}

/// A push in every form a connection may need: version 1 (goim's frame,
/// the business op as the frame's op) and version 2 (op 44 with the
/// envelope), each per transport. Built once where the push is encoded,
/// then only cloned.
#[derive(Debug, Clone)]
pub struct Frames {
    /// For version-1 connections.
    pub v1: Wire,
    /// For version-2 connections.
    pub v2: Wire,
}

impl Frames {
    /// Both versions of a push whose version-2 envelope is `env`.
    pub fn new(env: &super::v2::Envelope<'_>) -> Frames {
        Frames {
            v1: Wire::encode(binary::VERSION_GOIM, env.op, 0, env.payload),
            v2: Wire::from_tcp(env.frame()),
        }
    }

    /// Both versions of push `push` to users (kind 2: `push` is what
    /// version-2 clients acknowledge), with the publisher's `id`.
    pub fn user(op: u32, push: u64, id: &str, payload: &[u8]) -> Frames {
        Frames::new(&super::v2::Envelope {
            op,
            kind: super::v2::Kind::User,
            room: "",
            offset: push,
            epoch: 0,
            id,
            payload,
        })
    }

    /// The bytes for a connection of protocol `ver` taking `form`.
    pub fn for_conn(&self, ver: u16, form: Form) -> &Bytes {
        if ver == binary::VERSION_NATIVE {
            self.v2.for_transport(form)
        } else {
            self.v1.for_transport(form)
        }
    }
}

impl Wire {
    /// A frame already encoded for TCP, and the same frame as one
    /// WebSocket binary message.
    pub fn from_tcp(tcp: Bytes) -> Wire {
        let ws = ws::frame(ws::opcode::BINARY, &tcp);
        let wsz = (tcp.len() >= MIN.load(Relaxed)).then(Arc::default);
        Wire { tcp, ws, wsz }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::deflate::Inflater;
    use crate::proto::ws::frame::{parse_header_from, Sender};

    #[test]
    fn a_push_is_compressed_once_for_every_deflate_connection_and_only_when_it_shrinks() {
        let body = br#"{"from":"bot","text":"the same words again and again and again"}"#.repeat(6);
        let w = Wire::encode(binary::VERSION_NATIVE, 44, 0, &body);
        let z = w.for_transport(Form::WsDeflate).clone();
        // The same bytes each time: compressed once, then shared.
        assert_eq!(w.clone().for_transport(Form::WsDeflate).as_ptr(), z.as_ptr());
        let h = parse_header_from(&z, Sender::Server).unwrap().unwrap();
        assert!(h.rsv1 && h.fin);
        assert!(z.len() < w.ws.len() / 2, "{} of {}", z.len(), w.ws.len());
        let plain = Inflater::default().inflate(&z[h.size..], 1 << 20).unwrap();
        assert_eq!(plain, w.tcp);
        // Plain forms are untouched, and a short push goes plain.
        assert_eq!(w.for_transport(Form::Ws), &w.ws);
        assert_eq!(w.for_transport(Form::Tcp), &w.tcp);
        let short = Wire::encode(binary::VERSION_NATIVE, 44, 0, b"hi");
        assert_eq!(short.for_transport(Form::WsDeflate), &short.ws);
    }
}
