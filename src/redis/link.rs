//! `Link`: one shard's pipelined connection to one Redis instance, over a
//! glommio socket, speaking RESP2 through the `redis-protocol` codec.
//!
//! Runs on the shard that made it, in its control queue: `Link::call`
//! encodes a command into the link's output buffer and waits for its
//! reply; the link's task writes whatever has gathered with one write
//! (every command issued since the last write shares it: pipelining) and
//! matches replies to callers in order. When the connection fails, or the
//! oldest command has had no reply for `REPLY_TIMEOUT`, every caller still
//! waiting gets `RedisError::Down`, `Health` hears why, and the task
//! reconnects with backoff (`BACKOFF_MIN` doubling to `BACKOFF_MAX`),
//! sending `AUTH` and `SELECT` first when the URL asks for them.
//!
//! ```text
//!   call() ──encode──> out ──one write──> Redis
//!      ▲                                    │
//!      └── waiting (FIFO) <──decode─────────┘
//! ```
//!
//! Invariants: replies are matched to commands strictly in order, so a
//! command is in `waiting` exactly while its bytes are in `out` or on the
//! wire; a link that is down refuses commands at once (a publish is never
//! told it succeeded when Redis did not take it); the output buffer and
//! the reply buffer are bounded (`MAX_PENDING`, `MAX_REPLY`): past them the
//! caller is refused, or the connection is dropped, instead of growing.

use super::{Health, RedisUrl};
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode;
pub use redis_protocol::resp2::types::BytesFrame as Frame;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Longest the oldest command waits for its reply before the connection is
/// taken for dead.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a connect (and its AUTH / SELECT) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before reconnecting; doubles up to `BACKOFF_MAX`.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnects.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle link pings, so that a dead peer is noticed.
pub(super) const PING_EVERY: Duration = Duration::from_secs(1);
/// Most bytes of commands waiting to be written; past it `call` is refused.
pub(super) const MAX_PENDING: usize = 64 << 20;
/// Largest reply kept while it is incomplete; past it the connection is
/// dropped (no reply volley asks for comes near it).
pub(super) const MAX_REPLY: usize = 512 << 20;

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// The instance cannot be reached now (the reason says why).
    #[error("redis {0} unreachable: {1}")]
    Down(String, String),
    /// Redis answered with an error reply.
    #[error("redis error: {0}")]
    Server(String),
    /// More commands are waiting to be written than `MAX_PENDING` allows.
    #[error("redis {0}: too many commands waiting")]
    Busy(String),
    /// Redis answered with a reply of a shape the command never gives (a
    /// server that is not the Redis volley expects, or another version of
    /// volley's scripts).
    #[error("redis answered unexpectedly: {0}")]
    Unexpected(String),
}

impl RedisError {
    /// The kind's name, as metrics and logs tell them apart.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisError::Down(..) => "down",
            RedisError::Server(_) => "error_reply",
            RedisError::Busy(_) => "busy",
            RedisError::Unexpected(_) => "unexpected",
        }
    }
}

/// A shard's link to one Redis instance (see the module doc). Cloning
/// shares the link.
#[derive(Clone)]
pub struct Link {
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    /// Where it connects (shown in errors and health, without password).
    url: RedisUrl,
    /// Commands not yet written.
    outbox: Outbox,
    /// One entry per command written or waiting to be, oldest first.
    waiting: VecDeque<Pending>,
    /// Connected and past AUTH / SELECT.
    up: bool,
    /// Why it is down (shown to callers).
    reason: String,
    /// Connections made so far (a change tells that Redis may have lost
    /// what was written before).
    connects: u64,
}

impl Link {
    /// A link to `url`, down until its task (`run`) connects it.
    pub fn new(url: RedisUrl) -> Link {
        Link {
            inner: Rc::new(RefCell::new(Inner {
                url,
                outbox: Outbox::default(),
                waiting: VecDeque::new(),
                up: false,
                reason: "not connected yet".into(),
                connects: 0,
            })),
        }
    }

    /// The simulated-time harness's stand-in for the link's task: up (a
    /// new connection) or down, as a real link would be after a connect or
    /// a loss. Nothing is sent either way.
    #[cfg(test)]
    pub(crate) fn simulate(&self, up: bool) {
        let mut i = self.inner.borrow_mut();
        if up && !i.up {
            i.connects += 1;
        }
        i.up = up;
        i.outbox.clear();
        i.reason = if up { String::new() } else { "simulated down".into() };
    }

