//! A node upgraded in place (`volley upgrade`; here the in-process
//! hand-off the binary's upgrade runs): its members keep their rooms and
//! get, in order and once, what other nodes published to them while it
//! was handing over; a push to one of its users sent meanwhile arrives.
//! A hand-off called off leaves the node as after a reconnect to Redis:
//! what it missed is read back.

use super::*;
use volley::Server;

#[test]
fn a_node_upgraded_in_place_misses_nothing_published_elsewhere_meanwhile() {
    let redis = Redis::start(&[]);
    let url = redis.url();
    let mut nodes = cluster(&redis, 2);
    let a = nodes.remove(0);
    let b = &nodes[0];
    let (mut member, _) = Client::authed_v2(a.tcp_addr, r#"{"mid":71}"#);
    let joined = member.join(2, "live://up", None);
    let epoch = u64::from_str_radix(joined["epoch"].as_str().unwrap(), 16).unwrap();
    assert_eq!(publish_room(b, "live://up", "before").0, 200);
    let before = member.read_push2().expect("the message before");
    assert_eq!((before.payload.as_slice(), before.epoch), (&b"before"[..], epoch));

    let adoption = a.hand_off(Duration::from_secs(10)).expect("node A hands over");
    // While A is handed over, node B takes publishes to the room and a
    // push to A's user.
    for i in 1..=3 {
        assert_eq!(publish_room(b, "live://up", &format!("during {i}")).0, 200);
    }
    let (status, v) = http(
        b.http_addr,
        "POST",
        "/goim/push/mids?operation=1000&mids=71",
        &[],
        b"to the user",
    );
    assert_eq!(status, 200, "{v}");
    let config = common::config(|c| c.redis.urls = vec![url.clone()]);
    let next = Server::adopt(config, adoption).expect("the next server takes over");
    a.let_go();

    // The three room messages follow "before" with no gap, and the push
    // to the user arrives too (it waited in the node's queue in Redis).
    let mut room = Vec::new();
    let mut user = Vec::new();
    while room.len() < 3 || user.is_empty() {
        let p = member.read_push2().expect("a push after the upgrade");
        match p.kind {
            1 => room.push((p.offset, p.epoch, String::from_utf8(p.payload).unwrap())),
            _ => user.push(String::from_utf8(p.payload).unwrap()),
        }
    }
    let want: Vec<_> = (1..=3)
        .map(|i| (before.offset + i, epoch, format!("during {i}")))
        .collect();
    assert_eq!(room, want);
    assert_eq!(user, ["to the user"]);
    // And it goes on live.
    wait_until("the new node joined the cluster", || health(&next).0 == 200);
    assert_eq!(publish_room(b, "live://up", "after").0, 200);
    let after = member.read_push2().expect("the message after");
    assert_eq!(
        (after.offset, after.payload.as_slice()),
        (before.offset + 4, &b"after"[..])
    );
    next.shutdown();
    next.join();
}

#[test]
fn a_node_whose_upgrade_is_called_off_reads_back_what_it_missed() {
    let redis = Redis::start(&[]);
    let mut nodes = cluster(&redis, 2);
    let a = nodes.remove(0);
    let b = &nodes[0];
    let (mut member, _) = Client::authed_v2(a.tcp_addr, r#"{"mid":72}"#);
    member.join(2, "live://stay", None);
    assert_eq!(publish_room(b, "live://stay", "before").0, 200);
    let before = member.read_push2().expect("the message before");

    let adoption = a.hand_off(Duration::from_secs(10)).expect("node A hands over");
    for i in 1..=2 {
        assert_eq!(publish_room(b, "live://stay", &format!("during {i}")).0, 200);
    }
    drop(adoption);
    a.resume(Duration::from_secs(10)).expect("node A serves again");
    for i in 1..=2 {
        let p = member.read_push2().expect("what was published meanwhile");
        assert_eq!(
            (p.offset, p.epoch, String::from_utf8(p.payload).unwrap()),
            (before.offset + i, before.epoch, format!("during {i}"))
        );
    }
    assert_eq!(publish_room(b, "live://stay", "after").0, 200);
    assert_eq!(member.read_push2().unwrap().offset, before.offset + 3);
    a.shutdown();
    a.join();
}
