//! The TCP publisher connection: a trusted application server publishes over
//! the client protocol's frames instead of one HTTP request per message, so
//! it can pipeline thousands of publishes per second on one connection.
//!
//! Served on every shard from the `publish_listen` listener (loopback by
//! default); a connection lives and publishes on the shard that accepted it,
//! in that shard's control task queue (with the HTTP API). docs/API.md ("TCP
//! publisher") is the contract.
//!
//! ```text
//! publisher                      volley
//!   op 7 auth, body = API key  →
//!                              ←  op 8          (or op 6 bad_api_key, close)
//!   op 24 push room, seq 0     →  routed, no reply
//!   op 24 push room, seq 9     →  routed
//!                              ←  op 25 seq 9   (ack once routed)
//!   op 2                       →
//!                              ←  op 3          (every earlier publish routed)
//! ```
//!
//! Invariants: frames are handled in arrival order and each is routed before
//! the next is read, so an ack or an op 3 covers everything before it; the
//! read buffer stays under twice the largest frame (`max_http_body`); while any shard's mesh inbox holds more than `MESH_BACKLOG` messages
//! the connection stops reading, so a publisher faster than the fan-out is
//! slowed by TCP flow control instead of growing the queues. Bad input is
//! answered with op 6 `<reason>: <detail>` and a close of this connection only,
//! counted under `publisher_closes`.

use crate::metrics::{CloseReason, ShardStats};
use crate::proto::binary::{self, op as client_op, Frame};
use crate::proto::publish::{self as body, op};
use crate::publish::{self, PushError};
use crate::shard::Shard;
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// Most messages queued in any shard's inbox before publishers pause.
pub const MESH_BACKLOG: usize = 1024;
/// Initial size of the read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// How often a quiet connection looks at the clock and at shutdown.
const TICK: Duration = Duration::from_secs(1);

thread_local! {
    /// This shard's open publisher sockets, so shutdown can end their reads
    /// at once instead of at their next tick.
    static OPEN: RefCell<fnv::FnvHashSet<RawFd>> = RefCell::new(fnv::FnvHashSet::default());
}

/// Shuts the read side of every publisher socket of this shard: each pending
/// read ends, the publisher sees `shutting_down`, and says goodbye (op 6
/// `shutdown`) on the write side that is still open. Called by the shard's
/// shutdown.
pub fn stop_reading_all() {
    OPEN.with(|open| {
        for &fd in open.borrow().iter() {
            // SAFETY: the descriptor is open: it leaves OPEN before its
            // stream is closed. Shutting a socket touches no memory.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
    });
}

/// Accepts publisher connections until the listener is shut.
pub async fn accept(listener: TcpListener, shard: Rc<RefCell<Shard>>) {
    crate::server::accept_each(listener, shard, "publishers", |stream, shard| {
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve(stream, shard.clone())).detach();
    })
    .await;
}

/// Why a publisher connection ends, and what it is told.
struct End(CloseReason, String);

impl End {
    fn new(reason: CloseReason, detail: impl Into<String>) -> Self {
        End(reason, detail.into())
    }
}

async fn serve(mut stream: TcpStream, shard: Rc<RefCell<Shard>>) {
    let peer = stream.peer_addr().ok();
    let fd = stream.as_raw_fd();
    OPEN.with(|open| open.borrow_mut().insert(fd));
    ShardStats::add(&shard.borrow().stats().publishers, 1);
    let mut conn = Publisher {
        shard: shard.clone(),
        authed: false,
        out: BytesMut::new(),
    };
    let End(reason, detail) = conn.run(&mut stream).await;
    if reason.notifies_client() {
        let text = if detail.is_empty() {
            reason.name().to_string()
        } else {
            format!("{}: {detail}", reason.name())
        };
        // After any replies still unwritten; best effort: the peer may be
        // gone or not reading.
        binary::encode(
            &mut conn.out,
            binary::VERSION_GOIM,
            client_op::DISCONNECT,
            0,
            text.as_bytes(),
        );
        let _ = stream.write_all(&conn.out).await;
    }
    OPEN.with(|open| open.borrow_mut().remove(&fd));
    let _ = stream.close().await;
    let sh = shard.borrow();
    sh.stats().publishers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    sh.stats().publisher_close(reason);
    if !matches!(
        reason,
        CloseReason::PeerClosed | CloseReason::ClientDisconnect | CloseReason::Shutdown
    ) {
        tracing::info!(shard = sh.id, ?peer, reason = reason.name(), detail, "publisher closed");
    }
}

/// One publisher connection's state.
struct Publisher {
    shard: Rc<RefCell<Shard>>,
    authed: bool,
    /// Replies not yet written.
    out: BytesMut,
}

