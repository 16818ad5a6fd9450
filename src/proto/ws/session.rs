//! `Session`: what one server-side WebSocket connection does with the bytes
//! it receives, as a sans-IO state machine — bytes in, one `Action` out per
//! call, for the connection driver to carry out.
//!
//! Runs on the shard that owns the connection, inside its driver; no
//! sockets, no clock, no shard. The policy it owns:
//!
//! ```text
//! Upgrading ──valid upgrade──> Open{echo} ──peer close / violation──> Closed
//!     └──── bad upgrade (4xx answer) ─────────────────────────────────┘
//!
//! Open:  binary message  → Deliver (protocol endpoint) | Send echo (echo endpoint)
//!        text message    → Close ws_unsupported_data, 1003 (protocol) | Send echo
//!        ping            → Send pong (same payload)
//!        pong            → Alive (the heartbeat deadline restarts)
//!        close           → Close ws_closed, replying with the peer's code
//!        framing error   → Close with the error's reason and close code
//! ```
//!
//! Invariants: after `Close` the session yields nothing more and consumes
//! whatever it is given; an upgrade is answered exactly once; the only
//! buffers are the caller's and the reader's fragmented-message buffer.

use super::reader::{Event, Limits, Reader};
use super::upgrade::{parse_upgrade, response_101, UpgradeRules};
use super::{close, close_frame, frame, opcode};
use crate::proto::close::CloseReason;
use bytes::Bytes;

/// Limits and rules a session is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// Paths and origins the upgrade may ask for (path 0 is the protocol
    /// endpoint, path 1 the echo endpoint when enabled).
    pub upgrade: &'a UpgradeRules,
    /// Largest message on the protocol endpoint (a frame: `max_body` + 16).
    pub max_message: usize,
    /// Largest message on the echo endpoint.
    pub echo_max_message: usize,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Queue these bytes for the peer as they are.
    Send(Bytes),
    /// The upgrade was accepted: queue `response` (the 101); from now on the
    /// connection speaks WebSocket frames, to the echo endpoint if `echo`.
    Upgraded {
        /// The 101 answer.
        response: Bytes,
        /// Connected to the echo endpoint.
        echo: bool,
        /// permessage-deflate was agreed at the full window: pushes may go
        /// compressed.
        compressed_sends: bool,
    },
    /// A binary message on the protocol endpoint: whole protocol frames.
    Deliver(&'a [u8]),
    /// A pong: the peer is alive.
    Alive,
    /// Close the connection: queue `reply` first if any, then close with
    /// `reason`; `code` is the close frame to send after the goodbye (`None`:
    /// none, the reply already was one, or there is no WebSocket yet).
    Close {
        /// Why.
        reason: CloseReason,
        /// What the peer is told with it.
        detail: String,
        /// Close code of the close frame to send, if one is due.
        code: Option<u16>,
        /// Bytes to queue before closing (an HTTP refusal, a close reply).
        reply: Option<Bytes>,
    },
}

/// How far a WebSocket connection got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// The HTTP upgrade is not answered yet.
    #[default]
    Upgrading,
    /// Frames flow.
    Open {
        /// The echo endpoint (conformance), not the protocol's.
        echo: bool,
    },
    /// A close was sent or taken: nothing more is read.
    Closed,
}

/// A session as another process takes it over (`volley upgrade`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    /// How far it got.
    pub state: State,
    /// A fragmented message being assembled.
    pub assembling: Option<super::reader::Assembling>,
    /// permessage-deflate was negotiated.
    pub deflate: bool,
}

/// One WebSocket connection's protocol state.
#[derive(Debug, Default)]
pub struct Session {
    state: State,
    reader: Reader,
}

impl Session {
    /// This session, to hand to another process.
    pub fn save(&self) -> Saved {
        Saved {
            state: self.state,
            assembling: self.reader.save(),
            deflate: self.reader.deflate(),
        }
    }

    /// A session that goes on from `saved`.
    pub fn restore(saved: Saved) -> Session {
        Session {
            state: saved.state,
            reader: Reader::restore(saved.assembling, saved.deflate),
        }
    }

