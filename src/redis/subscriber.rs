//! `Subscriber`: one shard's pub/sub connection to one Redis instance —
//! the channels it wants, kept subscribed across reconnects, and every
//! message on them handed to a callback.
//!
//! Runs on each shard, in its control queue, for the channels of the rooms
//! it owns that have members on its node and the channel globs of the room
//! patterns it owns that have subscribers there (so each channel and glob
//! is subscribed once per node; `shard::cluster` decides which). `subscribe`
//! and `unsubscribe` change the wanted set and, while connected, send the
//! command at once (they share a write, as `Link`'s commands do); after a
//! reconnect the task subscribes to the whole set again. Its callback hears
//! every channel message, every confirmed subscription and every lost
//! connection (`Event`): messages published while it was down are not on
//! the channel, so whoever needs them reads the room's Stream
//! (`redis::room`) once the channel is confirmed again.
//!
//! For an upgrade in place (`volley upgrade`) it can `pause`: everything is
//! unsubscribed on the connection it keeps, and once Redis has answered a
//! marker sent after that, no message can come any more; the callback
//! hears `Down` as if the connection were gone (room messages wait in the
//! Streams, what is sent to the node in its queue). `resume` subscribes the
//! wanted set again, as after a reconnect.
//!
//! Invariants: the wanted set, not the server's answers, is the truth (a
//! channel unsubscribed while its SUBSCRIBE is in flight ends
//! unsubscribed, the commands going out in order); the connection is taken
//! for dead when nothing arrives for `REPLY_TIMEOUT` although it pings
//! every `PING_EVERY`; what it reads is bounded as `Link`'s replies are.

use super::link::{connect, pump, watch_tick, Frame, Outbox, Retry, REPLY_TIMEOUT};
use super::RedisUrl;
use bytes::Bytes;
use fnv::FnvHashSet;
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// Most channels in one SUBSCRIBE after a reconnect.
const PER_COMMAND: usize = 1_000;

/// What the subscriber tells its callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message on a subscribed channel.
    Message {
        /// The channel.
        channel: Bytes,
        /// What was published.
        payload: Bytes,
    },
    /// A message on a channel that matched a subscribed glob
    /// (`psubscribe`).
    Matched {
        /// The channel.
        channel: Bytes,
        /// What was published.
        payload: Bytes,
    },
    /// Redis confirmed a subscription: from here on every message
    /// published to the channel arrives.
    Subscribed(Bytes),
    /// The connection is gone: every subscription with it (each channel
    /// is `Subscribed` again after the reconnect).
    Down,
}

/// A shard's pub/sub connection to one instance. Cloning shares it.
#[derive(Clone)]
pub struct Subscriber {
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    url: RedisUrl,
    /// Channels it should be subscribed to.
    wanted: FnvHashSet<String>,
    /// Channel globs it should be subscribed to (`PSUBSCRIBE`).
    globs: FnvHashSet<String>,
    /// Commands not yet written.
    outbox: Outbox,
    /// Connected (and the wanted set sent).
    up: bool,
    /// Why it is down.
    reason: String,
    /// Paused for a hand-off: nothing is subscribed while it is.
    paused: bool,
    /// Paused, and no message can arrive any more (the marker came back,
    /// or the connection is new or gone).
    quiet: bool,
}

/// The argument of the PING sent after a pause's unsubscribes: its answer
/// comes after theirs.
const QUIET_MARK: &[u8] = b"volley-quiet";

impl Subscriber {
    /// A subscriber of `url`, down until its task (`run`) connects it.
    pub fn new(url: RedisUrl) -> Subscriber {
        Subscriber {
            inner: Rc::new(RefCell::new(Inner {
                url,
                wanted: FnvHashSet::default(),
                globs: FnvHashSet::default(),
                outbox: Outbox::default(),
                up: false,
                reason: "not connected yet".into(),
                paused: false,
                quiet: false,
            })),
        }
    }

