//! What each fuzz target checks, as plain functions over bytes: shared by
//! the cargo-fuzz targets (`fuzz_targets/*.rs`, nightly) and by the replay of
//! the committed corpora in the ordinary test suite (`tests/fuzz_corpora.rs`,
//! stable). Each function must never panic on any input except through a
//! failed assertion, which is a bug in volley.
//!
//! Beyond "no panic, no unbounded allocation", each checks properties a
//! decoder must have: what it consumes is within the input, what it decodes
//! re-encodes to the same bytes, and reading a stream in pieces gives the
//! same result as reading it whole.

#![allow(dead_code)]

use volley::proto::batch::Batch;
use volley::proto::binary::{self, op, HEADER_LEN};
use volley::proto::body;
use volley::proto::publish;
use volley::proto::ws::session::{Action, Rules};
use volley::proto::ws::{Session, UpgradeRules};

/// A body limit chosen by the input's first byte, so both the limit checks
/// and whole frames get exercised.
fn limit(sel: u8) -> usize {
    [0usize, 16, 64, 4096][usize::from(sel % 4)] + usize::from(sel / 4)
}

/// Client frames (and op 9 batches): `binary::decode` over a stream.
pub fn client_frames(data: &[u8]) {
    let Some((&sel, data)) = data.split_first() else { return };
    let max_body = limit(sel);
    let mut at = 0;
    while let Ok(Some((f, n))) = binary::decode(&data[at..], max_body) {
        assert!(
            n >= HEADER_LEN && n <= data.len() - at,
            "consumed {n} of {}",
            data.len() - at
        );
        assert_eq!(f.body.len() + HEADER_LEN, n);
        assert!(f.body.len() <= max_body);
        let again = binary::encode_to_bytes(f.ver, f.op, f.seq, f.body);
        assert_eq!(&again[..], &data[at..at + n], "decode then encode gives the same bytes");
        // A prefix of a whole frame is "need more", never a frame.
        for cut in [0, 1, 4, 6, HEADER_LEN, n - 1] {
            if cut < n {
                assert!(
                    !matches!(binary::decode(&data[at..at + cut], max_body), Ok(Some(_))),
                    "a {cut}-byte prefix decoded"
                );
            }
        }
        if f.op == op::RAW {
            for inner in Batch::new(f.body, max_body) {
                match inner {
                    Ok(i) => assert!(i.op != op::RAW && i.body.len() <= max_body),
                    Err(_) => break,
                }
            }
        }
        at += n;
    }
}

/// The client's control bodies: auth JSON (op 7), room (op 12), accepts
/// lists (op 14/16). Whatever parses is within the documented limits.
pub fn control_bodies(data: &[u8]) {
    if let Ok(a) = body::parse_auth(data) {
        assert!(a.key.len() <= body::MAX_KEY_LEN);
        assert!(a.room_id.len() <= body::MAX_ROOM_LEN);
        assert!(a.platform.len() <= body::MAX_PLATFORM_LEN);
        assert!(a.accepts.len() <= body::MAX_ACCEPTS);
        assert!(a.accepts.iter().all(|&x| u32::try_from(x).is_ok()));
    }
    if let Ok(room) = body::parse_room(data) {
        assert!(room.len() <= body::MAX_ROOM_LEN);
        assert_eq!(room.as_bytes(), data);
    }
    if let Ok(ops) = body::parse_ops(data) {
        assert!(ops.len() <= body::MAX_ACCEPTS);
        // Every code printed back parses to the same list.
        let text: Vec<String> = ops.iter().map(u32::to_string).collect();
        assert_eq!(body::parse_ops(text.join(",").as_bytes()).ok(), Some(ops));
    }
}

/// TCP publisher frames and their push bodies (versions 1 and 2): every
/// publish that parses re-encodes to a body that parses the same.
pub fn publisher(data: &[u8]) {
    let Some((&sel, data)) = data.split_first() else { return };
    // Each frame's body under its own op, and the whole input under the op
    // the selector names.
    let ops = [
        publish::op::PUSH_KEYS,
        publish::op::PUSH_MIDS,
        publish::op::PUSH_ROOM,
        publish::op::PUSH_ALL,
    ];
    check_publish(ops[usize::from(sel % 4)], data);
    let mut at = 0;
    while let Ok(Some((f, n))) = binary::decode(&data[at..], 1 << 16) {
        check_publish(f.op, f.body);
        if f.op == op::RAW {
            for inner in Batch::new(f.body, 1 << 16) {
                let Ok(inner) = inner else { break };
                check_publish(inner.op, inner.body);
            }
        }
        at += n;
    }
}