impl Publisher {
    /// Reads, handles and answers frames until the connection must end.
    async fn run(&mut self, stream: &mut TcpStream) -> End {
        let (max_frame, handshake, heartbeat) = {
            let cfg = &self.shard.borrow().shared.config;
            (
                cfg.max_http_body,
                u64::from(cfg.handshake_timeout_secs),
                u64::from(cfg.heartbeat_timeout_secs),
            )
        };
        if let Err(e) = stream.set_read_timeout(Some(TICK)) {
            return End::new(CloseReason::IoError, e.to_string());
        }
        // `buf[..have]` holds unparsed bytes. It doubles only when full
        // without a whole frame, and decode refuses a frame over `max_frame`
        // as soon as its length arrives, so it stays under twice that.
        let mut buf = vec![0u8; READ_CHUNK];
        let mut have = 0;
        let mut quiet_secs = 0u64;
        loop {
            if have == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let res = stream.read(&mut buf[have..]).await;
            match res {
                Ok(0) if self.shard.borrow().shutting_down => return End::new(CloseReason::Shutdown, ""),
                Ok(0) => return End::new(CloseReason::PeerClosed, ""),
                Ok(n) => {
                    have += n;
                    quiet_secs = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if self.shard.borrow().shutting_down {
                        return End::new(CloseReason::Shutdown, "");
                    }
                    quiet_secs += TICK.as_secs();
                    if !self.authed && quiet_secs >= handshake {
                        return End::new(CloseReason::HandshakeTimeout, format!("no auth within {handshake} s"));
                    }
                    if quiet_secs >= heartbeat {
                        return End::new(CloseReason::HeartbeatTimeout, format!("nothing for {heartbeat} s"));
                    }
                    continue;
                }
                Err(e) => return End::new(CloseReason::IoError, e.to_string()),
            }
            let mut used = 0;
            loop {
                match binary::decode(&buf[used..have], max_frame) {
                    Ok(Some((f, n))) => {
                        used += n;
                        if let Err(end) = self.on_frame(f, max_frame) {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::new(CloseReason::from(&e), e.to_string()),
                }
            }
            buf.copy_within(used..have, 0);
            have -= used;
            if !self.out.is_empty() {
                if let Err(e) = stream.write_all(&self.out).await {
                    return End::new(CloseReason::IoError, e.to_string());
                }
                self.out.clear();
            }
            // Flow control: stop reading while the fan-out is behind.
            loop {
                let (behind, stopping) = {
                    let sh = self.shard.borrow();
                    let mesh = &sh.shared.mesh;
                    let behind = (0..mesh.nr_shards()).any(|s| mesh.backlog(s) > MESH_BACKLOG);
                    (behind, sh.shutting_down)
                };
                if stopping {
                    return End::new(CloseReason::Shutdown, "");
                }
                if !behind {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            glommio::executor().yield_if_needed().await;
        }
    }

    fn reply(&mut self, op: u32, seq: u32) {
        binary::encode(&mut self.out, binary::VERSION_GOIM, op, seq, &[]);
    }

    fn on_frame(&mut self, f: Frame<'_>, max_frame: usize) -> Result<(), End> {
        if f.ver != binary::VERSION_GOIM {
            return Err(End::new(
                CloseReason::UnsupportedVersion,
                format!("version {}, the publisher protocol is version 1", f.ver),
            ));
        }
        if !self.authed {
            if f.op != client_op::AUTH {
                return Err(End::new(
                    CloseReason::AuthRequired,
                    format!("first frame was op {}", f.op),
                ));
            }
            let ok = match &self.shard.borrow().shared.config.api_key {
                Some(key) => constant_time_eq(key.as_bytes(), f.body),
                None => true,
            };
            if !ok {
                return Err(End::new(CloseReason::BadApiKey, "missing or wrong API key"));
            }
            self.authed = true;
            self.reply(client_op::AUTH_REPLY, f.seq);
            return Ok(());
        }
        match f.op {
            client_op::HEARTBEAT => self.reply(client_op::HEARTBEAT_REPLY, f.seq),
            client_op::DISCONNECT => return Err(End::new(CloseReason::ClientDisconnect, "")),
            client_op::AUTH => return Err(End::new(CloseReason::ProtocolError, "auth sent twice")),
            client_op::RAW => {
                let mut at = 0;
                while at < f.body.len() {
                    match binary::decode(&f.body[at..], max_frame) {
                        Ok(Some((inner, n))) if inner.op != client_op::RAW => {
                            at += n;
                            self.on_frame(inner, max_frame)?;
                        }
                        Ok(Some(_)) => return Err(End::new(CloseReason::ProtocolError, "op 9 inside op 9")),
                        Ok(None) => return Err(End::new(CloseReason::ProtocolError, "op 9 ends inside a frame")),
                        Err(e) => return Err(End::new(CloseReason::from(&e), format!("in op 9: {e}"))),
                    }
                }
            }
            op::PUSH_KEYS | op::PUSH_MIDS | op::PUSH_ROOM | op::PUSH_ALL => {
                let p = body::parse(f.op, f.body).map_err(|e| End::new(CloseReason::BadBody, e.to_string()))?;
                let max = self.shard.borrow().shared.config.max_push_body;
                publish::push(&mut self.shard.borrow_mut(), p.target, p.op, p.payload, max).map_err(|e| {
                    let reason = match e {
                        PushError::TooLarge { .. } => CloseReason::BodyTooLarge,
                        PushError::Bad(_) => CloseReason::BadBody,
                    };
                    End::new(reason, e.to_string())
                })?;
                if f.seq != 0 {
                    self.reply(f.op + 1, f.seq);
                }
            }
            other => {
                return Err(End::new(
                    CloseReason::ProtocolError,
                    format!("operation {other} is not served on the publisher port"),
                ))
            }
        }
        Ok(())
    }
}

/// Compares secrets without an early exit that would time the first
/// differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
