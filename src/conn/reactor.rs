//! The shard's reactor: the task that runs connection drivers. It submits
//! what the readiness ring (`conn::ring`) has queued, and runs the driver
//! (`conn::driver`) of each connection a completion names (bytes arrived,
//! the socket takes writes again) or the shard woke (`Shard::wake_conn`:
//! closes, queues the flusher hands over).
//!
//! Runs on each shard's executor, one task in the default queue (the
//! control queue's inbox, API and flusher go first). It waits on the ring's
//! eventfd through glommio (a buffered-file read, which glommio's own ring
//! completes when the counter is non-zero), so the executor parks as before
//! and wakes for our completions.
//!
//! Invariants: a connection named twice in one batch runs once; one whose
//! driver stopped early (`Step::Again`) runs again after the others; the
//! reactor yields every `BATCH` completions or runs; the shard is borrowed
//! only outside driver runs, never across an await.

use super::driver::{self, Step};
use super::ring;
use crate::shard::mesh::ConnRef;
use crate::shard::Shard;
use glommio::io::BufferedFile;
use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::task::Poll;

/// Completions or driver runs handled between yields.
const BATCH: usize = 1024;

/// Submits what was queued, and runs the drivers whose sockets became
/// readable or writable or whose connections were woken
/// (`Shard::wake_conn`), until the executor ends.
pub async fn reactor(shard: Rc<RefCell<Shard>>) {
    let Some(efd) = ring::take_eventfd() else {
        return;
    };
    // SAFETY: the ring's eventfd, handed over to glommio, which reads it
    // (an eventfd ignores the offset) and closes it on drop.
    let file = unsafe { BufferedFile::from_raw_fd(efd.into_raw_fd()) };
    let mut done: Vec<(u64, i32, u32)> = Vec::with_capacity(BATCH);
    let mut todo: Vec<ConnRef> = Vec::new();
    loop {
        let mut signal = std::pin::pin!(file.read_at(0, 8));
        std::future::poll_fn(|cx| {
            ring::submit();
            let completions = ring::poll_completions(cx.waker());
            let mut sh = shard.borrow_mut();
            sh.woken().set_task(cx.waker());
            if completions || !sh.woken().is_empty() {
                return Poll::Ready(());
            }
            drop(sh);
            match signal.as_mut().poll(cx) {
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "readiness ring: eventfd read failed");
                    Poll::Ready(())
                }
                Poll::Ready(Ok(_)) => Poll::Ready(()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        loop {
            done.clear();
            ring::take_completions(&mut done, BATCH);
            {
                let mut sh = shard.borrow_mut();
                sh.woken().take_into(&mut todo);
                ring::dispatch(&mut sh, &done, &mut todo);
            }
            if todo.is_empty() && done.is_empty() {
                break;
            }
            if shard.borrow().handing_off {
                // Handed to the next process: it reads and writes them.
                todo.clear();
                continue;
            }
            // A connection named twice in one pass runs once.
            todo.sort_unstable_by_key(|r| (r.idx, r.gen));
            todo.dedup();
            for chunk in todo.chunks(BATCH) {
                // As in the flusher: not a byte read or written once a
                // hand-off has begun, even in the middle of a pass.
                if shard.borrow().handing_off {
                    break;
                }
                for &r in chunk {
                    if driver::run(&shard, r) == Step::Again {
                        shard.borrow_mut().wake_conn(r);
                    }
                }
                ring::submit();
                glommio::executor().yield_if_needed().await;
            }
        }
    }
}
