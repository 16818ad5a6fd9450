//! A push to connection keys, users or everyone in cluster mode: its form
//! on the nodes' channels.
//!
//! Owns the form of a push on the nodes' own channels and queues
//! (`redis::registry`): a push to users or keys is published on the
//! channels of the nodes that hold them, a push to everyone on every live
//! node's channel (one Redis command per push, whatever the number of nodes
//! and connections); every node's shard 0 is subscribed to its channel and
//! routes what it hears to its own key, user and connection owners as a
//! single node would (`shard::cluster`).
//!
//! Invariants: the form is self-delimiting and canonical (one byte string
//! per push), and every byte of it is checked before use, with the same
//! limits as an API push (fuzzed: fuzz/fuzz_targets/cluster_message.rs).

use super::room::{BadMessage, Reader};
use crate::proto::body::MAX_KEY_LEN;
use crate::proto::publish::Target;
use crate::proto::v2::MAX_ID_LEN;
use bytes::Bytes;

/// Most keys or users in one push (as `api::MAX_TARGETS`).
const MAX_TARGETS: usize = 100_000;

/// A push as every node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Keys, users or everyone (never a room).
    pub target: Target,
    /// Business operation code.
    pub op: u32,
    /// Seconds a user push waits in an inbox (0: the inbox's own TTL).
    pub ttl: u32,
    /// The publisher's message id ("" for none).
    pub id: String,
    /// The payload.
    pub payload: Bytes,
}

/// The form on a node's channel: a kind letter (`a` everyone, `k` keys, `u`
/// users), `op ttl idlen ` and the id, then for keys `n ` and n times
/// `len key`, for users `n ` and n times `mid ` (decimal, signed), then
/// the payload. `None` for a room target.
pub fn encode_push(p: &Push) -> Option<Vec<u8>> {
    let head = |kind: char| format!("{kind} {} {} {} {}", p.op, p.ttl, p.id.len(), p.id);
    let mut out = match &p.target {
        Target::Room(_) => return None,
        Target::All => head('a'),
        Target::Keys(keys) => {
            let mut s = head('k');
            s.push_str(&format!("{} ", keys.len()));
            for k in keys {
                s.push_str(&format!("{} {k}", k.len()));
            }
            s
        }
        Target::Mids(mids) => {
            let mut s = head('u');
            s.push_str(&format!("{} ", mids.len()));
            for m in mids {
                s.push_str(&format!("{m} "));
            }
            s
        }
    }
    .into_bytes();
    out.extend_from_slice(&p.payload);
    Some(out)
}

/// Reads `encode_push`'s form; the payload shares `b`'s bytes.
pub fn decode_push(b: &Bytes) -> Result<Push, BadMessage> {
    let mut r = Reader::new(b);
    let kind = r.take(2).ok_or(BadMessage("push kind"))?.to_vec();
    let op = r.number("op", u64::from(u32::MAX))? as u32;
    let ttl = r.number("ttl", u64::from(u32::MAX))? as u32;
    let idlen = r.number("id length", MAX_ID_LEN as u64)? as usize;
    let id = r.text(idlen, "id")?;
    let target = match &kind[..] {
        b"a " => Target::All,
        b"k " => {
            let n = r.count()?;
            let mut keys = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let len = r.number("key length", MAX_KEY_LEN as u64)? as usize;
                if len == 0 {
                    return Err(BadMessage("empty key"));
                }
                keys.push(r.text(len, "key")?);
            }
            Target::Keys(keys)
        }
        b"u " => {
            let n = r.count()?;
            let mut mids = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                mids.push(r.mid()?);
            }
            Target::Mids(mids)
        }
        _ => return Err(BadMessage("push kind")),
    };
    Ok(Push {
        target,
        op,
        ttl,
        id,
        payload: b.slice(r.at..),
    })
}

/// The push form's own fields, read with the cluster messages' reader.
impl Reader<'_> {
    fn count(&mut self) -> Result<usize, BadMessage> {
        match self.number("target count", MAX_TARGETS as u64)? {
            0 => Err(BadMessage("no targets")),
            n => Ok(n as usize),
        }
    }

    /// A user id: canonical decimal, `-` before a negative one.
    fn mid(&mut self) -> Result<i64, BadMessage> {
        let negative = self.b.get(self.at) == Some(&b'-');
        if negative {
            self.at += 1;
        }
        let v = self.number("user id", i64::MAX as u64 + u64::from(negative))?;
        match (negative, v) {
            (true, 0) => Err(BadMessage("user id")),
            (true, v) => Ok((v as i64).wrapping_neg()),
            (false, v) => Ok(v as i64),
        }
    }

    fn text(&mut self, n: usize, what: &'static str) -> Result<String, BadMessage> {
        let s = self.take(n).ok_or(BadMessage(what))?;
        std::str::from_utf8(s).map(str::to_string).map_err(|_| BadMessage(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(target: Target, id: &str, payload: &'static [u8]) -> Push {
        Push {
            target,
            op: 1000,
            ttl: 30,
            id: id.into(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_push_reads_back_as_written() {
        for p in [
            push(Target::All, "", b"hi"),
            push(Target::Keys(vec!["k 1".into(), "é".into()]), "m-1", b"x y"),
            push(Target::Mids(vec![1, -7, i64::MIN, i64::MAX]), "", b""),
        ] {
            let b = Bytes::from(encode_push(&p).unwrap());
            assert_eq!(decode_push(&b).unwrap(), p);
        }
        assert_eq!(
            encode_push(&push(Target::Mids(vec![3, -4]), "i", b"p")).unwrap(),
            b"u 1000 30 1 i2 3 -4 p"
        );
        assert_eq!(encode_push(&push(Target::Room("r".into()), "", b"")), None);
    }

    #[test]
    fn bad_pushes_are_refused() {
        for bad in [
            &b""[..],
            b"r 1 0 0 ",
            b"a 1 0 5 ab",
            b"k 1 0 0 0 ",
            b"k 1 0 0 1 0 ",
            b"k 1 0 0 2 1 a",
            b"u 1 0 0 1 -0 ",
            b"u 1 0 0 1 9223372036854775808 ",
            b"u 1 0 0 1 01 ",
            b"u 1 0 0 100001 ",
            b"a 01 0 0 ",
        ] {
            assert!(
                decode_push(&Bytes::copy_from_slice(bad)).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let min = decode_push(&Bytes::from_static(b"u 1 0 0 1 -9223372036854775808 ")).unwrap();
        assert_eq!(min.target, Target::Mids(vec![i64::MIN]));
    }
}
