//! The forms volley's messages take on Redis channels, sans-IO: a room
//! message (`encode_message` is what `room::PUBLISH_SCRIPT` builds,
//! `decode_message` reads it back), a pattern publish on the nodes'
//! channels, and the `Reader` every channel form is read with (canonical
//! decimal numbers, byte runs of a given length; `push` reads with it too).
//!
//! Used wherever a channel message is heard (`shard::cluster`). Every byte
//! is checked before use (fuzzed: fuzz/fuzz_targets/cluster_message.rs);
//! one message has one form.

use bytes::Bytes;

/// A room message as every node receives it from the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its offset in the room.
    pub offset: u64,
    /// The room's epoch.
    pub epoch: u64,
    /// Business operation code.
    pub op: u32,
    /// Seconds it stays in history (0: the room's own limits only).
    pub ttl: u32,
    /// The publisher's message id ("" for none).
    pub id: String,
    /// The payload.
    pub payload: Bytes,
}

/// Why a channel message was refused (a node that is not volley, or not
/// this version, published on a volley channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cluster message: {0}")]
pub struct BadMessage(pub &'static str);

/// The published form: `offset epoch op ttl idlen ` then the id, then the
/// payload (what `PUBLISH_SCRIPT` builds; tests and tools use this).
pub fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = format!("{} {} {} {} {} {}", m.offset, m.epoch, m.op, m.ttl, m.id.len(), m.id).into_bytes();
    out.extend_from_slice(&m.payload);
    out
}

/// Reads the published form; the payload shares `b`'s bytes.
pub fn decode_message(b: &Bytes) -> Result<Message, BadMessage> {
    let mut r = Reader::new(b);
    let offset = r.number("offset", u64::MAX)?;
    let epoch = r.number("epoch", u64::MAX)?;
    let op = r.number("op", u64::from(u32::MAX))? as u32;
    let ttl = r.number("ttl", u64::from(u32::MAX))? as u32;
    let idlen = r.number("id length", crate::proto::v2::MAX_ID_LEN as u64)? as usize;
    if offset == 0 || epoch == 0 {
        return Err(BadMessage("offset and epoch start at 1"));
    }
    let id = r.take(idlen).ok_or(BadMessage("id past the end"))?;
    let id = std::str::from_utf8(id)
        .map_err(|_| BadMessage("id not UTF-8"))?
        .to_string();
    Ok(Message {
        offset,
        epoch,
        op,
        ttl,
        id,
        payload: b.slice(r.at..),
    })
}

/// Reads the cluster messages' fields in order (`decode_message`,
/// `decode_pattern`, `redis::push::decode_push`): numbers in canonical
/// decimal (no sign, no leading zero, as the scripts write them: one
/// message has one form) each ended by a space, and byte runs of a given
/// length.
pub(super) struct Reader<'a> {
    pub(super) b: &'a Bytes,
    /// Where the next field starts.
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `b`.
    pub(super) fn new(b: &'a Bytes) -> Reader<'a> {
        Reader { b, at: 0 }
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b: &'a Bytes = self.b;
        let s = b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }

    /// The next number, at most `max`; refused as `what`.
    pub(super) fn number(&mut self, what: &'static str, max: u64) -> Result<u64, BadMessage> {
        let rest = &self.b[self.at..];
        let end = memchr::memchr(b' ', rest).ok_or(BadMessage(what))?;
        let d = &rest[..end];
        if d.is_empty() || d.len() > 20 || (d[0] == b'0' && d.len() > 1) || !d.iter().all(u8::is_ascii_digit) {
            return Err(BadMessage(what));
        }
        let v = std::str::from_utf8(d)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&v| v <= max)
            .ok_or(BadMessage(what))?;
        self.at += end + 1;
        Ok(v)
    }
}

