//! The TCP publisher connection's I/O: a trusted application server
//! publishes over the client protocol's frames instead of one HTTP request
//! per message, so it can pipeline thousands of publishes per second on one
//! connection. What each frame means is `tcp_session`'s; this module reads,
//! decodes, writes the replies and applies flow control.
//!
//! Served on every shard from the `[api] publish_listen` listener (loopback
//! by default); a connection lives and publishes on the shard that accepted
//! it, in that shard's control task queue (with the HTTP API). docs/API.md
//! ("TCP publisher") is the contract.
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
//! Invariants: the read buffer stays under twice the largest frame the
//! session takes now (`PublisherSession::max_frame`: what an auth frame
//! needs until auth, `[api] max_body` after), or `PIPELINE_CHUNK` once
//! authenticated if that is more; a connection counts against
//! `[api] max_conns` (`conns`), evictable until it authenticates; while any
//! shard's mesh inbox holds more than
//! `MESH_BACKLOG` messages the connection stops reading, so a publisher
//! faster than the fan-out is slowed by TCP flow control instead of growing
//! the queues. Bad input is answered with op 6 `<reason>: <detail>` and a
//! close of this connection only, counted under `publisher_closes`.
//!
//! In a hand-off (`volley upgrade`) the connection's task parks between
//! two reads (`tcp_handoff`) and the next process's goes on with its
//! session and unhandled bytes (`adopt`): the publisher sees a pause.

use super::conns::{self, ApiConn};
use super::tcp_handoff;
use super::tcp_session::{Ended, PublisherSession};
use crate::metrics::ShardStats;
use crate::net::{accept_each, ListenerKind};
use crate::proto::binary::{self, op};
use crate::proto::close::CloseReason;
use crate::shard::handoff::PublisherState;
use crate::shard::Shard;
use bytes::BytesMut;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

/// Most messages queued in any shard's inbox before publishers pause.
pub const MESH_BACKLOG: usize = 1024;
/// Initial size of the read buffer: an auth frame fits (the buffer grows
/// for an authenticated publisher's larger frames).
const FIRST_CHUNK: usize = 4096;
/// An authenticated publisher's read buffer doubles, up to this, each time
/// a read fills it. Replies wait until everything read in one go is kept,
/// so what one read takes is what one journal sync carries for this
/// connection: with 4 KiB reads, 1 KiB publishes 64 in flight got three
/// per fdatasync (10,800 acknowledged a second, BENCHMARKS.md).
const PIPELINE_CHUNK: usize = 256 << 10;
/// How often a quiet connection looks at the clock and at shutdown.
const TICK: Duration = Duration::from_secs(1);

/// Accepts publisher connections until the listener is shut.
pub async fn accept(listener: TcpListener, shard: Rc<RefCell<Shard>>) {
    accept_each(listener, shard, ListenerKind::Publisher, |stream, shard| {
        let _ = stream.set_nodelay(true);
        glommio::spawn_local(serve(stream, shard.clone(), None)).detach();
    })
    .await;
}

/// Takes over the publisher connections the previous process handed over
/// (`volley upgrade`): each goes on in a task of the shard's control queue
/// with its session and the bytes it had read. `Err` before any starts:
/// the records do not fit their sockets.
pub fn adopt(
    shard: &Rc<RefCell<Shard>>,
    queue: glommio::TaskQueueHandle,
    publishers: Vec<PublisherState>,
    sockets: Vec<OwnedFd>,
) -> Result<usize, String> {
    if publishers.len() != sockets.len() {
        return Err(format!(
            "{} publisher records for {} sockets",
            publishers.len(),
            sockets.len()
        ));
    }
    // Half a frame at most, of the largest a session takes.
    let most = 2 * PIPELINE_CHUNK.max(shard.borrow().shared.config.api.max_body + binary::HEADER_LEN);
    if let Some(p) = publishers.iter().find(|p| p.unparsed.len() > most) {
        return Err(format!("a publisher's unhandled input of {} bytes", p.unparsed.len()));
    }
    let n = publishers.len();
    for (state, fd) in publishers.into_iter().zip(sockets) {
        // SAFETY: the descriptor is ours (received by SCM_RIGHTS), given up
        // by its OwnedFd to the stream that owns it from here.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        glommio::spawn_local_into(serve(stream, shard.clone(), Some(state)), queue)
            .map_err(|e| format!("cannot spawn a publisher's task: {e}"))?
            .detach();
    }
    Ok(n)
}

async fn serve(mut stream: TcpStream, shard: Rc<RefCell<Shard>>, handed: Option<PublisherState>) {
    let peer = stream.peer_addr().ok();
    let fd = stream.as_raw_fd();
    let (cap, auth_secs) = {
        let sh = shard.borrow();
        let c = &sh.shared.config;
        let cap = (c.api.max_conns / sh.nr_shards()).max(1);
        (cap, u64::from(c.client.handshake_timeout_secs))
    };
    let admitted = match conns::admit(cap, conns::after(auth_secs)) {
        conns::Admission::In { admitted, evicted } => {
            if evicted {
                ShardStats::add(&shard.borrow().stats().api_evicted, 1);
            }
            Some(admitted)
        }
        conns::Admission::Full => {
            ShardStats::add(&shard.borrow().stats().api_refused, 1);
            None
        }
    };
    shard.borrow_mut().publisher_opened(fd);
    let mut out = BytesMut::new();
    let Ended { reason, detail } = match &admitted {
        Some(a) => run(&mut stream, &shard, &mut out, &a.conn, handed).await,
        None => Ended::new(CloseReason::ConnLimit, "[api] max_conns connections are publishing"),
    };
    if reason.notifies_client() {
        // After any replies still unwritten; best effort: the peer may be
        // gone or not reading.
        let text = reason.goodbye(&detail);
        binary::encode(&mut out, binary::VERSION_GOIM, op::DISCONNECT, 0, text.as_bytes());
        let _ = stream.write_all(&out).await;
    }
    shard.borrow_mut().publisher_closed(fd);
    tcp_handoff::forget(fd);
    let _ = stream.close().await;
    let sh = shard.borrow();
    sh.stats().publisher_close(reason);
    if reason.is_quiet() {
        tracing::debug!(shard = sh.id, ?peer, reason = reason.name(), detail, "publisher closed");
    } else {
        tracing::info!(shard = sh.id, ?peer, reason = reason.name(), detail, "publisher closed");
    }
}

