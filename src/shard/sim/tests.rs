//! Session and heartbeat behaviour on simulated time: no socket, no clock,
//! every tick and byte chosen by the test.

use super::{Peer, Sim};
use crate::proto::batch;
use crate::proto::binary::{self, op};
use crate::proto::close::CloseReason;
use crate::proto::ws;
use bytes::BytesMut;

const V1: u16 = binary::VERSION_GOIM;

fn frame(ver: u16, op: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    binary::encode_to_bytes(ver, op, seq, body).to_vec()
}

/// The one op 6 goodbye `p` got, which must be the last frame it got.
fn goodbye(sim: &mut Sim, p: Peer) -> String {
    let got = sim.frames(p);
    let last = got.last().expect("a goodbye");
    assert_eq!(last.op, op::DISCONNECT, "{got:?}");
    last.text()
}

fn heartbeat_count(sim: &mut Sim, p: Peer, seq: u32) -> u32 {
    sim.send(p, V1, op::HEARTBEAT, seq, b"");
    let got = sim.frames(p);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].op, got[0].seq), (op::HEARTBEAT_REPLY, seq));
    u32::from_be_bytes(got[0].body[..4].try_into().unwrap())
}

// A connection made at tick k may have come just before tick k+1, so at
// tick k+T only a little over T-1 seconds may have passed: a deadline of T
// seconds holds through tick k+T and closes at tick k+T+1 (docs/PROTOCOL.md:
// "between T and T+1 s").

#[test]
fn no_auth_within_the_handshake_timeout_closes_in_the_second_after_it() {
    let mut sim = Sim::new(1, |c| c.client.handshake_timeout_secs = 3);
    let quiet = sim.connect(0);
    let partial = sim.connect(0);
    // Half an auth frame is not an auth frame.
    let auth = frame(V1, op::AUTH, 1, b"{}");
    assert_eq!(sim.feed(partial, &auth[..10]), 0);
    sim.tick(3);
    assert_eq!(sim.closed(quiet), None, "never before the deadline");
    assert_eq!(sim.closed(partial), None);
    sim.tick(1);
    for p in [quiet, partial] {
        assert_eq!(sim.closed(p), Some(CloseReason::HandshakeTimeout));
        assert_eq!(
            goodbye(&mut sim, p),
            "handshake_timeout: no auth frame within the handshake timeout"
        );
    }
    assert_eq!(sim.stats().closes["handshake_timeout"], 2);
}

#[test]
fn heartbeats_renew_the_deadline_and_silence_closes_in_the_second_after_it() {
    let mut sim = Sim::new(1, |c| c.client.heartbeat_timeout_secs = 5);
    let p = sim.authed(0, "{}");
    let other = sim.authed(0, "{}");
    sim.tick(3);
    assert_eq!(heartbeat_count(&mut sim, p, 1), 0, "no room, count 0");
    sim.tick(2);
    assert_eq!(sim.closed(other), None, "tick 5: 5 s may not have passed yet");
    sim.tick(1);
    assert_eq!(sim.closed(other), Some(CloseReason::HeartbeatTimeout));
    assert_eq!(
        goodbye(&mut sim, other),
        "heartbeat_timeout: no heartbeat within the deadline"
    );
    sim.tick(2);
    assert_eq!(sim.closed(p), None, "tick 8: renewed at 3, 5 s may not have passed");
    sim.tick(1);
    assert_eq!(sim.closed(p), Some(CloseReason::HeartbeatTimeout));
}

