//! `Hello`: what every subscriber of a run sends after connecting (after
//! the upgrade, on WebSocket), built once per run with volley's own
//! encoders, and when a subscriber counts as subscribed.

use crate::wire::MASK;
use volley::proto::binary::{self, op};
use volley::proto::ws::frame::client_frame;
use volley::proto::ws::opcode;

/// What each subscriber sends after connecting (after the upgrade, on
/// WebSocket), and when it counts as subscribed.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Bytes to send (already framed for the transport); empty: nothing.
    pub bytes: Vec<u8>,
    /// Generic mode: subscribed once upgraded, and payloads are found by
    /// their markers. Otherwise (volley) subscribed at the auth reply.
    pub generic: bool,
}

impl Hello {
    /// volley: an auth frame that joins `room` and accepts no business
    /// operations (room pushes need none); one binary message on WebSocket.
    pub fn volley(room: &str, websocket: bool) -> Hello {
        let frame = volley_auth(room);
        Hello {
            bytes: if websocket {
                client_frame(true, opcode::BINARY, MASK, &frame)
            } else {
                frame
            },
            generic: false,
        }
    }

    /// Another WebSocket server: `first` sent as one text (or binary)
    /// message after the upgrade, if not empty.
    pub fn generic(first: &[u8], binary: bool) -> Hello {
        let op = if binary { opcode::BINARY } else { opcode::TEXT };
        Hello {
            bytes: if first.is_empty() {
                Vec::new()
            } else {
                client_frame(true, op, MASK, first)
            },
            generic: true,
        }
    }
}

/// A volley auth frame (version 1) into `room`, accepting every operation.
pub fn volley_auth(room: &str) -> Vec<u8> {
    let auth = serde_json::json!({"room_id": room, "accepts": []}).to_string();
    binary::encode_to_bytes(binary::VERSION_GOIM, op::AUTH, 1, auth.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley::proto::ws::frame::{parse_header, unmask};

    #[test]
    fn hellos_are_what_the_server_decodes() {
        let tcp = Hello::volley("live://x", false);
        let (f, n) = binary::decode(&tcp.bytes, 4096).unwrap().unwrap();
        assert_eq!((f.op, f.seq, n), (op::AUTH, 1, tcp.bytes.len()));
        let auth = volley::proto::body::parse_auth(f.body).unwrap();
        assert_eq!(auth.room_id, "live://x");

        let ws = Hello::volley("live://x", true);
        let h = parse_header(&ws.bytes).unwrap().unwrap();
        let mut body = ws.bytes[h.size..].to_vec();
        unmask(&mut body, h.mask, 0);
        assert_eq!((h.op, body), (opcode::BINARY, tcp.bytes));

        assert!(Hello::generic(b"", false).bytes.is_empty());
        let sub = Hello::generic(b"SUB bench 1\r\n", false);
        assert_eq!(parse_header(&sub.bytes).unwrap().unwrap().op, opcode::TEXT);
        assert!(sub.generic);
    }
}