fn check_publish(pub_op: u32, body: &[u8]) {
    // The same bytes as a version-2 body: its prefix, then a version-1 body.
    if let Ok((meta, rest)) = publish::parse_meta(body) {
        assert!(meta.id.is_none_or(|id| !id.is_empty() && id.len() <= 128));
        assert_ne!(meta.ttl, Some(0));
        assert!(rest.len() + 6 <= body.len());
        check_v1_publish(pub_op, rest);
    }
    check_v1_publish(pub_op, body);
}

fn check_v1_publish(pub_op: u32, body: &[u8]) {
    let Ok(p) = publish::parse(pub_op, body) else { return };
    assert!(p.payload.len() <= body.len());
    let mut again = bytes::BytesMut::new();
    let op2 = publish::encode(&mut again, &p.target, p.op, p.payload);
    assert_eq!(op2, pub_op);
    let q = publish::parse(op2, &again).expect("what encode writes parses");
    assert_eq!((q.target, q.op, q.payload), (p.target, p.op, p.payload));
}

const UPGRADE: &[u8] = b"GET /sub HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const UPGRADE_ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nHost: f\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn ws_rules() -> UpgradeRules {
    UpgradeRules {
        paths: vec!["/sub".into(), "/echo".into()],
        origins: vec![],
        compression: true,
    }
}

/// Runs `stream` through a server-side WebSocket session fed in `pieces`
/// (cut points), as the driver does: bytes not consumed are kept and offered
/// again with the next piece. Returns every action, described.
fn ws_actions(stream: &[u8], cuts: &[usize]) -> Vec<String> {
    let rules_up = ws_rules();
    let rules = Rules {
        upgrade: &rules_up,
        max_message: 4096 + HEADER_LEN,
        echo_max_message: 1 << 16,
    };
    let mut s = Session::default();
    let mut out = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        let to = to.clamp(from, stream.len());
        kept.extend_from_slice(&stream[from..to]);
        from = to;
        let mut used = 0;
        loop {
            let left = kept.len() - used;
            let (action, n) = s.handle_read(&mut kept[used..], rules);
            assert!(n <= left, "consumed {n} of {left}");
            used += n;
            let Some(a) = action else { break };
            out.push(match a {
                Action::Send(b) => format!("send {b:?}"),
                Action::Upgraded { echo, .. } => format!("upgraded {echo}"),
                Action::Deliver(p) => {
                    assert!(p.len() <= rules.max_message);
                    format!("deliver {p:?}")
                }
                Action::Alive => "alive".into(),
                Action::Close { reason, code, .. } => format!("close {} {code:?}", reason.name()),
            });
        }
        kept.drain(..used);
    }
    out
}

/// The WebSocket reader across fragments and reads: frames after a valid
/// upgrade give the same actions whether read whole or in the pieces the
/// input's first bytes choose.
pub fn ws_reader(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Some((&pieces, frames)) = rest.split_first() else {
        return;
    };
    let mut stream = if sel % 2 == 0 {
        UPGRADE.to_vec()
    } else {
        UPGRADE_ECHO.to_vec()
    };
    stream.extend_from_slice(frames);
    let whole = ws_actions(&stream.clone(), &[]);
    // Cut points spread by the selector byte (at most 8 pieces).
    let n = usize::from(pieces % 8) + 1;
    let step = usize::from(sel / 2).max(1);
    let cuts: Vec<usize> = (1..n).map(|i| (i * step * 7) % (stream.len() + 1)).collect();
    let mut sorted = cuts.clone();
    sorted.sort_unstable();
    assert_eq!(
        ws_actions(&stream, &sorted),
        whole,
        "pieces {sorted:?} of {}",
        stream.len()
    );
}

