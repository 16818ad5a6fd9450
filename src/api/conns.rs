//! The application-server side's connections on a shard: how many there
//! are (`[api] max_conns`, HTTP and TCP publishers together), each one's
//! deadline, and the bytes of HTTP request bodies being read beyond
//! `FREE_BODY` each (`[api] body_memory`).
//!
//! Runs on each shard's thread (the table is thread-local: one per shard),
//! touched by the API's and the publishers' connection tasks; nothing here
//! reads a socket. A connection's task registers it (`admit`), says when it
//! is in a request (`ApiConn::busy`) or waiting for the next one
//! (`ApiConn::waiting`), and races its I/O against `ApiConn::ended`, which
//! completes at the deadline or when the connection is evicted.
//!
//! ```text
//! accept ── table under its share of max_conns ──> admitted, waiting (idle deadline)
//!        └─ full: the connection waiting longest ─> evicted (its task ends), newcomer admitted
//!           none waiting (all in requests) ──────> refused (503 / op 6 conn_limit)
//! waiting ── a request's first byte ──> its headers due (header deadline, if sooner)
//!         ── a request's headers (HTTP) / auth (publisher) ──> busy (request deadline)
//! busy ── the answer ──> waiting (idle deadline)
//! ```
//!
//! Why eviction rather than refusal at the cap: a connection that is not
//! in a request (trickling a request's headers, never authenticating, idle
//! between requests) costs its client nothing to hold, so a cap that only
//! refuses would let anyone who can open sockets keep application servers
//! out. Evicting the one that has waited longest keeps every slot
//! preemptible; an honest keep-alive connection that is evicted reconnects.
//!
//! Invariants: a table entry lives exactly as long as its `Admitted`; the
//! body bytes counted are those of `BodyLease`s alive.

use futures_lite::future;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
    /// The next process takes over (`volley upgrade`): no connection
    /// waits for another request.
    static LETTING_GO: Cell<bool> = const { Cell::new(false) };
}

/// Ends this shard's API connections for the next process (`volley
/// upgrade`): every one waiting for a request now, one in a request once
/// it is answered (after a moment for the answer to be written). Their
/// clients connect again, to the next process.
pub fn let_go() {
    LETTING_GO.with(|l| l.set(true));
    TABLE.with(|t| {
        for (_, c) in t.borrow().conns.iter() {
            if !c.busy.get() {
                c.evict();
            }
        }
    });
}

/// Whether this shard's API connections are being let go: an answer
/// given now is the connection's last (`Connection: close`).
pub fn letting_go() -> bool {
    LETTING_GO.with(Cell::get)
}

/// The hand-off did not happen: connections wait for requests again.
pub fn hold_on() {
    LETTING_GO.with(|l| l.set(false));
}

/// What this shard's open API and publisher connections are doing (for
/// a hand-off that waits on them): how many are in a request, evicted,
/// and how long the oldest has waited since it last changed.
pub fn describe() -> String {
    TABLE.with(|t| {
        let t = t.borrow();
        let now = Instant::now();
        let busy = t.conns.iter().filter(|(_, c)| c.busy.get()).count();
        let evicted = t.conns.iter().filter(|(_, c)| c.evicted.get()).count();
        let oldest = t
            .conns
            .iter()
            .map(|(_, c)| now.saturating_duration_since(c.since.get()))
            .max();
        format!(
            "{busy} in a request, {evicted} evicted, the oldest waiting {:.1} s",
            oldest.unwrap_or_default().as_secs_f64()
        )
    })
}

/// API and publisher connections open on this shard.
pub fn open() -> usize {
    TABLE.with(|t| t.borrow().conns.len())
}

/// After its answer, how long a connection stays while letting go: the
/// time to write the answer.
const LET_GO_AFTER: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Table {
    conns: Slab<Rc<ApiConn>>,
    /// Bytes of request bodies leased out.
    body_bytes: usize,
}

