//! Careless configurations: refused at start, naming the knob, while a
//! server that was started right keeps serving its clients.

use super::common::{self, op, start_server, Client};
use super::Bystander;
use volley::{Config, Server, StartError};

/// A configuration on loopback, ephemeral ports, that `edit` spoils.
fn spoiled(edit: impl FnOnce(&mut Config)) -> Result<volley::ServerHandle, StartError> {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut c = Config {
        shards: 1,
        ..Config::default()
    };
    (c.tcp.listen, c.ws.listen, c.api.listen, c.api.publish_listen) = (any, any, any, any);
    c.storage.mode = volley::config::StorageMode::Memory;
    edit(&mut c);
    Server::start(c)
}

fn refused(r: Result<volley::ServerHandle, StartError>, knob: &str) -> String {
    match r {
        Ok(_) => panic!("a server started with a careless {knob}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(knob), "the refusal names {knob}: {msg}");
            msg
        }
    }
}

#[test]
fn a_second_server_on_the_same_listeners_is_refused_and_the_first_keeps_every_client() {
    let h = start_server(|_| {});
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let mut room: Vec<Client> = (0..10)
        .map(|i| Client::authed(h.tcp_addr, &format!(r#"{{"mid":{},"room_id":"live://ten"}}"#, 100 + i)))
        .collect();
    // The same addresses, as a second `volley serve` with the same flags
    // would have them: before, it started and took a share of every
    // listener's connections (SO_REUSEPORT).
    let second = spoiled(|c| {
        (c.tcp.listen, c.ws.listen) = (h.tcp_addr, h.ws_addr);
        (c.api.listen, c.api.publish_listen) = (h.http_addr, h.publish_addr);
    });
    let msg = refused(second, &h.tcp_addr.to_string());
    assert!(msg.contains("in use"), "{msg}");
    // Ten fresh connections all land on the first server: a push reaches
    // all twenty.
    room.extend(
        (0..10).map(|i| Client::authed(h.tcp_addr, &format!(r#"{{"mid":{},"room_id":"live://ten"}}"#, 200 + i))),
    );
    let v = common::post(&h, "/goim/push/room?operation=1000&type=live&room=ten", b"all");
    assert_eq!(v["code"], 0);
    for c in &mut room {
        let g = c.read_push();
        assert_eq!((g.op, g.text().as_str()), (1000, "all"));
    }
    by.finish();
}

#[test]
fn careless_listeners_and_keys_are_refused_by_name() {
    let h = start_server(|_| {});
    let by = Bystander::start(h.tcp_addr, h.http_addr);
    let open: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();
    // Whoever reaches an open API or publisher port could push to everyone.
    refused(spoiled(|c| c.api.listen = open), "[api] listen");
    refused(spoiled(|c| c.api.publish_listen = open), "[api] publish_listen");
    // With a key they may listen anywhere.
    let keyed = spoiled(|c| {
        c.api.listen = open;
        c.api.key = Some("k".repeat(32));
    });
    assert!(keyed.is_ok(), "an API with a key may listen anywhere");
    drop(keyed);
    // Token keys with auth off: every client would be let in unchecked.
    let secret = "s".repeat(32);
    refused(spoiled(|c| c.auth.jwt_secret = vec![secret.clone()]), "[auth] mode");
    // Development tokens for anyone reaching a public API.
    refused(
        spoiled(|c| {
            c.auth.mode = volley::config::AuthMode::Jwt;
            c.auth.jwt_secret = vec![secret.clone()];
            c.auth.dev_tokens = true;
            c.api.listen = open;
            c.api.key = Some("k".repeat(32));
        }),
        "[auth] dev_tokens",
    );
    // The echo endpoint buffers 16 MiB messages before any auth.
    refused(
        spoiled(|c| {
            c.ws.echo = true;
            c.ws.listen = open;
        }),
        "[ws] echo",
    );
    let mut c = Client::authed(h.tcp_addr, r#"{"mid":1,"key":"still-here","accepts":[1000]}"#);
    common::post(&h, "/goim/push/keys?operation=1000&keys=still-here", b"x");
    assert_eq!(c.read_push().op, 1000);
    let _ = op::AUTH;
    by.finish();
}
