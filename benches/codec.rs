//! Frame encode/decode throughput (sans-IO).
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use volley::proto::binary;

fn codec(c: &mut Criterion) {
    let body = [7u8; 64];
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_64B", |b| {
        let mut buf = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            if buf.len() > 60_000 {
                buf.clear();
            }
            binary::encode(&mut buf, 1, 1000, 0, black_box(&body));
        })
    });
    let mut stream = BytesMut::new();
    for i in 0..64 {
        binary::encode(&mut stream, 1, 2, i, &body);
    }
    let stream = stream.freeze();
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode_64x64B_stream", |b| {
        b.iter(|| {
            let mut rest = black_box(&stream[..]);
            let mut n = 0u32;
            while let Ok(Some((f, used))) = binary::decode(rest, 4096) {
                n = n.wrapping_add(f.seq);
                rest = &rest[used..];
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
