//! `volley drain` and `volley upgrade`: the operator's commands that ask a
//! running server to drain (`POST /v1/drain`, followed through `GET
//! /v1/drain` until every client was told to reconnect) or to upgrade in
//! place (`POST /v1/upgrade`, followed through `GET /v1/upgrade` until
//! another process answers, or the server says why not).
//!
//! Runs on the `volley` binary's main thread with blocking sockets: a
//! client of the server's HTTP API, not a part of the server. It finds the
//! API as `serve` is configured (the same flags, environment and file, so
//! the listen address and key `serve` uses), one request per connection.

use crate::config::{DrainArgs, UpgradeArgs};
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// The longest reply read (a drain status is a few hundred bytes).
const MAX_REPLY: u64 = 64 * 1024;
/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Begins the drain and, unless told not to, prints its progress once a
/// second until it is done.
pub fn drain(args: &DrainArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let api = &args.serve.server.api;
    let addr = reachable(api.listen);
    let key = api.key.as_deref();
    let (status, body) = request(addr, "POST", &format!("/v1/drain?over={}", args.over), key)?;
    match status {
        200 => writeln!(out, "drain begun on {addr}: {}", line(&body["data"]))?,
        409 => writeln!(out, "{addr} is draining already: {}", line(&body["data"]))?,
        _ => bail!("{addr} refused the drain ({status}): {}", body["message"]),
    }
    if args.no_wait {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (status, body) = request(addr, "GET", "/v1/drain", key)?;
        if status != 200 {
            bail!("{addr} answered {status}: {}", body["message"]);
        }
        let d = &body["data"];
        writeln!(out, "{}", line(d))?;
        if d["done"] == true {
            return Ok(());
        }
    }
}

/// Asks for the upgrade, then waits until another process answers on the
/// same API (done) or the server reports the upgrade failed.
pub fn upgrade(args: &UpgradeArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let api = &args.serve.server.api;
    let addr = reachable(api.listen);
    let key = api.key.as_deref();
    let (status, body) = request(addr, "GET", "/v1/upgrade", key)?;
    if status != 200 {
        bail!("{addr} answered {status}: {}", body["message"]);
    }
    let (pid, failed) = (
        body["data"]["pid"].clone(),
        body["data"]["failed"].as_u64().unwrap_or(0),
    );
    let path = match &args.binary {
        Some(b) => {
            let b: String = form_urlencoded::byte_serialize(b.as_os_str().as_encoded_bytes()).collect();
            format!("/v1/upgrade?binary={b}")
        }
        None => "/v1/upgrade".to_string(),
    };
    let (status, body) = request(addr, "POST", &path, key)?;
    if status != 202 {
        bail!("{addr} refused the upgrade ({status}): {}", body["message"]);
    }
    writeln!(out, "upgrade begun on {addr} (pid {pid})")?;
    let until = std::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        // Between the two processes a request may find neither answering.
        let Ok((200, body)) = request(addr, "GET", "/v1/upgrade", key) else {
            continue;
        };
        let d = &body["data"];
        if d["pid"] != pid {
            writeln!(out, "upgraded: pid {pid} handed every connection to pid {}", d["pid"])?;
            return Ok(());
        }
        if d["failed"].as_u64().unwrap_or(0) > failed {
            bail!("the upgrade failed, pid {pid} serves on: {}", d["last_error"]);
        }
    }
    bail!("no answer from a new process within {} s", args.timeout_secs)
}

/// One line of progress.
fn line(d: &Value) -> String {
    format!(
        "{} of {} clients told to reconnect, {} s of {} left{}",
        d["told"],
        d["planned"],
        d["left_secs"],
        d["over_secs"],
        if d["done"] == true { " (done)" } else { "" }
    )
}

/// Where to reach a listener bound to `addr`: the loopback address for a
/// wildcard bind.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// One HTTP/1.1 request on a connection of its own; the status and the
/// JSON body of the reply.
fn request(addr: SocketAddr, method: &str, path: &str, key: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("cannot reach the server's API at {addr} (is `volley serve` running?)"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut raw)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut reply = httparse::Response::new(&mut headers);
    let head = match reply.parse(&raw).context("a reply that is not HTTP")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => bail!("{addr} closed the connection mid-reply"),
    };
    let status = reply.code.unwrap_or(0);
    let body =
        serde_json::from_slice(&raw[head..]).with_context(|| format!("{addr} answered {status} without JSON"))?;
    Ok((status, body))
}
