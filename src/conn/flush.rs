//! The shard's flusher: one task that writes the queues deliveries filled,
//! instead of running one driver per connection.
//!
//! Runs on each shard's executor in the control queue, beside the mesh inbox,
//! so it runs right after a burst of fan-out has been queued (the inbox yields
//! or drains), and writes every connection on the shard's dirty list
//! (`Shard::mark_dirty`). With `[client] flush_delay_ms` set it keeps that
//! window between the end of a busy round (`busy`: at least half the
//! connections it wrote have new frames already, and frames came fast enough
//! that the window should bring each another, `worth_holding`) and the start of
//! the next, so that the messages published meanwhile share each connection's
//! write (less CPU per delivery, up to a window more latency); a fan-out after
//! a quiet round or a quiet window is written at once. Up to `YIELD_EVERY`
//! connections at a time, each one's first write is a `sendmsg` SQE on the
//! flusher's own io_uring, and one `io_uring_enter` submits them all and waits
//! for them (`MSG_DONTWAIT`: the kernel completes each at once, written or
//! EAGAIN); what a connection has left after that goes out with plain `sendmsg`
//! calls, up to `WRITES_PER_FLUSH` per connection. A connection whose socket is
//! full gets a POLLOUT request on the shard's readiness ring (`conn::ring`),
//! whose completion wakes its driver to write the rest; a closing one is its
//! driver's.
//!
//! Why a ring of its own: glommio 0.9 writes sockets with one syscall each
//! and its ring is not ours to submit to; batching the sends cut server CPU
//! per delivery by 10-13 % at 19,000 subscribers (BENCHMARKS.md).
//!
//! Invariants: the shard is borrowed only between awaits, and from a batch's
//! submission to its last completion, so the frames the SQEs point into stay
//! in their queues until the kernel is done with them; a queue is written
//! only here and by its own driver, both on this thread, each write counted
//! through `Shard::written`; the flusher yields every `YIELD_EVERY`
//! connections so that reads and accepts are not starved by a big fan-out.

use crate::conn::driver::{write_queue, wrote};
use crate::conn::ring;
use crate::metrics::{self, ShardStats};
use crate::proto::close::CloseReason;
use crate::shard::mesh::ConnRef;
use crate::shard::Shard;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Writes per connection per flush before it waits for the next round.
const WRITES_PER_FLUSH: usize = 16;
/// Connections written between yields.
const YIELD_EVERY: usize = 256;

/// Writes dirty queues until the executor ends.
pub async fn flusher(shard: Rc<RefCell<Shard>>) {
    // Without a ring of its own (io_uring refused), one write call each.
    let mut batch = match Batch::new() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "no io_uring for the flusher: writing with one sendmsg each");
            None
        }
    };
    let (id, shared) = {
        let sh = shard.borrow();
        (sh.id, sh.shared.clone())
    };
    let window = Duration::from_millis(shared.config.client.flush_delay_ms);
    // When the last busy round of writes ended.
    let mut last: Option<Instant> = None;
    let mut dirty = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            let mut sh = shard.borrow_mut();
            if sh.dirty().is_empty() {
                sh.dirty().set_task(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        // A window of quiet between rounds: a fan-out after a quiet window
        // is written at once; one sooner, after a busy round, waits for the
        // window's end while deliveries keep queueing (each write then
        // carries more). Measured from the end of the last round, so that
        // a shard busy writing still gathers more per write.
        if let Some(since) = last.map(|t| t.elapsed()).filter(|&s| s < window) {
            ShardStats::add(&shared.stats[id].flush_holds, 1);
            glommio::timer::sleep(window - since).await;
        }
        shard.borrow_mut().dirty().take_into(&mut dirty);
        if shard.borrow().handing_off {
            // What is queued goes with the records to the next process.
            dirty.clear();
            continue;
        }
        let (started, queued_before) = (Instant::now(), shared.stats[id].deliveries.load(Relaxed));
        // A connection twice in one batch would have its frames sent twice:
        // sorted and deduplicated once per round, which also lets a batch's
        // completions find their connection by binary search.
        dirty.sort_unstable_by_key(|r| (r.idx, r.gen));
        dirty.dedup();
        for chunk in dirty.chunks(YIELD_EVERY) {
            {
                let mut sh = shard.borrow_mut();
                // A hand-off began during the last yield: from here on the
                // queues are the next process's to write (their records
                // may already be taken).
                if sh.handing_off {
                    break;
                }
                let now = metrics::clock_us();
                sh.set_clock(now);
                match batch.as_mut() {
                    Some(b) => b.flush(&mut sh, chunk, now),
                    None => {
                        for &r in chunk {
                            flush_one(&mut sh, r, now);
                        }
                    }
                }
            }
            glommio::executor().yield_if_needed().await;
        }
        // Held only after a busy round (`busy`), and only when the window
        // is expected to bring each connection another frame (`worth_holding`).
        let queued = shared.stats[id].deliveries.load(Relaxed).wrapping_sub(queued_before);
        last = (!window.is_zero()
            && busy(&dirty, shard.borrow_mut().dirty().items())
            && worth_holding(queued, dirty.len(), started.elapsed(), window))
        .then(Instant::now);
    }
}

