//! Cluster mode against a real redis-server started by the test (installed
//! by the test command, `scripts/test.sh`): the nodes' links to Redis, what
//! `/healthz` says when Redis goes away and comes back, and that client
//! connections stay up meanwhile.

mod common;
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

#[test]
fn a_node_is_unhealthy_while_redis_is_down_and_keeps_its_clients() {
    let mut redis = Redis::start(&[]);
    let url = redis.url();
    let h = start_server(|c| c.redis.urls = vec![url.clone()]);
    wait_until("every shard connected to redis", || health(&h).0 == 200);
    let mut client = Client::authed(h.tcp_addr, r#"{"mid":1,"room_id":"live://c"}"#);

    redis.kill();
    wait_until("healthz says redis is down", || health(&h).0 == 503);
    let (_, v) = health(&h);
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("redis://127.0.0.1:{}/0", redis.port)),
        "{message}"
    );
    assert!(!message.contains("password"), "{message}");
    assert_eq!(
        v["data"]["redis"][0]["url"],
        format!("redis://127.0.0.1:{}/0", redis.port)
    );
    assert!(!v["data"]["redis"][0]["reason"].as_str().unwrap().is_empty());

    // The client's connection does not depend on Redis.
    client.send(op::HEARTBEAT, 1, b"");
    assert_eq!(client.read().expect("heartbeat reply").op, op::HEARTBEAT_REPLY);

    redis.restart();
    wait_until("the links reconnected", || health(&h).0 == 200);
    client.send(op::HEARTBEAT, 2, b"");
    assert_eq!(client.read().expect("heartbeat reply").op, op::HEARTBEAT_REPLY);
}

