//! permessage-deflate (RFC 7692), sans-IO: the client's offers and the
//! server's answer (`negotiate`), one compressed payload per message that
//! every connection which negotiated the extension can be sent
//! (`Compressor`), and a client's compressed message inflated under a
//! limit (`Inflater`).
//!
//! The server's policy, and why:
//!
//! - Every message is compressed on its own, the deflate stream starting
//!   over each time (RFC 7692 7.1.1: a server may do so whatever was
//!   negotiated). So a broadcast is compressed once and the same bytes go
//!   to every member that negotiated the extension, and the server keeps no
//!   window per connection. The answer says `server_no_context_takeover`,
//!   which lets the client drop its window between messages too.
//! - The answer asks `client_no_context_takeover` (7.1.1.2): each client
//!   message then inflates from a fresh state, so one inflater per shard
//!   serves every connection instead of a 32 KiB window each.
//! - An offer with `server_max_window_bits` below 15 is accepted with that
//!   value, and such a connection is sent its messages uncompressed (a
//!   message without RSV1 is always valid). The shared payload is made with
//!   a 32 KiB window, and zlib cannot make 8-bit windows at all. So no
//!   variant per window is kept.
//! - An offer with an unknown or repeated parameter, or a value out of
//!   range, is declined (7.1: the server must not accept it), and the next
//!   one is tried.
//!
//! Runs on whichever shard owns the connection (negotiation, inflating) or
//! the room (compressing a broadcast once). Invariants: `negotiate` answers
//! only with parameters the accepted offer allows; the compressed payload
//! never has the trailing `00 00 ff ff` (7.2.1); an inflated message is
//! never more than the limit.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's token.
pub const NAME: &str = "permessage-deflate";
/// The sync flush's empty stored block, removed from the end of every
/// compressed message and put back to inflate one (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The window of the shared compressor and of the inflater: 32 KiB.
const WINDOW_BITS: u8 = 15;

/// One permessage-deflate offer's parameters (RFC 7692 7.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    /// `server_no_context_takeover`.
    pub server_no_context_takeover: bool,
    /// `client_no_context_takeover`.
    pub client_no_context_takeover: bool,
    /// `server_max_window_bits=N` (8..=15).
    pub server_max_window_bits: Option<u8>,
    /// `client_max_window_bits`, with its value if it had one.
    pub client_max_window_bits: Option<Option<u8>>,
}

/// What was agreed for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The `Sec-WebSocket-Extensions` value of the answer.
    pub response: String,
    /// Whether this connection may be sent the shared compressed payloads
    /// (its window is the full 32 KiB).
    pub compressed_sends: bool,
}

/// An extension's parameters: lower-cased names, values unquoted.
type Params = Vec<(String, Option<String>)>;

/// Splits a `Sec-WebSocket-Extensions` value into extensions, each a name
/// and its parameters (`None`: a bad header). Quoted values (RFC 6455
/// 9.1) are unquoted.
fn extensions(value: &str) -> Option<Vec<(String, Params)>> {
    let mut out = Vec::new();
    for ext in split_outside_quotes(value, ',') {
        let mut parts = split_outside_quotes(ext, ';').into_iter();
        let name = parts.next()?.trim();
        if name.is_empty() {
            // `a, , b` has an empty element, which the list syntax allows.
            continue;
        }
        if !is_token(name) {
            return None;
        }
        let mut params = Vec::new();
        for p in parts {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                None => (p.trim(), None),
            };
            if !is_token(k) {
                return None;
            }
            params.push((k.to_ascii_lowercase(), v));
        }
        out.push((name.to_ascii_lowercase(), params));
    }
    Some(out)
}

/// `s` split at `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A token or a quoted string's content (`None`: neither).
fn unquote(v: &str) -> Option<String> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next()? } else { c });
            }
            is_token(&out).then_some(out)
        }
        None => is_token(v).then(|| v.to_string()),
    }
}

/// RFC 7230 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A window-bits value: 8 to 15, decimal digits only, no leading zero.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|n| (8..=15).contains(n))
}

/// The offer's parameters, or `None` when the offer must be declined (an
/// unknown or repeated parameter, a bad value).
fn offer(params: &[(String, Option<String>)]) -> Option<Offer> {
    let mut o = Offer::default();
    let mut seen = std::collections::HashSet::new();
    for (k, v) in params {
        if !seen.insert(k.as_str()) {
            return None;
        }
        match (k.as_str(), v.as_deref()) {
            ("server_no_context_takeover", None) => o.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => o.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => o.server_max_window_bits = Some(window_bits(v)?),
            ("client_max_window_bits", None) => o.client_max_window_bits = Some(None),
            ("client_max_window_bits", Some(v)) => o.client_max_window_bits = Some(Some(window_bits(v)?)),
            _ => return None,
        }
    }
    Some(o)
}