    /// How many times the link has connected.
    pub fn connects(&self) -> u64 {
        self.inner.borrow().connects
    }

    /// Whether the link is connected now.
    pub fn is_up(&self) -> bool {
        self.inner.borrow().up
    }

    /// Why the link refuses commands now (`RedisError::Down`'s text);
    /// `None` while it is up.
    pub fn down_reason(&self) -> Option<String> {
        let i = self.inner.borrow();
        (!i.up).then(|| RedisError::Down(i.url.to_string(), i.reason.clone()).to_string())
    }

    /// Sends one command (its arguments, the name first) and waits for its
    /// reply; an error reply is `RedisError::Server`.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Frame, RedisError> {
        let slot = self.send(args)?;
        let reply = std::future::poll_fn(|cx| {
            let mut s = slot.borrow_mut();
            if s.done {
                Poll::Ready(s.reply.take())
            } else {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        match reply {
            Some(Frame::Error(e)) => Err(RedisError::Server(e.to_string())),
            Some(frame) => Ok(frame),
            None => {
                let i = self.inner.borrow();
                Err(RedisError::Down(i.url.to_string(), i.reason.clone()))
            }
        }
    }

    /// Queues one command; its reply lands in the returned slot.
    fn send(&self, args: &[&[u8]]) -> Result<Rc<RefCell<Slot>>, RedisError> {
        let mut i = self.inner.borrow_mut();
        if !i.up {
            return Err(RedisError::Down(i.url.to_string(), i.reason.clone()));
        }
        if i.outbox.len() > MAX_PENDING {
            return Err(RedisError::Busy(i.url.to_string()));
        }
        i.outbox.push(args);
        let slot = Rc::new(RefCell::new(Slot::default()));
        i.waiting.push_back(Pending {
            slot: slot.clone(),
            at: Instant::now(),
        });
        Ok(slot)
    }

    /// Keeps the link connected until the executor ends: connects, serves,
    /// and after a failure tells `health` (as `shard`'s link to instance
    /// `instance`) and reconnects with backoff.
    pub async fn run(self, health: Arc<Health>, shard: usize, instance: usize) {
        let url = self.inner.borrow().url.clone();
        let mut retry = Retry::new("redis link", url.clone());
        loop {
            let why = match connect(&url).await {
                Ok(stream) => {
                    retry.connected();
                    {
                        let mut i = self.inner.borrow_mut();
                        i.up = true;
                        i.connects += 1;
                    }
                    health.set_up(shard, instance);
                    self.serve(stream).await
                }
                Err(why) => why,
            };
            self.fail(&why);
            health.set_down(shard, instance, &why);
            retry.failed(why).await;
        }
    }

    /// Marks the link down and answers every waiting caller with `Down`.
    fn fail(&self, why: &str) {
        let waiting = {
            let mut i = self.inner.borrow_mut();
            i.up = false;
            why.clone_into(&mut i.reason);
            i.outbox.clear();
            std::mem::take(&mut i.waiting)
        };
        // Dropping each unanswered wakes its caller, who reads the reason
        // from the link.
        drop(waiting);
    }

    /// Writes, reads and watches one connection until it fails; returns why.
    async fn serve(&self, stream: TcpStream) -> String {
        let take = |cx: &mut std::task::Context<'_>| self.inner.borrow_mut().outbox.poll_take(cx);
        let on_frame = |frame: Frame| {
            let Some(pending) = self.inner.borrow_mut().waiting.pop_front() else {
                return Err("a reply nobody asked for".to_string());
            };
            pending.slot.borrow_mut().reply = Some(frame);
            Ok(())
        };
        let watchdog = async {
            let mut last = Instant::now();
            loop {
                watch_tick(&mut last).await;
                let (oldest, idle) = {
                    let i = self.inner.borrow();
                    (i.waiting.front().map(|p| p.at.elapsed()), i.waiting.is_empty())
                };
                if oldest.is_some_and(|age| age > REPLY_TIMEOUT) {
                    return format!("no reply in {} s", REPLY_TIMEOUT.as_secs());
                }
                if idle {
                    // Its reply (or its absence) is all that matters.
                    drop(self.send(&[b"PING"]));
                }
            }
        };
        pump(stream, take, on_frame, watchdog).await
    }
}

/// Waits for the watchdog's next look at a connection: `PING_EVERY`, and
/// another after a wait that overran by a second or more — this thread did
/// not run for that long (a host short of CPU), replies may sit unread in
/// the socket, so the reader gets its turn before anyone is called dead.
pub(super) async fn watch_tick(last: &mut Instant) {
    loop {
        glommio::timer::sleep(PING_EVERY).await;
        let starved = last.elapsed() > 2 * PING_EVERY;
        *last = Instant::now();
        if !starved {
            return;
        }
        glommio::executor().yield_task_queue_now().await;
    }
}

/// Reconnect pacing for one connection: a wait doubling from
/// `BACKOFF_MIN` to `BACKOFF_MAX`, reset by a connect; a log line per
/// connect and one warning per outage and reason, not one per retry.
pub(super) struct Retry {
    what: &'static str,
    url: RedisUrl,
    backoff: Duration,
    last_why: Option<String>,
}

impl Retry {
    pub(super) fn new(what: &'static str, url: RedisUrl) -> Retry {
        Retry {
            what,
            url,
            backoff: BACKOFF_MIN,
            last_why: None,
        }
    }

    /// Connected: the next failure waits the shortest time again.
    pub(super) fn connected(&mut self) {
        tracing::info!(redis = %self.url, "{} connected", self.what);
        self.backoff = BACKOFF_MIN;
        self.last_why = None;
    }

    /// The connection failed (or could not be made) because of `why`:
    /// waits before the next attempt.
    pub(super) async fn failed(&mut self, why: String) {
        if self.last_why.as_deref() != Some(why.as_str()) {
            tracing::warn!(redis = %self.url, error = %why, "{} down; retrying with backoff", self.what);
            self.last_why = Some(why);
        }
        glommio::timer::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// Commands encoded and not yet written, and the writer parked until there
/// are some.
#[derive(Default)]
pub(super) struct Outbox {
    out: BytesMut,
    writer: Option<Waker>,
}

impl Outbox {
    /// Appends one command and wakes the writer.
    pub(super) fn push(&mut self, args: &[&[u8]]) {
        encode(&mut self.out, args);
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.out.len()
    }

    /// Drops what waits (the connection it was for is gone).
    pub(super) fn clear(&mut self) {
        self.out.clear();
    }

    /// Everything waiting, once there is something.
    pub(super) fn poll_take(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Bytes> {
        if self.out.is_empty() {
            self.writer = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(self.out.split().freeze())
        }
    }
}

/// One connection's life: writes whatever `take` yields, hands each reply
/// to `on_frame`, until the socket fails, `on_frame` refuses, or `watch`
/// ends; returns why. Replies are bounded by `MAX_REPLY`.
pub(super) async fn pump(
    stream: TcpStream,
    mut take: impl FnMut(&mut std::task::Context<'_>) -> Poll<Bytes>,
    mut on_frame: impl FnMut(Frame) -> Result<(), String>,
    watch: impl std::future::Future<Output = String>,
) -> String {
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let writer = async {
        loop {
            let chunk = std::future::poll_fn(&mut take).await;
            if let Err(e) = wr.write_all(&chunk).await {
                return format!("write: {e}");
            }
        }
    };
    let reader = async {
        let mut buf = BytesMut::with_capacity(64 << 10);
        let mut scratch = vec![0u8; 64 << 10];
        loop {
            let n = match rd.read(&mut scratch).await {
                Ok(0) => return "connection closed by redis".to_string(),
                Ok(n) => n,
                Err(e) => return format!("read: {e}"),
            };
            buf.extend_from_slice(&scratch[..n]);
            loop {
                match next_reply(&mut buf, MAX_REPLY) {
                    Ok(Some(frame)) => {
                        if let Err(why) = on_frame(frame) {
                            return why;
                        }
                    }
                    Ok(None) => break,
                    Err(why) => return why,
                }
            }
        }
    };
    futures_lite::future::or(futures_lite::future::or(writer, reader), watch).await
}

/// Where a command's reply lands (`None` with `done`: the link failed
/// first), and who waits for it.
#[derive(Default)]
struct Slot {
    reply: Option<Frame>,
    done: bool,
    waker: Option<Waker>,
}

/// A command written or waiting to be: its slot, and when it was issued
/// (the watchdog's clock). Dropping it, answered or not, wakes its caller.
struct Pending {
    slot: Rc<RefCell<Slot>>,
    at: Instant,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut s = self.slot.borrow_mut();
        s.done = true;
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }
}

/// Connects to `url` and sends `AUTH` / `SELECT` as it asks, within
/// `CONNECT_TIMEOUT`.
pub(super) async fn connect(url: &RedisUrl) -> Result<TcpStream, String> {
    let give_up = async {
        glommio::timer::sleep(CONNECT_TIMEOUT).await;
        Err(format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()))
    };
    futures_lite::future::or(connect_now(url), give_up).await
}

async fn connect_now(url: &RedisUrl) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(url.addr.as_str())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("connect: {e}"))?;
    let mut hello = BytesMut::new();
    let mut expect = 0;
    if let Some(pw) = &url.password {
        match &url.user {
            Some(user) => encode(&mut hello, &[b"AUTH", user.as_bytes(), pw.as_bytes()]),
            None => encode(&mut hello, &[b"AUTH", pw.as_bytes()]),
        }
        expect += 1;
    }
    if url.db != 0 {
        encode(&mut hello, &[b"SELECT", url.db.to_string().as_bytes()]);
        expect += 1;
    }
    if expect == 0 {
        return Ok(stream);
    }
    stream.write_all(&hello).await.map_err(|e| format!("write: {e}"))?;
    let mut buf = BytesMut::new();
    let mut scratch = [0u8; 4096];
    while expect > 0 {
        match next_reply(&mut buf, 4096)? {
            Some(Frame::Error(e)) => return Err(format!("AUTH / SELECT refused: {e}")),
            Some(_) => expect -= 1,
            None => match stream.read(&mut scratch).await {
                Ok(0) => return Err("connection closed during AUTH / SELECT".into()),
                Ok(n) => buf.extend_from_slice(&scratch[..n]),
                Err(e) => return Err(format!("read: {e}")),
            },
        }
    }
    Ok(stream)
}

/// Takes the first whole reply off `buf`: `None` until one is complete;
/// an error (why the connection must be dropped) for bytes that are not
/// RESP2 or an incomplete reply past `max` bytes. Every byte Redis sends
/// goes through here (fuzzed: fuzz/fuzz_targets/redis_reply.rs).
pub fn next_reply(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, String> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _, _))) => Ok(Some(frame)),
        Ok(None) if buf.len() > max => Err(format!("reply over {max} bytes")),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("bad reply: {e:?}")),
    }
}

