//! Cluster mode end to end, against a real redis-server started by each
//! test (installed by the test command, `scripts/test.sh`) and nodes run
//! in-process or as the binary (to be killed). One file per area (`mod`s
//! below); the harness is here. The cluster's state machine on its own,
//! without sockets or sleeps, is tested against a simulated Redis
//! (`src/shard/sim/cluster_tests.rs`).

#[path = "../common/mod.rs"]
mod common;

mod failover;
mod link;
mod presence;
mod pushes;
mod rooms;
mod upgrade;

use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server of the test's own on a loopback port, stopped (by its
/// PID) when dropped.
struct Redis {
    child: Child,
    port: u16,
    args: Vec<String>,
}

impl Redis {
    /// Starts one on a free port, with `extra` arguments
    /// (`--requirepass`...), nothing saved to disk.
    fn start(extra: &[&str]) -> Redis {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // A free port may be taken by another test's server before this one
        // binds it: then redis-server exits, and another port is tried.
        for _ in 0..10 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if let Some(child) = spawn(port, &args) {
                return Redis { child, port, args };
            }
        }
        panic!("no free port for redis-server");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new redis-server on the same port, as an operator's restart.
    fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, &self.args).expect("redis-server restarts on its port");
    }
}

/// Runs redis-server on `port` and waits until it listens; `None` if it
/// exited instead (the port was taken).
fn spawn(port: u16, args: &[String]) -> Option<Child> {
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (scripts/test.sh installs it: apt-get install redis-server)");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if TcpStream::connect(addr).is_ok() {
            // Ours, not another test's, if it is still running.
            std::thread::sleep(Duration::from_millis(20));
            if child.try_wait().unwrap().is_none() {
                return Some(child);
            }
            return None;
        }
        assert!(Instant::now() < end, "redis-server did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port nobody listens on while the returned socket lives
/// (bound, never listening: connects are refused, and no other test can
/// take it).
fn closed_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn health(h: &volley::ServerHandle) -> (u16, serde_json::Value) {
    http(h.http_addr, "GET", "/healthz", &[], b"")
}

/// `n` nodes of one cluster (in-process servers sharing `redis`), each
/// linked (healthy) before it is returned.
fn cluster(redis: &Redis, n: usize) -> Vec<volley::ServerHandle> {
    cluster_with(redis, n, |_| {})
}

/// `cluster`, each node's configuration changed by `tweak` too.
fn cluster_with(redis: &Redis, n: usize, tweak: impl Fn(&mut volley::Config)) -> Vec<volley::ServerHandle> {
    let url = redis.url();
    let nodes: Vec<volley::ServerHandle> = (0..n)
        .map(|_| {
            start_server(|c| {
                c.redis.urls = vec![url.clone()];
                tweak(c);
            })
        })
        .collect();
    for h in &nodes {
        wait_until("every shard of the node linked to redis", || health(h).0 == 200);
    }
    nodes
}

/// A room publish through node `h`'s HTTP API: (status, reply).
fn publish_room(h: &volley::ServerHandle, room: &str, body: &str) -> (u16, serde_json::Value) {
    let msg = serde_json::json!({"room": room, "op": 1000, "body": body}).to_string();
    http(h.http_addr, "POST", "/v1/push/room", &[], msg.as_bytes())
}

/// `redis-cli` against the test's Redis, its output trimmed.
fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs (installed with redis-server)");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A node run as the real binary (so that it can be killed with SIGKILL),
/// killed when dropped.
struct Node {
    child: Child,
    tcp: SocketAddr,
    api: SocketAddr,
}

impl Node {
    fn start(redis: &Redis) -> Node {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["serve", "--shards", "2", "--log-format", "json", "--log-level", "info"])
            .args(["--tcp-listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0"])
            .args(["--api-listen", "127.0.0.1:0", "--api-publish-listen", "127.0.0.1:0"])
            .args(["--redis-urls", &redis.url()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("volley binary starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let serving = loop {
            let line = lines.next().expect("log line before exit").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "volley serving" {
                break v["fields"].clone();
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let addr = |k: &str| serving[k].as_str().unwrap().parse().unwrap();
        let node = Node {
            tcp: addr("tcp"),
            api: addr("api"),
            child,
        };
        wait_until("the node linked to redis", || {
            http(node.api, "GET", "/healthz", &[], b"").0 == 200
        });
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to Redis of the test's own, opened before the test takes
/// new connections away (`maxclients`): a command, and its reply as text
/// (an array's elements one per line; an error with its `-`).
struct Admin(std::io::BufReader<TcpStream>);

impl Admin {
    fn open(redis: &Redis) -> Admin {
        Admin(std::io::BufReader::new(
            TcpStream::connect(("127.0.0.1", redis.port)).unwrap(),
        ))
    }

    fn cmd(&mut self, args: &[&str]) -> String {
        use std::io::Write;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.get_mut().write_all(out.as_bytes()).unwrap();
        self.reply()
    }

    fn reply(&mut self) -> String {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "$" if rest == "-1" => String::new(),
            "$" => {
                let mut b = vec![0; rest.parse::<usize>().unwrap() + 2];
                self.0.read_exact(&mut b).unwrap();
                String::from_utf8_lossy(&b[..b.len() - 2]).into_owned()
            }
            "*" => (0..rest.parse::<usize>().unwrap())
                .map(|_| self.reply())
                .collect::<Vec<_>>()
                .join("\n"),
            "-" => line.trim_end().to_string(),
            _ => rest.to_string(),
        }
    }
}

/// Runs `f` on a glommio executor of its own (the links are shard-local).
fn on_executor<T, F, Fut>(make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(make)
        .expect("executor starts")
        .join()
        .expect("executor ends")
}

/// A link to `url` with its task running; waits until it is up (or gives
/// up after `wait`).
async fn link_to(url: &str, wait: Duration) -> volley::redis::link::Link {
    use volley::redis::{link::Link, Health, RedisUrl};
    let link = Link::new(RedisUrl::parse(url).unwrap());
    let health = std::sync::Arc::new(Health::new(1, 1));
    glommio::spawn_local(link.clone().run(health, 0, 0)).detach();
    let end = Instant::now() + wait;
    while !link.is_up() && Instant::now() < end {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    link
}

/// A plain subscriber of the test's own (std socket, RESP read with the
/// link's own reply reader): what every node's channel carries.
struct Subscriber {
    s: TcpStream,
    buf: bytes::BytesMut,
}

impl Subscriber {
    fn new(port: u16, channel: &str) -> Subscriber {
        use std::io::Write;
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut cmd = bytes::BytesMut::new();
        volley::redis::link::encode(&mut cmd, &[b"SUBSCRIBE", channel.as_bytes()]);
        s.write_all(&cmd).unwrap();
        let mut sub = Subscriber {
            s,
            buf: bytes::BytesMut::new(),
        };
        let confirm = sub.next();
        assert!(format!("{confirm:?}").contains("subscribe"), "{confirm:?}");
        sub
    }

    fn next(&mut self) -> volley::redis::link::Frame {
        use std::io::Read;
        loop {
            if let Some(f) = volley::redis::link::next_reply(&mut self.buf, 1 << 20).unwrap() {
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("a message within 10 s");
            assert!(n > 0, "redis closed the subscriber");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next channel message's payload, decoded as a room message.
    fn message(&mut self) -> volley::redis::room::Message {
        use volley::redis::link::Frame;
        match self.next() {
            Frame::Array(v) if v.len() == 3 => match &v[2] {
                Frame::BulkString(b) => volley::redis::room::decode_message(b).unwrap(),
                other => panic!("not a payload: {other:?}"),
            },
            other => panic!("not a channel message: {other:?}"),
        }
    }
}

/// A version-2 client publish (op 52) body.
fn client_publish(op: u32, room: &str, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = op.to_be_bytes().to_vec();
    b.extend_from_slice(&(room.len() as u16).to_be_bytes());
    b.extend_from_slice(&(id.len() as u16).to_be_bytes());
    b.extend_from_slice(room.as_bytes());
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(payload);
    b
}