#[test]
fn websocket_pings_stand_in_for_heartbeats() {
    let mut sim = Sim::new(1, |c| c.client.heartbeat_timeout_secs = 40);
    let ws = sim.connect_ws(0);
    sim.send_message(ws, &frame(V1, op::AUTH, 1, b"{}"));
    let auth_reply = sim.take(ws);
    assert_eq!(auth_reply[0], 0x82, "one binary message");
    sim.tick(40);
    assert!(sim.take(ws).is_empty(), "40 s may not have passed yet");
    sim.tick(1);
    assert_eq!(
        sim.take(ws),
        ws::session::heartbeat_ping().to_vec(),
        "a ping in the second after the deadline"
    );
    sim.tick(10);
    sim.pong(ws);
    sim.tick(40);
    assert_eq!(sim.closed(ws), None, "the pong at 51 started a new deadline (92)");
    assert!(sim.take(ws).is_empty());
    sim.tick(1);
    assert_eq!(sim.take(ws), ws::session::heartbeat_ping().to_vec());
    sim.tick(30);
    assert_eq!(
        sim.closed(ws),
        Some(CloseReason::HeartbeatTimeout),
        "no pong within the grace"
    );
    let bye = sim.take(ws);
    // op 6 as a binary message, then a close frame 1000 with the same text.
    assert_eq!(bye[0], 0x82);
    let text = "heartbeat_timeout: no heartbeat within the deadline";
    let close = [0x88, (2 + text.len()) as u8, 0x03, 0xe8];
    assert!(bye.windows(4).any(|w| w == close), "{bye:?}");
}

