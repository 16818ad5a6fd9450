//! `Reader`: one connection's WebSocket receive state — frames in, whole
//! messages and control frames out, one event per call.
//!
//! Pure code. The caller offers the bytes it has (unmasked in place); `next`
//! consumes whole frames only and returns how many bytes it took, so a
//! partial frame stays with the caller until more bytes arrive.
//!
//! Invariants:
//! - a data message in progress (after a non-FIN first frame) is the only
//!   buffer the reader owns, bounded by `Limits::max_message`;
//! - control frames may arrive between fragments and never disturb it;
//! - text is checked for UTF-8 as it arrives (fail fast), an incomplete
//!   character only at the end of a non-final fragment; a compressed
//!   message (permessage-deflate, RSV1 on its first frame, only once
//!   negotiated) is checked once inflated, and inflates to at most
//!   `Limits::max_message` bytes;
//! - every error names its close code (`WsError::code`).

use super::deflate::{inflate_here, InflateError};
use super::frame::{close_code_valid, parse_header, unmask, WsError};
use super::{close, opcode};

/// Size limits for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message (sum of its fragments); larger closes with 1009.
    pub max_message: usize,
}

/// What the reader hands to its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message (text already checked to be UTF-8).
    Message {
        /// Text (true) or binary.
        text: bool,
        /// Unmasked payload.
        payload: &'a [u8],
    },
    /// A ping to answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// The peer's close: code (1005 when absent) and reason.
    Close(u16, &'a str),
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// Compressed (RSV1 on its first frame): inflated once whole.
    compressed: bool,
    buf: Vec<u8>,
    /// Prefix of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

/// Per-connection receive state.
#[derive(Debug, Default)]
pub struct Reader {
    /// The message being assembled, if fragmented.
    partial: Option<Partial>,
    /// A fragmented or compressed message completed by the last call,
    /// lent out in its event; dropped at the next call.
    done: Option<Partial>,
    /// permessage-deflate was negotiated: RSV1 may start a message.
    deflate: bool,
}

/// A fragmented message's state as another process takes it over
/// (`volley upgrade`): its kind and what arrived of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Assembling {
    /// Text (true) or binary.
    pub text: bool,
    /// Compressed (permessage-deflate).
    pub compressed: bool,
    /// The fragments so far, unmasked.
    pub buf: Vec<u8>,
}

impl Reader {
    /// The message being assembled, if any, to hand to another process.
    pub fn save(&self) -> Option<Assembling> {
        self.partial.as_ref().map(|p| Assembling {
            text: p.text,
            compressed: p.compressed,
            buf: p.buf.clone(),
        })
    }

    /// A reader that goes on with `assembling`, with permessage-deflate
    /// negotiated or not. Its text is checked again from the start as the
    /// next fragment arrives (it came from outside this process), and its
    /// size against the limit.
    pub fn restore(assembling: Option<Assembling>, deflate: bool) -> Reader {
        Reader {
            partial: assembling.map(|a| Partial {
                text: a.text,
                compressed: a.compressed && deflate,
                buf: a.buf,
                checked: 0,
            }),
            done: None,
            deflate,
        }
    }

    /// A reader of a connection that negotiated permessage-deflate (or not).
    pub fn new(deflate: bool) -> Reader {
        Reader {
            deflate,
            ..Reader::default()
        }
    }

