//! The fan-out path without sockets: encode a push once, then queue the same
//! `Bytes` to N connections' outbound queues (what a shard does per room
//! message), against the naive alternative of encoding per connection.
use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volley::proto::binary;
use volley::shard::outbound::Outbound;

fn fanout(c: &mut Criterion) {
    let payload = [b'x'; 64];
    let mut g = c.benchmark_group("fanout");
    for n in [1_000usize, 19_000] {
        let mut queues: Vec<Outbound> = (0..n).map(|_| Outbound::default()).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("encode_once_share", n), &n, |b, _| {
            b.iter(|| {
                let frame = binary::encode_to_bytes(1, 1000, 0, black_box(&payload));
                for q in queues.iter_mut() {
                    let _ = q.push(frame.clone(), 80 / n, 1 << 20, 0);
                }
                for q in queues.iter_mut() {
                    q.advance(80, 0);
                }
            })
        });
        g.bench_with_input(BenchmarkId::new("encode_per_conn", n), &n, |b, _| {
            b.iter(|| {
                for q in queues.iter_mut() {
                    let frame: Bytes = binary::encode_to_bytes(1, 1000, 0, black_box(&payload));
                    let _ = q.push(frame, 80, 1 << 20, 0);
                }
                for q in queues.iter_mut() {
                    q.advance(80, 0);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
