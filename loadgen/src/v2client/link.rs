//! The bytes under one connection: raw TCP (protocol frames back to back),
//! or WebSocket (an HTTP upgrade first, then one protocol frame per binary
//! message, the client's masked). Opens the socket, turns what was read
//! into protocol frames and wraps what is sent; knows nothing of what the
//! frames mean.

use crate::wire::{tcp_frames, ws_frames, MASK};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use volley::proto::ws::frame::client_frame;
use volley::proto::ws::opcode;
use volley::proto::ws::upgrade::client_request;

/// Longest upgrade answer read before giving up on the server.
const MAX_ANSWER: usize = 8192;

/// A connection's transport and where its handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Raw TCP.
    Tcp,
    /// WebSocket, the upgrade request sent, its answer not yet read.
    Upgrading,
    /// WebSocket, upgraded.
    Ws,
}

/// What one read turned into.
#[derive(Default)]
pub struct Read {
    /// Whole protocol frames: (op, body).
    pub frames: Vec<(u32, Vec<u8>)>,
    /// Pongs owed (masked, ready to write).
    pub pongs: Vec<Vec<u8>>,
    /// The upgrade was answered 101 in this read: the session may start.
    pub upgraded: bool,
    /// The server closed (a close frame, a refused upgrade, or bytes that
    /// break the framing): the connection is over.
    pub closed: bool,
}

/// The upgrade request for `path` on `host`.
pub fn upgrade_request(path: &str, host: &str) -> Vec<u8> {
    client_request(path, host).into_bytes()
}

/// Takes the whole units at the front of `buf[..*have]` (keeping the rest
/// for the next read).
pub fn take(link: &mut Link, buf: &mut [u8], have: &mut usize) -> Read {
    let mut out = Read::default();
    let mut at = 0;
    if *link == Link::Upgrading {
        let Some(end) = buf[..*have].windows(4).position(|w| w == b"\r\n\r\n") else {
            out.closed = *have >= MAX_ANSWER;
            return out;
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            out.closed = true;
            return out;
        }
        at = end + 4;
        *link = Link::Ws;
        out.upgraded = true;
    }
    let used = match link {
        Link::Upgrading => unreachable!("handled above"),
        Link::Tcp => tcp_frames(&buf[at..*have], |f| out.frames.push((f.op, f.body.to_vec()))),
        Link::Ws => ws_frames(&buf[at..*have], |op, payload| {
            match op {
                opcode::BINARY => {
                    let whole = tcp_frames(payload, |f| out.frames.push((f.op, f.body.to_vec())));
                    // One frame per message: a message that ends inside
                    // one breaks the protocol.
                    out.closed |= whole != Some(payload.len());
                }
                opcode::PING => out.pongs.push(client_frame(true, opcode::PONG, MASK, payload)),
                opcode::CLOSE => out.closed = true,
                _ => {}
            }
            !out.closed
        }),
    };
    match used {
        Some(n) => at += n,
        None => out.closed = true,
    }
    buf.copy_within(at..*have, 0);
    *have -= at;
    out
}

/// `frame` as it goes on the wire of `link`.
pub fn wrap(link: Link, frame: Vec<u8>) -> Vec<u8> {
    match link {
        Link::Tcp => frame,
        Link::Upgrading | Link::Ws => client_frame(true, opcode::BINARY, MASK, &frame),
    }
}

/// A non-blocking socket connecting from `source` to `target`.
pub(super) fn open(source: Option<std::net::IpAddr>, target: SocketAddr) -> std::io::Result<RawFd> {
    use socket2::{Domain, Socket, Type};
    use std::os::fd::IntoRawFd;
    let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if let Some(ip) = source {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into_raw_fd())
}

/// The pending error of a socket whose connect finished (0: connected).
pub(super) fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int we own.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    err
}

#[cfg(test)]
mod tests {
    use super::*;
    use volley::proto::binary::{self, op};

    fn server_binary(frame: &[u8]) -> Vec<u8> {
        let mut m = vec![0x80 | opcode::BINARY, frame.len() as u8];
        m.extend_from_slice(frame);
        m
    }

    #[test]
    fn an_upgrade_answer_then_frames_in_the_same_read() {
        let f = binary::encode_to_bytes(binary::VERSION_NATIVE, op::AUTH_REPLY, 1, b"{}");
        let mut buf = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        buf.extend(server_binary(&f));
        buf.extend([0x80 | opcode::PING, 1, b'p']);
        buf.extend(&server_binary(&f)[..5]);
        let mut have = buf.len();
        let mut link = Link::Upgrading;
        let r = take(&mut link, &mut buf, &mut have);
        assert!(r.upgraded && !r.closed);
        assert_eq!(link, Link::Ws);
        assert_eq!(r.frames, vec![(op::AUTH_REPLY, b"{}".to_vec())]);
        assert_eq!(r.pongs.len(), 1);
        assert_eq!(have, 5, "the partial message waits");
    }

    #[test]
    fn a_refused_upgrade_or_a_close_ends_the_connection() {
        let mut buf = b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec();
        let mut have = buf.len();
        assert!(take(&mut Link::Upgrading, &mut buf, &mut have).closed);
        let mut buf = vec![0x80 | opcode::CLOSE, 2, 0x03, 0xf4];
        let mut have = buf.len();
        assert!(take(&mut Link::Ws, &mut buf, &mut have).closed);
    }

    #[test]
    fn tcp_frames_split_across_reads() {
        let f = binary::encode_to_bytes(binary::VERSION_NATIVE, op::HEARTBEAT_REPLY, 3, b"");
        let mut buf = f[..10].to_vec();
        buf.resize(64, 0);
        let mut have = 10;
        assert!(take(&mut Link::Tcp, &mut buf, &mut have).frames.is_empty());
        buf[10..16].copy_from_slice(&f[10..]);
        have = 16;
        let r = take(&mut Link::Tcp, &mut buf, &mut have);
        assert_eq!(r.frames, vec![(op::HEARTBEAT_REPLY, vec![])]);
        assert_eq!(have, 0);
    }
}
