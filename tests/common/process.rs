//! A `volley serve` as a real process (the binary, or a copy of it a test
//! may replace as a deploy does), for what needs one: upgrades, which
//! start the binary again and hand it every connection.

use super::http;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `volley serve` started from `binary` (a copy of ours, so the test may
/// replace the file as a deploy does); stopped by its pid, whichever
/// process holds the server by then.
pub struct Running {
    pub child: Child,
    /// The client TCP listener.
    pub tcp: std::net::SocketAddr,
    /// The WebSocket listener.
    pub ws: std::net::SocketAddr,
    /// The HTTP API.
    pub api: std::net::SocketAddr,
    /// The TCP publisher listener.
    pub publish: std::net::SocketAddr,
    dir: PathBuf,
}

impl Running {
    pub fn start(binary: &Path, name: &str, env: &[(&str, &str)]) -> Running {
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
        let (tcp, ws, api, publish) = loop {
            let line = lines.next().expect("a log line").unwrap();
            if line.contains("volley serving") {
                let publish = field(&line, "publishers");
                break (field(&line, "tcp"), field(&line, "ws"), field(&line, "api"), publish);
            }
        };
        // Both processes log to this pipe; keep it drained.
        std::thread::spawn(move || for _ in lines {});
        Running {
            child,
            tcp,
            ws,
            api,
            publish,
            dir,
        }
    }

    pub fn pid(&self) -> u64 {
        let (_, v) = http(self.api, "GET", "/v1/upgrade", &[], b"");
        v["data"]["pid"].as_u64().expect("a pid")
    }

    pub fn publish(&self, text: &str) {
        let (s, v) = http(
            self.api,
            "POST",
            "/goim/push/room?operation=1000&type=live&room=up",
            &[],
            text.as_bytes(),
        );
        assert_eq!((s, &v["code"]), (200, &Value::from(0)), "{v}");
    }

    pub fn upgrade(&self) -> std::process::Output {
        self.upgrade_with(&[])
    }

    /// `volley upgrade` with more arguments (`--binary PATH`).
    pub fn upgrade_with(&self, more: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["upgrade", "--timeout-secs", "60", "--api-listen", &self.api.to_string()])
            .args(more)
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

/// A copy of our binary at a path of the test's own, removed when the
/// test ends, passed or not.
pub struct Binary(pub PathBuf);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn binary_copy(name: &str) -> Binary {
    let path = std::env::temp_dir().join(format!("volley-bin-{name}-{}", std::process::id()));
    std::fs::copy(env!("CARGO_BIN_EXE_volley"), &path).unwrap();
    Binary(path)
}