#[test]
fn a_node_starts_without_redis_and_says_why() {
    let (_reserved, port) = closed_port();
    let h = start_server(|c| c.redis.urls = vec![format!("redis://127.0.0.1:{port}")]);
    wait_until("the first connect failed", || {
        let (status, v) = health(&h);
        status == 503 && v["message"].as_str().unwrap().contains("connect")
    });
    let mut client = Client::authed(h.tcp_addr, r#"{"mid":1,"room_id":"live://c"}"#);
    client.send(op::HEARTBEAT, 1, b"");
    assert_eq!(client.read().expect("heartbeat reply").op, op::HEARTBEAT_REPLY);
}

#[test]
fn links_authenticate_and_select_their_database() {
    let redis = Redis::start(&["--requirepass", "s3cret-pw"]);
    let good = format!("redis://:s3cret-pw@127.0.0.1:{}/3", redis.port);
    let h = start_server(|c| c.redis.urls = vec![good]);
    wait_until("connected with the password", || health(&h).0 == 200);
    drop(h);

    let bad = format!("redis://:wrong-pw@127.0.0.1:{}", redis.port);
    let h = start_server(|c| c.redis.urls = vec![bad]);
    wait_until("the wrong password is named", || {
        let (status, v) = health(&h);
        status == 503 && v["message"].as_str().unwrap().contains("AUTH")
    });
    let (_, v) = health(&h);
    assert!(!v.to_string().contains("wrong-pw"), "the password stays out: {v}");
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
async fn link_to(url: &str, wait: Duration) -> volley::cluster::link::Link {
    use volley::cluster::{link::Link, Health, RedisUrl};
    let link = Link::new(RedisUrl::parse(url).unwrap());
    let health = std::sync::Arc::new(Health::new(1, 1));
    glommio::spawn_local(link.clone().run(health, 0, 0)).detach();
    let end = Instant::now() + wait;
    while !link.is_up() && Instant::now() < end {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    link
}

#[test]
fn a_link_pipelines_commands_and_matches_replies_in_order() {
    use volley::cluster::link::Frame;
    let redis = Redis::start(&[]);
    let url = redis.url();
    let got = on_executor(move || async move {
        let link = link_to(&url, Duration::from_secs(5)).await;
        assert!(link.is_up());
        // 1,000 commands issued before any reply: they share writes, and
        // each caller gets its own reply.
        let calls: Vec<_> = (0..1000)
            .map(|i| {
                let link = link.clone();
                glommio::spawn_local(async move {
                    let k = format!("k{i}");
                    let v = format!("v{i}");
                    link.call(&[b"SET", k.as_bytes(), v.as_bytes()]).await.unwrap();
                    link.call(&[b"GET", k.as_bytes()]).await.unwrap()
                })
            })
            .collect();
        let mut got = Vec::new();
        for c in calls {
            got.push(c.await);
        }
        let err = link.call(&[b"NOSUCHCOMMAND"]).await.unwrap_err();
        (got, err.to_string())
    });
    for (i, f) in got.0.iter().enumerate() {
        assert_eq!(f, &Frame::BulkString(format!("v{i}").into()));
    }
    assert!(got.1.contains("unknown command"), "{}", got.1);
}

#[test]
fn a_link_to_a_silent_peer_gives_up_and_its_callers_hear_why() {
    // Accepts and never answers: the oldest command's reply is overdue.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", silent.local_addr().unwrap());
    let err = on_executor(move || async move {
        let link = link_to(&url, Duration::from_secs(5)).await;
        assert!(link.is_up(), "the TCP connect succeeds");
        link.call(&[b"PING"]).await.unwrap_err().to_string()
    });
    assert!(err.contains("no reply in 3 s"), "{err}");
    drop(silent);
}

#[test]
fn a_down_link_refuses_at_once() {
    let (_reserved, port) = closed_port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = on_executor(move || async move {
        let link = link_to(&url, Duration::from_millis(300)).await;
        link.call(&[b"PING"]).await.unwrap_err().to_string()
    });
    assert!(err.contains("unreachable") && err.contains("refused"), "{err}");
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
        volley::cluster::link::encode(&mut cmd, &[b"SUBSCRIBE", channel.as_bytes()]);
        s.write_all(&cmd).unwrap();
        let mut sub = Subscriber {
            s,
            buf: bytes::BytesMut::new(),
        };
        let confirm = sub.next();
        assert!(format!("{confirm:?}").contains("subscribe"), "{confirm:?}");
        sub
    }

    fn next(&mut self) -> volley::cluster::link::Frame {
        use std::io::Read;
        loop {
            if let Some(f) = volley::cluster::link::next_reply(&mut self.buf, 1 << 20).unwrap() {
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("a message within 10 s");
            assert!(n > 0, "redis closed the subscriber");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next channel message's payload, decoded as a room message.
    fn message(&mut self) -> volley::cluster::room::Message {
        use volley::cluster::link::Frame;
        match self.next() {
            Frame::Array(v) if v.len() == 3 => match &v[2] {
                Frame::BulkString(b) => volley::cluster::room::decode_message(b).unwrap(),
                other => panic!("not a payload: {other:?}"),
            },
            other => panic!("not a channel message: {other:?}"),
        }
    }
}

#[test]
fn two_nodes_publishing_to_one_room_get_one_sequence_of_offsets() {
    use volley::cluster::room::{self, Message, RoomKeys};
    let redis = Redis::start(&[]);
    let url = redis.url();
    let keys = RoomKeys::of("live://c");
    let mut sub = Subscriber::new(redis.port, &keys.channel);
    // Two executors, each with its own link: two nodes as Redis sees them.
    let node = |name: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            on_executor(move || async move {
                let link = link_to(&url, Duration::from_secs(5)).await;
                let publishes: Vec<_> = (0..300)
                    .map(|i| {
                        let link = link.clone();
                        glommio::spawn_local(async move {
                            let m = Message {
                                offset: 0,
                                epoch: 0,
                                op: 1000,
                                ttl: 0,
                                id: String::new(),
                                payload: format!("{name}-{i}").into(),
                            };
                            room::publish(&link, "live://c", &m, 100, 60).await.unwrap()
                        })
                    })
                    .collect();
                let mut got = Vec::new();
                for p in publishes {
                    got.push(p.await);
                }
                got
            })
        })
    };
    let (a, b) = (node("a"), node("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let epoch = a[0].epoch;
    let mut offsets: Vec<u64> = a.iter().chain(&b).map(|p| p.offset).collect();
    assert!(a.iter().chain(&b).all(|p| p.epoch == epoch && !p.duplicate));
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        (1..=600).collect::<Vec<u64>>(),
        "one offset each, no gap, no repeat"
    );
    // Every publish reached the channel once, in offset order, with the
    // offset and epoch its publisher was told.
    let told: std::collections::HashMap<u64, ()> = offsets.iter().map(|&o| (o, ())).collect();
    for want in 1..=600u64 {
        let m = sub.message();
        assert_eq!((m.offset, m.epoch, m.op), (want, epoch, 1000));
        assert!(told.contains_key(&m.offset));
        let p = String::from_utf8(m.payload.to_vec()).unwrap();
        assert!(p.starts_with("a-") || p.starts_with("b-"), "{p}");
    }
}

#[test]
fn a_retried_message_id_gets_its_first_offset_and_is_not_published_again() {
    use volley::cluster::room::{self, Message, RoomKeys};
    let redis = Redis::start(&[]);
    let url = redis.url();
    let mut sub = Subscriber::new(redis.port, &RoomKeys::of("live://d").channel);
    let got = on_executor(move || async move {
        let link = link_to(&url, Duration::from_secs(5)).await;
        let m = |id: &str, p: &'static str| Message {
            offset: 0,
            epoch: 0,
            op: 7,
            ttl: 30,
            id: id.into(),
            payload: p.into(),
        };
        let first = room::publish(&link, "live://d", &m("order-1", "x"), 100, 60)
            .await
            .unwrap();
        let again = room::publish(&link, "live://d", &m("order-1", "x"), 100, 60)
            .await
            .unwrap();
        let other = room::publish(&link, "live://d", &m("order-2", "y"), 100, 60)
            .await
            .unwrap();
        // The history is bounded (about: MAXLEN ~), and holds the entries.
        for i in 0..2000 {
            room::publish(&link, "live://d", &m("", if i % 2 == 0 { "e" } else { "o" }), 100, 60)
                .await
                .unwrap();
        }
        let len = link.call(&[b"XLEN", b"vly:{live://d}:h"]).await.unwrap();
        (first, again, other, len)
    });
    let (first, again, other, len) = got;
    assert_eq!((first.offset, first.duplicate), (1, false));
    assert_eq!((again.offset, again.epoch, again.duplicate), (1, first.epoch, true));
    assert_eq!((other.offset, other.duplicate), (2, false));
    let m1 = sub.message();
    assert_eq!(
        (m1.offset, m1.id.as_str(), m1.ttl, &m1.payload[..]),
        (1, "order-1", 30, &b"x"[..])
    );
    let m2 = sub.message();
    assert_eq!(
        (m2.offset, m2.id.as_str()),
        (2, "order-2"),
        "the retry was not published"
    );
    let volley::cluster::link::Frame::Integer(len) = len else {
        panic!("{len:?}")
    };
    assert!((100..=300).contains(&len), "history trimmed to about 100: {len}");
}

#[test]
fn a_subscriber_gets_its_channels_and_subscribes_again_after_redis_restarts() {
    use std::sync::{Arc, Mutex};
    use volley::cluster::room::{self, decode_message, Message, RoomKeys};
    use volley::cluster::subscriber::Subscriber;
    use volley::cluster::RedisUrl;
    let mut redis = Redis::start(&[]);
    let url = redis.url();
    let got: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let seen = got.clone();
    let (to_test, from_executor) = std::sync::mpsc::channel::<&'static str>();
    let (to_executor, commands) = std::sync::mpsc::channel::<&'static str>();
    let executor = std::thread::spawn(move || {
        on_executor(move || async move {
            let sub = Subscriber::new(RedisUrl::parse(&url).unwrap());
            sub.subscribe(&RoomKeys::of("live://a").channel);
            sub.subscribe(&RoomKeys::of("live://b").channel);
            glommio::spawn_local(sub.clone().run(move |channel, payload| {
                let m = decode_message(&payload).unwrap();
                let p = String::from_utf8(m.payload.to_vec()).unwrap();
                seen.lock()
                    .unwrap()
                    .push((String::from_utf8(channel.to_vec()).unwrap(), m.offset, p));
            }))
            .detach();
            let link = link_to(&url, Duration::from_secs(5)).await;
            let publish = |room: &'static str, p: &'static str| {
                let link = link.clone();
                async move {
                    let m = Message {
                        offset: 0,
                        epoch: 0,
                        op: 1,
                        ttl: 0,
                        id: String::new(),
                        payload: p.into(),
                    };
                    // Redis may be on its way back: retry until it takes it.
                    loop {
                        match room::publish(&link, room, &m, 100, 60).await {
                            Ok(_) => break,
                            Err(_) => glommio::timer::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            };
            let wait_up = |sub: Subscriber| async move {
                while !sub.is_up() {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                // Its SUBSCRIBE is written; give Redis a moment to take it.
                glommio::timer::sleep(Duration::from_millis(100)).await;
            };
            wait_up(sub.clone()).await;
            publish("live://a", "a1").await;
            publish("live://b", "b1").await;
            publish("live://c", "not wanted").await;
            sub.unsubscribe(&RoomKeys::of("live://b").channel);
            glommio::timer::sleep(Duration::from_millis(100)).await;
            publish("live://b", "after unsubscribe").await;
            to_test.send("restart redis").unwrap();
            while commands.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            // The link and the subscriber both reconnect by themselves.
            while !link.is_up() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            wait_up(sub.clone()).await;
            publish("live://a", "a2").await;
            glommio::timer::sleep(Duration::from_millis(200)).await;
        })
    });
    assert_eq!(from_executor.recv().unwrap(), "restart redis");
    redis.restart();
    to_executor.send("go on").unwrap();
    executor.join().unwrap();
    let got = got.lock().unwrap().clone();
    let want = vec![
        ("vly:{live://a}".to_string(), 1, "a1".to_string()),
        ("vly:{live://b}".to_string(), 1, "b1".to_string()),
        // A fresh Redis: offsets start again (step 3 gives resumes the new epoch).
        ("vly:{live://a}".to_string(), 1, "a2".to_string()),
    ];
    assert_eq!(got, want);
}