/// The HTTP upgrade parser: an accepted request is within the input and
/// within the size limit, and none of its prefixes is accepted.
pub fn ws_upgrade(data: &[u8]) {
    use volley::proto::ws::upgrade::{parse_upgrade, MAX_UPGRADE_BYTES};
    let rules = ws_rules();
    match parse_upgrade(data, &rules) {
        Ok(Some(up)) => {
            assert!(up.len <= data.len() && up.len <= MAX_UPGRADE_BYTES);
            assert!(up.path < rules.paths.len());
            assert_eq!(up.accept.len(), 28, "base64 of a SHA-1");
            for cut in [0, up.len / 2, up.len - 1] {
                assert!(
                    !matches!(parse_upgrade(&data[..cut], &rules), Ok(Some(_))),
                    "a {cut}-byte prefix was accepted"
                );
            }
            assert_eq!(
                parse_upgrade(&data[..up.len], &rules).ok().flatten().map(|u| u.len),
                Some(up.len)
            );
        }
        Ok(None) => assert!(data.len() < MAX_UPGRADE_BYTES, "incomplete beyond the limit"),
        Err(e) => assert!(e.response().starts_with(b"HTTP/1.1 4")),
    }
}

/// Version-2 bodies: the push envelope (as a client reads it), and the join,
/// leave, ack and read bodies (as the server reads them). The first byte
/// picks which.
pub fn v2_bodies(data: &[u8]) {
    use volley::proto::v2;
    let Some((&sel, data)) = data.split_first() else { return };
    match sel % 5 {
        0 => {
            if let Ok(e) = v2::decode_push(data) {
                assert_eq!(
                    v2::ENVELOPE_LEN + e.room.len() + e.id.len() + e.payload.len(),
                    data.len()
                );
                assert!(e.room.len() <= body::MAX_ROOM_LEN && e.id.len() <= v2::MAX_ID_LEN);
                // Re-encoded, it is the same bytes (reserved byte aside).
                let f = e.frame();
                let mut want = data.to_vec();
                want[5] = 0;
                assert_eq!(&f[HEADER_LEN..], &want[..], "decode then encode gives the same bytes");
            }
        }
        1 => {
            if let Ok(j) = v2::parse_join(data) {
                assert!(!j.room.is_empty() && j.room.len() <= body::MAX_ROOM_LEN);
                if let Some(r) = j.resume {
                    assert_eq!(v2::parse_epoch(&v2::fmt_epoch(r.epoch)), Some(r.epoch));
                }
            }
        }
        2 => {
            if let Ok(room) = v2::parse_leave(data) {
                assert!(!room.is_empty() && room.len() <= body::MAX_ROOM_LEN);
            }
        }
        3 => {
            if let Ok(ids) = v2::parse_ack(data) {
                assert!(!ids.is_empty() && ids.len() <= v2::MAX_ACK_IDS);
            }
        }
        _ => {
            if let Ok((room, _)) = v2::parse_read(data) {
                assert!(!room.is_empty() && room.len() <= body::MAX_ROOM_LEN);
            }
        }
    }
}

/// Access-control inputs from clients: the publish body (op 52), the token
/// body (op 54), room patterns, and tokens themselves.
pub fn access(data: &[u8]) {
    use volley::proto::pattern::{self, Kind};
    use volley::proto::v2;
    let Some((&sel, data)) = data.split_first() else { return };
    match sel % 4 {
        0 => {
            if let Ok(p) = v2::parse_publish(data) {
                assert!(!p.room.is_empty() && p.room.len() <= body::MAX_ROOM_LEN && p.id.len() <= v2::MAX_ID_LEN);
                // Re-encoded, it is the same bytes.
                assert_eq!(v2::publish_body(p.op, p.room, p.id, p.payload), data);
            }
        }
        1 => {
            if let Ok(t) = v2::parse_token(data) {
                assert!(t.len() <= data.len());
            }
        }
        2 => {
            // Two names split at the first 0 byte: the pattern rules agree
            // with each other.
            let text = String::from_utf8_lossy(data);
            let (a, b) = text.split_once('\0').unwrap_or((&text, ""));
            let (ka, kb) = (pattern::kind(a), pattern::kind(b));
            if ka != Kind::Invalid && kb == Kind::Literal {
                assert_eq!(pattern::covers(a, b), pattern::matches(a, b), "{a:?} {b:?}");
            }
            if ka == Kind::Literal {
                assert!(pattern::matches(a, a) && pattern::covers(a, a));
            }
        }
        _ => {
            // Whatever the bytes, a token either verifies (it cannot: the
            // key is secret) or is refused by name; never a panic.
            static V: std::sync::OnceLock<volley::auth::jwt::Verifier> = std::sync::OnceLock::new();
            let v = V.get_or_init(|| {
                volley::auth::jwt::Verifier::new(&["fuzz-secret-0123456789abcdef012345".to_string()], &[] as &[&str], 5)
                    .expect("a valid secret")
            });
            let token = String::from_utf8_lossy(data);
            assert!(v.verify(&token, 1_000).is_err());
        }
    }
}