    /// The simulated-time harness's stand-in for the subscriber's task: up
    /// (the wanted set subscribed again, each channel to be confirmed by
    /// the harness's Redis) or down. Nothing is sent either way.
    #[cfg(test)]
    pub(crate) fn simulate(&self, up: bool) {
        let mut i = self.inner.borrow_mut();
        i.up = up;
        i.outbox.clear();
        i.reason = if up { String::new() } else { "simulated down".into() };
    }

    /// The channels and globs it wants now (simulated-time harness).
    #[cfg(test)]
    pub(crate) fn wanted(&self) -> (Vec<String>, Vec<String>) {
        let i = self.inner.borrow();
        (i.wanted.iter().cloned().collect(), i.globs.iter().cloned().collect())
    }

    /// Whether it is connected now.
    pub fn is_up(&self) -> bool {
        self.inner.borrow().up
    }

    /// Why it cannot subscribe now; `None` while it is up.
    pub fn down_reason(&self) -> Option<String> {
        let i = self.inner.borrow();
        (!i.up).then(|| format!("redis {} unreachable: {}", i.url, i.reason))
    }

    /// Wants `channel` (from now on, and after every reconnect).
    pub fn subscribe(&self, channel: &str) {
        let mut i = self.inner.borrow_mut();
        if i.wanted.insert(channel.to_string()) && i.live() {
            i.send(&[b"SUBSCRIBE", channel.as_bytes()]);
        }
    }

    /// No longer wants `channel`.
    pub fn unsubscribe(&self, channel: &str) {
        let mut i = self.inner.borrow_mut();
        if i.wanted.remove(channel) && i.live() {
            i.send(&[b"UNSUBSCRIBE", channel.as_bytes()]);
        }
    }

    /// Wants every channel matching `glob` (Redis glob syntax).
    pub fn psubscribe(&self, glob: &str) {
        let mut i = self.inner.borrow_mut();
        if i.globs.insert(glob.to_string()) && i.live() {
            i.send(&[b"PSUBSCRIBE", glob.as_bytes()]);
        }
    }

    /// No longer wants the channels matching `glob`.
    pub fn punsubscribe(&self, glob: &str) {
        let mut i = self.inner.borrow_mut();
        if i.globs.remove(glob) && i.live() {
            i.send(&[b"PUNSUBSCRIBE", glob.as_bytes()]);
        }
    }

    /// Unsubscribes from everything it wants (which it keeps wanting) until
    /// `resume`; see the module doc.
    pub fn pause(&self) {
        let mut i = self.inner.borrow_mut();
        if i.paused {
            return;
        }
        i.paused = true;
        i.quiet = !i.up;
        if i.up {
            i.send(&[b"UNSUBSCRIBE"]);
            i.send(&[b"PUNSUBSCRIBE"]);
            i.send(&[b"PING", QUIET_MARK]);
        }
    }

    /// Paused, and nothing can arrive any more.
    pub fn is_quiet(&self) -> bool {
        let i = self.inner.borrow();
        i.paused && i.quiet
    }

    /// Subscribes to the wanted set again after `pause`.
    pub fn resume(&self) {
        let mut i = self.inner.borrow_mut();
        if !i.paused {
            return;
        }
        i.paused = false;
        i.quiet = false;
        if i.up {
            i.resubscribe();
        }
    }

    /// Keeps the connection up until the executor ends, telling `on_event`
    /// what happens (`Event`).
    pub async fn run(self, mut on_event: impl FnMut(Event)) {
        let url = self.inner.borrow().url.clone();
        let mut retry = Retry::new("redis subscriber", url.clone());
        loop {
            let why = match connect(&url).await {
                Ok(stream) => {
                    retry.connected();
                    self.inner.borrow_mut().resubscribe();
                    let why = self.serve(stream, &mut on_event).await;
                    self.down(&why);
                    on_event(Event::Down);
                    why
                }
                Err(why) => {
                    self.down(&why);
                    why
                }
            };
            retry.failed(why).await;
        }
    }

    fn down(&self, why: &str) {
        let mut i = self.inner.borrow_mut();
        i.up = false;
        // Nothing arrives on a connection that is gone.
        i.quiet = i.paused;
        i.outbox.clear();
        why.clone_into(&mut i.reason);
    }

