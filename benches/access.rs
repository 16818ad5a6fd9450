//! What access control costs (sans-IO): verifying a client token per auth
//! (HS256, ES256, RS256) and looking a room up in the pattern index with
//! 100,000 patterns subscribed, and in the worst index the pattern bounds
//! allow.
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use volley::auth::jwt::Verifier;
use volley::shard::patterns::PatternIndex;

const SECRET: &str = "bench-secret-0123456789abcdef0123";

fn key(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn jwt(c: &mut Criterion) {
    let claims = serde_json::json!({
        "sub": "123456", "exp": 4_000_000_000u64,
        "rooms": ["live://*", "chat/eu/>"], "publish": ["chat/eu/>"], "info": {"name": "ann"}
    });
    let v = Verifier::new(
        &[SECRET.to_string()],
        &[key("es256-public.pem"), key("rs256-public.pem")],
        5,
    )
    .unwrap();
    let pem = |n: &str| std::fs::read(key(n)).unwrap();
    let tokens = [
        ("hs256", EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256),
        (
            "es256",
            EncodingKey::from_ec_pem(&pem("es256-private.pem")).unwrap(),
            Algorithm::ES256,
        ),
        (
            "rs256",
            EncodingKey::from_rsa_pem(&pem("rs256-private.pem")).unwrap(),
            Algorithm::RS256,
        ),
    ];
    let mut g = c.benchmark_group("jwt_verify");
    g.throughput(Throughput::Elements(1));
    for (name, k, alg) in tokens {
        let t = jsonwebtoken::encode(&Header::new(alg), &claims, &k).unwrap();
        assert!(v.verify(&t, 1_000).is_ok());
        g.bench_function(name, |b| b.iter(|| v.verify(black_box(&t), 1_000).unwrap()));
    }
    g.finish();
}

/// 100,000 patterns shaped like a live platform's: per-stream wildcards
/// (`live://N/*`), per-region tails (`chat/REGION/>`), and mid-name
/// wildcards (`game/*/N`).
fn patterns(c: &mut Criterion) {
    let mut idx = PatternIndex::new();
    let mut all = Vec::with_capacity(100_000);
    for i in 0..100_000u32 {
        let p = match i % 4 {
            0 | 1 => format!("live://{}/*", i / 2),
            2 => format!("chat/r{}/>", i % 500),
            _ => format!("game/*/{}", i % 10_000),
        };
        idx.insert(&p, i);
        all.push(p);
    }
    assert_eq!(idx.len(), 100_000);
    let mut out = Vec::new();
    let mut g = c.benchmark_group("pattern_index_100k");
    g.throughput(Throughput::Elements(1));
    for (name, room) in [
        ("hit_live", "live://20000/chat"),
        ("hit_chat_tail", "chat/r42/lobby/1"),
        ("hit_game_star", "game/eu/777"),
        ("miss", "news/1"),
    ] {
        idx.lookup(room, &mut out);
        assert!(name == "miss" || !out.is_empty(), "{name}");
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                idx.lookup(black_box(room), &mut out);
                out.len()
            })
        });
    }
    // The same question asked of every pattern in turn (the oracle the
    // index is tested against), for scale.
    g.bench_function("naive_scan_hit_live", |b| {
        b.iter(|| {
            all.iter()
                .filter(|p| volley::proto::pattern::matches(p, black_box("live://20000/chat")))
                .count()
        })
    });
    g.finish();
}

/// The worst a room can meet within the pattern bounds: every pattern of
/// 16 segments with one to three `*` that matches a 100-segment room
/// (3,212 nodes on matching paths), each held by one subscriber, looked up
/// with that room. What one room message costs a shard at most in the
/// index, whatever its connections subscribe to.
fn patterns_worst(c: &mut Criterion) {
    use volley::proto::pattern::{MAX_SEGMENTS, MAX_WILDCARDS};
    let mut idx = PatternIndex::new();
    for mask in 1u32..1 << MAX_SEGMENTS {
        if mask.count_ones() as usize <= MAX_WILDCARDS {
            let p: Vec<&str> = (0..MAX_SEGMENTS)
                .map(|i| if mask & (1 << i) != 0 { "*" } else { "a" })
                .collect();
            idx.insert(&p.join("/"), mask);
        }
    }
    let room = vec!["a"; 100].join("/");
    let deep16 = vec!["a"; 16].join("/");
    let mut out = Vec::new();
    let mut g = c.benchmark_group("pattern_index_worst");
    g.throughput(Throughput::Elements(1));
    for (name, room) in [("room_100_segments", &room), ("room_16_segments_all_match", &deep16)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                idx.lookup(black_box(room), &mut out);
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, jwt, patterns, patterns_worst);
criterion_main!(benches);
