//! Who may do what: the API key check shared by the HTTP API and the TCP
//! publisher port, in constant time, and client tokens (`jwt`).
//!
//! Pure, called on whichever shard serves the request. With no key
//! configured everything is allowed (keep the listeners on loopback then);
//! with one, the presented bytes must equal it. The comparison's time does
//! not depend on where the bytes differ (`subtle`), so a caller cannot find
//! the key byte by byte by timing refusals; it does depend on whether the
//! lengths match, which reveals only the key's length.
//!
//! `jwt` verifies client tokens (`[auth] mode = "jwt"`) and says what each
//! grants; the shards enforce it (`shard::session`).

pub mod jwt;

use subtle::ConstantTimeEq;

/// Whether `presented` opens the API when the configured key is `expected`
/// (`None`: no key configured, always open).
pub fn api_key_ok(expected: Option<&str>, presented: Option<&[u8]>) -> bool {
    match expected {
        None => true,
        Some(key) => presented.is_some_and(|p| bool::from(key.as_bytes().ct_eq(p))),
    }
}

/// The key an HTTP request presents: `X-Api-Key: KEY`, or else
/// `Authorization: Bearer KEY`.
pub fn http_presented_key(headers: &hyper::HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    headers
        .get("authorization")
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_match_exactly() {
        assert!(api_key_ok(None, None));
        assert!(api_key_ok(None, Some(b"anything")));
        assert!(api_key_ok(Some("s3cret"), Some(b"s3cret")));
        for wrong in [&b""[..], b"s3cre", b"s3cret!", b"S3cret", b"x3cret"] {
            assert!(!api_key_ok(Some("s3cret"), Some(wrong)), "{wrong:?}");
        }
        assert!(!api_key_ok(Some("s3cret"), None));

        let mut h = hyper::HeaderMap::new();
        assert_eq!(http_presented_key(&h), None);
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert_eq!(http_presented_key(&h), Some(&b"k1"[..]));
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(http_presented_key(&h), Some(&b"k2"[..]), "X-Api-Key first");
    }
}