/// One API or publisher connection's state, shared by its task and the
/// table.
#[derive(Debug)]
pub struct ApiConn {
    /// In a request (or an authenticated publisher): not evictable.
    busy: Cell<bool>,
    /// When it last started waiting (the eviction order).
    since: Cell<Instant>,
    /// When its task must end.
    deadline: Cell<Instant>,
    /// Taken out to make room for a newcomer.
    evicted: Cell<bool>,
    /// Bytes of the next request have arrived (its header deadline is set).
    started: Cell<bool>,
    /// The deadline moved sooner: the task waiting in `ended` must look
    /// again.
    nudged: Cell<bool>,
    /// The task waiting in `ended`.
    waker: RefCell<Option<Waker>>,
}

impl ApiConn {
    /// Waiting for a request (or for auth) until `deadline`: evictable.
    pub fn waiting(&self, now: Instant, deadline: Instant) {
        self.busy.set(false);
        self.started.set(false);
        self.since.set(now);
        self.deadline.set(deadline);
        if LETTING_GO.with(Cell::get) {
            self.deadline.set(now + LET_GO_AFTER);
            self.nudged.set(true);
            self.wake();
        }
    }

    /// Bytes arrived: the first of a request has its headers due by
    /// `headers_by()`, however many more trickle in (asked only then: this
    /// runs on every read, bodies included).
    pub fn heard(&self, headers_by: impl FnOnce() -> Instant) {
        if !self.busy.get() && !self.started.get() {
            self.started.set(true);
            let headers_by = headers_by();
            if headers_by < self.deadline.get() {
                self.deadline.set(headers_by);
                self.nudged.set(true);
                self.wake();
            }
        }
    }

    /// In a request until `deadline`: not evictable.
    pub fn busy(&self, deadline: Instant) {
        self.busy.set(true);
        self.deadline.set(deadline);
    }

    /// Trusted from now on (an authenticated publisher): not evictable; its
    /// task judges its own quiet time.
    pub fn keep(&self) {
        self.busy.set(true);
    }

    /// Takes back an eviction by `let_go` (the hand-off was called off;
    /// nothing else evicts meanwhile: nothing is accepted).
    pub fn pardon(&self) {
        self.evicted.set(false);
    }

    /// Whether it was evicted to make room.
    pub fn is_evicted(&self) -> bool {
        self.evicted.get()
    }

    /// Completes once the connection is past its deadline (as it stands
    /// then: `busy` and `waiting` move it later, `heard` sooner) or
    /// evicted: `true` when evicted.
    pub async fn ended(&self) -> bool {
        loop {
            if self.evicted.get() {
                return true;
            }
            let now = Instant::now();
            let deadline = self.deadline.get();
            if now >= deadline {
                return false;
            }
            // Asleep until the deadline as it stands now, or until woken
            // because it moved sooner or the connection was evicted; either
            // way, look again.
            future::or(glommio::timer::sleep(deadline - now), Nudged(self)).await;
        }
    }

    fn evict(&self) {
        self.evicted.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Completes when its connection is evicted or its deadline moved sooner.
struct Nudged<'a>(&'a ApiConn);

impl Future for Nudged<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.evicted.get() || self.0.nudged.replace(false) {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A connection's place in its shard's table; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    key: usize,
    /// The connection's state.
    pub conn: Rc<ApiConn>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            // An evicted connection's place may hold a newcomer by now.
            if t.conns.get(self.key).is_some_and(|c| Rc::ptr_eq(c, &self.conn)) {
                t.conns.remove(self.key);
            }
        });
    }
}

/// What `admit` did.
#[derive(Debug)]
pub enum Admission {
    /// A place in the table (after evicting another connection if `evicted`).
    In {
        /// The place.
        admitted: Admitted,
        /// Another connection was evicted to make it.
        evicted: bool,
    },
    /// Every place is taken by a connection in a request.
    Full,
}

