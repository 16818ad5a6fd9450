//! Bodies of the client control operations: the auth JSON (op 7) and the
//! accepts list of op 14/16.
//!
//! Pure code, runs on the connection's shard. Every field is bounded here so
//! that nothing downstream (room index, key directory) ever stores a value
//! sized by the peer beyond these limits.
//!
//! ```text
//! op 7 body (JSON, goim-compatible; unknown fields ignored):
//!   {"mid":123,"key":"","room_id":"live://1000","platform":"web","accepts":[1000,1001],"token":"eyJ..."}
//! op 14/16 body: ASCII decimal operation codes separated by commas, "1000,1001"
//! ```
//!
//! Deliberately not here: what the token means (`auth::jwt`); this only
//! bounds its length.

use serde::Deserialize;

/// Longest accepted connection key, in bytes.
pub const MAX_KEY_LEN: usize = 128;
/// Longest accepted room key ("type://id"), in bytes.
pub const MAX_ROOM_LEN: usize = 256;
/// Most operation codes one connection may accept.
pub const MAX_ACCEPTS: usize = 256;
/// Longest accepted platform string, in bytes.
pub const MAX_PLATFORM_LEN: usize = 32;
/// Longest accepted token, in bytes.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Largest body of a frame that carries a token (op 7 auth, op 54 token
/// refresh), whatever `[limits] max_body` says: a token of
/// `MAX_TOKEN_LEN` and every other auth field at its limit, JSON escapes
/// included, fit.
pub const MAX_TOKEN_FRAME_BODY: usize = MAX_TOKEN_LEN + 8192;

/// The auth request as goim clients send it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AuthBody {
    /// User id; 0 means anonymous (no user pushes reach it).
    pub mid: i64,
    /// Connection key; empty means "assign one".
    pub key: String,
    /// Room to join at once, "type://id"; empty means none.
    pub room_id: String,
    /// Free-form client platform ("web", "android", ...).
    pub platform: String,
    /// Operation codes this connection accepts for key, user and global pushes.
    pub accepts: Vec<i64>,
    /// The signed token (`[auth] mode = "jwt"`); ignored with auth off.
    pub token: String,
}

/// Why an auth or accepts body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The auth body is not the expected JSON object.
    #[error("auth body is not valid JSON: {0}")]
    Json(String),
    /// A string field is longer than its limit.
    #[error("{field} is {got} bytes, limit {max}")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Length received.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// Too many accepted operation codes.
    #[error("{got} accepted operations, limit {max}")]
    TooManyAccepts {
        /// Count received.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// An operation code that is not a u32 decimal.
    #[error("bad operation code {0:?}")]
    BadOp(String),
    /// A room key that is not UTF-8.
    #[error("room key is not valid UTF-8")]
    RoomNotUtf8,
}

/// Parses and bounds an auth body.
pub fn parse_auth(body: &[u8]) -> Result<AuthBody, BodyError> {
    // serde would also accept a struct in sequence form (`[123,"k",...]`);
    // the protocol says object, so anything else is refused.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BodyError::Json("expected a JSON object".into()));
    }
    let auth: AuthBody = serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    check_len("key", auth.key.len(), MAX_KEY_LEN)?;
    check_len("room_id", auth.room_id.len(), MAX_ROOM_LEN)?;
    check_len("platform", auth.platform.len(), MAX_PLATFORM_LEN)?;
    check_len("token", auth.token.len(), MAX_TOKEN_LEN)?;
    if auth.accepts.len() > MAX_ACCEPTS {
        return Err(BodyError::TooManyAccepts {
            got: auth.accepts.len(),
            max: MAX_ACCEPTS,
        });
    }
    for &op in &auth.accepts {
        if u32::try_from(op).is_err() {
            return Err(BodyError::BadOp(op.to_string()));
        }
    }
    Ok(auth)
}

/// Parses a room key from an op 12 body.
pub fn parse_room(body: &[u8]) -> Result<&str, BodyError> {
    check_len("room", body.len(), MAX_ROOM_LEN)?;
    std::str::from_utf8(body).map_err(|_| BodyError::RoomNotUtf8)
}

/// Parses an op 14/16 body ("1000,1001"; spaces around items allowed; empty
/// body = no codes).
pub fn parse_ops(body: &[u8]) -> Result<Vec<u32>, BodyError> {
    let mut out = Vec::new();
    for item in body.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() {
            continue;
        }
        let op = std::str::from_utf8(item)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| BodyError::BadOp(String::from_utf8_lossy(&item[..item.len().min(16)]).into_owned()))?;
        out.push(op);
        if out.len() > MAX_ACCEPTS {
            return Err(BodyError::TooManyAccepts {
                got: out.len(),
                max: MAX_ACCEPTS,
            });
        }
    }
    Ok(out)
}

fn check_len(field: &'static str, got: usize, max: usize) -> Result<(), BodyError> {
    if got > max {
        Err(BodyError::TooLong { field, got, max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goim_js_client_token() {
        let a = parse_auth(br#"{"mid":123, "room_id":"live://1000", "platform":"web", "accepts":[1000,1001,1002]}"#)
            .unwrap();
        assert_eq!(a.mid, 123);
        assert_eq!(a.key, "");
        assert_eq!(a.room_id, "live://1000");
        assert_eq!(a.accepts, vec![1000, 1001, 1002]);
    }

    #[test]
    fn bad_auth_bodies() {
        assert!(matches!(parse_auth(b"{"), Err(BodyError::Json(_))));
        assert!(matches!(parse_auth(b"[]"), Err(BodyError::Json(_))));
        assert!(matches!(parse_auth(br#"{"mid":"x"}"#), Err(BodyError::Json(_))));
        let long = format!(r#"{{"key":"{}"}}"#, "k".repeat(129));
        assert_eq!(
            parse_auth(long.as_bytes()),
            Err(BodyError::TooLong {
                field: "key",
                got: 129,
                max: 128
            })
        );
        assert_eq!(parse_auth(br#"{"accepts":[-1]}"#), Err(BodyError::BadOp("-1".into())));
        let many = format!(r#"{{"accepts":[{}]}}"#, vec!["1"; 257].join(","));
        assert_eq!(
            parse_auth(many.as_bytes()),
            Err(BodyError::TooManyAccepts { got: 257, max: 256 })
        );
    }

    #[test]
    fn ops_lists() {
        assert_eq!(parse_ops(b"1000,1001").unwrap(), vec![1000, 1001]);
        assert_eq!(parse_ops(b" 7 , 8,").unwrap(), vec![7, 8]);
        assert_eq!(parse_ops(b"").unwrap(), Vec::<u32>::new());
        assert!(parse_ops(b"1,x").is_err());
        assert!(parse_ops(b"99999999999").is_err());
    }

    #[test]
    fn rooms() {
        assert_eq!(parse_room(b"live://1").unwrap(), "live://1");
        assert_eq!(parse_room(&[0xff, 0xfe]), Err(BodyError::RoomNotUtf8));
        assert!(parse_room(&[b'a'; 257]).is_err());
    }
}
