//! `volley upgrade` between real processes: the running server starts its
//! binary again and hands it every listening socket and connection; the
//! clients stay connected and miss nothing. When the new binary exits at
//! start, or dies while taking over, the old one serves on. Under a
//! service manager the new process is named the main one. Another binary
//! may be named if it sits beside the server's own.

mod common;

use common::process::{binary_copy, Running};
use common::{http, op, Client};
use std::time::Duration;

/// The next notification a server sent to a service manager's socket.
fn notification(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut b = [0u8; 512];
    let n = sock.recv(&mut b).expect("a notification");
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// A version-1 and a version-2 member of live://up, each having read one
/// message; returns them and the version-2 one's last (offset, epoch).
fn members(s: &Running) -> (Client, Client, (u64, u64)) {
    let v1 = Client::authed(s.tcp, r#"{"room_id":"live://up","accepts":[1000]}"#);
    let (mut v2, _) = Client::authed_v2(s.tcp, "{}");
    v2.join(2, "live://up", None);
    common::wait_until("both members", || {
        http(s.api, "GET", "/v1/online/rooms?rooms=live://up", &[], b"").1["data"]["live://up"] == 2
    });
    s.publish("before");
    let mut v1 = v1;
    assert_eq!(v1.read_push().text(), "before");
    let p = v2.read_push2().unwrap();
    (v1, v2, (p.offset, p.epoch))
}

#[test]
fn an_upgrade_hands_every_connection_to_the_new_process_and_nobody_reconnects() {
    let bin = binary_copy("ok");
    // A service manager's notification socket (systemd's Type=notify).
    let notify_path = std::env::temp_dir().join(format!("volley-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut s = Running::start(&bin.0, "ok", &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    assert_eq!(notification(&notify), "READY=1\n");
    let (mut v1, mut v2, (offset, epoch)) = members(&s);
    let mut publisher = common::publisher(s.publish, None);
    let old = s.pid();
    let out = s.upgrade();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("handed every connection"), "{said}");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "the old process ends by itself: {status}");
    assert_ne!(s.pid(), old);
    // The service's main process is the new one now (and it did not say
    // READY again: the service never stopped being ready).
    assert_eq!(notification(&notify), format!("MAINPID={}\n", s.pid()));
    // The new process counts the connections it took over, and their
    // addresses and rooms, from its first answer on.
    let (_, v) = http(s.api, "GET", "/goim/online/total", &[], b"");
    assert_eq!(
        (&v["data"]["conn_count"], &v["data"]["ip_count"]),
        (&2.into(), &1.into()),
        "{v}"
    );
    let (_, v) = http(s.api, "GET", "/v1/online/rooms?rooms=live://up", &[], b"");
    assert_eq!(v["data"]["live://up"], 2, "{v}");
    s.publish("after");
    assert_eq!(v1.read_push().text(), "after");
    let p = v2.read_push2().unwrap();
    assert_eq!(
        (p.offset, p.epoch, p.payload.as_slice()),
        (offset + 1, epoch, &b"after"[..])
    );
    v1.send(op::HEARTBEAT, 3, b"");
    let r = v1.read().expect("the heartbeat's reply");
    assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 3));
    // The TCP publisher's connection moved too: it publishes on it.
    let push = common::room_body(1000, "live://up", b"from the publisher");
    publisher.send(24, 6, &push);
    let ack = publisher.read().expect("the push's ack");
    assert_eq!((ack.op, ack.seq), (25, 6));
    assert_eq!(v1.read_push().text(), "from the publisher");
    drop(s);
    assert_eq!(notification(&notify), "STOPPING=1\n");
    let _ = std::fs::remove_file(notify_path);
}

#[test]
fn a_new_binary_that_exits_at_start_or_dies_taking_over_leaves_the_old_one_serving() {
    // Dies while taking over: every connection is back with the old one.
    let bin = binary_copy("abort");
    let s = Running::start(&bin.0, "abort", &[("VOLLEY_TEST_HANDOFF_ABORT", "1")]);
    let (mut v1, mut v2, (offset, epoch)) = members(&s);
    let old = s.pid();
    let out = s.upgrade();
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed"), "{out:?}");
    assert_eq!(s.pid(), old);
    s.publish("still here");
    assert_eq!(v1.read_push().text(), "still here");
    let p = v2.read_push2().unwrap();
    assert_eq!((p.offset, p.epoch), (offset + 1, epoch));
    drop(s);
    drop(bin);

    // Exits at start (a deploy put a broken binary in place).
    let bin = binary_copy("exit");
    let s = Running::start(&bin.0, "exit", &[]);
    let (mut v1, _, _) = members(&s);
    std::fs::remove_file(&bin.0).unwrap();
    std::fs::write(&bin.0, "#!/bin/sh\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = s.upgrade();
    assert!(!out.status.success(), "{out:?}");
    let (_, v) = http(s.api, "GET", "/v1/upgrade", &[], b"");
    // Exited before its hello (or, if a test's fork held the new file
    // for a moment, could not be started at all: the same to the old).
    let why = v["data"]["last_error"].as_str().unwrap();
    assert!(
        why.contains("before it said hello") || why.contains("cannot start"),
        "{v}"
    );
    s.publish("still here");
    assert_eq!(v1.read_push().text(), "still here");
}

#[test]
fn an_upgrade_may_start_another_binary_beside_the_servers_own_and_no_other() {
    // A folder of the operator's: the server's binary and the next one.
    let dir = std::env::temp_dir().join(format!("volley-upgrade-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (own, next) = (dir.join("volley"), dir.join("volley-next"));
    std::fs::copy(env!("CARGO_BIN_EXE_volley"), &own).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_volley"), &next).unwrap();
    let s = Running::start(&own, "binary", &[]);
    let (mut v1, _, _) = members(&s);
    let old = s.pid();

    // Anything else is refused before anything starts, and says why.
    let out = s.upgrade_with(&["--binary", "/bin/sh"]);
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("400") && said.contains("not in"), "{said}");
    assert_eq!(s.pid(), old);

    let out = s.upgrade_with(&["--binary", next.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(s.pid(), old);
    s.publish("after");
    assert_eq!(v1.read_push().text(), "after");
    // The new process runs the binary named (as its own, for the next
    // upgrade).
    let exe = std::fs::read_link(format!("/proc/{}/exe", s.pid())).unwrap();
    assert_eq!(exe, next);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
