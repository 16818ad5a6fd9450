//! `volley sub`, the terminal subscriber README's *Try it* uses: it prints
//! what is published to its rooms, and after losing its connection resumes
//! each room where it left off.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// The lines of a child's pipe, as they come.
fn lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `part`; returns it.
fn expect(rx: &Receiver<String>, part: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains(part) => return line,
            Ok(_) => {}
            Err(_) => panic!("no line with {part:?}"),
        }
    }
}

struct Sub(Child);

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn publish(h: &volley::ServerHandle, text: &str) {
    let path = "/goim/push/room?operation=1000&type=live&room=try";
    let (status, v) = http(h.http_addr, "POST", path, &[], text.as_bytes());
    assert_eq!(status, 200, "{v}");
}

#[test]
fn sub_prints_what_arrives_and_resumes_after_a_lost_connection() {
    let h = start_server(|_| {});
    let target = h.tcp_addr.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args([
            "sub",
            "--target",
            &target,
            "--key",
            "sub-key",
            "--count",
            "3",
            "live://try",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volley sub starts");
    let (out, err) = (lines(child.stdout.take().unwrap()), lines(child.stderr.take().unwrap()));
    let mut sub = Sub(child);
    expect(&err, "joined live://try at offset 0");

    publish(&h, "one");
    assert_eq!(expect(&out, "one"), "live://try #1 op 1000: one");

    // Another connection takes the key: the server closes the
    // subscriber's, which reconnects after a pause. What is published
    // meanwhile comes with its resume.
    let _thief = Client::authed(h.tcp_addr, r#"{"key":"sub-key","room_id":"live://elsewhere"}"#);
    expect(&err, "replaced");
    publish(&h, "two");
    expect(&err, "resumed: what was missed follows");
    assert_eq!(expect(&out, "two"), "live://try #2 op 1000: two");
    publish(&h, "three");
    assert_eq!(expect(&out, "three"), "live://try #3 op 1000: three");

    // --count 3: it exits by itself, successfully.
    let status = sub.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn sub_says_why_when_the_server_refuses_it() {
    let h = start_server(|c| {
        c.auth.mode = volley::config::AuthMode::Jwt;
        c.auth.jwt_secret = vec!["a-secret-of-at-least-thirty-two-bytes!!".into()];
    });
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["sub", "--target", &h.tcp_addr.to_string(), "live://try"])
        .output()
        .expect("volley sub runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token_required"), "{err}");
}