/// Replies from Redis (cluster mode): `redis::link::next_reply` over a
/// stream, whole and in two pieces (split where the second byte says),
/// must give the same replies and the same verdict; an incomplete reply
/// never grows past the limit.
pub fn redis_reply(data: &[u8]) {
    use volley::redis::link::next_reply;
    let Some((&sel, data)) = data.split_first() else { return };
    let max = limit(sel);
    let split = data.first().map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let run = |pieces: &[&[u8]]| {
        let mut buf = bytes::BytesMut::new();
        let mut got = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match next_reply(&mut buf, max) {
                    Ok(Some(f)) => got.push(f),
                    Ok(None) => break,
                    Err(_) => return (got, true),
                }
            }
        }
        (got, false)
    };
    let whole = run(&[data]);
    let (a, b) = data.split_at(split);
    let pieces = run(&[a, b]);
    // Cut early, an incomplete reply may pass the limit where whole it
    // completes: what both decoded agrees, and all of it without errors.
    let n = whole.0.len().min(pieces.0.len());
    assert_eq!(whole.0[..n], pieces.0[..n], "pieces decode as the whole");
    if !whole.1 && !pieces.1 {
        assert_eq!(whole.0, pieces.0, "pieces decode as the whole");
    }
}

/// Room, pattern and direct push messages from a cluster channel
/// (`redis::room::decode_message`, `decode_pattern`,
/// `redis::push::decode_push`): what decodes
/// re-encodes to the same bytes (one form per message), and the payload is
/// the input's tail.
pub fn cluster_message(data: &[u8]) {
    use volley::redis::room::{decode_message, decode_pattern, encode_message, encode_pattern};
    let b = bytes::Bytes::copy_from_slice(data);
    if let Ok(m) = decode_message(&b) {
        assert_eq!(encode_message(&m), data, "decode then encode gives the same bytes");
        assert!(data.ends_with(&m.payload));
        assert!(m.offset > 0 && m.epoch > 0);
    }
    // The same bytes as a pattern publish (the other form on volley's
    // channels).
    if let Ok((pattern, token, m)) = decode_pattern(&b) {
        assert!(!pattern.is_empty() && token > 0);
        assert_eq!(
            encode_pattern(&pattern, token, &m),
            data,
            "one form per pattern message"
        );
    }
    // And as a key, user or everyone push.
    if let Ok(p) = volley::redis::push::decode_push(&b) {
        let again = volley::redis::push::encode_push(&p).expect("never a room");
        assert_eq!(again, data, "one form per push");
    }
    // And as a node's note to close its connection with a key.
    if let Some(key) = volley::redis::registry::read_replace(data) {
        assert_eq!(volley::redis::registry::replace_note(key), data, "one form per note");
    }
    // And as a presence note, read with the shard's own types; what reads
    // as a note reads the same once written again.
    use volley::redis::presence::{decode, encode, Note};
    use volley::shard::members::{Changes, Member};
    if let Ok(n) = decode::<Changes, Vec<Member>>(data) {
        let again = encode(&n);
        let n2 = decode::<Changes, Vec<Member>>(&again).expect("a written note reads back");
        assert_eq!(format!("{n:?}"), format!("{n2:?}"));
        if let Note::Changes { node, .. } | Note::Watch { node } | Note::Ask { node, .. } = &n {
            assert_eq!(node.len(), 12);
        }
    }
}

