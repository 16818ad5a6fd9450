//! The new process's side of `volley upgrade`, on real sockets: a server
//! started with listening sockets and connections handed to it
//! (`Server::adopt`) serves them as the previous process did — the frame
//! it had queued comes first, the half frame it had read is completed by
//! the client's next bytes, and the connection's room, user and key reach
//! it — and nothing is bound anew. A TCP publisher moves too, with half a
//! frame read: it finishes the frame to the next server, which acks it.

mod common;

use common::{frame, op, post, Client};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::time::Duration;
use volley::net::{self, ListenerSpec};
use volley::shard::handoff::{ConnState, Input, SessionState, ShardState};
use volley::shard::mesh::{owner_of_mid, owner_of_str, ConnRef, GlobalConn};
use volley::{Adoption, Config, Server};

/// A connected pair: the client's end, and the server's as a descriptor.
fn pair() -> (TcpStream, OwnedFd) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (client, OwnedFd::from(server))
}

fn empty(shard: u32) -> ShardState {
    ShardState {
        shard,
        tick: 0,
        next_gen: 1,
        conns: Vec::new(),
        keys: Vec::new(),
        users: Vec::new(),
        push_seq: 0,
        watching: Vec::new(),
        publishers: Vec::new(),
        cluster_rooms: Vec::new(),
    }
}

#[test]
fn a_server_given_another_process_s_connection_serves_it_as_that_one_did() {
    let config = common::config(|_| {});
    // The previous process's listening sockets.
    let mut listeners = Vec::new();
    for spec in ListenerSpec::from_config(&config) {
        let b = net::bind(&spec, 2).unwrap();
        for (shard, s) in b.sockets.into_iter().enumerate() {
            listeners.push((spec.kind, shard, OwnedFd::from(s)));
        }
    }
    // Its connection on shard 0, slot 5: a version-1 member of
    // live://moved, user 5, key k-moved, with a push queued for it and
    // half a heartbeat read.
    let (mut client, fd) = pair();
    let conn = ConnRef { idx: 5, gen: 3 };
    let at = GlobalConn { shard: 0, conn };
    let queued = frame(1, 1000, 0, b"queued before the move");
    let heartbeat = frame(1, op::HEARTBEAT, 7, b"");
    let mut shards = vec![empty(0), empty(1)];
    shards[0].conns.push(ConnState {
        conn,
        transport: volley::shard::Transport::Tcp,
        authed: true,
        ver: 1,
        key: Some("k-moved".into()),
        mid: 5,
        ip: "127.0.0.1".parse().unwrap(),
        deadline: 31,
        pinged: false,
        blocked: false,
        close: None,
        token: None,
        session: SessionState::V1 {
            room: Some("live://moved".into()),
            accepts: vec![1000],
        },
        out: vec![queued],
        input: Input {
            partial: heartbeat[..10].to_vec(),
            ws: None,
        },
    });
    shards[0].next_gen = 4;
    shards[owner_of_str("k-moved", 2)].keys.push(("k-moved".into(), at, 5));
    shards[owner_of_mid(5, 2)].users.push((5, vec![(at, false)]));
    let mut shards = shards.into_iter();
    let first = shards.next().unwrap();
    let adoption = Adoption {
        keys: (0x1234_5678_9abc, vec![7; 32]),
        listeners,
        shards: vec![(first, vec![fd]), (shards.next().unwrap(), Vec::new())],
    };
    let h = Server::adopt(config, adoption).expect("the server takes them over");
    let mut c = Client {
        s: client.try_clone().unwrap(),
    };
    let first = c.read().expect("the queued push");
    assert_eq!((first.op, first.text().as_str()), (1000, "queued before the move"));
    client.write_all(&heartbeat[10..]).unwrap();
    let r = c.read().expect("the heartbeat's reply");
    assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 7));
    post(
        &h,
        "/goim/push/room?operation=1000&type=live&room=moved",
        b"to the room",
    );
    post(&h, "/goim/push/mids?operation=1000&mids=5", b"to the user");
    post(&h, "/goim/push/keys?operation=1000&keys=k-moved", b"to the key");
    for want in ["to the room", "to the user", "to the key"] {
        let got = c.read().expect("a push");
        assert_eq!((got.op, got.text().as_str()), (1000, want));
    }
    let authed: u64 = h.stats().iter().map(|s| s.authed).sum();
    assert_eq!(authed, 1);
    h.shutdown();
    h.join();
}