    /// The upgrade has been accepted.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Handles bytes from the peer (unmasked in place) up to the next action.
    /// Returns it, if any, and how many bytes of `buf` were consumed; bytes
    /// left over are an incomplete request or frame to offer again with more.
    pub fn handle_read<'a>(&'a mut self, buf: &'a mut [u8], rules: Rules<'_>) -> (Option<Action<'a>>, usize) {
        match self.state {
            State::Closed => (None, buf.len()),
            State::Upgrading => match parse_upgrade(buf, rules.upgrade) {
                Ok(None) => (None, 0),
                Ok(Some(up)) => {
                    let echo = up.path == 1;
                    self.state = State::Open { echo };
                    self.reader = Reader::new(up.deflate.is_some());
                    let response = response_101(&up.accept, up.deflate.as_ref().map(|a| a.response.as_str()));
                    let compressed_sends = up.deflate.is_some_and(|a| a.compressed_sends);
                    let upgraded = Action::Upgraded {
                        response,
                        echo,
                        compressed_sends,
                    };
                    (Some(upgraded), up.len)
                }
                Err(e) => {
                    self.state = State::Closed;
                    let close = Action::Close {
                        reason: CloseReason::BadUpgrade,
                        detail: e.to_string(),
                        code: None,
                        reply: Some(e.response()),
                    };
                    (Some(close), buf.len())
                }
            },
            State::Open { echo } => {
                let total = buf.len();
                let max_message = if echo {
                    rules.echo_max_message
                } else {
                    rules.max_message
                };
                match self.reader.next(buf, Limits { max_message }) {
                    Ok((None, n)) => (None, n),
                    Ok((Some(ev), n)) => {
                        let action = on_event(ev, echo);
                        if matches!(action, Action::Close { .. }) {
                            self.state = State::Closed;
                        }
                        (Some(action), n)
                    }
                    Err(e) => {
                        self.state = State::Closed;
                        let close = Action::Close {
                            reason: CloseReason::for_ws_code(e.code()),
                            detail: e.to_string(),
                            code: Some(e.code()),
                            reply: None,
                        };
                        (Some(close), total)
                    }
                }
            }
        }
    }
}

