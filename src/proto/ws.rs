//! WebSocket (RFC 6455), server side, sans-IO: the HTTP/1.1 upgrade, frame
//! headers, unmasking, message assembly with UTF-8 checks, and the frames the
//! server sends.
//!
//! Pure functions and one small state machine (`Reader`); no sockets, no
//! shard state, so it runs on whichever shard owns the connection and is
//! tested and fuzzed on its own. The connection driver owns one `Reader` per
//! WebSocket connection.
//!
//! Invariants of `Reader`:
//! - a data message in progress (after a non-FIN first frame) is the only
//!   per-connection buffer, bounded by `Limits::max_message`;
//! - control frames may arrive between fragments and never disturb it;
//! - every error names the close code the peer must get (1002, 1007, 1009).

use bytes::{BufMut, Bytes, BytesMut};

/// Largest upgrade request accepted (request line plus headers).
pub const MAX_UPGRADE_BYTES: usize = 8192;
/// Most headers accepted in an upgrade request.
pub const MAX_UPGRADE_HEADERS: usize = 32;
/// The GUID of RFC 6455 section 1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Frame opcodes.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONT: u8 = 0x0;
    /// Text message (UTF-8).
    pub const TEXT: u8 = 0x1;
    /// Binary message.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Close status codes used by the server.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Going away (server shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Data the endpoint does not accept (e.g. text on a binary protocol).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data (bad UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation.
    pub const POLICY: u16 = 1008;
    /// Message too big.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server condition.
    pub const INTERNAL: u16 = 1011;
}

/// Why the upgrade was refused, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Malformed request or missing/invalid WebSocket headers.
    #[error("400 {0}")]
    BadRequest(&'static str),
    /// Request line plus headers too long, or too many headers.
    #[error("431 request headers too large")]
    TooLarge,
    /// Another path than the configured one.
    #[error("404 no WebSocket endpoint at this path")]
    NotFound,
    /// Origin not in the allow-list.
    #[error("403 origin not allowed")]
    Forbidden,
    /// Not a WebSocket upgrade, or an unsupported version.
    #[error("426 {0}")]
    UpgradeRequired(&'static str),
}

impl UpgradeError {
    /// The HTTP response for this refusal (the connection closes after it).
    pub fn response(&self) -> Bytes {
        let (status, text) = match self {
            UpgradeError::BadRequest(why) => ("400 Bad Request", *why),
            UpgradeError::TooLarge => ("431 Request Header Fields Too Large", "request headers too large"),
            UpgradeError::NotFound => ("404 Not Found", "no WebSocket endpoint at this path"),
            UpgradeError::Forbidden => ("403 Forbidden", "origin not allowed"),
            UpgradeError::UpgradeRequired(why) => ("426 Upgrade Required", *why),
        };
        let extra = if matches!(self, UpgradeError::UpgradeRequired(_)) {
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        } else {
            ""
        };
        let body = format!("{{\"error\":\"{text}\"}}\n");
        Bytes::from(format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        ))
    }
}

/// What the upgrade is checked against.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRules {
    /// Paths served (exact match on the path, query ignored).
    pub paths: Vec<String>,
    /// Allowed `Origin` values; empty = any (and requests without Origin).
    pub origins: Vec<String>,
}

/// An accepted upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Index into `UpgradeRules::paths` of the path requested.
    pub path: usize,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Bytes of the request (anything after belongs to the WebSocket stream).
    pub len: usize,
}

