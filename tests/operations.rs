//! What an operator sees of a running `volley` binary: its log lines as
//! written to a pipe (journald, a file), what it says at start is in
//! force, and which closes it reports.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The value of `key=` in a text log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// The server process, stopped however the test ends.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn logs_to_a_pipe_are_plain_text_and_ordinary_closes_stay_below_info() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["serve", "--shards", "1", "--log-level", "info"])
        .args(["--tcp-listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"])
        .args(["--api-listen", "127.0.0.1:0", "--api-publish-listen", "127.0.0.1:0"])
        .args(["--client-handshake-timeout-secs", "1", "--storage-mode", "memory"])
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("VOLLEY_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("volley binary starts");
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no log line while waiting for {what}"))
    };
    let mut seen = Vec::new();
    let tcp = loop {
        let line = next("volley serving");
        seen.push(line.clone());
        if line.contains("volley serving") {
            break field(&line, "tcp").expect("tcp= on the serving line").to_string();
        }
    };
    // Ordinary ends: a client that leaves, one that never authenticates.
    drop(TcpStream::connect(&tcp).unwrap());
    let _silent = TcpStream::connect(&tcp).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    // An unusual one: a header that is not the protocol's.
    let mut bad = TcpStream::connect(&tcp).unwrap();
    bad.write_all(&[0, 0, 0, 32, 0, 99, 0, 1, 0, 0, 0, 7, 0, 0, 0, 1])
        .unwrap();
    loop {
        let line = next("the bad_header_length close");
        seen.push(line.clone());
        if line.contains("bad_header_length") {
            break;
        }
    }
    drop(server);
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }
    let all = seen.join("\n");
    // What is in force, said at start.
    for part in [
        "configuration: no file",
        &format!("listening for TCP clients on {tcp}"),
        "listening for the HTTP API on http://127.0.0.1:",
        "auth: off",
        "storage: in memory",
        "cluster: off",
    ] {
        assert!(all.contains(part), "{part}:\n{all}");
    }
    assert!(!all.contains('\u{1b}'), "colour codes in a pipe:\n{all}");
    assert!(!all.contains("peer_closed"), "an ordinary close at info:\n{all}");
    assert!(!all.contains("handshake_timeout"), "an ordinary close at info:\n{all}");
}
