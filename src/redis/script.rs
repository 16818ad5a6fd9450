//! Lua scripts on Redis and reading their replies: `Script` (its SHA1
//! computed once), `eval` (`EVALSHA`, then `EVAL` on a Redis that has not
//! got it), and `number` for reply elements.
//!
//! Used by `room`, `registry`, `presence` and `counts` on every shard's
//! links.

use super::link::{Frame, Link, RedisError};

/// `EVALSHA` of a script, `EVAL` when the connection's Redis has not got it
/// (the first call after a restart).
pub(super) async fn eval(link: &Link, script: &Script, rest: &[&[u8]]) -> Result<Frame, RedisError> {
    let mut args: Vec<&[u8]> = Vec::with_capacity(rest.len() + 2);
    args.extend([&b"EVALSHA"[..], script.sha().as_bytes()]);
    args.extend_from_slice(rest);
    match link.call(&args).await {
        Err(RedisError::Server(e)) if e.starts_with("NOSCRIPT") => {
            args[0] = b"EVAL";
            args[1] = script.text.as_bytes();
            link.call(&args).await
        }
        r => r,
    }
}

/// A reply element read as a number (an integer, or a string of digits).
pub(super) fn number(f: &Frame) -> Option<u64> {
    match f {
        Frame::Integer(i) => u64::try_from(*i).ok(),
        Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A Lua script volley runs on Redis: by its SHA1 (`EVALSHA`, computed
/// once), its text sent only when a Redis has not got it (`eval`).
pub struct Script {
    text: &'static str,
    sha: std::sync::OnceLock<String>,
}

impl Script {
    /// The script `text`.
    pub const fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: std::sync::OnceLock::new(),
        }
    }

    /// Its SHA1, hex, as `EVALSHA` names it.
    pub fn sha(&self) -> &str {
        self.sha.get_or_init(|| {
            use sha1::{Digest, Sha1};
            Sha1::digest(self.text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }
}
