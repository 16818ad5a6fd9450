//! Wake-up insurance for a glommio executor: a plain thread wakes one idle
//! task on the executor every `period`, so the executor can never sleep
//! forever.
//!
//! Why: on this host (glommio 0.9, Linux 6.18) an executor sometimes parks in
//! `io_uring_enter(min_complete = 1)` on its main ring and never wakes,
//! although a timer it armed on its latency ring has long expired: seen as
//! load generator workers stuck in a 5 ms pacing sleep (so a 1,000,000
//! connection run stalled at 968k-987k again and again), and as a volley shard
//! stuck in its shutdown-grace sleep. Interrupting the thread (strace, gdb)
//! let it run on at once; see BENCHMARKS.md and DataDog/glommio#326. A wake
//! from another thread goes through the executor's eventfd, whose read is
//! always armed on the main ring before it sleeps, so it ends such a sleep.
//! Cost: one thread and `1 / period` wake-ups per second per executor.
//!
//! Runs on: any executor thread (`spawn` is called from inside it). The
//! waking thread ends within one period after the returned `Keeper` is
//! dropped; hold it for as long as the executor runs (glommio does not drop
//! a detached task's future when its executor ends, so the task cannot be
//! what stops the thread).

use atomic_waker::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// How often the keeper wakes its executor: the longest a lost wake-up can
/// stall it.
pub const PERIOD: Duration = Duration::from_millis(100);

struct Shared {
    waker: AtomicWaker,
    done: AtomicBool,
}

/// Keeps the waking thread going; dropping it ends the thread.
#[must_use = "the keeper stops when dropped"]
pub struct Keeper(Arc<Shared>);

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
    }
}

/// Spawns the keeper on the current glommio executor (in its current task
/// queue) and its waking thread, named `name`.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn(name: &str, period: Duration) -> std::io::Result<Keeper> {
    let shared = Arc::new(Shared {
        waker: AtomicWaker::new(),
        done: AtomicBool::new(false),
    });
    let remote = shared.clone();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        while !remote.done.load(Ordering::Acquire) {
            std::thread::sleep(period);
            remote.waker.wake();
        }
    })?;
    let task = shared.clone();
    glommio::spawn_local(std::future::poll_fn(move |cx| {
        task.waker.register(cx.waker());
        Poll::<()>::Pending
    }))
    .detach();
    Ok(Keeper(shared))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == name)
            .count()
    }

    #[test]
    fn the_waking_thread_ends_with_its_executor() {
        let period = Duration::from_millis(5);
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let _keeper = spawn("keep-test", period).unwrap();
                // The thread names itself once it starts.
                let end = std::time::Instant::now() + Duration::from_secs(5);
                while threads_named("keep-test") == 0 {
                    assert!(std::time::Instant::now() < end, "no keeper thread");
                    glommio::timer::sleep(period).await;
                }
                glommio::timer::sleep(Duration::from_millis(30)).await;
            })
            .unwrap()
            .join()
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while threads_named("keep-test") > 0 {
            assert!(
                std::time::Instant::now() < end,
                "the keeper thread outlived its executor"
            );
            std::thread::sleep(period);
        }
    }
}