#[test]
fn room_changes_move_members_and_counts_follow_within_a_tick() {
    let mut sim = Sim::new(2, |_| {});
    let a0 = sim.authed(0, r#"{"room_id":"live://a"}"#);
    let a1 = sim.authed(1, r#"{"room_id":"live://a"}"#);
    let b1 = sim.authed(1, r#"{"room_id":"live://b"}"#);
    assert_eq!(
        heartbeat_count(&mut sim, a0, 1),
        1,
        "own shard live, other not yet published"
    );
    sim.tick(1);
    assert_eq!(heartbeat_count(&mut sim, a0, 2), 2);
    assert_eq!(heartbeat_count(&mut sim, a1, 3), 2);

    sim.publish_room(0, "live://a", 1000, b"to-a");
    for p in [a0, a1] {
        let got = sim.frames(p);
        assert_eq!((got[0].op, got[0].text().as_str()), (1000, "to-a"));
    }
    assert!(sim.frames(b1).is_empty());

    sim.send(a1, V1, op::CHANGE_ROOM, 9, b"live://b");
    let got = sim.frames(a1);
    assert_eq!(
        (got[0].op, got[0].seq, got[0].body.as_slice()),
        (op::CHANGE_ROOM_REPLY, 9, &b"live://b"[..])
    );
    sim.tick(1);
    assert_eq!(heartbeat_count(&mut sim, b1, 4), 2);
    assert_eq!(heartbeat_count(&mut sim, a0, 5), 1);
    sim.publish_room(1, "live://b", 1000, b"to-b");
    assert_eq!(sim.frames(a1)[0].text(), "to-b");
    assert_eq!(sim.frames(b1)[0].text(), "to-b");
    assert!(sim.frames(a0).is_empty());
    // An empty body leaves the room; a bad one closes.
    sim.send(a1, V1, op::CHANGE_ROOM, 10, b"");
    assert_eq!(sim.frames(a1)[0].op, op::CHANGE_ROOM_REPLY);
    sim.tick(1);
    assert_eq!(heartbeat_count(&mut sim, b1, 6), 1);
    assert_eq!(sim.stats().rooms, 2);
    sim.send(a1, V1, op::CHANGE_ROOM, 11, &[0xff]);
    assert_eq!(sim.closed(a1), Some(CloseReason::BadBody));
}

#[test]
fn accepts_filter_pushes_to_all() {
    let mut sim = Sim::new(2, |_| {});
    let yes = sim.authed(0, r#"{"accepts":[1000,1001]}"#);
    let no = sim.authed(1, r#"{"accepts":[1001]}"#);
    let none = sim.authed(1, "{}");
    sim.publish_all(1, 1000, b"x");
    assert_eq!(sim.frames(yes).len(), 1);
    assert!(sim.frames(no).is_empty());
    assert!(sim.frames(none).is_empty(), "accepting nothing receives nothing");

    sim.send(no, V1, op::SUB, 2, b"1000, 1002");
    assert_eq!(sim.frames(no)[0].op, op::SUB_REPLY);
    sim.send(yes, V1, op::UNSUB, 3, b"1000");
    assert_eq!(sim.frames(yes)[0].op, op::UNSUB_REPLY);
    sim.publish_all(0, 1000, b"y");
    assert_eq!(sim.frames(no)[0].text(), "y");
    assert!(sim.frames(yes).is_empty());

    sim.send(none, V1, op::SUB, 4, b"1,abc");
    assert_eq!(sim.closed(none), Some(CloseReason::BadBody));
    // 256 more codes are a valid body, but with the one `yes` keeps (1001)
    // the connection would accept 257.
    let many: Vec<String> = (0..256).map(|i| i.to_string()).collect();
    sim.send(yes, V1, op::SUB, 5, many.join(",").as_bytes());
    assert_eq!(sim.closed(yes), Some(CloseReason::BadBody));
    assert_eq!(goodbye(&mut sim, yes), "bad_body: too many accepted operations");
}

#[test]
fn op_9_batches_are_answered_in_order_and_bad_ones_close_after_the_good_part() {
    let mut sim = Sim::new(1, |_| {});
    let p = sim.authed(0, "{}");
    let mut inner = frame(V1, op::HEARTBEAT, 1, b"");
    inner.extend(frame(V1, op::SEND_MSG, 2, b"hello"));
    inner.extend(frame(V1, op::CHANGE_ROOM, 3, b"live://r"));
    inner.extend(frame(V1, 5000, 4, b"unknown, ignored"));
    let mut outer = BytesMut::new();
    batch::encode(&mut outer, V1, 0, &inner);
    sim.feed(p, &outer);
    let got: Vec<(u32, u32)> = sim.frames(p).iter().map(|g| (g.op, g.seq)).collect();
    assert_eq!(got, vec![(3, 1), (5, 2), (13, 3)]);
    assert_eq!(sim.stats().unknown_ops, 1);

    let mut nested = frame(V1, op::SEND_MSG, 5, b"");
    nested.extend(frame(V1, op::RAW, 6, b""));
    sim.send(p, V1, op::RAW, 0, &nested);
    let got = sim.frames(p);
    assert_eq!(got[0].op, op::SEND_MSG_REPLY, "the frame before the fault is served");
    assert_eq!(got[1].text(), "protocol_error: op 9 batch nested in a batch");
    assert_eq!(sim.closed(p), Some(CloseReason::ProtocolError));

    let q = sim.authed(0, "{}");
    let cut = frame(V1, op::HEARTBEAT, 7, b"");
    sim.send(q, V1, op::RAW, 0, &cut[..10]);
    assert_eq!(goodbye(&mut sim, q), "protocol_error: op 9 batch ends inside a frame");
}

#[test]
fn a_slow_consumer_is_closed_at_its_limit_and_told_last() {
    let mut sim = Sim::new(2, |c| {
        c.api.max_push_body = 1000;
        c.limits.outbound_limit = 3000;
    });
    let reader = sim.authed(0, r#"{"room_id":"live://s"}"#);
    let stalled = sim.authed(1, r#"{"room_id":"live://s"}"#);
    sim.stall(stalled);
    let payload = vec![b'x'; 1000];
    for i in 0..2 {
        sim.publish_room(0, "live://s", 1000, &payload);
        assert!(sim.queued(stalled) > i * 1000, "queued, not written");
    }
    assert_eq!(sim.closed(stalled), None);
    sim.publish_room(1, "live://s", 1000, &payload);
    assert_eq!(sim.closed(stalled), Some(CloseReason::SlowConsumer));
    let got = sim.frames(stalled);
    assert_eq!(got.len(), 1, "queued frames were dropped, only the goodbye is sent");
    assert!(got[0].text().starts_with("slow_consumer: "), "{}", got[0].text());
    assert_eq!(sim.frames(reader).len(), 3, "the reading member got everything");
    let s = sim.stats();
    assert_eq!((s.closes["slow_consumer"], s.dropped), (1, 3));
}

#[test]
fn past_the_outbound_budget_the_largest_queues_close_first() {
    // A shard's share of the budget is 8,000 bytes. A push of 1,000 bytes
    // (1,016 framed) queued to n members of a shard costs each 64 bytes
    // and 1,016 / n of its bytes.
    let mut sim = Sim::new(2, |c| {
        c.api.max_push_body = 1000;
        c.limits.outbound_limit = 16_000;
        c.limits.outbound_budget = 16_000;
    });
    let room = r#"{"room_id":"live://b"}"#;
    let reader = sim.authed(0, room);
    let elsewhere = sim.authed(1, room);
    let early = sim.authed(0, room);
    sim.stall(early);
    let payload = vec![b'x'; 1000];
    for _ in 0..2 {
        sim.publish_room(1, "live://b", 1000, &payload);
    }
    assert_eq!(sim.queued_on(0), 2 * (508 + 64), "two members share each push");
    let late: Vec<Peer> = (0..3)
        .map(|_| {
            let p = sim.authed(0, room);
            sim.stall(p);
            p
        })
        .collect();
    let mut budget_closes = Vec::new();
    for _ in 0..30 {
        sim.tick(1); // only a queue that has waited a while may be shed
        sim.publish_room(1, "live://b", 1000, &payload);
        assert!(sim.queued_on(0) <= 8_000, "{} bytes queued", sim.queued_on(0));
        let s = sim.stats();
        if s.budget_closes > budget_closes.len() as u64 {
            let gone: Vec<Peer> = std::iter::once(early)
                .chain(late.iter().copied())
                .filter(|&p| sim.closed(p).is_some() && !budget_closes.contains(&p))
                .collect();
            budget_closes.extend(gone);
        }
    }
    assert_eq!(budget_closes[0], early, "the largest queue went first");
    let bye = goodbye(&mut sim, early);
    assert!(bye.contains("outbound budget was full"), "{bye}");
    assert!(late.iter().all(|&p| sim.closed(p) == Some(CloseReason::SlowConsumer)));
    assert_eq!(sim.frames(reader).len(), 32, "the reading member got everything");
    assert_eq!(sim.frames(elsewhere).len(), 32, "and so did the one on the other shard");
    assert_eq!(sim.queued_on(0), 0);
    let s = sim.stats();
    assert!(s.budget_closes >= 2, "{}", s.budget_closes);
    assert_eq!(s.closes["slow_consumer"], 4);
}

#[test]
fn a_version_1_connection_takes_frames_of_any_version_as_goim_does() {
    let mut sim = Sim::new(1, |_| {});
    // goim's benchmark client: auth as version 1, heartbeats as version 0.
    let p = sim.authed(0, r#"{"mid":7,"room_id":"live://1"}"#);
    sim.send(p, 0, op::HEARTBEAT, 2, b"");
    sim.send(p, 0, op::SEND_MSG, 3, b"hi");
    sim.send(p, 7, op::HEARTBEAT, 4, b"");
    let got: Vec<(u16, u32, u32)> = sim.frames(p).iter().map(|g| (g.ver, g.op, g.seq)).collect();
    assert_eq!(
        got,
        vec![(0, 3, 2), (0, 5, 3), (7, 3, 4)],
        "replies echo the request's version"
    );
    sim.publish_room(0, "live://1", 1000, b"push");
    assert_eq!(sim.frames(p)[0].ver, V1, "pushes are version 1");

    // An auth frame of version 0 (field never set) is version 1 as well;
    // 2 is the native protocol (v2_tests.rs); anything else is refused.
    let zero = sim.connect(0);
    sim.send(zero, 0, op::AUTH, 1, b"{}");
    assert_eq!(sim.frames(zero)[0].op, op::AUTH_REPLY);
    let q = sim.connect(0);
    sim.send(q, 3, op::AUTH, 1, b"{}");
    assert_eq!(sim.closed(q), Some(CloseReason::UnsupportedVersion));
    assert!(goodbye(&mut sim, q).contains("protocol version 3 is not served (this server speaks 1 and 2)"));
}

#[test]
fn the_first_frame_must_be_auth_and_only_once() {
    let mut sim = Sim::new(1, |_| {});
    let p = sim.connect(0);
    sim.send(p, V1, op::HEARTBEAT, 1, b"");
    assert_eq!(
        goodbye(&mut sim, p),
        "auth_required: first frame must be auth (op 7), got op 2"
    );
    let q = sim.authed(0, "{}");
    sim.send(q, V1, op::AUTH, 2, b"{}");
    assert_eq!(goodbye(&mut sim, q), "protocol_error: already authenticated");
    let r = sim.connect(0);
    sim.send(r, V1, op::AUTH, 1, b"[1]");
    assert_eq!(sim.closed(r), Some(CloseReason::BadAuth));
    let d = sim.authed(0, "{}");
    sim.send(d, V1, op::DISCONNECT, 3, b"");
    assert_eq!(sim.closed(d), Some(CloseReason::ClientDisconnect));
    assert!(sim.frames(d).is_empty(), "a client's own op 6 gets no goodbye");
}

#[test]
fn the_same_key_on_another_shard_replaces_the_first_connection() {
    let mut sim = Sim::new(2, |_| {});
    let first = sim.authed(0, r#"{"key":"k","accepts":[1000]}"#);
    let second = sim.authed(1, r#"{"key":"k","accepts":[1000]}"#);
    assert_eq!(sim.closed(first), Some(CloseReason::Replaced));
    assert_eq!(
        goodbye(&mut sim, first),
        "replaced: another connection authenticated with this key"
    );
    assert_eq!(sim.closed(second), None);
}

#[test]
fn decode_errors_close_with_the_rule_broken() {
    let mut sim = Sim::new(1, |c| c.limits.max_body = 100);
    let cases: [(Vec<u8>, CloseReason); 5] = [
        (
            {
                let mut f = frame(V1, op::HEARTBEAT, 0, b"");
                f[5] = 20;
                f
            },
            CloseReason::BadHeaderLength,
        ),
        ((3u32).to_be_bytes().to_vec(), CloseReason::BadPacketLength),
        // Over every operation's limit: refused as soon as the length is in.
        ((16u32 + 16_385).to_be_bytes().to_vec(), CloseReason::BodyTooLarge),
        // Over max_body: refused once the operation is known (a token frame
        // may be longer).
        (
            frame(V1, op::HEARTBEAT, 0, &[0; 101])[..12].to_vec(),
            CloseReason::BodyTooLarge,
        ),
        (
            frame(V1, op::AUTH, 0, &[0; 16_385])[..12].to_vec(),
            CloseReason::BodyTooLarge,
        ),
    ];
    for (bytes, want) in cases {
        let p = sim.authed(0, "{}");
        sim.feed(p, &bytes);
        assert_eq!(sim.closed(p), Some(want));
        assert!(goodbye(&mut sim, p).starts_with(want.name()));
    }
}

/// While a shard reads its durable store back, what its own clients ask of
/// it (here a join of a room it owns) waits in its inbox with what other
/// shards ask, instead of being handled inline against a store not yet
/// loaded (which answered resumes after a restart with a new epoch).
#[test]
fn a_recovering_shard_leaves_what_its_own_clients_ask_of_it_in_its_inbox() {
    let mut sim = Sim::new(1, |_| {});
    let (p, _) = sim.authed_v2(0, r#"{"mid":7}"#);
    sim.shards[0].recovering = true;
    sim.send_unsettled(
        p,
        binary::VERSION_NATIVE,
        crate::proto::v2::op::JOIN,
        2,
        br#"{"room":"chat://r"}"#,
    );
    assert_eq!(sim.shared.mesh.backlog(0), 1, "the join waits in the inbox");
    assert!(
        sim.shards[0].store.logs.get("chat://r").is_none(),
        "no log before the store is loaded"
    );
    sim.shards[0].recovering = false;
    sim.pump();
    let got = sim.frames(p);
    assert!(
        got.iter().any(|g| g.op == crate::proto::v2::op::JOIN_REPLY),
        "answered once loaded"
    );
}
