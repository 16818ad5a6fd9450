use super::*;
use proptest::prelude::*;

fn env<'a>(room: &'a str, id: &'a str, payload: &'a [u8]) -> Envelope<'a> {
    Envelope {
        op: 1000,
        kind: if room.is_empty() { Kind::Direct } else { Kind::Room },
        room,
        offset: if room.is_empty() { 0 } else { 42 },
        epoch: if room.is_empty() { 0 } else { 0x9f86_d081_884c_7d65 },
        id,
        payload,
    }
}

#[test]
fn push_frames_carry_the_envelope_exactly() {
    let f = env("live://1", "m-1", b"hi").frame();
    let (frame, n) = binary::decode(&f, 1 << 20).unwrap().unwrap();
    assert_eq!(n, f.len());
    assert_eq!((frame.ver, frame.op, frame.seq), (2, op::PUSH, 0));
    let mut want = vec![0, 0, 3, 0xe8, 1, 0, 0, 8];
    want.extend(42u64.to_be_bytes());
    want.extend(0x9f86_d081_884c_7d65u64.to_be_bytes());
    want.extend([0, 3]);
    want.extend(b"live://1m-1hi");
    assert_eq!(frame.body, &want[..]);
    assert_eq!(decode_push(frame.body), Ok(env("live://1", "m-1", b"hi")));
}

#[test]
fn bad_envelopes_say_which_rule() {
    let good = env("r", "i", b"p").frame();
    let body = &good[binary::HEADER_LEN..];
    assert_eq!(
        decode_push(&body[..25]),
        Err(EnvelopeError::Short { got: 25, need: 26 })
    );
    assert_eq!(
        decode_push(&body[..27]),
        Err(EnvelopeError::Short { got: 27, need: 28 })
    );
    let mut k = body.to_vec();
    k[4] = 9;
    assert_eq!(decode_push(&k), Err(EnvelopeError::Kind(9)));
    let mut u = body.to_vec();
    u[26] = 0xff;
    assert_eq!(decode_push(&u), Err(EnvelopeError::Field("room")));
}

