//! `Wire`: one server push, encoded once per transport; `Frames`: the same
//! push for both protocol versions.
//!
//! Built where a push enters the process (the API) and then only cloned
//! (a reference-count increment per connection): TCP connections get the
//! bare protocol frame, WebSocket connections the same frame inside one
//! binary message. Neither is ever copied per connection.

use crate::proto::{binary, ws};
use bytes::Bytes;

/// A push frame in every wire format the server speaks.
#[derive(Debug, Clone)]
pub struct Wire {
    /// The protocol frame, as written to raw TCP connections.
    pub tcp: Bytes,
    /// The same frame as one WebSocket binary message.
    pub ws: Bytes,
}

impl Wire {
    /// Encodes a frame once for each transport.
    pub fn encode(ver: u16, op: u32, seq: u32, body: &[u8]) -> Wire {
        Wire::from_tcp(binary::encode_to_bytes(ver, op, seq, body))
    }

    /// The form for a connection of the given transport.
    pub fn for_transport(&self, websocket: bool) -> &Bytes {
        if websocket {
            &self.ws
        } else {
            &self.tcp
        }
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

    /// The form for a connection of protocol `ver` and transport.
    pub fn for_conn(&self, ver: u16, websocket: bool) -> &Bytes {
        if ver == binary::VERSION_NATIVE {
            self.v2.for_transport(websocket)
        } else {
            self.v1.for_transport(websocket)
        }
    }
}

impl Wire {
    /// A frame already encoded for TCP, and the same frame as one
    /// WebSocket binary message.
    pub fn from_tcp(tcp: Bytes) -> Wire {
        let ws = ws::frame(ws::opcode::BINARY, &tcp);
        Wire { tcp, ws }
    }
}
