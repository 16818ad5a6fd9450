//! The links and subscribers to Redis: connecting, authenticating,
//! pipelining, giving up on a silent peer, resubscribing after a restart,
//! and a node's health while Redis is away.

use super::*;

#[test]
fn a_node_is_unhealthy_while_redis_is_down_and_keeps_its_clients() {
    let mut redis = Redis::start(&[]);
    let url = redis.url();
    let h = start_server(|c| {
        c.redis.urls = vec![url.clone()];
        c.api.key = Some("k".into());
    });
    wait_until("every shard connected to redis", || health(&h).0 == 200);
    let mut client = Client::authed(h.tcp_addr, r#"{"mid":1,"room_id":"live://c"}"#);

    redis.kill();
    // Without the key (a load balancer): the status, not the instances.
    wait_until("healthz says redis is down", || health(&h).0 == 503);
    let (_, v) = health(&h);
    assert_eq!(v["code"], 503, "{v}");
    assert!(v.get("data").is_none(), "{v}");
    assert!(!v["message"].as_str().unwrap().contains("127.0.0.1"), "{v}");
    let (status, v) = http(h.http_addr, "GET", "/healthz", &[("X-Api-Key", "k")], b"");
    assert_eq!(status, 503);
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

#[test]
fn a_link_pipelines_commands_and_matches_replies_in_order() {
    use volley::redis::link::Frame;
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

#[test]
fn a_subscriber_gets_its_channels_and_subscribes_again_after_redis_restarts() {
    /// Polls `done` until it holds (at most 5 s).
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        panic!("not within 5 s: {what}");
    }
    use std::sync::{Arc, Mutex};
    use volley::redis::room::{self, decode_message, Message, RoomKeys};
    use volley::redis::subscriber::{Event, Subscriber};
    use volley::redis::RedisUrl;
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
            // Channels Redis confirmed on the current connection.
            let confirmed: std::rc::Rc<std::cell::RefCell<Vec<bytes::Bytes>>> = Default::default();
            let heard = confirmed.clone();
            let arrived = seen.clone();
            glommio::spawn_local(sub.clone().run(move |e| {
                let (channel, payload) = match e {
                    Event::Subscribed(ch) => return heard.borrow_mut().push(ch),
                    Event::Down => return heard.borrow_mut().clear(),
                    Event::Message { channel, payload } => (channel, payload),
                    Event::Matched { .. } => return,
                };
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
                        match room::publish(&link, room, &m, 100, None).await {
                            Ok(_) => break,
                            Err(_) => glommio::timer::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            };
            // Redis says a channel is subscribed (or not) by its count of
            // subscribers; the unsubscribe confirmation is no event.
            let numsub = |room: &'static str| {
                let link = link.clone();
                async move {
                    let ch = RoomKeys::of(room).channel;
                    match link.call(&[b"PUBSUB", b"NUMSUB", ch.as_bytes()]).await {
                        Ok(volley::redis::link::Frame::Array(v)) => match v.get(1) {
                            Some(volley::redis::link::Frame::Integer(n)) => *n,
                            _ => -1,
                        },
                        _ => -1,
                    }
                }
            };
            eventually("both channels confirmed", || confirmed.borrow().len() >= 2).await;
            publish("live://a", "a1").await;
            publish("live://b", "b1").await;
            publish("live://c", "not wanted").await;
            sub.unsubscribe(&RoomKeys::of("live://b").channel);
            for _ in 0..1000 {
                if numsub("live://b").await == 0 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            publish("live://b", "after unsubscribe").await;
            to_test.send("restart redis").unwrap();
            while commands.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            // The link and the subscriber both reconnect by themselves.
            eventually("the link back", || link.is_up()).await;
            eventually("channel a confirmed again", || !confirmed.borrow().is_empty()).await;
            publish("live://a", "a2").await;
            eventually("a2 arrived", || arrived.lock().unwrap().len() >= 3).await;
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
