//! The runtime volley's shards and the load generator's workers run on: a
//! glommio executor must never park while one of its task queues is runnable.
//!
//! glommio 0.9.0 did exactly that when a preemption was already pending as a
//! turn began (vendor/README.md): the woken tasks stayed queued and the
//! executor slept until some other event, forever if they were the ones that
//! arm every future event. That stalled a 1,000,000-connection run with one
//! server's accept queue full. Both tests hang on the unpatched crate (three
//! times out of three on the development host) and finish in about two
//! seconds with the vendored fix; the bound below only turns a hang into a
//! failure.
//!
//! An executor going to sleep and another thread handing it work race, and
//! one of the two must see the other (vendor/README.md: the vendored crate
//! settles the race with a fence on each side, not `membarrier`). The last
//! two tests make that race happen tens of thousands of times, through a
//! shared channel and through a waker woken from a plain thread (volley's
//! shard mesh): a lost wake-up is a hang.

use glommio::{Latency, LocalExecutorBuilder, Shares};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longer than either test takes by orders of magnitude: only a hang fails.
const HANG: Duration = Duration::from_secs(30);

/// Waits for `n` progress reports from a test thread; fails naming the last
/// one seen if they stop for `HANG`.
fn expect_progress(rx: &mpsc::Receiver<usize>, n: usize, what: &str) {
    let mut seen = 0;
    while seen < n {
        match rx.recv_timeout(HANG) {
            Ok(i) => seen = i + 1,
            Err(e) => panic!("{what}: no progress after {seen} of {n} ({e:?})"),
        }
    }
}

#[test]
fn a_turn_that_starts_preempted_still_runs_the_queued_task() {
    // A 1 ns preemption timer has always fired by the time the first turn
    // begins, so every turn starts preempted.
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let ex = LocalExecutorBuilder::default()
            .preempt_timer(Duration::from_nanos(1))
            .make()
            .expect("executor");
        for i in 0..1_000 {
            ex.run(async {});
            let _ = tx.send(i);
        }
    });
    expect_progress(&rx, 1_000, "executor runs");
    worker.join().expect("executor thread");
}

#[test]
fn a_timer_task_in_a_latency_queue_keeps_running_beside_busy_tasks() {
    // The shape of a volley shard: a periodic task in a latency-sensitive
    // queue (the sweep), CPU-bound tasks in the default queue (connection
    // drivers), short preemption timers.
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let worker = std::thread::spawn(move || {
        let ex = LocalExecutorBuilder::default()
            .preempt_timer(Duration::from_micros(20))
            .make()
            .expect("executor");
        ex.run(async move {
            let control = glommio::executor().create_task_queue(
                Shares::default(),
                Latency::Matters(Duration::from_micros(20)),
                "control",
            );
            let ticks = glommio::spawn_local_into(
                async move {
                    for i in 0..5_000 {
                        glommio::timer::sleep(Duration::from_micros(50)).await;
                        let _ = tx.send(i);
                    }
                },
                control,
            )
            .expect("spawn");
            for _ in 0..4 {
                let stop = stop.clone();
                glommio::spawn_local(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        while start.elapsed() < Duration::from_micros(100) {}
                        glommio::yield_if_needed().await;
                    }
                })
                .detach();
            }
            ticks.await;
            stop.store(true, Ordering::Relaxed);
        });
    });
    expect_progress(&rx, 5_000, "timer ticks");
    done.store(true, Ordering::Relaxed);
    worker.join().expect("executor thread");
}

#[test]
fn executors_ping_ponging_over_shared_channels_never_miss_a_wake_up() {
    use glommio::channels::shared_channel;
    const ROUNDS: usize = 50_000;
    let (ping_tx, ping_rx) = shared_channel::new_bounded::<usize>(1);
    let (pong_tx, pong_rx) = shared_channel::new_bounded::<usize>(1);
    let (tx, rx) = mpsc::channel();
    let a = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (ping, pong) = (ping_tx.connect().await, pong_rx.connect().await);
            for i in 0..ROUNDS {
                ping.send(i).await.expect("ping");
                assert_eq!(pong.recv().await, Some(i));
                if i % 1_000 == 999 {
                    let _ = tx.send(i);
                }
            }
        })
        .expect("executor a");
    let b = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (ping, pong) = (ping_rx.connect().await, pong_tx.connect().await);
            while let Some(i) = ping.recv().await {
                pong.send(i).await.expect("pong");
            }
        })
        .expect("executor b");
    expect_progress(&rx, ROUNDS, "round trips");
    a.join().expect("executor a");
    b.join().expect("executor b");
}

#[test]
fn an_executor_woken_from_a_plain_thread_never_misses_a_wake_up() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::task::{Poll, Waker};
    const ROUNDS: usize = 50_000;
    // The shape of volley's mesh: a counter of work handed over and the
    // waker of the task that takes it, woken by another thread.
    let given = Arc::new(AtomicUsize::new(0));
    let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
    let (tx, rx) = mpsc::channel();
    let (g, w) = (given.clone(), waker.clone());
    let taker = LocalExecutorBuilder::default()
        .spawn(move || async move {
            for i in 0..ROUNDS {
                std::future::poll_fn(|cx| {
                    *w.lock().unwrap() = Some(cx.waker().clone());
                    if g.load(Ordering::SeqCst) > i {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                if i % 1_000 == 999 {
                    let _ = tx.send(i);
                }
            }
        })
        .expect("executor");
    let giver = std::thread::spawn(move || {
        for i in 1..=ROUNDS {
            given.store(i, Ordering::SeqCst);
            if let Some(w) = waker.lock().unwrap().take() {
                w.wake();
            }
            // Let the executor get to sleep now and then.
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    });
    expect_progress(&rx, ROUNDS, "wake-ups");
    giver.join().expect("giver");
    taker.join().expect("executor");
}