/// The permessage-deflate offers in the request's
/// `Sec-WebSocket-Extensions` values, in order; `None` for each one the
/// server must decline. Other extensions are left out; a header that is
/// not a list of extensions offers nothing.
pub fn offers<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Option<Offer>> {
    let mut out = Vec::new();
    for v in values {
        let Some(exts) = extensions(v) else { continue };
        for (name, params) in exts {
            if name == NAME {
                out.push(offer(&params));
            }
        }
    }
    out
}

/// The server's answer to the request's `Sec-WebSocket-Extensions` values:
/// the first acceptable permessage-deflate offer, or `None` (nothing
/// offered, or nothing acceptable: no extension then).
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    let o = offers(values).into_iter().flatten().next()?;
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = o.server_max_window_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreed {
        response,
        compressed_sends: o.server_max_window_bits.is_none_or(|b| b == WINDOW_BITS),
    })
}

/// Compresses whole messages, each on its own (see the module doc); one
/// per shard serves every message it compresses.
pub struct Compressor {
    z: Compress,
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor {
            z: Compress::new_with_window_bits(Compression::default(), false, WINDOW_BITS),
        }
    }
}

impl Compressor {
    /// `message` compressed, the trailing `00 00 ff ff` removed; `None`
    /// when that is not smaller than the message (send it plain).
    pub fn compress(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        self.z.reset();
        // Deflate adds at most 5 bytes per 16 KiB stored block plus a few:
        // what does not fit in the message's own size is not worth it.
        let mut out = Vec::with_capacity(message.len() + 64);
        let mut at = 0;
        loop {
            let before = self.z.total_in();
            let status = self
                .z
                .compress_vec(&message[at..], &mut out, FlushCompress::Sync)
                .ok()?;
            at += (self.z.total_in() - before) as usize;
            if at == message.len() && out.len() < out.capacity() && status != Status::BufError {
                break;
            }
            if status == Status::BufError && out.len() < out.capacity() {
                // No progress with room to write: nothing more will come.
                return None;
            }
            if out.len() > message.len() + TAIL.len() {
                return None;
            }
            out.reserve(1024);
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < message.len()).then_some(out)
    }
}

thread_local! {
    /// The shard's inflater: every connection's messages inflate from a
    /// fresh state, so one serves them all.
    static INFLATER: std::cell::RefCell<Inflater> = std::cell::RefCell::new(Inflater::default());
    /// Messages compressed and inflated on this thread since `take_counts`.
    static COUNTS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// `compressed` inflated by this thread's inflater (`Inflater::inflate`).
pub fn inflate_here(compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let r = INFLATER.with(|i| i.borrow_mut().inflate(compressed, limit));
    if r.is_ok() {
        COUNTS.with(|c| c.set((c.get().0, c.get().1 + 1)));
    }
    r
}

/// A message was compressed on this thread (`proto::wire`).
pub fn count_compressed() {
    COUNTS.with(|c| c.set((c.get().0 + 1, c.get().1)));
}

/// Messages compressed and inflated on this thread since the last call
/// (the shard's sweep adds them to its counters).
pub fn take_counts() -> (u64, u64) {
    COUNTS.with(|c| c.replace((0, 0)))
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates to more than the limit (a decompression bomb, or just
    /// too big): close 1009.
    #[error("inflates to more than {0} bytes")]
    TooBig(usize),
    /// Not a deflate stream: close 1007.
    #[error("not valid deflate data")]
    Corrupt,
}

/// Inflates client messages, each from a fresh state (the server asked for
/// `client_no_context_takeover`); one per shard serves every connection.
pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            z: Decompress::new_with_window_bits(false, WINDOW_BITS),
        }
    }
}