/// A pattern publish as it travels on the nodes' channels: `p `, the
/// pattern, and the message in the room form with its offset field
/// carrying the publish's token (what every node deduplicates the rooms'
/// publishes with) and epoch 1.
pub fn encode_pattern(pattern: &str, token: u64, m: &Message) -> Vec<u8> {
    let mut out = format!("p {} {pattern}", pattern.len()).into_bytes();
    out.extend(encode_message(&Message {
        offset: token,
        epoch: 1,
        ..m.clone()
    }));
    out
}

/// Whether a message on a node's channel is a pattern publish.
pub fn is_pattern(b: &[u8]) -> bool {
    b.starts_with(b"p ")
}

/// Reads `encode_pattern`'s form: (pattern, token, message).
pub fn decode_pattern(b: &Bytes) -> Result<(String, u64, Message), BadMessage> {
    if !is_pattern(b) {
        return Err(BadMessage("not a pattern publish"));
    }
    let b = &b.slice(2..);
    let mut r = Reader::new(b);
    let len = r.number("pattern length", crate::proto::body::MAX_ROOM_LEN as u64)? as usize;
    if len == 0 {
        return Err(BadMessage("pattern length"));
    }
    let pattern = r.take(len).ok_or(BadMessage("pattern past the end"))?;
    let pattern = std::str::from_utf8(pattern).map_err(|_| BadMessage("pattern not UTF-8"))?;
    let m = decode_message(&b.slice(r.at..))?;
    if m.epoch != 1 {
        return Err(BadMessage("a pattern message has epoch 1"));
    }
    Ok((pattern.to_string(), m.offset, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    fn msg(id: &str, payload: &'static [u8]) -> Message {
        Message {
            offset: 7,
            epoch: 99,
            op: 1000,
            ttl: 30,
            id: id.into(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_message_reads_back_as_written() {
        for m in [msg("", b""), msg("order-17", b"{\"a\":1}"), msg("x", b"1 2 3 \x00\xff")] {
            let b = Bytes::from(encode_message(&m));
            assert_eq!(decode_message(&b).unwrap(), m);
        }
        assert_eq!(
            &encode_message(&msg("ab", b"pay"))[..],
            b"7 99 1000 30 2 abpay",
            "the form PUBLISH_SCRIPT builds"
        );
    }

    #[test]
    fn bad_messages_are_refused_by_name() {
        for (b, why) in [
            (&b""[..], "offset"),
            (b"x 1 1 1 0 ", "offset"),
            (b"1 1 1 1", "ttl"),
            (b"1 1 4294967296 0 0 ", "op"),
            (b"0 1 1 0 0 ", "offset and epoch start at 1"),
            (b"1 1 1 0 5 ab", "id past the end"),
            (b"1 1 1 0 1 \xff", "id not UTF-8"),
            (b"1 1 1 0 999 ", "id length"),
            (b"99999999999999999999999 1 1 0 0 ", "offset"),
            (b"01 1 1 0 0 ", "offset"),
            (b"1 1 +1 0 0 ", "op"),
        ] {
            let e = decode_message(&Bytes::copy_from_slice(b)).unwrap_err();
            assert_eq!(e.0, why, "{:?}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn a_pattern_message_reads_back_as_written() {
        let m = msg("i", b"x y");
        let b = Bytes::from(encode_pattern("live://*", 42, &m));
        let (p, token, got) = decode_pattern(&b).unwrap();
        assert_eq!((p.as_str(), token), ("live://*", 42));
        assert_eq!((got.op, got.id.as_str(), &got.payload[..]), (1000, "i", &b"x y"[..]));
        assert!(is_pattern(&b));
        for bad in [
            &b""[..],
            b"p 0 ",
            b"p 9 live",
            b"p x live://*",
            b"p 3 \xff\xfe\xfd1 1 1 0 0 ",
            b"p 08 live://*1 1 1 0 0 ",
            b"p 8 live://*1 2 1 0 0 ",
            b"8 live://*1 1 1 0 0 ",
            b"p8 live://*1 1 1 0 0 ",
        ] {
            assert!(decode_pattern(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
