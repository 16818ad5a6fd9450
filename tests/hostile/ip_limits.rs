//! Per-IP limits on by default: one address that opens sockets and never
//! authenticates holds at most `[limits] max_handshakes_per_ip` of them and
//! is refused past its attempt rate, while clients from other addresses get
//! in every time.

use super::common::{op, start_server, Client};
use super::{total, Bystander};
use std::io::Write;
use std::time::Duration;

/// `[limits] max_handshakes_per_ip`'s default (config's `defaults` test
/// holds it there; spelled out so this test runs against older builds).
const HANDSHAKES_PER_IP: u64 = 64;

#[test]
fn one_address_opening_unauthenticated_sockets_is_bounded_and_others_get_in() {
    let h = start_server(|_| {});
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let mut held = Vec::new();
    let mut legit_ok = 0;
    for round in 0..30 {
        // Twenty raw sockets and twenty WebSocket sockets that say nothing
        // (a WebSocket one starts its upgrade and stops).
        for _ in 0..20 {
            held.push(Client::connect_from(h.tcp_addr, "127.0.0.3"));
            let mut ws = Client::connect_from(h.ws_addr, "127.0.0.3");
            ws.send_raw(b"GET /sub HTTP/1.1\r\nHost: x\r\n");
            held.push(ws);
        }
        // A client from elsewhere connects and authenticates every round.
        let mut c = Client::connect_from(h.tcp_addr, "127.0.0.4");
        c.send(op::AUTH, 1, format!(r#"{{"mid":{}}}"#, 500 + round).as_bytes());
        if c.read().is_some_and(|g| g.op == op::AUTH_REPLY) {
            legit_ok += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(legit_ok, 30, "the client from another address got in every time");
    // Of 1,200 sockets from one address, the server kept at most its
    // handshake limit; the rest were told why and closed.
    // Records of refused sockets (and of the other address's closed
    // clients) go once their goodbye is written: wait for those, then at
    // most the handshake limit and the bystander are left.
    let limit = HANDSHAKES_PER_IP;
    let refused = || super::common::closes(&h, "ip_handshake_limit") + super::common::closes(&h, "ip_rate_limit");
    super::common::wait_until("the refused sockets' records to go", || {
        refused() >= 1_000 && total(&h, |s| s.conns) <= limit + 1
    });
    // A refused raw socket reads its reason.
    let mut late = Client::connect_from(h.tcp_addr, "127.0.0.3");
    let _ = late.s.write_all(b"");
    let why = late.expect_closed().unwrap_or_default();
    assert!(
        why.starts_with("ip_handshake_limit") || why.starts_with("ip_rate_limit"),
        "{why}"
    );
    drop(held);
    by.finish();
}
