//! The reader's tests: events in order across fragments and reads, the
//! rules each closing with its code, and compressed messages.

use super::super::frame::client_frame;
use super::*;
use proptest::prelude::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn cf(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, op, MASK, payload)
}

fn describe(e: &Event<'_>) -> String {
    match e {
        Event::Message { text, payload } => {
            format!("{}:{}", if *text { "t" } else { "b" }, String::from_utf8_lossy(payload))
        }
        Event::Ping(p) => format!("ping:{}", String::from_utf8_lossy(p)),
        Event::Pong => "pong".into(),
        Event::Close(c, why) => format!("close:{c}:{why}"),
    }
}

/// Every event in `data`, reading as a driver does: offer what is left
/// until the reader wants more. Stops after a close.
fn read_all(r: &mut Reader, data: &mut [u8], max: usize) -> (Result<usize, WsError>, Vec<String>) {
    let mut got = Vec::new();
    let mut used = 0;
    loop {
        match r.next(&mut data[used..], Limits { max_message: max }) {
            Ok((ev, n)) => {
                used += n;
                let Some(ev) = ev else { return (Ok(used), got) };
                let close = matches!(ev, Event::Close(..));
                got.push(describe(&ev));
                if close {
                    return (Ok(used), got);
                }
            }
            Err(e) => return (Err(e), got),
        }
    }
}

fn sample() -> Vec<u8> {
    let mut data = cf(false, opcode::TEXT, "héllo ".as_bytes());
    data.extend(cf(true, opcode::PING, b"p"));
    data.extend(cf(false, opcode::CONT, &"wörld".as_bytes()[..2]));
    data.extend(cf(true, opcode::CONT, &"wörld".as_bytes()[2..]));
    data.extend(cf(true, opcode::BINARY, &[1, 2]));
    data.extend(cf(true, opcode::PONG, b""));
    data
}

/// A client frame with RSV1 set (a compressed message's first frame).
fn compressed_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = cf(fin, op, payload);
    f[0] |= 0x40;
    f
}

fn deflated(m: &[u8]) -> Vec<u8> {
    crate::proto::ws::deflate::Compressor::default()
        .compress(m)
        .expect("compressible")
}

#[test]
fn compressed_messages_inflate_once_negotiated_whole_or_in_fragments() {
    let text = "héllo wörld, héllo wörld, héllo wörld".repeat(4);
    let z = deflated(text.as_bytes());
    let mut data = compressed_frame(true, opcode::TEXT, &z);
    data.extend(compressed_frame(false, opcode::BINARY, &z[..5]));
    data.extend(cf(true, opcode::PING, b"p"));
    data.extend(cf(true, opcode::CONT, &z[5..]));
    data.extend(cf(true, opcode::BINARY, b"plain"));
    let (res, got) = read_all(&mut Reader::new(true), &mut data, 1000);
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(
        got,
        vec![
            format!("t:{text}"),
            "ping:p".into(),
            format!("b:{text}"),
            "b:plain".into()
        ]
    );
}

#[test]
fn compression_rules_each_close_with_their_code() {
    let z = deflated(&[b'a'; 500]);
    let err = |reader: &mut Reader, mut data: Vec<u8>, max: usize| read_all(reader, &mut data, max).0.unwrap_err();
    // RSV1 without the extension, or on a continuation.
    assert_eq!(
        err(&mut Reader::default(), compressed_frame(true, opcode::BINARY, &z), 1000),
        WsError::ReservedBits
    );
    let mut cont = cf(false, opcode::BINARY, &z[..3]);
    cont.extend(compressed_frame(true, opcode::CONT, &z[3..]));
    assert_eq!(err(&mut Reader::new(true), cont, 1000), WsError::ReservedBits);
    // A bomb: more than the message limit once inflated (1009).
    let e = err(&mut Reader::new(true), compressed_frame(true, opcode::BINARY, &z), 499);
    assert!(matches!(e, WsError::TooBig { max: 499, .. }), "{e:?}");
    assert_eq!(e.code(), close::TOO_BIG);
    // Not deflate data (1007), and text that inflates to bad UTF-8.
    let e = err(
        &mut Reader::new(true),
        compressed_frame(true, opcode::BINARY, &[0xff; 8]),
        1000,
    );
    assert_eq!((e, e.code()), (WsError::BadCompression, close::INVALID_DATA));
    let bad_text = deflated(&[0xff; 64]);
    assert_eq!(
        err(
            &mut Reader::new(true),
            compressed_frame(true, opcode::TEXT, &bad_text),
            1000
        ),
        WsError::InvalidUtf8
    );
}

#[test]
fn fragments_with_interleaved_control_frames() {
    let mut data = sample();
    let len = data.len();
    let (res, got) = read_all(&mut Reader::default(), &mut data, 1000);
    assert_eq!(res, Ok(len));
    assert_eq!(got, vec!["ping:p", "t:héllo wörld", "b:\u{1}\u{2}", "pong"]);
}