/// Appends one command, as a RESP array of bulk strings.
pub fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    let frame = Frame::Array(
        args.iter()
            .map(|a| Frame::BulkString(Bytes::copy_from_slice(a)))
            .collect(),
    );
    extend_encode(out, &frame, false).expect("an array of bulk strings always encodes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"SET", b"k", b"v\r\n"]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
    }

    #[test]
    fn replies_come_off_the_buffer_one_at_a_time() {
        let mut buf = BytesMut::from(&b"+OK\r\n:42\r\n$3\r\nab"[..]);
        assert_eq!(
            next_reply(&mut buf, 100).unwrap(),
            Some(Frame::SimpleString("OK".into()))
        );
        assert_eq!(next_reply(&mut buf, 100).unwrap(), Some(Frame::Integer(42)));
        assert_eq!(next_reply(&mut buf, 100).unwrap(), None, "incomplete");
        buf.extend_from_slice(b"c\r\n");
        assert_eq!(
            next_reply(&mut buf, 100).unwrap(),
            Some(Frame::BulkString("abc".into()))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_or_endless_replies_drop_the_connection() {
        let mut buf = BytesMut::from(&b"?what\r\n"[..]);
        assert!(next_reply(&mut buf, 100).unwrap_err().starts_with("bad reply"));
        let mut buf = BytesMut::from(&b"$1000000\r\n"[..]);
        buf.extend_from_slice(&[b'x'; 200]);
        assert_eq!(next_reply(&mut buf, 100).unwrap_err(), "reply over 100 bytes");
    }

    #[test]
    fn a_link_that_never_connected_refuses_at_once() {
        let link = Link::new(RedisUrl::parse("redis://127.0.0.1:1").unwrap());
        match link.send(&[b"PING"]) {
            Err(RedisError::Down(url, why)) => {
                assert_eq!(url, "redis://127.0.0.1:1/0");
                assert_eq!(why, "not connected yet");
            }
            _ => panic!("a down link must refuse"),
        }
    }
}