fn on_event(ev: Event<'_>, echo: bool) -> Action<'_> {
    match ev {
        Event::Message { text, payload } if echo => {
            Action::Send(frame(if text { opcode::TEXT } else { opcode::BINARY }, payload))
        }
        Event::Message { text: true, .. } => Action::Close {
            reason: CloseReason::WsUnsupportedData,
            detail: "text messages are not part of the protocol; send binary frames".into(),
            code: CloseReason::WsUnsupportedData.ws_close_code(),
            reply: None,
        },
        Event::Message { payload, .. } => Action::Deliver(payload),
        Event::Ping(p) => Action::Send(frame(opcode::PONG, p)),
        Event::Pong => Action::Alive,
        Event::Close(code, _) => Action::Close {
            reason: CloseReason::WsClosed,
            detail: String::new(),
            code: None,
            // Echo the status code, as RFC 6455 5.5.1 suggests; an empty
            // close gets an empty one.
            reply: Some(if code == close::NO_STATUS {
                frame(opcode::CLOSE, &[])
            } else {
                close_frame(code, "")
            }),
        },
    }
}

/// The ping the server sends when a connection's heartbeat deadline passes
/// (a pong restarts the deadline, so a client may heartbeat with pings).
pub fn heartbeat_ping() -> Bytes {
    frame(opcode::PING, b"volley")
}

#[cfg(test)]
mod tests {
    use super::super::frame::client_frame;
    use super::*;

    const REQ: &[u8] = b"GET /sub HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    const ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn rules(up: &UpgradeRules) -> Rules<'_> {
        Rules {
            upgrade: up,
            max_message: 100,
            echo_max_message: 1000,
        }
    }

    fn up_rules() -> UpgradeRules {
        UpgradeRules {
            paths: vec!["/sub".into(), "/echo".into()],
            origins: vec![],
            compression: true,
        }
    }

    fn cf(op: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(true, op, [1, 2, 3, 4], payload)
    }

    /// Every action for `input`, as the driver would see it, described.
    fn run(s: &mut Session, mut input: Vec<u8>) -> Vec<String> {
        let up = up_rules();
        let mut used = 0;
        let mut out = Vec::new();
        loop {
            let (action, n) = s.handle_read(&mut input[used..], rules(&up));
            used += n;
            let Some(a) = action else { break };
            out.push(match a {
                Action::Send(b) => format!("send {:02x?}", &b[..b.len().min(4)]),
                Action::Upgraded { response, echo, .. } => {
                    assert!(response.starts_with(b"HTTP/1.1 101"));
                    format!("upgraded echo={echo}")
                }
                Action::Deliver(p) => format!("deliver {}", String::from_utf8_lossy(p)),
                Action::Alive => "alive".into(),
                Action::Close {
                    reason,
                    detail,
                    code,
                    reply,
                } => format!(
                    "close {} {code:?} reply={} {detail}",
                    reason.name(),
                    reply.map_or(0, |r| r.len())
                ),
            });
        }
        assert_eq!(used, input.len(), "everything consumed");
        out
    }

    #[test]
    fn protocol_endpoint_policy() {
        let mut input = REQ.to_vec();
        input.extend(cf(opcode::BINARY, b"frames"));
        input.extend(cf(opcode::PING, b"hi"));
        input.extend(cf(opcode::PONG, b""));
        input.extend(cf(opcode::CLOSE, &4001u16.to_be_bytes()));
        input.extend(cf(opcode::BINARY, b"after close"));
        let mut s = Session::default();
        assert_eq!(
            run(&mut s, input),
            vec![
                "upgraded echo=false",
                "deliver frames",
                "send [8a, 02, 68, 69]",
                "alive",
                "close ws_closed None reply=4 ",
            ]
        );
        assert_eq!(
            run(&mut s, cf(opcode::BINARY, b"x")),
            Vec::<String>::new(),
            "closed: ignored"
        );
    }

    #[test]
    fn text_on_the_protocol_endpoint_and_violations_close_with_their_codes() {
        let mut input = REQ.to_vec();
        input.extend(cf(opcode::TEXT, b"hello"));
        let got = run(&mut Session::default(), input);
        assert!(got[1].starts_with("close ws_unsupported_data Some(1003)"), "{got:?}");

        let mut input = REQ.to_vec();
        input.extend(cf(opcode::BINARY, &[0; 101]));
        let got = run(&mut Session::default(), input);
        assert!(
            got[1].starts_with("close ws_too_big Some(1009) reply=0 message too big"),
            "{got:?}"
        );

        let mut input = REQ.to_vec();
        input.extend(cf(opcode::TEXT, &[0xff]));
        assert!(run(&mut Session::default(), input)[1].starts_with("close ws_invalid_utf8 Some(1007)"));

        let mut input = REQ.to_vec();
        let mut unmasked = cf(opcode::BINARY, b"x");
        unmasked[1] &= 0x7f;
        input.extend(unmasked);
        assert!(run(&mut Session::default(), input)[1].starts_with("close ws_protocol_error Some(1002)"));

        let got = run(&mut Session::default(), b"GET /nope HTTP/1.1\r\n\r\n".to_vec());
        assert!(got[0].starts_with("close bad_upgrade None reply="), "{got:?}");
    }

    #[test]
    fn echo_endpoint_sends_messages_back_and_an_empty_close_gets_an_empty_one() {
        let mut input = ECHO.to_vec();
        input.extend(cf(opcode::TEXT, b"hey"));
        input.extend(cf(opcode::BINARY, &[7; 200]));
        input.extend(cf(opcode::CLOSE, b""));
        assert_eq!(
            run(&mut Session::default(), input),
            vec![
                "upgraded echo=true",
                "send [81, 03, 68, 65]",
                "send [82, 7e, 00, c8]",
                "close ws_closed None reply=2 ",
            ]
        );
    }

    #[test]
    fn an_incomplete_upgrade_waits_and_consumes_nothing() {
        let up = up_rules();
        let mut s = Session::default();
        for cut in 0..REQ.len() {
            let mut part = REQ[..cut].to_vec();
            assert_eq!(s.handle_read(&mut part, rules(&up)).1, 0, "cut {cut}");
        }
        assert!(!s.is_open());
    }
}