/// Parses and checks an upgrade request. `Ok(None)`: incomplete, read more.
pub fn parse_upgrade(buf: &[u8], rules: &UpgradeRules) -> Result<Option<Upgrade>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_UPGRADE_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_UPGRADE_BYTES => return Err(UpgradeError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(UpgradeError::TooLarge),
        Err(_) => return Err(UpgradeError::BadRequest("malformed HTTP request")),
    };
    if len > MAX_UPGRADE_BYTES {
        return Err(UpgradeError::TooLarge);
    }
    if req.method != Some("GET") {
        return Err(UpgradeError::BadRequest("WebSocket upgrades use GET"));
    }
    if req.version != Some(1) {
        return Err(UpgradeError::BadRequest("WebSocket upgrades need HTTP/1.1"));
    }
    let target = req.path.unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let Some(path) = rules.paths.iter().position(|p| p == path) else {
        return Err(UpgradeError::NotFound);
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(UpgradeError::UpgradeRequired("this endpoint only speaks WebSocket"));
    }
    if header("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(UpgradeError::UpgradeRequired(
            "unsupported Sec-WebSocket-Version (13 is served)",
        ));
    }
    if header("host").is_none() {
        return Err(UpgradeError::BadRequest("missing Host header"));
    }
    let key = header("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or(UpgradeError::BadRequest("missing Sec-WebSocket-Key"))?;
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => return Err(UpgradeError::BadRequest("Sec-WebSocket-Key is not 16 bytes in base64")),
    }
    if !rules.origins.is_empty() {
        let ok = header("origin")
            .and_then(|o| std::str::from_utf8(o).ok())
            .is_some_and(|o| rules.origins.iter().any(|a| a == o));
        if !ok {
            return Err(UpgradeError::Forbidden);
        }
    }
    let key = std::str::from_utf8(key).map_err(|_| UpgradeError::BadRequest("Sec-WebSocket-Key is not ASCII"))?;
    Ok(Some(Upgrade {
        path,
        accept: accept_key(key),
        len,
    }))
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The 101 response completing the handshake.
pub fn response_101(accept: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

/// A server frame (FIN set, unmasked) around `payload`.
pub fn frame(op: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(10 + payload.len());
    put_header(&mut b, op, payload.len());
    b.put_slice(payload);
    b.freeze()
}

/// Writes a FIN, unmasked frame header for `len` payload bytes.
pub fn put_header(b: &mut BytesMut, op: u8, len: usize) {
    b.put_u8(0x80 | op);
    if len < 126 {
        b.put_u8(len as u8);
    } else if len <= 0xffff {
        b.put_u8(126);
        b.put_u16(len as u16);
    } else {
        b.put_u8(127);
        b.put_u64(len as u64);
    }
}

/// A close frame with `code` and a reason cut to fit a control frame.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut p = Vec::with_capacity(2 + cut);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(opcode::CLOSE, &p)
}

/// A close code a peer may send (RFC 6455 7.4.1 and the IANA registry as of
/// the RFC; 1004-1006 and 1015 must never be on the wire).
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// XORs `data` with `mask`, starting at mask offset `at`.
pub fn unmask(data: &mut [u8], mask: [u8; 4], at: usize) {
    let m = [mask[at % 4], mask[(at + 1) % 4], mask[(at + 2) % 4], mask[(at + 3) % 4]];
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// A violation that ends the connection, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct WsError {
    /// Close code for the peer.
    pub code: u16,
    /// Human-readable reason (also sent in the close frame).
    pub reason: &'static str,
}

fn fail(code: u16, reason: &'static str) -> WsError {
    WsError { code, reason }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last frame of the message.
    pub fin: bool,
    /// Opcode.
    pub op: u8,
    /// Masking key (clients must mask).
    pub mask: [u8; 4],
    /// Payload length.
    pub len: u64,
    /// Header length in bytes.
    pub size: usize,
}