/// Admits a new connection on this shard, which holds at most `cap`,
/// waiting for its first request until `deadline` (while letting go, a
/// moment: one accepted just before the hand-off began gets its request
/// in, or goes to the next process).
pub fn admit(cap: usize, deadline: Instant) -> Admission {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let now = Instant::now();
        let deadline = if LETTING_GO.with(Cell::get) {
            deadline.min(now + LET_GO_AFTER)
        } else {
            deadline
        };
        let mut evicted = false;
        if t.conns.len() >= cap {
            // The connection waiting longest, not already on its way out.
            let victim = t
                .conns
                .iter()
                .filter(|(_, c)| !c.busy.get() && !c.evicted.get())
                .min_by_key(|(_, c)| c.since.get())
                .map(|(k, _)| k);
            let Some(k) = victim else {
                return Admission::Full;
            };
            t.conns[k].evict();
            // Its place is free now, whenever its task gets to end.
            t.conns.remove(k);
            evicted = true;
        }
        let conn = Rc::new(ApiConn {
            busy: Cell::new(false),
            since: Cell::new(now),
            deadline: Cell::new(deadline),
            evicted: Cell::new(false),
            started: Cell::new(false),
            nudged: Cell::new(false),
            waker: RefCell::new(None),
        });
        let key = t.conns.insert(conn.clone());
        Admission::In {
            admitted: Admitted { key, conn },
            evicted,
        }
    })
}

/// API and publisher connections on this shard.
pub fn count() -> usize {
    TABLE.with(|t| t.borrow().conns.len())
}

/// Bytes of body every request may read without a lease: their sum is
/// bounded by `[api] max_conns` already, and a publisher's ordinary push
/// must not wait behind large bodies that stall (only the part of a body
/// beyond this is leased).
pub const FREE_BODY: usize = 64 << 10;

/// Bytes of a request body being read, counted against this shard's share
/// of `[api] body_memory` until dropped.
#[derive(Debug)]
pub struct BodyLease(usize);

impl Drop for BodyLease {
    fn drop(&mut self) {
        TABLE.with(|t| t.borrow_mut().body_bytes -= self.0);
    }
}

/// Leases `bytes` of body memory if this shard has them under `cap`.
pub fn lease_body(bytes: usize, cap: usize) -> Option<BodyLease> {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        if t.body_bytes.saturating_add(bytes) > cap {
            return None;
        }
        t.body_bytes += bytes;
        Some(BodyLease(bytes))
    })
}

/// `now + secs`.
pub fn after(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_waiting_goes_and_busy_ones_stay() {
        let later = after(60);
        let Admission::In { admitted: a, .. } = admit(2, later) else {
            panic!("room for one")
        };
        std::thread::sleep(Duration::from_millis(2));
        let Admission::In { admitted: b, .. } = admit(2, later) else {
            panic!("room for two")
        };
        let Admission::In { admitted: c, evicted } = admit(2, later) else {
            panic!("the first waiting one makes room")
        };
        assert!(evicted && a.conn.is_evicted() && !b.conn.is_evicted());
        assert_eq!(count(), 2);
        drop(a);
        assert_eq!(count(), 2, "its place was freed at eviction");
        b.conn.busy(later);
        c.conn.busy(later);
        assert!(matches!(admit(2, later), Admission::Full), "all in requests");
        c.conn.waiting(Instant::now(), later);
        let Admission::In { admitted: d, .. } = admit(2, later) else {
            panic!("c waits again")
        };
        assert!(c.conn.is_evicted());
        drop((b, c, d));
        assert_eq!(count(), 0);

        // A request's first byte brings its header deadline forward, once.
        let Admission::In { admitted: e, .. } = admit(8, later) else {
            panic!("room")
        };
        let soon = Instant::now() + Duration::from_secs(2);
        e.conn.heard(|| soon);
        e.conn.heard(|| soon + Duration::from_secs(1));
        assert_eq!(e.conn.deadline.get(), soon);
        e.conn.waiting(Instant::now(), later);
        assert_eq!(e.conn.deadline.get(), later, "an answer resets it");
        drop(e);

        let one = lease_body(10, 15).expect("fits");
        assert!(lease_body(6, 15).is_none());
        let two = lease_body(5, 15).expect("fits exactly");
        drop(one);
        assert!(lease_body(10, 15).is_some());
        drop(two);
    }
}