/// Reads, handles and answers frames until the connection must end; a
/// connection `handed` over goes on with that session and input.
async fn run(
    stream: &mut TcpStream,
    shard: &Rc<RefCell<Shard>>,
    out: &mut BytesMut,
    conn: &ApiConn,
    handed: Option<PublisherState>,
) -> Ended {
    if let Err(e) = stream.set_read_timeout(Some(TICK)) {
        return Ended::new(CloseReason::IoError, e.to_string());
    }
    let fd = stream.as_raw_fd();
    // `buf[..have]` holds unparsed bytes. It doubles only when full without
    // a whole frame, and decode refuses a frame over the session's limit
    // (small until auth) as soon as its length arrives, so it stays under
    // twice that.
    let (mut session, mut buf, mut have) = match handed {
        Some(h) => {
            let session = PublisherSession::restored(&h);
            let have = h.unparsed.len();
            let mut buf = h.unparsed;
            buf.resize((2 * have).max(FIRST_CHUNK), 0);
            (session, buf, have)
        }
        None => (PublisherSession::new(shard.borrow().tick()), vec![0u8; FIRST_CHUNK], 0),
    };
    if session.authed() {
        conn.keep();
    }
    loop {
        if tcp_handoff::parking_now() {
            // Between two reads, every reply written: the connection can
            // move as it stands. Back here if the hand-off is called off.
            tcp_handoff::park(fd, session.saved(&buf[..have])).await;
            // Not evicted for a hand-off that did not happen.
            conn.pardon();
            continue;
        }
        if conn.is_evicted() {
            let detail = "[api] max_conns reached: a connection that had not authenticated made room";
            return Ended::new(CloseReason::ConnLimit, detail);
        }
        let max_frame = session.max_frame(&shard.borrow().shared.config.api);
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        // A hand-off drops a read that waits for bytes: it has taken none.
        let read = async { Some(stream.read(&mut buf[have..]).await) };
        let Some(res) = future::or(read, async {
            tcp_handoff::hand_off_begun(fd).await;
            None
        })
        .await
        else {
            continue;
        };
        let stopping = shard.borrow().shutting_down;
        match res {
            Ok(0) if stopping => return Ended::new(CloseReason::Shutdown, ""),
            Ok(0) => return Ended::new(CloseReason::PeerClosed, ""),
            Ok(n) => {
                let filled = have + n == buf.len();
                have += n;
                if filled && session.authed() && buf.len() < PIPELINE_CHUNK {
                    // More may be waiting: the next read takes twice as much.
                    buf.resize(buf.len() * 2, 0);
                }
                let sh = shard.borrow();
                session.heard(sh.tick());
                // Bytes that trickle in do not put off the auth deadline.
                if let Err(end) = session.check_quiet(sh.tick(), &sh) {
                    return end;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if stopping {
                    return Ended::new(CloseReason::Shutdown, "");
                }
                let sh = shard.borrow();
                if let Err(end) = session.check_quiet(sh.tick(), &sh) {
                    return end;
                }
                continue;
            }
            Err(e) => return Ended::new(CloseReason::IoError, e.to_string()),
        }
        let mut used = 0;
        {
            let mut sh = shard.borrow_mut();
            loop {
                match binary::decode(&buf[used..have], max_frame) {
                    Ok(Some((f, n))) => {
                        used += n;
                        let was_authed = session.authed();
                        if let Err(end) = session.handle_frame(f, &mut sh, out) {
                            return end;
                        }
                        if session.authed() && !was_authed {
                            // Trusted from here: not evictable, and its
                            // quiet time is the session's to judge.
                            conn.keep();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return Ended::new(CloseReason::from(&e), e.to_string()),
                }
            }
        }
        buf.copy_within(used..have, 0);
        have -= used;
        for w in session.take_waits() {
            if let Err(why) = w.outcome().await {
                return Ended::new(CloseReason::Unavailable, why);
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(out).await {
                return Ended::new(CloseReason::IoError, e.to_string());
            }
            out.clear();
        }
        // Flow control: stop reading while the fan-out is behind.
        loop {
            let (behind, stopping) = {
                let sh = shard.borrow();
                let mesh = &sh.shared.mesh;
                let behind = (0..mesh.nr_shards()).any(|s| mesh.backlog(s) > MESH_BACKLOG);
                (behind, sh.shutting_down)
            };
            if stopping {
                return Ended::new(CloseReason::Shutdown, "");
            }
            if !behind {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        glommio::executor().yield_if_needed().await;
    }
}
