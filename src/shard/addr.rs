//! Where a connection is: `ConnRef` (its slot on its shard), `GlobalConn`
//! (its shard too), and the server-assigned key that names it — the
//! address in text, signed so that nobody can make one up.
//!
//! Pure values, used on every shard; `KeyMaker` is built once per process
//! (in `Shared`) and only read.
//!
//! ```text
//! assigned key:  tttttttt-tttt-ssss-iiii-iiiigggggggg-mmmmmmmmmmmmmmmmmmmmmmmm
//!                process tag (48 bits, public) · shard · slot · generation
//!                · 96 bits of HMAC-SHA1(process secret, the 36 characters before)
//! ```
//!
//! Why a signature: the key *is* the address, so an assigned key needs no
//! directory entry and no string per connection; but an address alone is
//! guessable (small shard, slot and generation counters behind a tag every
//! version-2 client sees in its own key), and whoever names a connection's
//! key at auth replaces it, and receives its key pushes. With the
//! signature, a key that this process did not hand out decodes to nothing.
//!
//! Invariants: one spelling per key (lower-case hex; `from_assigned_key`
//! refuses any other); the secret never leaves the `KeyMaker` (its `Debug`
//! shows the tag only) but to the process that takes over on an upgrade;
//! a key decodes only in the process that made it, or took over from it.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// A connection's address inside its shard: slab index plus a generation,
/// so a stale reference to a reused slot is detected, never misdelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ConnRef {
    /// Slab index.
    pub idx: u32,
    /// Generation of the slot when the connection was created.
    pub gen: u32,
}

/// A connection anywhere in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GlobalConn {
    /// Shard that owns it.
    pub shard: u16,
    /// Its address there.
    pub conn: ConnRef,
}

/// Length of an assigned key: the 36-character address, a dash, and 24 hex
/// digits of signature.
pub const ASSIGNED_KEY_LEN: usize = 36 + 1 + 2 * MAC_BYTES;

/// Bytes of HMAC kept in a key (96 bits: a guess at any of a million
/// connections succeeds once in 2^76 tries).
const MAC_BYTES: usize = 12;

/// This process's assigned keys: its public tag and the secret that signs
/// them.
#[derive(Clone)]
pub struct KeyMaker {
    tag: u64,
    /// The secret, kept only to hand to the process that takes over on an
    /// upgrade (`secret`).
    secret: Box<[u8]>,
    /// Keyed with the secret; cloned per signature (the key schedule is
    /// done once).
    mac: Hmac<Sha1>,
}

impl std::fmt::Debug for KeyMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyMaker({:012x}, ..)", self.tag & 0xffff_ffff_ffff)
    }
}

impl KeyMaker {
    /// Keys tagged `tag`, signed with a secret drawn from the operating
    /// system's random source.
    ///
    /// # Panics
    /// If the operating system has no random source to give (getrandom
    /// fails): keys signed with a guessable secret would be worse than no
    /// server.
    pub fn new(tag: u64) -> KeyMaker {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS random source (getrandom) for the key secret");
        KeyMaker::with_secret(tag, &secret)
    }

    /// Keys tagged `tag`, signed with `secret` (tests pin it).
    pub fn with_secret(tag: u64, secret: &[u8]) -> KeyMaker {
        let mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
        KeyMaker {
            tag,
            secret: secret.into(),
            mac,
        }
    }

    /// The secret, for the process that takes over on `volley upgrade`
    /// only: its keys must verify there.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// The public part: the process tag.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    fn sign(&self, address: &str) -> [u8; MAC_BYTES] {
        let mut m = self.mac.clone();
        m.update(address.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }
}

impl GlobalConn {
    /// The server-assigned key of the connection at `self` (module doc).
    pub fn assigned_key(self, keys: &KeyMaker) -> String {
        use std::fmt::Write;
        let tag = keys.tag;
        let mut key = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:04x}{:08x}",
            (tag >> 16) as u32,
            tag as u16,
            self.shard,
            self.conn.idx >> 16,
            self.conn.idx & 0xffff,
            self.conn.gen
        );
        let mac = keys.sign(&key);
        key.push('-');
        for b in mac {
            let _ = write!(key, "{b:02x}");
        }
        key
    }

    /// The address an assigned key of this process points to; `None` for any
    /// other string (another process's keys, client-chosen keys, a key
    /// whose signature does not verify, or anything not exactly in the form
    /// `assigned_key` writes).
    pub fn from_assigned_key(key: &str, keys: &KeyMaker) -> Option<GlobalConn> {
        let b = key.as_bytes();
        if b.len() != ASSIGNED_KEY_LEN || [8, 13, 18, 23, 36].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let hex = |r: std::ops::Range<usize>| u64::from_str_radix(key.get(r)?, 16).ok();
        let tag = (hex(0..8)? << 16) | hex(9..13)?;
        if tag != keys.tag & 0xffff_ffff_ffff {
            return None;
        }
        let at = GlobalConn {
            shard: hex(14..18)? as u16,
            conn: ConnRef {
                idx: ((hex(19..23)? << 16) | hex(24..28)?) as u32,
                gen: hex(28..36)? as u32,
            },
        };
        // One spelling per key: upper case and other variants are refused
        // by comparing with the one `assigned_key` writes, signature
        // included, in time that does not depend on where they differ.
        use subtle::ConstantTimeEq;
        bool::from(at.assigned_key(keys).as_bytes().ct_eq(b)).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_keys_round_trip_and_nothing_else_parses() {
        let keys = KeyMaker::with_secret(0x1234_5678_9abc_def0, b"secret");
        let at = GlobalConn {
            shard: 3,
            conn: ConnRef {
                idx: 0x0001_0002,
                gen: 0xdead_beef,
            },
        };
        let key = at.assigned_key(&keys);
        assert_eq!(key.len(), ASSIGNED_KEY_LEN);
        assert!(key.starts_with("56789abc-def0-0003-0001-0002deadbeef-"), "{key}");
        assert_eq!(GlobalConn::from_assigned_key(&key, &keys), Some(at));
        // Another process: another tag, or the same tag and another secret.
        let other_tag = KeyMaker::with_secret(0x1234_5678_9abc_def1, b"secret");
        assert_eq!(GlobalConn::from_assigned_key(&key, &other_tag), None);
        let other_secret = KeyMaker::with_secret(0x1234_5678_9abc_def0, b"secreT");
        assert_eq!(GlobalConn::from_assigned_key(&key, &other_secret), None);
        assert_eq!(GlobalConn::from_assigned_key(&key.to_uppercase(), &keys), None);
        // The neighbour's address with this key's signature: a guess.
        let next = key.replacen("deadbeef", "deadbef0", 1);
        assert_eq!(GlobalConn::from_assigned_key(&next, &keys), None);
        let mut flipped = key.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(GlobalConn::from_assigned_key(&flipped, &keys), None);
        for bad in [
            "",
            "k1",
            "56789abc-def0-0003-0001-0002deadbeef",
            &key[..key.len() - 1],
            &format!("{key}0"),
        ] {
            assert_eq!(GlobalConn::from_assigned_key(bad, &keys), None, "{bad}");
        }
        assert!(!format!("{keys:?}").contains("secret"));
        // Other nodes route it by the node id it starts with.
        assert_eq!(
            crate::redis::registry::node_of_assigned_key(&key),
            Some(crate::redis::registry::node_id(keys.tag()))
        );
    }
}