/// Whether a round was busy: at least half the connections it wrote
/// (`round`, sorted) have something new already (`since`). Then the
/// messages come faster than a round lasts and the next round gains by
/// waiting, each write carrying more; otherwise what comes next is a paced
/// message, or replies and pushes to other connections (heartbeats,
/// small rooms), which waiting would only delay.
fn busy(round: &[ConnRef], since: &[ConnRef]) -> bool {
    let need = round.len().div_ceil(2);
    if round.is_empty() || since.len() < need {
        return false;
    }
    let mut again = 0;
    for r in since {
        if round.binary_search_by_key(&(r.idx, r.gen), |c| (c.idx, c.gen)).is_ok() {
            again += 1;
            if again >= need {
                return true;
            }
        }
    }
    false
}

/// Whether holding the next round for `window` should gather another frame
/// per connection: `queued` frames arrived during a round of `conns`
/// connections that lasted `took`, so each connection gets frames at about
/// queued / conns / took, and the window at that rate brings at least one.
/// A round that outlasts the gap between paced messages (5 msg/s and a
/// round of 19,000 writes longer than 200 ms, the load generator taking
/// the shard's core) sees one message arrive during it: holding would add
/// its wait and save no write.
fn worth_holding(queued: u64, conns: usize, took: Duration, window: Duration) -> bool {
    u128::from(queued) * window.as_micros() >= conns as u128 * took.as_micros()
}

/// Writes what `r` has queued; see the module doc for who takes over when
/// this cannot finish.
fn flush_one(sh: &mut Shard, r: ConnRef, now: u32) {
    for _ in 0..WRITES_PER_FLUSH {
        let Some(fd) = ours(sh, r) else { return };
        match write_queue(fd, &sh.conn(r).expect("checked by ours").out) {
            Ok(n) => wrote(sh, r, n, now),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                blocked(sh, r);
                return;
            }
            Err(_) => {
                sh.close(r, CloseReason::IoError, "");
                return;
            }
        }
    }
    // Budget spent with frames left: after the others.
    if sh.conn(r).is_some_and(|c| !c.out.is_empty()) {
        sh.mark_dirty(r);
    }
}

/// `r`'s socket when it has frames for the flusher to write; a closing
/// connection (or one without a socket) is its driver's, which is woken.
fn ours(sh: &mut Shard, r: ConnRef) -> Option<std::os::fd::RawFd> {
    let c = sh.conn(r)?;
    if c.out.is_empty() {
        return None;
    }
    if c.closing() || c.fd < 0 {
        sh.wake_conn(r);
        return None;
    }
    Some(c.fd)
}

/// `r`'s socket is full: its driver writes the rest once the readiness
/// ring says the socket takes writes again.
fn blocked(sh: &mut Shard, r: ConnRef) {
    sh.write_blocked(r);
    if let Some(c) = sh.conn(r) {
        ring::want_write(c.fd, r);
    }
}

/// One io_uring of the flusher's own: a chunk's first write to each
/// connection goes in as one `sendmsg` SQE each, submitted with a single
/// `io_uring_enter` that waits for all of them (`MSG_DONTWAIT`: the kernel
/// completes each inline, or with EAGAIN). The shard stays borrowed from
/// submission to the last completion, so the queues the iovecs point into
/// cannot change meanwhile.
struct Batch {
    ring: io_uring::IoUring,
    iov: Vec<[libc::iovec; crate::shard::outbound::MAX_IOV]>,
    msg: Vec<libc::msghdr>,
    conns: Vec<ConnRef>,
    /// A batch's completions (tag, result), kept between batches.
    done: Vec<(u64, i32)>,
}

impl Batch {
    fn new() -> io::Result<Batch> {
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Ok(Batch {
            ring: io_uring::IoUring::new(YIELD_EVERY as u32)?,
            iov: vec![[zero_iov; crate::shard::outbound::MAX_IOV]; YIELD_EVERY],
            // SAFETY: msghdr is plain data; zeroed is a valid empty header.
            msg: (0..YIELD_EVERY).map(|_| unsafe { std::mem::zeroed() }).collect(),
            conns: Vec::with_capacity(YIELD_EVERY),
            done: Vec::with_capacity(YIELD_EVERY),
        })
    }

