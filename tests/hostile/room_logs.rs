//! Room state a client can make the server create is bounded and counted:
//! read marks create no room log and need the token's grant; room logs
//! (joins of ever-new rooms) count against `[history] memory` and, idle,
//! go before anybody's history; a client's joins and marks are paced; and
//! inboxes at their cap hold what the cap says.

use super::common::{self, frame, op, op2, Client};
use super::{jwt_server, rss, token, total, Bystander};
use serde_json::{json, Value};
use std::io::Write;

const READ: u32 = op2::READ;

/// Sends `n` read marks for ever-new rooms, 30 per op 9 batch, and reads
/// every answer; returns how many were answered op 49 and how many op 50.
fn mark_new_rooms(c: &mut Client, n: usize) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for batch in 0..n / 30 {
        let inner: Vec<u8> = (0..30)
            .flat_map(|i| {
                let body = json!({"room": format!("live://new-{batch}-{i}"), "offset": 1});
                frame(2, READ, 1, body.to_string().as_bytes())
            })
            .collect();
        c.s.write_all(&frame(2, op::RAW, 0, &inner)).unwrap();
        for _ in 0..30 {
            match c.read().expect("an answer").op {
                op2::READ_REPLY => ok += 1,
                op2::ERROR => refused += 1,
                other => panic!("op {other}"),
            }
        }
    }
    (ok, refused)
}

#[test]
fn read_marks_create_no_room_log_and_need_the_grant() {
    let h = jwt_server(|c| {
        c.client.room_op_rate = 1_000_000;
        c.client.room_op_burst = 1_000_000;
    });
    let by = Bystander::jwt(h.tcp_addr, h.http_addr);
    let logs_before = total(&h, |s| s.room_logs);
    let t = token(json!({"sub": "5", "rooms": ["live://*"]}));
    let (mut c, _) = Client::authed_v2(h.tcp_addr, &json!({ "token": t }).to_string());
    let (ok, refused) = mark_new_rooms(&mut c, 30_000);
    assert_eq!((ok, refused), (30_000, 0), "answered, each (0, 0)");
    // Logs are published once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let logs = total(&h, |s| s.room_logs) - logs_before;
    assert!(logs <= 2, "{logs} room logs created by read marks");
    // A room the token does not grant: refused, its newest offset not told.
    common::post(&h, "/v1/push/room", br#"{"room":"secret/1","op":1,"body":"x"}"#);
    c.send_as(2, READ, 7, br#"{"room":"secret/1","offset":0}"#);
    let g = c.read().unwrap();
    let v: Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!((g.op, v["reason"].as_str()), (op2::ERROR, Some("forbidden")), "{v}");
    by.finish();
}

#[test]
fn joins_of_ever_new_rooms_are_bounded_by_history_memory_and_cost_nobody_history() {
    const CAP: usize = 4 << 20;
    let h = common::start_server(|c| {
        c.history.memory = CAP;
        c.client.room_op_rate = 1_000_000;
        c.client.room_op_burst = 1_000_000;
    });
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    // A room with history someone will resume.
    for i in 0..50 {
        let body = json!({"room": "live://kept", "op": 1, "body": format!("m{i}")});
        common::post(&h, "/v1/push/room", body.to_string().as_bytes());
    }
    let (mut keeper, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":2}"#);
    let epoch = keeper.join(1, "live://kept", None)["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    keeper.send_as(2, op2::LEAVE, 2, br#"{"room":"live://kept"}"#);
    assert_eq!(keeper.read().unwrap().op, op2::LEAVE_REPLY);
    // 60,000 joins and leaves of new rooms, in batches.
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":3}"#);
    for batch in 0..2_000 {
        for (op, reply) in [(op2::JOIN, op2::JOIN_REPLY), (op2::LEAVE, op2::LEAVE_REPLY)] {
            let inner: Vec<u8> = (0..30)
                .flat_map(|i| {
                    let room = json!({ "room": format!("live://churn-{batch}-{i}") }).to_string();
                    frame(2, op, 1, room.as_bytes())
                })
                .collect();
            c.s.write_all(&frame(2, op::RAW, 0, &inner)).unwrap();
            for _ in 0..30 {
                let g = c.read().expect("an answer");
                assert_eq!(g.op, reply, "{}", g.text());
            }
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let charged = total(&h, |s| s.history_bytes) as usize;
    let evicted = total(&h, |s| s.history_logs_evicted);
    eprintln!(
        "history_bytes {charged} (cap {CAP}), room_logs {}, idle logs evicted {evicted}",
        total(&h, |s| s.room_logs)
    );
    assert!(charged <= CAP, "{charged} bytes counted, cap {CAP}");
    assert!(evicted >= 40_000, "{evicted} idle logs evicted");
    assert_eq!(total(&h, |s| s.history_evicted_memory), 0, "no message went for them");
    // The kept room resumes from its first message.
    let r = keeper.join(3, "live://kept", Some((0, &epoch)));
    assert_eq!(r["recovered"], true, "{r}");
    by.finish();
}

#[test]
fn joins_and_marks_are_paced_per_connection() {
    let h = common::start_server(|_| {});
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let (mut c, _) = Client::authed_v2(h.tcp_addr, r#"{"mid":4}"#);
    let (ok, refused) = mark_new_rooms(&mut c, 300);
    // The default bucket: 100 at once, 20 a second after.
    assert!((100..=140).contains(&ok), "{ok} marks answered");
    assert_eq!(ok + refused, 300);
    by.finish();
}

#[test]
fn inboxes_at_their_cap_hold_what_the_cap_says() {
    let _alone = super::measuring();
    const CAP: usize = 32 << 20;
    let h = common::start_server(|c| c.inbox.memory = CAP);
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let before = rss();
    // 200,000 pushes of 64 bytes to users nobody has connected as.
    let body = "x".repeat(64);
    for batch in 0..200 {
        let messages: Vec<Value> = (0..1000)
            .map(|i| json!({"target": "mids", "mids": [1 + batch * 1000 + i], "op": 1000, "body": body}))
            .collect();
        common::post(
            &h,
            "/v1/publish",
            json!({ "messages": messages }).to_string().as_bytes(),
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let counted = total(&h, |s| s.inbox_bytes) as usize;
    let grew = rss().saturating_sub(before);
    eprintln!(
        "inbox: {} pushes kept, {counted} B counted (cap {CAP}), RSS +{} MiB",
        total(&h, |s| s.inbox_messages),
        grew >> 20
    );
    assert!(counted <= CAP);
    assert!(total(&h, |s| s.inbox_evicted_memory) > 0, "the cap was reached");
    // What is counted is what is held: RSS grew by about the cap, not by
    // several times it (allocator slack and this test's own requests aside).
    assert!(
        grew < CAP * 3 / 2 + (16 << 20),
        "RSS grew {grew} bytes for a {CAP}-byte cap"
    );
    by.finish();
}
