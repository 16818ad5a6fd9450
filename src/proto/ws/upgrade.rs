//! The WebSocket opening handshake, server side (RFC 6455 section 4): parse
//! and check an HTTP/1.1 upgrade request from untrusted bytes, and build the
//! answers (101, or a 4xx with a JSON body).
//!
//! Pure code. httparse reads the request line and headers into a fixed array
//! of `MAX_UPGRADE_HEADERS`; the whole request is bounded by
//! `MAX_UPGRADE_BYTES`, checked on every partial parse so a slow or endless
//! request cannot grow the caller's buffer beyond it.
//!
//! Extensions: permessage-deflate, when the rules allow it, is answered
//! here (`deflate::negotiate`); no other extension and no subprotocol is
//! negotiated.

use bytes::Bytes;

/// Largest upgrade request accepted (request line plus headers).
pub const MAX_UPGRADE_BYTES: usize = 8192;
/// Most headers accepted in an upgrade request.
pub const MAX_UPGRADE_HEADERS: usize = 32;
/// The GUID of RFC 6455 section 1.3.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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

/// The HTTP answer to an upgrade refused before it was read, because the
/// server is at a connection limit: `status` ("503 Service Unavailable",
/// "429 Too Many Requests") and the close reason's text.
pub fn refusal(status: &str, text: &str) -> Bytes {
    let body = serde_json::json!({ "error": text }).to_string() + "\n";
    Bytes::from(format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// What the upgrade is checked against.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRules {
    /// Paths served (exact match on the path, query ignored).
    pub paths: Vec<String>,
    /// Allowed `Origin` values; empty = any (and requests without Origin).
    pub origins: Vec<String>,
    /// permessage-deflate may be negotiated (`[ws] compression`).
    pub compression: bool,
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
    /// permessage-deflate, if offered, allowed and agreed.
    pub deflate: Option<super::deflate::Agreed>,
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
    let deflate = if rules.compression {
        let offered = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            .filter_map(|h| std::str::from_utf8(h.value).ok());
        super::deflate::negotiate(offered)
    } else {
        None
    };
    Ok(Some(Upgrade {
        path,
        accept: accept_key(key),
        len,
        deflate,
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

/// The upgrade request a client sends for `path` on `host`, with a fixed
/// key (the load generator and tests do not check the accept value).
pub fn client_request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The 101 response completing the handshake, with the extensions agreed.
pub fn response_101(accept: &str, extensions: Option<&str>) -> Bytes {
    let extensions = extensions.map_or(String::new(), |e| format!("Sec-WebSocket-Extensions: {e}\r\n"));
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> UpgradeRules {
        UpgradeRules {
            paths: vec!["/sub".into()],
            origins: vec![],
            compression: true,
        }
    }

    const REQ: &str = "GET /sub?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn permessage_deflate_is_agreed_when_offered_and_allowed() {
        let offer = REQ.replace(
            "Host: a\r\n",
            "Host: a\r\nSec-WebSocket-Extensions: x-webkit-deflate-frame\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
        let up = parse_upgrade(offer.as_bytes(), &rules()).unwrap().unwrap();
        let agreed = up.deflate.expect("agreed");
        let answer = response_101(&up.accept, Some(&agreed.response));
        let answer = std::str::from_utf8(&answer).unwrap();
        assert!(
            answer.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{answer}"
        );
        let off = UpgradeRules {
            compression: false,
            ..rules()
        };
        assert_eq!(parse_upgrade(offer.as_bytes(), &off).unwrap().unwrap().deflate, None);
        assert_eq!(parse_upgrade(REQ.as_bytes(), &rules()).unwrap().unwrap().deflate, None);
        assert!(!std::str::from_utf8(&response_101("k", None))
            .unwrap()
            .contains("Extensions"));
    }

    #[test]
    fn the_client_request_is_accepted() {
        let req = client_request("/sub", "h");
        let up = parse_upgrade(req.as_bytes(), &rules()).unwrap().unwrap();
        assert_eq!((up.path, up.len), (0, req.len()));
    }

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
            compression: false,
        };
        assert_eq!(parse_upgrade(full, &strict), Err(UpgradeError::Forbidden));
        let with = REQ.replace("Host: a\r\n", "Host: a\r\nOrigin: https://ok.example\r\n");
        assert!(parse_upgrade(with.as_bytes(), &strict).unwrap().is_some());
        assert!(UpgradeError::UpgradeRequired("x")
            .response()
            .starts_with(b"HTTP/1.1 426"));
    }
}