    async fn serve(&self, stream: TcpStream, on_event: &mut impl FnMut(Event)) -> String {
        let heard = std::cell::Cell::new(Instant::now());
        let take = |cx: &mut std::task::Context<'_>| self.inner.borrow_mut().outbox.poll_take(cx);
        let on_frame = |frame: Frame| {
            heard.set(Instant::now());
            if is_quiet_mark(&frame) {
                let mut i = self.inner.borrow_mut();
                if i.paused && !i.quiet {
                    i.quiet = true;
                    drop(i);
                    // Every subscription is gone, as when the connection is.
                    on_event(Event::Down);
                }
            } else if let Some(e) = event(frame) {
                on_event(e);
            }
            Ok(())
        };
        let watchdog = async {
            let mut last = Instant::now();
            loop {
                watch_tick(&mut last).await;
                if heard.get().elapsed() > REPLY_TIMEOUT {
                    return format!("nothing heard in {} s", REPLY_TIMEOUT.as_secs());
                }
                // In subscribed mode PING is answered with ["pong", ""].
                self.inner.borrow_mut().outbox.push(&[b"PING"]);
            }
        };
        pump(stream, take, on_frame, watchdog).await
    }
}

impl Inner {
    fn send(&mut self, args: &[&[u8]]) {
        self.outbox.push(args);
    }

    /// Connected and not paused: changes to the wanted set go out at once.
    fn live(&self) -> bool {
        self.up && !self.paused
    }

    /// After a connect: the whole wanted set, a thousand channels (or
    /// globs) a command; nothing while paused (a new connection has no
    /// subscription: nothing can arrive on it).
    fn resubscribe(&mut self) {
        self.up = true;
        if self.paused {
            self.quiet = true;
            return;
        }
        for (command, set) in [(&b"SUBSCRIBE"[..], &self.wanted), (b"PSUBSCRIBE", &self.globs)] {
            let names: Vec<&String> = set.iter().collect();
            for chunk in names.chunks(PER_COMMAND) {
                let mut args: Vec<&[u8]> = vec![command];
                args.extend(chunk.iter().map(|c| c.as_bytes()));
                self.outbox.push(&args);
            }
        }
    }
}

/// Whether `frame` answers the PING a pause sends after its unsubscribes
/// (`["pong", mark]` while subscribed, the bulk string once nothing is).
fn is_quiet_mark(frame: &Frame) -> bool {
    match frame {
        Frame::BulkString(b) => &b[..] == QUIET_MARK,
        Frame::Array(v) => {
            matches!(&v[..], [Frame::BulkString(k), Frame::BulkString(b)] if &k[..] == b"pong" && &b[..] == QUIET_MARK)
        }
        _ => false,
    }
}