/// The sample fed in two reads split at every point gives the same
/// events: whatever the first read leaves is offered again, with the
/// rest, as a driver keeps a partial frame.
#[test]
fn every_split_point_gives_the_same_events() {
    let whole = sample();
    let (_, want) = read_all(&mut Reader::default(), &mut whole.clone(), 1000);
    for cut in 0..whole.len() {
        let mut r = Reader::default();
        let mut first = whole[..cut].to_vec();
        let (used, mut got) = read_all(&mut r, &mut first, 1000);
        let used = used.unwrap();
        let mut rest = whole[..cut][used..].to_vec();
        rest.extend_from_slice(&whole[cut..]);
        let (res, more) = read_all(&mut r, &mut rest, 1000);
        assert_eq!(res, Ok(rest.len()), "cut {cut}");
        got.extend(more);
        assert_eq!(got, want, "cut {cut}");
    }
}

#[test]
fn violations_name_their_errors() {
    let err = |mut data: Vec<u8>| read_all(&mut Reader::default(), &mut data, 100).0.unwrap_err();
    let mut unmasked = cf(true, opcode::BINARY, b"x");
    unmasked[1] &= 0x7f;
    assert_eq!(err(unmasked), WsError::Unmasked);
    assert_eq!(err(vec![0x80 | 0x3, 0x80, 0, 0, 0, 0]), WsError::ReservedOpcode(3));
    assert_eq!(err(vec![0xC2, 0x80, 0, 0, 0, 0]), WsError::ReservedBits);
    assert_eq!(err(cf(false, opcode::PING, b"")), WsError::FragmentedControl);
    assert_eq!(err(cf(true, opcode::PING, &[0; 126])), WsError::ControlTooLong);
    assert_eq!(err(cf(true, opcode::CONT, b"x")), WsError::ContinuationWithoutMessage);
    let mut two = cf(false, opcode::TEXT, b"a");
    two.extend(cf(true, opcode::TEXT, b"b"));
    assert_eq!(err(two), WsError::MessageInsideMessage);
    assert_eq!(err(cf(true, opcode::TEXT, &[0xff])), WsError::InvalidUtf8);
    assert_eq!(
        err(cf(false, opcode::TEXT, &[0xce, 0xba, 0xff])),
        WsError::InvalidUtf8,
        "fail fast"
    );
    assert_eq!(
        err(cf(true, opcode::BINARY, &[0; 101])),
        WsError::TooBig { size: 101, max: 100 }
    );
    let mut big = cf(false, opcode::BINARY, &[0; 60]);
    big.extend(cf(true, opcode::CONT, &[0; 60]));
    assert_eq!(err(big), WsError::TooBig { size: 120, max: 100 });
    assert_eq!(err(cf(true, opcode::CLOSE, &[3])), WsError::CloseOneByte);
    assert_eq!(
        err(cf(true, opcode::CLOSE, &1004u16.to_be_bytes())),
        WsError::InvalidCloseCode(1004)
    );
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.push(0xff);
    assert_eq!(err(cf(true, opcode::CLOSE, &bad_reason)), WsError::CloseReasonNotUtf8);
    let huge = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(err(huge), WsError::LengthTopBit);
}

#[test]
fn close_reports_the_code_and_an_empty_close_is_1005() {
    let mut data = cf(true, opcode::CLOSE, &[0x03, 0xe8, b'b', b'y', b'e']);
    data.extend(cf(true, opcode::BINARY, b"after"));
    let (_, got) = read_all(&mut Reader::default(), &mut data, 100);
    assert_eq!(got, vec!["close:1000:bye"]);
    let (_, got) = read_all(&mut Reader::default(), &mut cf(true, opcode::CLOSE, b""), 100);
    assert_eq!(got, vec!["close:1005:"]);
}

proptest! {
    /// A binary message split into any fragments, with pings between
    /// them, arrives whole, and the bytes read add up.
    #[test]
    fn fragmented_binary_round_trip(payload in prop::collection::vec(any::<u8>(), 0..3000),
                                    cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut data = Vec::new();
        let mut start = 0;
        let pieces: Vec<&[u8]> = points.iter().chain(std::iter::once(&payload.len())).map(|&end| {
            let p = &payload[start..end.max(start)];
            start = end.max(start);
            p
        }).collect();
        for (i, p) in pieces.iter().enumerate() {
            let op = if i == 0 { opcode::BINARY } else { opcode::CONT };
            data.extend(cf(i + 1 == pieces.len(), op, p));
            if i + 1 < pieces.len() {
                data.extend(cf(true, opcode::PING, b"x"));
            }
        }
        let len = data.len();
        let mut r = Reader::default();
        let mut used = 0;
        let mut message = None;
        while used < len {
            let (ev, n) = r.next(&mut data[used..], Limits { max_message: 4096 }).unwrap();
            used += n;
            match ev {
                Some(Event::Message { text: false, payload }) => message = Some(payload.to_vec()),
                Some(Event::Ping(p)) => prop_assert_eq!(p, b"x"),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(message, Some(payload));
        prop_assert!(!r.mid_message());
    }
}