proptest! {
    #[test]
    fn envelopes_round_trip(room in "[a-z:/0-9]{0,40}", id in "[ -~]{0,40}", payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let e = env(&room, &id, &payload);
        let f = e.frame();
        let (frame, _) = binary::decode(&f, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(decode_push(frame.body), Ok(e));
    }

    #[test]
    fn any_bytes_decode_or_fail_cleanly(body in prop::collection::vec(any::<u8>(), 0..80)) {
        if let Ok(e) = decode_push(&body) {
            prop_assert_eq!(ENVELOPE_LEN + e.room.len() + e.id.len() + e.payload.len(), body.len());
        }
    }
}

#[test]
fn join_and_leave_bodies() {
    assert_eq!(
        parse_join(br#"{"room":"live://1"}"#),
        Ok(Join {
            room: "live://1".into(),
            resume: None,
            presence: false,
        })
    );
    assert!(parse_join(br#"{"room":"live://1","presence":true}"#).unwrap().presence);
    assert_eq!(
        parse_join(br#"{"room":"live://1","offset":41,"epoch":"9f86d081884c7d65","x":1}"#)
            .unwrap()
            .resume,
        Some(Resume {
            offset: 41,
            epoch: 0x9f86_d081_884c_7d65
        })
    );
    for (bad, want) in [
        (&br#"{"room":""}"#[..], BodyError::Room),
        (br#"{"room":"r","offset":1}"#, BodyError::Resume),
        (br#"{"room":"r","epoch":"00"}"#, BodyError::Resume),
        (
            br#"{"room":"r","offset":1,"epoch":"zzzzzzzzzzzzzzzz"}"#,
            BodyError::Resume,
        ),
    ] {
        assert_eq!(parse_join(bad), Err(want), "{}", String::from_utf8_lossy(bad));
    }
    let long = format!(r#"{{"room":"{}"}}"#, "r".repeat(MAX_ROOM_LEN + 1));
    assert_eq!(parse_join(long.as_bytes()), Err(BodyError::Room));
    for bad in [
        &b"[]"[..],
        b"",
        br#"{"room":1}"#,
        br#"{"offset":1}"#,
        br#"{"room":"r","offset":-1,"epoch":"0000000000000000"}"#,
    ] {
        assert!(matches!(parse_join(bad), Err(BodyError::Json(_))), "{bad:?}");
    }
    assert_eq!(parse_leave(br#"{"room":"a"}"#), Ok("a".into()));
    assert_eq!(
        parse_ack(br#"{"ids":[1,281474976710657]}"#),
        Ok(vec![1, 281_474_976_710_657])
    );
    assert_eq!(parse_ack(br#"{"ids":[]}"#), Err(BodyError::Ids));
    let many = format!(r#"{{"ids":[{}]}}"#, vec!["1"; MAX_ACK_IDS + 1].join(","));
    assert_eq!(parse_ack(many.as_bytes()), Err(BodyError::Ids));
    assert!(matches!(parse_ack(br#"{"ids":[-1]}"#), Err(BodyError::Json(_))));
    assert_eq!(parse_leave(br#"{"room":""}"#), Err(BodyError::Room));
}

#[test]
fn replies_and_errors() {
    let v: serde_json::Value = serde_json::from_slice(&join_reply("r", 1, 7, None, None)).unwrap();
    assert_eq!(v, serde_json::json!({"room":"r","epoch":"0000000000000001","offset":7}));
    let v: serde_json::Value =
        serde_json::from_slice(&join_reply("r", 1, 7, Some(Err(Unrecovered::HistoryGone)), Some(3))).unwrap();
    assert_eq!(
        (v["recovered"].as_bool(), v["reason"].as_str()),
        (Some(false), Some("history_gone"))
    );
    let v: serde_json::Value = serde_json::from_slice(&ErrorCode::RoomLimit.body("64 rooms")).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"code":4002,"reason":"room_limit","message":"64 rooms"})
    );
    let codes: std::collections::HashSet<u32> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(codes.len(), ErrorCode::ALL.len());
    assert_eq!(parse_epoch(&fmt_epoch(u64::MAX)), Some(u64::MAX));
    assert_eq!(parse_epoch("+000000000000000"), None);
}

#[test]
fn publish_bodies_round_trip_and_bad_ones_are_named() {
    let b = publish_body(1000, "chat/1", "m-1", b"hi");
    assert_eq!(
        parse_publish(&b),
        Ok(ClientPublish {
            op: 1000,
            room: "chat/1",
            id: "m-1",
            payload: b"hi"
        })
    );
    assert_eq!(parse_publish(&publish_body(1, "r", "", b"")).unwrap().payload, b"");
    assert!(matches!(parse_publish(&b[..7]), Err(BodyError::Publish(_))));
    assert!(matches!(parse_publish(&b[..12]), Err(BodyError::Publish(_))));
    assert_eq!(parse_publish(&publish_body(1, "", "", b"x")), Err(BodyError::Room));
    let long = "r".repeat(MAX_ROOM_LEN + 1);
    assert_eq!(parse_publish(&publish_body(1, &long, "", b"")), Err(BodyError::Room));
    let id = "i".repeat(MAX_ID_LEN + 1);
    assert!(matches!(
        parse_publish(&publish_body(1, "r", &id, b"")),
        Err(BodyError::Publish(_))
    ));
    let mut bad = publish_body(1, "ab", "", b"");
    bad[8] = 0xff;
    assert!(matches!(parse_publish(&bad), Err(BodyError::Publish(_))));
    assert_eq!(parse_token(br#"{"token":"a.b.c"}"#), Ok("a.b.c".to_string()));
    assert!(parse_token(br#"{"tok":"a"}"#).is_err());
}