/// The token path with the fuzzer's claims signed by the server's key (so
/// they reach the claims' rules, past the signature): a token either
/// verifies into a grant that keeps every rule — a positive user in one
/// spelling, rooms and publish patterns within the pattern bounds, keys and
/// info within theirs — or is refused by a named reason; never a panic.
/// Input that is not JSON is tried as a whole token instead.
pub fn token(data: &[u8]) {
    use volley::auth::jwt::{Verifier, MAX_INFO_LEN, MAX_PATTERNS};
    use volley::proto::pattern;
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    let v = V.get_or_init(|| {
        Verifier::new(&["fuzz-secret-0123456789abcdef012345".to_string()], &[] as &[&str], 5).expect("a valid secret")
    });
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) else {
        let _ = v.verify(&String::from_utf8_lossy(data), 1_000);
        return;
    };
    let Some(t) = v.sign_dev(&claims) else { return };
    match v.verify(&t, 1_000) {
        Ok(g) => {
            assert!(g.mid > 0, "user {}", g.mid);
            if let Some(sub) = claims["sub"].as_str() {
                assert_eq!(sub, g.mid.to_string(), "one spelling per user");
            }
            assert!(g.exp.saturating_add(5) >= 1_000, "expired at {}", g.exp);
            let rooms = g.rooms.iter().flat_map(|r| r.iter());
            for p in rooms.chain(g.publish.iter()) {
                assert!(p.len() <= body::MAX_ROOM_LEN, "{p:?}");
                assert_ne!(pattern::kind(p), pattern::Kind::Invalid, "{p:?}");
            }
            assert!(g.rooms.as_ref().is_none_or(|r| r.len() <= MAX_PATTERNS));
            assert!(g.publish.len() <= MAX_PATTERNS && g.keys.len() <= MAX_PATTERNS);
            assert!(g.keys.iter().all(|k| !k.is_empty() && k.len() <= body::MAX_KEY_LEN));
            assert!(g.info.as_ref().is_none_or(|i| i.len() <= MAX_INFO_LEN));
        }
        Err(e) => assert!(e.reason().name().starts_with("token_"), "{e}"),
    }
}

/// The pattern parser with its bounds, and the index built from what it
/// accepts: names (one per line) are checked — a pattern within 16
/// segments and 3 `*`, a room with neither `*` nor `>` segments, anything
/// else refused — patterns are subscribed, every room is looked up and
/// must reach exactly the patterns `matches` says, and removing them all
/// gives the index's bytes back.
pub fn pattern(data: &[u8]) {
    use volley::proto::pattern::{self, Kind, MAX_SEGMENTS, MAX_WILDCARDS};
    use volley::shard::patterns::PatternIndex;
    let text = String::from_utf8_lossy(data);
    let names: Vec<&str> = text.split('\n').take(64).collect();
    let mut idx = PatternIndex::<usize>::new();
    let mut subscribed = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let segs: Vec<&str> = n.split('/').collect();
        let stars = segs.iter().filter(|s| **s == "*").count();
        let tail = segs.last() == Some(&">");
        match pattern::check(n) {
            Ok(Kind::Pattern) => {
                assert!(segs.len() <= MAX_SEGMENTS && stars <= MAX_WILDCARDS, "{n:?}");
                assert!(stars > 0 || tail);
                idx.insert(n, i);
                subscribed.push((*n, i));
            }
            Ok(Kind::Literal) => assert!(stars == 0 && !segs.contains(&">"), "{n:?}"),
            Ok(Kind::Invalid) => unreachable!("check never answers Invalid"),
            Err(_) => assert_eq!(pattern::kind(n), Kind::Invalid),
        }
    }
    for n in names.iter().filter(|n| pattern::kind(n) == Kind::Literal) {
        let mut got = Vec::new();
        idx.lookup(n, &mut got);
        got.sort_unstable();
        let mut want: Vec<usize> = subscribed
            .iter()
            .filter(|(p, _)| pattern::matches(p, n))
            .map(|x| x.1)
            .collect();
        want.sort_unstable();
        assert_eq!(got, want, "room {n:?}");
    }
    for (p, i) in subscribed {
        assert!(idx.remove(p, i));
    }
    assert_eq!((idx.len(), idx.bytes()), (0, 0));
}

/// A segment of the durable store (`disk::frame::Scan`) on arbitrary bytes:
/// every record served lies within the input, holds exactly the bytes
/// there and re-encodes to them, and a body that decodes as a record
/// (`disk::record`) writes back as the same bytes; damage is reported
/// within the input, in order; the end is within the input.
pub fn disk_scan(data: &[u8]) {
    use volley::disk::frame::{encode, Item, Scan, HEADER};
    let mut scan = Scan::new(data);
    let mut after = 0;
    for item in scan.by_ref() {
        match item {
            Item::Record { at, kind, body } => {
                assert!(at >= after && at + HEADER + body.len() <= data.len(), "record at {at}");
                let mut again = Vec::new();
                encode(&mut again, kind, body);
                assert_eq!(&data[at..at + again.len()], &again[..], "record at {at}");
                // A body that reads as a record writes back as the same bytes.
                if let Ok(rec) = volley::disk::record::decode(kind, body) {
                    let mut re = Vec::new();
                    rec.write(&mut re);
                    assert_eq!(re, again, "record at {at} re-encoded");
                }
                after = at + again.len();
            }
            Item::Damaged { at, len, .. } => {
                assert!(at >= after && at + len <= data.len(), "damage at {at}+{len}");
                after = at + len;
            }
        }
    }
    assert!(scan.end().is_some_and(|e| e <= data.len()));
}