/// A channel message or a subscription's confirmation; `None` for the
/// rest (unsubscribe and glob confirmations, pongs).
fn event(frame: Frame) -> Option<Event> {
    let Frame::Array(mut v) = frame else { return None };
    if v.len() == 4 {
        // ["pmessage", glob, channel, payload]
        let payload = v.pop()?;
        let channel = v.pop()?;
        return match (&v[0], channel, payload) {
            (Frame::BulkString(kind), Frame::BulkString(channel), Frame::BulkString(payload))
                if &kind[..] == b"pmessage" =>
            {
                Some(Event::Matched { channel, payload })
            }
            _ => None,
        };
    }
    if v.len() != 3 {
        return None;
    }
    let last = v.pop()?;
    let channel = v.pop()?;
    match (&v[0], channel, last) {
        (Frame::BulkString(kind), Frame::BulkString(channel), Frame::BulkString(payload))
            if &kind[..] == b"message" =>
        {
            Some(Event::Message { channel, payload })
        }
        (Frame::BulkString(kind), Frame::BulkString(channel), Frame::Integer(_)) if &kind[..] == b"subscribe" => {
            Some(Event::Subscribed(channel))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::link::next_reply;

    fn bulk(s: &'static [u8]) -> Frame {
        Frame::BulkString(Bytes::from_static(s))
    }

    #[test]
    fn a_pause_is_quiet_once_its_marker_comes_back_and_sends_nothing_meanwhile() {
        let s = Subscriber::new(RedisUrl::parse("redis://127.0.0.1:1").unwrap());
        s.subscribe("vly:{a}");
        s.inner.borrow_mut().resubscribe();
        s.inner.borrow_mut().outbox.clear();
        s.pause();
        assert!(!s.is_quiet());
        let sent = s.inner.borrow().outbox.len();
        assert!(sent > 0, "UNSUBSCRIBE, PUNSUBSCRIBE, PING");
        s.subscribe("vly:{b}");
        assert_eq!(s.inner.borrow().outbox.len(), sent, "wanted, not sent while paused");
        assert!(is_quiet_mark(&Frame::Array(vec![bulk(b"pong"), bulk(b"volley-quiet")])));
        assert!(is_quiet_mark(&bulk(b"volley-quiet")));
        assert!(!is_quiet_mark(&Frame::Array(vec![bulk(b"pong"), bulk(b"")])));
        s.inner.borrow_mut().quiet = true;
        assert!(s.is_quiet());
        s.inner.borrow_mut().outbox.clear();
        s.resume();
        assert!(!s.is_quiet());
        assert!(s.inner.borrow().outbox.len() > 0, "the wanted set subscribed again");
    }

    #[test]
    fn messages_and_confirmations_reach_the_callback() {
        let m = Frame::Array(vec![bulk(b"message"), bulk(b"vly:{r}"), bulk(b"1 2 3 0 0 x")]);
        assert_eq!(
            event(m),
            Some(Event::Message {
                channel: Bytes::from_static(b"vly:{r}"),
                payload: Bytes::from_static(b"1 2 3 0 0 x")
            })
        );
        let confirm = Frame::Array(vec![bulk(b"subscribe"), bulk(b"vly:{r}"), Frame::Integer(1)]);
        assert_eq!(event(confirm), Some(Event::Subscribed(Bytes::from_static(b"vly:{r}"))));
        let gone = Frame::Array(vec![bulk(b"unsubscribe"), bulk(b"vly:{r}"), Frame::Integer(0)]);
        assert!(event(gone).is_none());
        assert!(event(Frame::Array(vec![bulk(b"pong"), bulk(b"")])).is_none());
        let matched = Frame::Array(vec![
            bulk(b"pmessage"),
            bulk(b"vly:{live://*"),
            bulk(b"vly:{live://1}"),
            bulk(b"x"),
        ]);
        assert_eq!(
            event(matched),
            Some(Event::Matched {
                channel: Bytes::from_static(b"vly:{live://1}"),
                payload: Bytes::from_static(b"x")
            })
        );
        let glob = Frame::Array(vec![bulk(b"psubscribe"), bulk(b"vly:{live://*"), Frame::Integer(1)]);
        assert!(event(glob).is_none());
        assert!(event(bulk(b"message")).is_none());
    }

    #[test]
    fn a_reconnect_subscribes_to_every_wanted_channel() {
        let s = Subscriber::new(RedisUrl::parse("redis://127.0.0.1:1").unwrap());
        for i in 0..2500 {
            s.subscribe(&format!("c{i}"));
        }
        s.psubscribe("g*");
        s.unsubscribe("c7");
        assert_eq!(s.inner.borrow().outbox.len(), 0, "nothing is sent while down");
        s.inner.borrow_mut().resubscribe();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(sent) = s.inner.borrow_mut().outbox.poll_take(&mut cx) else {
            panic!("the resubscription is queued")
        };
        let mut out = bytes::BytesMut::from(&sent[..]);
        let mut channels = 0;
        let mut commands = 0;
        while let Some(Frame::Array(v)) = next_reply(&mut out, usize::MAX).unwrap() {
            commands += 1;
            channels += v.len() - 1;
            assert!(!v.contains(&bulk(b"c7")));
        }
        assert_eq!((commands, channels), (4, 2500));
    }
}