/// A WebSocket client's next protocol frame (one per binary message).
fn ws_next(ws: &mut tungstenite::WebSocket<TcpStream>) -> common::Got {
    loop {
        match ws.read().expect("a message") {
            tungstenite::Message::Binary(b) => {
                let len = u32::from_be_bytes(b[0..4].try_into().unwrap()) as usize;
                assert_eq!(len, b.len());
                return common::Got {
                    ver: u16::from_be_bytes([b[6], b[7]]),
                    op: u32::from_be_bytes(b[8..12].try_into().unwrap()),
                    seq: u32::from_be_bytes(b[12..16].try_into().unwrap()),
                    body: b[16..].to_vec(),
                };
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("not a protocol frame: {other:?}"),
        }
    }
}

#[test]
fn a_running_server_hands_every_connection_to_the_next_one_and_nobody_notices() {
    let dir = std::env::temp_dir().join(format!("volley-handoff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let durable = |c: &mut Config| {
        c.storage.mode = volley::config::StorageMode::Disk;
        c.storage.dir = dir.clone();
    };
    let a = common::start_server(durable);
    let (tcp, ws_addr, api) = (a.tcp_addr, a.ws_addr, a.http_addr);
    let mut v1 = Client::authed(tcp, r#"{"mid":21,"key":"k-up","room_id":"live://up","accepts":[1000]}"#);
    let (mut v2, _) = Client::authed_v2(tcp, r#"{"mid":22}"#);
    let joined = v2.join(2, "live://up", None);
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    let s = TcpStream::connect(ws_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{ws_addr}/sub"), s).unwrap();
    let auth = frame(1, op::AUTH, 1, br#"{"room_id":"live://up","accepts":[1000]}"#);
    ws.send(tungstenite::Message::binary(auth)).unwrap();
    assert_eq!(ws_next(&mut ws).op, op::AUTH_REPLY);
    common::wait_until("three members", || {
        common::http(api, "GET", "/v1/online/rooms?rooms=live://up", &[], b"").1["data"]["live://up"] == 3
    });
    post(&a, "/goim/push/room?operation=1000&type=live&room=up", b"before");
    assert_eq!(v1.read_push().text(), "before");
    let before = v2.read_push2().unwrap();
    assert_eq!(ws_next(&mut ws).text(), "before");
    // A TCP publisher, authenticated, with the first half of a room push
    // (acked: sequence 5) sent before the hand-off.
    let mut publisher = common::publisher(a.publish_addr, None);
    let push = frame(
        1,
        24,
        5,
        &common::room_body(1000, "live://up", b"half before, half after"),
    );
    publisher.send_raw(&push[..20]);
    std::thread::sleep(Duration::from_millis(100));

    let adoption = a.hand_off(Duration::from_secs(10)).expect("the shards hand over");
    let conns: usize = adoption.shards.iter().map(|s| s.0.conns.len()).sum();
    assert_eq!(conns, 3);
    let publishers: Vec<_> = adoption.shards.iter().flat_map(|s| s.0.publishers.clone()).collect();
    assert_eq!(publishers.len(), 1, "the publisher is handed over");
    assert!(publishers[0].authed);
    assert_eq!(publishers[0].unparsed, push[..20], "with the bytes it had read");
    let config = common::config(durable);
    // As the real hand-off does: the next server takes the connections
    // first, then the previous one lets go (and of the store with them),
    // which the next one reads back as soon as it is free.
    let b = Server::adopt(config, adoption).expect("the next server takes over");
    assert_eq!((b.tcp_addr, b.http_addr), (tcp, api), "the same listening sockets");
    a.let_go();
    // The new server counts the connections it took over.
    common::wait_until("three connections counted", || {
        common::http(api, "GET", "/goim/online/total", &[], b"").1["data"]["conn_count"] == 3
    });

    post(&b, "/goim/push/room?operation=1000&type=live&room=up", b"after");
    assert_eq!(v1.read_push().text(), "after");
    let after = v2.read_push2().unwrap();
    assert_eq!(
        (after.offset, after.payload.as_slice()),
        (before.offset + 1, &b"after"[..])
    );
    assert_eq!(
        format!("{:016x}", after.epoch),
        epoch,
        "the same epoch: nothing was lost"
    );
    assert_eq!(ws_next(&mut ws).text(), "after");
    // The publisher finishes its frame to the next server, on the same
    // connection: acked, and delivered.
    publisher.send_raw(&push[20..]);
    let ack = publisher.read().expect("the push's ack");
    assert_eq!((ack.op, ack.seq), (25, 5));
    assert_eq!(v1.read_push().text(), "half before, half after");
    assert_eq!(v2.read_push2().unwrap().offset, before.offset + 2);
    assert_eq!(ws_next(&mut ws).text(), "half before, half after");
    post(&b, "/goim/push/mids?operation=1000&mids=21", b"to the user");
    post(&b, "/goim/push/keys?operation=1000&keys=k-up", b"to the key");
    assert_eq!(v1.read_push().text(), "to the user");
    assert_eq!(v1.read_push().text(), "to the key");
    v1.send(op::HEARTBEAT, 9, b"");
    let r = v1.read().expect("a heartbeat reply");
    assert_eq!((r.op, r.seq), (op::HEARTBEAT_REPLY, 9));
    // New clients reach the new server on the same port.
    let mut late = Client::authed(tcp, r#"{"room_id":"live://up","accepts":[1000]}"#);
    post(&b, "/goim/push/room?operation=1000&type=live&room=up", b"last");
    assert_eq!(late.read_push().text(), "last");
    assert_eq!(v1.read_push().text(), "last");
    b.shutdown();
    b.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hand_off_that_does_not_happen_leaves_the_server_serving_as_before() {
    let a = common::start_server(|_| {});
    let mut v1 = Client::authed(a.tcp_addr, r#"{"room_id":"live://stay","accepts":[1000]}"#);
    let (mut v2, _) = Client::authed_v2(a.tcp_addr, "{}");
    v2.join(2, "live://stay", None);
    common::wait_until("both members", || {
        common::http(a.http_addr, "GET", "/v1/online/rooms?rooms=live://stay", &[], b"").1["data"]["live://stay"] == 2
    });
    post(&a, "/goim/push/room?operation=1000&type=live&room=stay", b"before");
    assert_eq!(v1.read_push().text(), "before");
    let before = v2.read_push2().unwrap();

    let mut publisher = common::publisher(a.publish_addr, None);
    let adoption = a.hand_off(Duration::from_secs(10)).expect("the shards hand over");
    assert_eq!(adoption.shards.iter().map(|s| s.0.publishers.len()).sum::<usize>(), 1);
    // While handed over: a publish waits in the listen backlog, a
    // heartbeat in the socket, and so does a publisher's barrier.
    let api = a.http_addr;
    let publish = std::thread::spawn(move || {
        common::http(
            api,
            "POST",
            "/goim/push/room?operation=1000&type=live&room=stay",
            &[],
            b"during",
        )
        .0
    });
    v1.send(op::HEARTBEAT, 4, b"");
    publisher.send(op::HEARTBEAT, 8, b"");
    std::thread::sleep(Duration::from_millis(200));
    drop(adoption);
    a.resume(Duration::from_secs(10)).expect("the shards serve again");
    let barrier = publisher.read().expect("the publisher reads on");
    assert_eq!((barrier.op, barrier.seq), (op::HEARTBEAT_REPLY, 8));

    assert_eq!(publish.join().unwrap(), 200);
    let mut got = [v1.read().unwrap(), v1.read().unwrap()];
    got.sort_by_key(|g| g.op);
    assert_eq!((got[0].op, got[0].seq), (op::HEARTBEAT_REPLY, 4));
    assert_eq!((got[1].op, got[1].text().as_str()), (1000, "during"));
    let during = v2.read_push2().unwrap();
    assert_eq!((during.offset, during.epoch), (before.offset + 1, before.epoch));
    let mut late = Client::authed(a.tcp_addr, r#"{"room_id":"live://stay","accepts":[1000]}"#);
    post(&a, "/goim/push/room?operation=1000&type=live&room=stay", b"after");
    assert_eq!(late.read_push().text(), "after");
    assert_eq!(v1.read_push().text(), "after");
    a.shutdown();
    a.join();
}

#[test]
fn a_program_embedding_the_server_is_not_asked_to_upgrade() {
    let h = common::start_server(|_| {});
    let (status, v) = common::http(h.http_addr, "POST", "/v1/upgrade", &[], b"");
    assert_eq!(status, 501, "{v}");
    let (status, v) = common::http(h.http_addr, "GET", "/v1/upgrade", &[], b"");
    assert_eq!(
        (status, &v["data"]["pid"]),
        (200, &serde_json::Value::from(std::process::id()))
    );
    h.shutdown();
    h.join();
}