impl Inflater {
    /// `compressed` (one whole message's payload) inflated, at most
    /// `limit` bytes. Work stops as soon as the limit is passed, so a bomb
    /// costs no more than `limit` bytes of output.
    pub fn inflate(&mut self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        self.z.reset(false);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).clamp(64, limit.max(64)));
        for (input, tail) in [(compressed, false), (&TAIL[..], true)] {
            let mut at = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig(limit));
                    }
                    // Doubling, but never past one byte over the limit.
                    let room = (limit + 1).saturating_sub(out.len()).max(1);
                    out.reserve(out.len().max(1024).min(room));
                }
                let (in_before, out_before) = (self.z.total_in(), out.len());
                let status = self
                    .z
                    .decompress_vec(&input[at..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                at += (self.z.total_in() - in_before) as usize;
                if out.len() > limit {
                    return Err(InflateError::TooBig(limit));
                }
                let spare = out.len() < out.capacity();
                match status {
                    // A final block ends the message (a sender may set
                    // BFINAL): bytes of the message after it are not
                    // deflate data; the tail after it is not needed.
                    Status::StreamEnd if at < input.len() && !tail => return Err(InflateError::Corrupt),
                    Status::StreamEnd => return Ok(out),
                    _ if at == input.len() && spare => break,
                    _ if self.z.total_in() == in_before && out.len() == out_before && spare => {
                        return Err(InflateError::Corrupt)
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(offer: &str) -> Option<Agreed> {
        negotiate([offer])
    }

    #[test]
    fn the_first_acceptable_offer_is_answered_with_no_context_takeover_both_ways() {
        let a = agreed("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(
            a.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(a.compressed_sends);
        // A smaller server window is granted as asked; that connection is
        // sent plain messages.
        let a = agreed("permessage-deflate; server_max_window_bits=10").unwrap();
        assert!(a.response.ends_with("; server_max_window_bits=10"), "{}", a.response);
        assert!(!a.compressed_sends);
        let a = agreed("permessage-deflate; server_max_window_bits=\"15\"").unwrap();
        assert!(a.compressed_sends);
        // Several offers, in one value or several: the first acceptable.
        let a = negotiate([
            "x-webkit-deflate-frame",
            "permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=9",
        ]);
        assert!(a.unwrap().response.ends_with("server_max_window_bits=9"));
        // Case of names does not matter.
        assert!(agreed("PerMessage-Deflate; Client_No_Context_Takeover").is_some());
    }

    #[test]
    fn offers_that_must_be_declined_are() {
        for bad in [
            "permessage-deflate; unknown",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=1x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits=\"1\"5\"",
            "permessage-deflate; ;",
            "permessage deflate",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        assert_eq!(negotiate([]), None);
        assert_eq!(agreed("x-webkit-deflate-frame"), None);
    }

    #[test]
    fn a_message_compressed_once_inflates_back_and_a_message_that_does_not_shrink_is_plain() {
        let mut c = Compressor::default();
        let mut i = Inflater::default();
        let json = br#"{"from":"bot","text":"hello hello hello hello hello hello hello hello"}"#.repeat(8);
        let z = c.compress(&json).expect("JSON shrinks");
        assert!(z.len() < json.len() / 4, "{} of {}", z.len(), json.len());
        assert!(!z.ends_with(&TAIL));
        // Compressed again, from scratch: the same bytes (a broadcast's
        // payload serves every member).
        assert_eq!(c.compress(&json), Some(z.clone()));
        assert_eq!(i.inflate(&z, 1 << 20).unwrap(), json);
        // And again, the inflater starting over for each message.
        assert_eq!(i.inflate(&z, 1 << 20).unwrap(), json);
        // Incompressible bytes are sent plain.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(c.compress(&noise), None);
        assert_eq!(c.compress(b""), None);
        // Large messages work across the buffer's growth.
        let big = b"0123456789abcdef".repeat(50_000);
        let z = c.compress(&big).unwrap();
        assert_eq!(i.inflate(&z, big.len()).unwrap(), big);
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_refused() {
        let mut c = Compressor::default();
        let mut i = Inflater::default();
        let bomb = c.compress(&vec![0u8; 10 << 20]).unwrap();
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(i.inflate(&bomb, 1 << 16), Err(InflateError::TooBig(1 << 16)));
        assert_eq!(
            i.inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1 << 16),
            Err(InflateError::Corrupt)
        );
        // A message that ends with a final block is fine; more bytes
        // after that block are not.
        let mut z = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut done = Vec::with_capacity(64);
        z.compress_vec(b"hi", &mut done, FlushCompress::Finish).unwrap();
        assert_eq!(i.inflate(&done, 1 << 16).unwrap(), b"hi");
        done.extend_from_slice(b"trailing");
        assert_eq!(i.inflate(&done, 1 << 16), Err(InflateError::Corrupt));
        // Exactly the limit is allowed, one byte more is not.
        let ten = c.compress(&[b'a'; 1000]).unwrap();
        assert_eq!(i.inflate(&ten, 1000).unwrap().len(), 1000);
        assert_eq!(i.inflate(&ten, 999), Err(InflateError::TooBig(999)));
        assert_eq!(i.inflate(&ten, 0), Err(InflateError::TooBig(0)));
        // The inflater is fine for the next message.
        let ok = c.compress(&b"abcabcabcabcabcabc".repeat(10)).unwrap();
        assert!(i.inflate(&ok, 1 << 16).is_ok());
    }
}
