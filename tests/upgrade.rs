//! `volley upgrade` between real processes: the running server starts its
//! binary again and hands it every listening socket and connection; the
//! clients stay connected and miss nothing. When the new binary exits at
//! start, or dies while taking over, the old one serves on.

mod common;

use common::{http, op, Client};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `volley serve` started from `binary` (a copy of ours, so the test may
/// replace the file as a deploy does); stopped by its pid, whichever
/// process holds the server by then.
struct Running {
    child: Child,
    tcp: std::net::SocketAddr,
    api: std::net::SocketAddr,
    dir: PathBuf,
}

impl Running {
    fn start(binary: &Path, name: &str, env: &[(&str, &str)]) -> Running {
        let dir = std::env::temp_dir().join(format!("volley-upgrade-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A copy just written may be busy for a moment (ETXTBSY: another
        // test's fork holds its descriptor until that child execs).
        let spawn = || {
            Command::new(binary)
                .args(["serve", "--shards", "2", "--log-level", "info"])
                .args(["--tcp-listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"])
                .args(["--api-listen", "127.0.0.1:0", "--api-publish-listen", "127.0.0.1:0"])
                .args(["--storage-mode", "disk", "--storage-dir"])
                .arg(&dir)
                .envs(env.iter().copied())
                .env_remove("VOLLEY_CONFIG")
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        };
        let mut child = (0..100)
            .find_map(|_| match spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                }
                other => Some(other),
            })
            .expect("the copy stays busy")
            .expect("volley starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let field = |line: &str, key: &str| -> std::net::SocketAddr {
            let at = line.find(&format!(" {key}=")).unwrap() + key.len() + 2;
            line[at..].split_whitespace().next().unwrap().parse().unwrap()
        };
        let (tcp, api) = loop {
            let line = lines.next().expect("a log line").unwrap();
            if line.contains("volley serving") {
                break (field(&line, "tcp"), field(&line, "api"));
            }
        };
        // Both processes log to this pipe; keep it drained.
        std::thread::spawn(move || for _ in lines {});
        Running { child, tcp, api, dir }
    }

    fn pid(&self) -> u64 {
        let (_, v) = http(self.api, "GET", "/v1/upgrade", &[], b"");
        v["data"]["pid"].as_u64().expect("a pid")
    }

    fn publish(&self, text: &str) {
        let (s, v) = http(
            self.api,
            "POST",
            "/goim/push/room?operation=1000&type=live&room=up",
            &[],
            text.as_bytes(),
        );
        assert_eq!((s, &v["code"]), (200, &Value::from(0)), "{v}");
    }

    fn upgrade(&self) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["upgrade", "--timeout-secs", "60", "--api-listen", &self.api.to_string()])
            .env_remove("VOLLEY_CONFIG")
            .env_remove("VOLLEY_API_KEY")
            .output()
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The server may be a process the first one started: stop it by
        // the pid it reports, then ours.
        let (_, v) = http(self.api, "GET", "/v1/upgrade", &[], b"");
        if let Some(pid) = v["data"]["pid"].as_u64() {
            if pid != u64::from(self.child.id()) {
                // SAFETY: a signal to a process this test's server started.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A copy of our binary at a path of the test's own.
fn binary_copy(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("volley-bin-{name}-{}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_volley"), &path).unwrap();
    path
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
    let mut s = Running::start(&bin, "ok", &[]);
    let (mut v1, mut v2, (offset, epoch)) = members(&s);
    let old = s.pid();
    let out = s.upgrade();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(said.contains("handed every connection"), "{said}");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "the old process ends by itself: {status}");
    assert_ne!(s.pid(), old);
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
    drop(s);
    let _ = std::fs::remove_file(bin);
}

#[test]
fn a_new_binary_that_exits_at_start_or_dies_taking_over_leaves_the_old_one_serving() {
    // Dies while taking over: every connection is back with the old one.
    let bin = binary_copy("abort");
    let s = Running::start(&bin, "abort", &[("VOLLEY_TEST_HANDOFF_ABORT", "1")]);
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
    let _ = std::fs::remove_file(&bin);

    // Exits at start (a deploy put a broken binary in place).
    let bin = binary_copy("exit");
    let s = Running::start(&bin, "exit", &[]);
    let (mut v1, _, _) = members(&s);
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(&bin, "#!/bin/sh\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
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
    drop(s);
    let _ = std::fs::remove_file(bin);
}
