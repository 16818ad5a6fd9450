//! `Wire`: one server push, encoded once per transport.
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
        let tcp = binary::encode_to_bytes(ver, op, seq, body);
        let ws = ws::frame(ws::opcode::BINARY, &tcp);
        Wire { tcp, ws }
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