    /// Whether permessage-deflate was negotiated.
    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// A fragmented message is being assembled.
    pub fn mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes and unmasks (in place) whole frames from the front of `data`
    /// until one yields an event or the data runs out. Returns the event, if
    /// any, and the bytes consumed (fragments of a message count as consumed
    /// before the message completes).
    pub fn next<'a>(&'a mut self, data: &'a mut [u8], limits: Limits) -> Result<(Option<Event<'a>>, usize), WsError> {
        self.done = None;
        let mut used = 0;
        loop {
            let Some(h) = parse_header(&data[used..])? else {
                return Ok((None, used));
            };
            let in_progress = self.partial.as_ref().map_or(0, |p| p.buf.len());
            let size = h.len.saturating_add(in_progress as u64);
            if size > limits.max_message as u64 {
                return Err(WsError::TooBig {
                    size,
                    max: limits.max_message,
                });
            }
            // Fits in usize: at most max_message.
            let len = h.len as usize;
            if data.len() - used < h.size + len {
                return Ok((None, used));
            }
            let start = used + h.size;
            used = start + len;
            unmask(&mut data[start..used], h.mask, 0);
            match h.op {
                opcode::PING => return Ok((Some(Event::Ping(&data[start..used])), used)),
                opcode::PONG => return Ok((Some(Event::Pong), used)),
                opcode::CLOSE => {
                    let (code, reason) = parse_close(&data[start..used])?;
                    return Ok((Some(Event::Close(code, reason)), used));
                }
                opcode::CONT => {
                    if h.rsv1 {
                        // Only a message's first frame says it is compressed.
                        return Err(WsError::ReservedBits);
                    }
                    let Some(p) = self.partial.as_mut() else {
                        return Err(WsError::ContinuationWithoutMessage);
                    };
                    p.buf.extend_from_slice(&data[start..used]);
                    if p.text && !p.compressed {
                        check_utf8(p, h.fin)?;
                    }
                    if h.fin {
                        let mut p = self.partial.take().expect("checked above");
                        if p.compressed {
                            p.buf = inflated(&p.buf, p.text, limits)?;
                        }
                        let p = self.done.insert(p);
                        let ev = Event::Message {
                            text: p.text,
                            payload: &p.buf,
                        };
                        return Ok((Some(ev), used));
                    }
                }
                op => {
                    if self.partial.is_some() {
                        return Err(WsError::MessageInsideMessage);
                    }
                    if h.rsv1 && !self.deflate {
                        return Err(WsError::ReservedBits);
                    }
                    let text = op == opcode::TEXT;
                    if h.fin && h.rsv1 {
                        let buf = inflated(&data[start..used], text, limits)?;
                        let p = self.done.insert(Partial {
                            text,
                            compressed: true,
                            buf,
                            checked: 0,
                        });
                        return Ok((Some(Event::Message { text, payload: &p.buf }), used));
                    }
                    if h.fin {
                        let payload = &data[start..used];
                        if text && std::str::from_utf8(payload).is_err() {
                            return Err(WsError::InvalidUtf8);
                        }
                        return Ok((Some(Event::Message { text, payload }), used));
                    }
                    let mut p = Partial {
                        text,
                        compressed: h.rsv1,
                        buf: data[start..used].to_vec(),
                        checked: 0,
                    };
                    if text && !p.compressed {
                        check_utf8(&mut p, false)?;
                    }
                    self.partial = Some(p);
                }
            }
        }
    }
}

/// A compressed message's payload inflated (at most the message limit),
/// its text checked.
fn inflated(compressed: &[u8], text: bool, limits: Limits) -> Result<Vec<u8>, WsError> {
    let buf = inflate_here(compressed, limits.max_message).map_err(|e| match e {
        InflateError::TooBig(max) => WsError::TooBig {
            size: max as u64 + 1,
            max,
        },
        InflateError::Corrupt => WsError::BadCompression,
    })?;
    if text && std::str::from_utf8(&buf).is_err() {
        return Err(WsError::InvalidUtf8);
    }
    Ok(buf)
}

/// Checks the unchecked tail of a text message; an incomplete character is
/// fine until the last fragment (fail fast on anything else).
fn check_utf8(p: &mut Partial, last: bool) -> Result<(), WsError> {
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => p.checked = p.buf.len(),
        Err(e) if e.error_len().is_none() && !last => p.checked += e.valid_up_to(),
        Err(_) => return Err(WsError::InvalidUtf8),
    }
    Ok(())
}

/// Code and reason of a close payload.
fn parse_close(p: &[u8]) -> Result<(u16, &str), WsError> {
    match p {
        [] => Ok((close::NO_STATUS, "")),
        [_] => Err(WsError::CloseOneByte),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !close_code_valid(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::CloseReasonNotUtf8)?;
            Ok((code, reason))
        }
    }
}

#[cfg(test)]
mod tests;
