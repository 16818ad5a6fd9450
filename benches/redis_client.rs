//! How a shard should talk to Redis: the RESP codec on the shard's own
//! glommio socket (`redis::link::Link`, what volley does) against a
//! client on a thread of its own that the shard hands commands to (a
//! blocking socket with the same codec, commands and replies crossing
//! threads, as a Redis client library on its own thread would have them).
//!
//! Starts a redis-server of its own (needs `redis-server` on the PATH, as
//! the test suite does), runs `N` room publishes (the publish script,
//! `redis::room`) with `IN_FLIGHT` outstanding, both ways, and prints per
//! publish: wall time, CPU of the shard's thread, CPU of the client thread,
//! and Redis's CPU. Loopback only; the server is stopped by its PID.
//! Usage: `cargo bench --bench redis_client [-- N]` (default 100,000).

use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use volley::redis::link::{encode, next_reply, Frame, Link};
use volley::redis::room::{self, Message, RoomKeys};
use volley::redis::{Health, RedisUrl};
use volley::shard::mesh::Reply;

/// Publishes outstanding at once.
const IN_FLIGHT: usize = 256;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of process `pid` (utime + stime).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on the PATH");
    // Stopped by `Drop` whatever happens next.
    let r = Redis(child, port);
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen");
}

fn message(i: usize) -> Message {
    Message {
        offset: 0,
        epoch: 0,
        op: 1000,
        ttl: 0,
        id: String::new(),
        payload: format!("{i:064}").into(),
    }
}

/// The publish script's arguments for message `i` (EVALSHA form).
fn publish_args(i: usize) -> Vec<Vec<u8>> {
    let k = RoomKeys::of("live://bench");
    let m = message(i);
    [
        &b"EVALSHA"[..],
        room::PUBLISH_SCRIPT.sha().as_bytes(),
        b"4",
        k.offset.as_bytes(),
        k.epoch.as_bytes(),
        k.history.as_bytes(),
        k.dedup("").as_bytes(),
        k.channel.as_bytes(),
        b"1000",
        b"0",
        b"",
        &m.payload,
        b"100",
        b"1",
        b"1",
        b"0",
    ]
    .iter()
    .map(|a| a.to_vec())
    .collect()
}

/// Runs `n` publishes, `IN_FLIGHT` at a time, each the task `start(i)`
/// spawns.
async fn in_waves(n: usize, mut start: impl FnMut(usize) -> glommio::Task<()>) {
    let mut next = 0;
    while next < n {
        let wave: Vec<_> = (next..(next + IN_FLIGHT).min(n)).map(&mut start).collect();
        next += wave.len();
        for t in wave {
            t.await;
        }
    }
}

/// Volley's way: the link on this executor's own socket.
fn on_the_shard(port: u16, n: usize) -> (Duration, Duration) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let link = Link::new(RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap());
            glommio::spawn_local(link.clone().run(std::sync::Arc::new(Health::new(1, 1)), 0, 0)).detach();
            while !link.is_up() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            // Loads the script once, as a first publish would.
            room::publish(&link, "live://bench", &message(0), 100, None)
                .await
                .unwrap();
            let (start, cpu) = (Instant::now(), thread_cpu());
            in_waves(n, |i| {
                let link = link.clone();
                glommio::spawn_local(async move {
                    room::publish(&link, "live://bench", &message(i), 100, None)
                        .await
                        .unwrap();
                })
            })
            .await;
            (start.elapsed(), thread_cpu() - cpu)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// A client on a thread of its own: the shard hands it each command over a
/// channel and waits for the reply to come back across threads.
fn on_a_client_thread(port: u16, n: usize) -> (Duration, Duration, Duration) {
    type Job = (Vec<Vec<u8>>, Reply<Frame>);
    let (tx, rx) = mpsc::channel::<Job>();
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        let cpu = thread_cpu();
        let (mut out, mut inbuf) = (BytesMut::new(), BytesMut::new());
        let mut chunk = vec![0u8; 64 << 10];
        while let Ok(first) = rx.recv() {
            // Every command waiting goes in one write, as a pipelining client
            // would send them.
            let mut jobs = vec![first];
            jobs.extend(rx.try_iter());
            for (args, _) in &jobs {
                let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                encode(&mut out, &a);
            }
            s.write_all(&out).unwrap();
            out.clear();
            for (_, reply) in jobs {
                let frame = loop {
                    if let Some(f) = next_reply(&mut inbuf, 1 << 20).unwrap() {
                        break f;
                    }
                    let k = s.read(&mut chunk).unwrap();
                    assert!(k > 0, "redis closed");
                    inbuf.extend_from_slice(&chunk[..k]);
                };
                reply.send(frame);
            }
        }
        thread_cpu() - cpu
    });
    let shard = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let (start, cpu) = (Instant::now(), thread_cpu());
            // A task per publish, as the link's side has (and as volley
            // spawns one per publish).
            in_waves(n, |i| {
                let (reply, wait) = Reply::pair();
                tx.send((publish_args(i), reply)).unwrap();
                glommio::spawn_local(async move {
                    match wait.await {
                        Some(Frame::Array(_)) => {}
                        other => panic!("publish reply {other:?}"),
                    }
                })
            })
            .await;
            (start.elapsed(), thread_cpu() - cpu)
        })
        .unwrap()
        .join()
        .unwrap();
    let client_cpu = client.join().unwrap();
    (shard.0, shard.1, client_cpu)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let r = redis();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    for round in 1..=3 {
        let red = process_cpu(r.0.id());
        let (wall, cpu) = on_the_shard(r.1, n);
        let red_a = process_cpu(r.0.id()) - red;
        let red = process_cpu(r.0.id());
        let (wall_b, cpu_b, client_b) = on_a_client_thread(r.1, n);
        let red_b = process_cpu(r.0.id()) - red;
        println!(
            "round {round}, {n} publishes, {IN_FLIGHT} in flight, µs per publish:\n  \
             link on the shard's socket: wall {:.2}, shard CPU {:.2}, client thread —, total volley {:.2}, redis {:.2}\n  \
             client on its own thread:   wall {:.2}, shard CPU {:.2}, client thread {:.2}, total volley {:.2}, redis {:.2}",
            per(wall),
            per(cpu),
            per(cpu),
            per(red_a),
            per(wall_b),
            per(cpu_b),
            per(client_b),
            per(cpu_b + client_b),
            per(red_b),
        );
    }
}
