//! Throughput of every available field kernel, one criterion group per operation.
//!
//! * `xor`, `mul_add`, `scale`: one 1280-byte region (L1-resident), throughput = region bytes.
//! * `xor_multi`, `mul_add_multi`: 32 sources picked from a 64-symbol (80 KiB, L2-resident)
//!   window into one 1280-byte accumulator, as an encoder building one coded packet does;
//!   throughput = source bytes (32 x 1280). `<best>-unfused` is the same work done with 32
//!   separate single-source calls, to show what fusion buys.
//!
//! Run: `cargo bench -p snc --bench field -- --warm-up-time 1 --measurement-time 2`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snc::field::Kernel;
use std::hint::black_box;

const SYMBOL: usize = 1280;
const WINDOW: usize = 64;
const SOURCES: usize = 32;

/// Deterministic splitmix64 for reproducible data, picks and coefficients.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

struct Data {
    window: Vec<Vec<u8>>,
    picks: Vec<usize>,
    coefs: Vec<u8>,
}

fn data() -> Data {
    let mut rng = Rng(1);
    let window = (0..WINDOW)
        .map(|_| (0..SYMBOL).map(|_| rng.next_u64() as u8).collect())
        .collect();
    // 32 distinct symbols of the window, in random order.
    let mut order: Vec<usize> = (0..WINDOW).collect();
    for i in (1..WINDOW).rev() {
        order.swap(i, rng.next_u64() as usize % (i + 1));
    }
    let picks = order[..SOURCES].to_vec();
    // Coefficients in 2..=255: the general multiply path, never the 0/1 shortcuts.
    let coefs = (0..SOURCES)
        .map(|_| 2 + (rng.next_u64() % 254) as u8)
        .collect();
    Data {
        window,
        picks,
        coefs,
    }
}

fn single(c: &mut Criterion) {
    let d = data();
    let src = &d.window[0];
    let mut dst = d.window[1].clone();

    let mut g = c.benchmark_group("xor");
    g.throughput(Throughput::Bytes(SYMBOL as u64));
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| k.xor(black_box(&mut dst), black_box(src)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("mul_add");
    g.throughput(Throughput::Bytes(SYMBOL as u64));
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| k.mul_add(black_box(&mut dst), black_box(src), black_box(0x8E)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("scale");
    g.throughput(Throughput::Bytes(SYMBOL as u64));
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| k.scale(black_box(&mut dst), black_box(0x8E)))
        });
    }
    g.finish();
}

fn multi(c: &mut Criterion) {
    let d = data();
    let srcs: Vec<&[u8]> = d.picks.iter().map(|&i| d.window[i].as_slice()).collect();
    let pairs: Vec<(&[u8], u8)> = srcs.iter().copied().zip(d.coefs.iter().copied()).collect();
    let mut dst = vec![0u8; SYMBOL];
    let best = Kernel::best();

    let mut g = c.benchmark_group("xor_multi");
    g.throughput(Throughput::Bytes((SOURCES * SYMBOL) as u64));
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| k.xor_multi(black_box(&mut dst), black_box(&srcs)))
        });
    }
    g.bench_function(format!("{}-unfused", best.name()), |b| {
        b.iter(|| {
            for s in black_box(&srcs) {
                best.xor(&mut dst, s);
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("mul_add_multi");
    g.throughput(Throughput::Bytes((SOURCES * SYMBOL) as u64));
    for k in Kernel::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| k.mul_add_multi(black_box(&mut dst), black_box(&pairs)))
        });
    }
    g.bench_function(format!("{}-unfused", best.name()), |b| {
        b.iter(|| {
            for &(s, co) in black_box(&pairs) {
                best.mul_add(&mut dst, s, co);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, single, multi);
criterion_main!(benches);