/// Parses a client frame header. `Ok(None)`: not enough bytes yet.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(fail(close::PROTOCOL, "reserved bits set (no extension negotiated)"));
    }
    let op = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    match op {
        opcode::CONT | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin {
                return Err(fail(close::PROTOCOL, "fragmented control frame"));
            }
            if b1 & 0x7f > 125 {
                return Err(fail(close::PROTOCOL, "control frame payload over 125 bytes"));
            }
        }
        _ => return Err(fail(close::PROTOCOL, "reserved opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(fail(close::PROTOCOL, "client frames must be masked"));
    }
    let (len, at) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else { return Ok(None) };
            let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(fail(close::PROTOCOL, "64-bit length with the top bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let Some(m) = buf.get(at..at + 4) else { return Ok(None) };
    Ok(Some(Header {
        fin,
        op,
        mask: [m[0], m[1], m[2], m[3]],
        len,
        size: at + 4,
    }))
}

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
    buf: Vec<u8>,
    /// Prefix of `buf` known to be valid UTF-8 (text only).
    checked: usize,
}

/// Per-connection receive state: the message in progress, if fragmented.
#[derive(Debug, Default)]
pub struct Reader {
    partial: Option<Partial>,
}

impl Reader {
    /// A fragmented message is being assembled.
    pub fn mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes, unmasks in place and hands over as many whole frames of
    /// `data` as it holds; returns the bytes consumed (a partial frame is
    /// left for the caller to keep and offer again with more bytes).
    /// `on` returns `false` to stop early (the connection is closing).
    pub fn read(
        &mut self,
        data: &mut [u8],
        limits: Limits,
        mut on: impl FnMut(Event<'_>) -> bool,
    ) -> Result<usize, WsError> {
        let mut used = 0;
        loop {
            let Some(h) = parse_header(&data[used..])? else {
                return Ok(used);
            };
            let in_progress = self.partial.as_ref().map_or(0, |p| p.buf.len());
            if h.len > (limits.max_message - in_progress.min(limits.max_message)) as u64 {
                return Err(fail(close::TOO_BIG, "message too big"));
            }
            let len = h.len as usize;
            if data.len() - used < h.size + len {
                return Ok(used);
            }
            let payload = &mut data[used + h.size..used + h.size + len];
            unmask(payload, h.mask, 0);
            used += h.size + len;
            let go_on = match h.op {
                opcode::PING => on(Event::Ping(payload)),
                opcode::PONG => on(Event::Pong),
                opcode::CLOSE => {
                    let (code, reason) = parse_close(payload)?;
                    on(Event::Close(code, reason));
                    false
                }
                opcode::CONT => {
                    let Some(p) = self.partial.as_mut() else {
                        return Err(fail(close::PROTOCOL, "continuation frame without a message"));
                    };
                    p.buf.extend_from_slice(payload);
                    if p.text {
                        check_utf8(p, h.fin)?;
                    }
                    if h.fin {
                        let p = self.partial.take().expect("checked above");
                        on(Event::Message {
                            text: p.text,
                            payload: &p.buf,
                        })
                    } else {
                        true
                    }
                }
                op => {
                    if self.partial.is_some() {
                        return Err(fail(close::PROTOCOL, "new message before the previous one ended"));
                    }
                    let text = op == opcode::TEXT;
                    if h.fin {
                        if text && std::str::from_utf8(payload).is_err() {
                            return Err(fail(close::INVALID_DATA, "text message is not UTF-8"));
                        }
                        on(Event::Message { text, payload })
                    } else {
                        let mut p = Partial {
                            text,
                            buf: payload.to_vec(),
                            checked: 0,
                        };
                        if text {
                            check_utf8(&mut p, false)?;
                        }
                        self.partial = Some(p);
                        true
                    }
                }
            };
            if !go_on {
                return Ok(used);
            }
        }
    }
}

/// Checks the unchecked tail of a text message; an incomplete character is
/// fine until the last fragment (fail fast on anything else).
fn check_utf8(p: &mut Partial, last: bool) -> Result<(), WsError> {
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => p.checked = p.buf.len(),
        Err(e) if e.error_len().is_none() && !last => p.checked += e.valid_up_to(),
        Err(_) => return Err(fail(close::INVALID_DATA, "text message is not UTF-8")),
    }
    Ok(())
}

/// Code and reason of a close payload.
fn parse_close(p: &[u8]) -> Result<(u16, &str), WsError> {
    match p.len() {
        0 => Ok((1005, "")),
        1 => Err(fail(close::PROTOCOL, "close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([p[0], p[1]]);
            if !close_code_valid(code) {
                return Err(fail(close::PROTOCOL, "invalid close code"));
            }
            let reason =
                std::str::from_utf8(&p[2..]).map_err(|_| fail(close::INVALID_DATA, "close reason is not UTF-8"))?;
            Ok((code, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UpgradeRules {
        UpgradeRules {
            paths: vec!["/sub".into()],
            origins: vec![],
        }
    }

    const REQ: &str = "GET /sub?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_accept_key_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn upgrade_accepted_at_every_split_and_refused_with_the_right_status() {
        let full = REQ.as_bytes();
        for cut in 0..full.len() {
            assert_eq!(parse_upgrade(&full[..cut], &rules()), Ok(None), "cut {cut}");
        }
        let up = parse_upgrade(full, &rules()).unwrap().unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.len, full.len());

        let bad = |req: String| parse_upgrade(req.as_bytes(), &rules()).unwrap_err();
        assert_eq!(bad(REQ.replace("/sub", "/other")), UpgradeError::NotFound);
        assert!(matches!(
            bad(REQ.replace("Version: 13", "Version: 8")),
            UpgradeError::UpgradeRequired(_)
        ));
        assert!(matches!(
            bad(REQ.replace("Upgrade: websocket", "Upgrade: h2c")),
            UpgradeError::UpgradeRequired(_)
        ));
        assert!(matches!(bad(REQ.replace("GET", "POST")), UpgradeError::BadRequest(_)));
        assert!(matches!(
            bad(REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            UpgradeError::BadRequest(_)
        ));
        assert!(matches!(bad("GARBAGE\0\r\n\r\n".into()), UpgradeError::BadRequest(_)));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            bad(REQ.replace("Host: a\r\n", &format!("Host: a\r\n{many}"))),
            UpgradeError::TooLarge
        );
        assert_eq!(
            parse_upgrade(&vec![b'a'; MAX_UPGRADE_BYTES], &rules()).unwrap_err(),
            UpgradeError::TooLarge,
            "never completes within the limit"
        );
        let long = format!("GET /sub HTTP/1.1\r\nX: {}", "a".repeat(MAX_UPGRADE_BYTES));
        assert_eq!(bad(long), UpgradeError::TooLarge);

        let strict = UpgradeRules {
            paths: vec!["/sub".into()],
            origins: vec!["https://ok.example".into()],
        };
        assert_eq!(parse_upgrade(full, &strict), Err(UpgradeError::Forbidden));
        let with = REQ.replace("Host: a\r\n", "Host: a\r\nOrigin: https://ok.example\r\n");
        assert!(parse_upgrade(with.as_bytes(), &strict).unwrap().is_some());
        assert!(UpgradeError::UpgradeRequired("x")
            .response()
            .starts_with(b"HTTP/1.1 426"));
    }

    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut v = vec![(u8::from(fin) << 7) | op];
        match payload.len() {
            n if n < 126 => v.push(0x80 | n as u8),
            n if n <= 0xffff => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask, 0);
        v.extend_from_slice(&p);
        v
    }

    fn read_all(r: &mut Reader, mut data: Vec<u8>, max: usize) -> (Result<usize, WsError>, Vec<String>) {
        let mut got = Vec::new();
        let res = r.read(&mut data, Limits { max_message: max }, |e| {
            got.push(match e {
                Event::Message { text, payload } => {
                    format!("{}:{}", if text { "t" } else { "b" }, String::from_utf8_lossy(payload))
                }
                Event::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
                Event::Pong => "pong".into(),
                Event::Close(c, why) => format!("close:{c}:{why}"),
            });
            true
        });
        (res, got)
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let mut data = client_frame(false, opcode::TEXT, "héllo ".as_bytes());
        data.extend(client_frame(true, opcode::PING, b"p"));
        data.extend(client_frame(false, opcode::CONT, &"wörld".as_bytes()[..2]));
        data.extend(client_frame(true, opcode::CONT, &"wörld".as_bytes()[2..]));
        data.extend(client_frame(true, opcode::BINARY, &[1, 2]));
        let len = data.len();
        let (res, got) = read_all(&mut Reader::default(), data, 1000);
        assert_eq!(res, Ok(len));
        assert_eq!(got, vec!["ping:p", "t:héllo wörld", "b:\u{1}\u{2}"]);
    }

    #[test]
    fn every_split_point_leaves_a_partial_frame() {
        let data = client_frame(true, opcode::BINARY, &[7; 300]);
        for cut in 0..data.len() {
            let (res, got) = read_all(&mut Reader::default(), data[..cut].to_vec(), 1000);
            assert_eq!((res, got.len()), (Ok(0), 0), "cut {cut}");
        }
    }

    #[test]
    fn violations_name_their_close_codes() {
        let code = |data: Vec<u8>| read_all(&mut Reader::default(), data, 100).0.unwrap_err().code;
        let mut unmasked = client_frame(true, opcode::BINARY, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(code(unmasked), close::PROTOCOL);
        assert_eq!(
            code(vec![0x80 | 0x3, 0x80, 0, 0, 0, 0]),
            close::PROTOCOL,
            "reserved opcode"
        );
        assert_eq!(code(vec![0xC2, 0x80, 0, 0, 0, 0]), close::PROTOCOL, "rsv1");
        assert_eq!(code(client_frame(false, opcode::PING, b"")), close::PROTOCOL);
        assert_eq!(code(client_frame(true, opcode::PING, &[0; 126])), close::PROTOCOL);
        assert_eq!(code(client_frame(true, opcode::CONT, b"x")), close::PROTOCOL);
        let mut two = client_frame(false, opcode::TEXT, b"a");
        two.extend(client_frame(true, opcode::TEXT, b"b"));
        assert_eq!(code(two), close::PROTOCOL);
        assert_eq!(code(client_frame(true, opcode::TEXT, &[0xff])), close::INVALID_DATA);
        assert_eq!(
            code(client_frame(false, opcode::TEXT, &[0xce, 0xba, 0xff])),
            close::INVALID_DATA,
            "fail fast"
        );
        assert_eq!(code(client_frame(true, opcode::BINARY, &[0; 101])), close::TOO_BIG);
        let mut big = client_frame(false, opcode::BINARY, &[0; 60]);
        big.extend(client_frame(true, opcode::CONT, &[0; 60]));
        assert_eq!(code(big), close::TOO_BIG);
        assert_eq!(code(client_frame(true, opcode::CLOSE, &[3])), close::PROTOCOL);
        assert_eq!(
            code(client_frame(true, opcode::CLOSE, &1004u16.to_be_bytes())),
            close::PROTOCOL
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(
            code(client_frame(true, opcode::CLOSE, &bad_reason)),
            close::INVALID_DATA
        );
        let huge = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(code(huge), close::PROTOCOL);
    }

    #[test]
    fn close_stops_reading_and_reports_the_code() {
        let mut data = client_frame(true, opcode::CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']);
        data.extend(client_frame(true, opcode::BINARY, b"after"));
        let (_, got) = read_all(&mut Reader::default(), data, 100);
        assert_eq!(got, vec!["close:1000:bye"]);
        let (_, got) = read_all(&mut Reader::default(), client_frame(true, opcode::CLOSE, b""), 100);
        assert_eq!(got, vec!["close:1005:"]);
    }

    #[test]
    fn server_frames_use_minimal_lengths() {
        assert_eq!(&frame(opcode::BINARY, &[1; 125])[..2], &[0x82, 125]);
        assert_eq!(&frame(opcode::BINARY, &[1; 126])[..4], &[0x82, 126, 0, 126]);
        assert_eq!(
            &frame(opcode::BINARY, &[1; 65536])[..10],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        let c = close_frame(1002, &"é".repeat(100));
        assert_eq!(c.len(), 2 + 2 + 122, "reason cut on a char boundary within 125");
    }

    #[test]
    fn unmask_matches_bytewise_at_any_offset() {
        let mask = [1, 2, 3, 4];
        for at in 0..4 {
            for n in 0..40 {
                let mut fast: Vec<u8> = (0..n as u8).collect();
                let slow: Vec<u8> = fast.iter().enumerate().map(|(i, b)| b ^ mask[(i + at) % 4]).collect();
                unmask(&mut fast, mask, at);
                assert_eq!(fast, slow);
            }
        }
    }
}