    /// Writes `chunk` (sorted, without repeats).
    fn flush(&mut self, sh: &mut Shard, chunk: &[ConnRef], now: u32) {
        self.conns.clear();
        for &r in chunk {
            let Some(fd) = ours(sh, r) else { continue };
            let c = sh.conn(r).expect("checked by ours");
            let i = self.conns.len();
            let mut slices = [std::io::IoSlice::new(&[]); crate::shard::outbound::MAX_IOV];
            let n = c.out.iovecs(&mut slices);
            for (dst, src) in self.iov[i].iter_mut().zip(&slices[..n]) {
                dst.iov_base = src.as_ptr() as *mut _;
                dst.iov_len = src.len();
            }
            self.msg[i].msg_iov = self.iov[i].as_mut_ptr();
            self.msg[i].msg_iovlen = n as _;
            let sqe = io_uring::opcode::SendMsg::new(io_uring::types::Fd(fd), &self.msg[i])
                .flags((libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u32)
                .build()
                .user_data((u64::from(r.idx) << 32) | u64::from(r.gen));
            // SAFETY: the msghdr, its iovecs and the bytes they point to
            // (held by the connection's queue, which cannot change while
            // `sh` is borrowed) outlive the wait below for every completion.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                break;
            }
            self.conns.push(r);
        }
        let want = self.conns.len();
        let mut have = 0;
        while have < want {
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {}
                Err(e) => {
                    // Not seen in practice: what completes later is matched
                    // by the connection it names (user_data), and what does
                    // not complete here is written again by the next round.
                    tracing::error!(error = %e, "flusher io_uring_enter failed");
                    break;
                }
            }
            have = self.ring.completion().len();
        }
        self.done.clear();
        self.done
            .extend(self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        let mut answered = 0;
        for &(tag, res) in &self.done {
            let r = ConnRef {
                idx: (tag >> 32) as u32,
                gen: tag as u32,
            };
            if self
                .conns
                .binary_search_by_key(&(r.idx, r.gen), |c| (c.idx, c.gen))
                .is_err()
            {
                continue;
            }
            answered += 1;
            if res > 0 {
                wrote(sh, r, res as usize, now);
                if sh.conn(r).is_some_and(|c| !c.out.is_empty()) {
                    flush_one(sh, r, now);
                }
            } else if res == -libc::EAGAIN || res == -libc::EINTR {
                blocked(sh, r);
            } else {
                sh.close(r, CloseReason::IoError, "");
            }
        }
        if answered < want {
            for &r in &self.conns {
                sh.mark_dirty(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(idx: impl IntoIterator<Item = u32>) -> Vec<ConnRef> {
        idx.into_iter().map(|idx| ConnRef { idx, gen: 1 }).collect()
    }

    #[test]
    fn a_round_is_busy_when_half_its_connections_have_new_frames() {
        let round = refs(0..10);
        assert!(busy(&round, &refs(0..5)));
        assert!(busy(&round, &refs((0..10).rev())));
        assert!(!busy(&round, &refs(0..4)));
        assert!(!busy(&round, &[]));
        assert!(!busy(&[], &refs(0..4)));
    }

    #[test]
    fn a_hold_must_be_expected_to_bring_each_connection_a_frame() {
        let ms = Duration::from_millis;
        // 50 msg/s: six messages to 19,000 during a 130 ms round.
        assert!(worth_holding(6 * 19_000, 19_000, ms(130), ms(100)));
        // 5 msg/s, a round that outlasted the 200 ms between messages.
        assert!(!worth_holding(19_000, 19_000, ms(210), ms(100)));
        // One message during a round as long as the window: just worth it.
        assert!(worth_holding(19_000, 19_000, ms(100), ms(100)));
        assert!(!worth_holding(0, 19_000, ms(50), ms(100)), "nothing came");
    }

    #[test]
    fn other_connections_and_new_generations_do_not_count() {
        let round = refs(0..10);
        // Replies and pushes to connections the round did not write.
        assert!(!busy(&round, &refs(10..30)));
        assert!(!busy(&round, &refs((0..4).chain(10..30))));
        // Same slots, reused by new connections.
        let reused: Vec<_> = (0..10).map(|idx| ConnRef { idx, gen: 2 }).collect();
        assert!(!busy(&round, &reused));
    }
}
