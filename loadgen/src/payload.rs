//! What a published payload carries so that every subscriber can tell which
//! message it got and when it was sent: a sequence number and the send time.
//!
//! Two layouts. The broadcast mode publishes through volley, whose push frame
//! body is exactly the payload: it starts with the stamp (`stamp`). The
//! generic WebSocket mode drives servers that wrap payloads in their own
//! framing (a NATS `MSG` line, an echo), so its payload is ASCII text with a
//! marker that is searched for anywhere in a received message
//! (`generic_payload`, `markers`).
//!
//! ```text
//! broadcast:  u64 seq | u64 send ns (big-endian) | padding
//! generic:    "VL" | 16 hex digits seq | 16 hex digits send ns | "x" padding
//! ```
//!
//! Send time is nanoseconds since the run began (one clock for the process).

/// Bytes of the broadcast-mode stamp.
pub const STAMP_LEN: usize = 16;
/// Marker that starts a generic-mode payload.
pub const MARKER: &[u8] = b"VL";
/// Smallest generic-mode payload: the marker and two 16-digit hex numbers.
pub const GENERIC_MIN_SIZE: usize = MARKER.len() + 32;

/// Writes the stamp into the first `STAMP_LEN` bytes of `payload`.
///
/// # Panics
/// If `payload` is shorter than `STAMP_LEN` (the command line refuses that).
pub fn stamp(payload: &mut [u8], seq: u64, sent_ns: u64) {
    payload[0..8].copy_from_slice(&seq.to_be_bytes());
    payload[8..16].copy_from_slice(&sent_ns.to_be_bytes());
}

/// The stamp at the front of a broadcast-mode body, if it is long enough.
pub fn read_stamp(body: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(body.get(0..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// A generic-mode payload of `size` bytes (at least `GENERIC_MIN_SIZE`).
pub fn generic_payload(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut p = format!("VL{seq:016x}{sent_ns:016x}").into_bytes();
    p.resize(size.max(GENERIC_MIN_SIZE), b'x');
    p
}

/// Every well-formed marker in `data`, in order, as (seq, send ns); text
/// that only looks like the start of one is skipped.
pub fn markers(data: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let hex = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
    };
    memchr::memmem::find_iter(data, MARKER).filter_map(move |at| {
        let f = data.get(at + MARKER.len()..at + GENERIC_MIN_SIZE)?;
        Some((hex(&f[..16])?, hex(&f[16..32])?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_short_bodies_have_none() {
        let mut p = vec![0u8; 64];
        stamp(&mut p, 7, 123_456_789);
        assert_eq!(read_stamp(&p), Some((7, 123_456_789)));
        assert_eq!(read_stamp(&p[..15]), None);
    }

    #[test]
    fn markers_are_found_inside_other_framing_and_junk_is_skipped() {
        let a = generic_payload(1, 0xabc, 40);
        let b = generic_payload(u64::MAX, 2, 34);
        assert_eq!(a.len(), 40);
        assert_eq!(
            generic_payload(0, 0, 5).len(),
            GENERIC_MIN_SIZE,
            "never shorter than the marker"
        );
        // Two NATS MSG lines in one WebSocket message.
        let mut msg = b"MSG bench 1 40\r\n".to_vec();
        msg.extend_from_slice(&a);
        msg.extend_from_slice(b"\r\nMSG bench 1 34\r\n");
        msg.extend_from_slice(&b);
        assert_eq!(markers(&msg).collect::<Vec<_>>(), vec![(1, 0xabc), (u64::MAX, 2)]);
        // Not hex, cut short, a bare "VL": nothing.
        for junk in [&b"VLzzzzzzzzzzzzzzzz0000000000000000"[..], b"VL0000", b"xxVL", b""] {
            assert_eq!(markers(junk).count(), 0, "{junk:?}");
        }
        // A marker cut at the end of the message is not counted, the one
        // before it is.
        let mut cut = a.clone();
        cut.extend_from_slice(&b[..20]);
        assert_eq!(markers(&cut).collect::<Vec<_>>(), vec![(1, 0xabc)]);
    }
}