/// Recovery of a durable store's segment from arbitrary bytes
/// (`shard::recovery::replay_checked`): every readable record applied to a
/// fresh store, whose invariants then hold (messages in offset order and
/// within the room's position, nothing held back, no push twice in an
/// inbox); never a panic otherwise. The first 8 bytes pick the clock, so
/// TTLs and dedup windows both expire and not.
pub fn disk_recover(data: &[u8]) {
    let (clock, bytes) = match data.split_first_chunk::<8>() {
        Some((c, rest)) => (u64::from_le_bytes(*c), rest),
        None => (0, data),
    };
    let (records, lost) = volley::shard::recovery::replay_checked(bytes, clock);
    assert!(records as usize + lost <= bytes.len());
}

/// The records of a shard handed to the next process on an upgrade
/// (`shard::handoff`), from arbitrary bytes: what decodes encodes back to
/// records equal to it; importing it into a fresh shard of a one-shard
/// process never panics and either refuses it whole (the shard stays
/// empty) or takes every connection, which then export again as given.
pub fn handoff_records(data: &[u8]) {
    use std::sync::Arc;
    use volley::shard::handoff::{decode, encode};
    let Some(state) = decode(data) else { return };
    assert_eq!(decode(&encode(&state)).as_ref(), Some(&state), "re-encoded");
    let mut config = volley::Config {
        shards: 1,
        ..volley::Config::default()
    };
    // A connection table as long as the records ask for, up to this.
    config.limits.max_conns = 4096;
    let mut shard = volley::shard::Shard::new(0, Arc::new(volley::shard::Shared::new(config)));
    let fds = vec![-1; state.conns.len()];
    let n = state.conns.len();
    match shard.import(state, &fds) {
        Ok(inputs) => {
            assert_eq!(inputs.len(), n);
            assert_eq!(shard.nr_conns(), n);
            let (again, fds) = shard
                .export(|_| Default::default())
                .expect("imported connections export");
            assert_eq!((again.conns.len(), fds.len()), (n, n));
        }
        Err(_) => assert_eq!(shard.nr_conns(), 0, "a refusal changes nothing"),
    }
}

/// permessage-deflate: the first byte picks an inflate limit, the rest is
/// split at the first NUL into an offer header and a compressed message.
/// Negotiation answers only with what the accepted offer allows; inflating
/// never yields more than the limit; whatever inflated compresses and
/// inflates back to itself.
pub fn ws_deflate(data: &[u8]) {
    use volley::proto::ws::deflate::{negotiate, offers, Compressor, Inflater};
    let Some((&sel, data)) = data.split_first() else { return };
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..cut]);
    let compressed = data.get(cut + 1..).unwrap_or(&[]);
    let offered = offers([&*header]);
    match negotiate([&*header]) {
        Some(a) => {
            let first = offered
                .iter()
                .flatten()
                .next()
                .expect("an answer only to an acceptable offer");
            assert!(a
                .response
                .starts_with("permessage-deflate; server_no_context_takeover; client_no_context_takeover"));
            match first.server_max_window_bits {
                Some(b) => assert!(a.response.ends_with(&format!("; server_max_window_bits={b}"))),
                None => assert!(!a.response.contains("max_window_bits")),
            }
            assert_eq!(a.compressed_sends, first.server_max_window_bits.is_none_or(|b| b == 15));
        }
        None => assert!(offered.iter().all(Option::is_none)),
    }
    let limit = limit(sel) * 16;
    if let Ok(plain) = Inflater::default().inflate(compressed, limit) {
        assert!(plain.len() <= limit);
        if let Some(z) = Compressor::default().compress(&plain) {
            assert!(z.len() < plain.len());
            assert_eq!(Inflater::default().inflate(&z, plain.len()).as_deref(), Ok(&plain[..]));
        }
    }
}
