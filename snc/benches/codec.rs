//! Encoder and recoder throughput.
//!
//! * `encode/<field>/<size>/stream`: 64 consecutive packets of one stream per iteration (each
//!   packet jumps to its scheduled subgeneration), written by `Encoder::write_next` into one
//!   reused batch buffer of 64 `packet::max_len` slots (~82 KiB), refilled every iteration: the
//!   server's pattern (a shard writes each GSO batch, up to 49 datagrams of 1280-byte symbols,
//!   into a recycled 64 KiB ring send buffer). `ccfd-perf codec` reports this pattern as
//!   `encode_batch_mbps` next to `encode_mbps` (every packet of a decode into its own slot).
//! * `encode/<field>/<size>/fanout16`: 4 rounds of one packet for each of 16 receivers sharing a
//!   schedule key, so each subgeneration window is read once per round (L2 locality).
//! * `encode_setup/<field>/<size>`: `Encoder::new` (check symbols), throughput = segment bytes.
//! * `recode/<field>/<size>/single`: 64 recoded packets per iteration from a recoder holding `K`
//!   coded packets of the segment (10 % of the stream lost before it), one `recode` call each;
//!   `.../batch16`: the same with `recode_batch` making 16 packets per subgeneration visit.
//!
//! Throughput counts symbol bytes out (`symbol_size` per packet), as the reference's "MB/s out".
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the dev
//! machine is shared by many builds, and CPU time is what a pinned shard would spend.
//! Run: `cargo bench -p snc --bench codec -- --warm-up-time 1 --measurement-time 3`.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::recoder::Recoder;
use snc::{CodeParams, Field, Layout};
use std::hint::black_box;
use std::time::Duration;

/// Thread CPU time as a criterion measurement (formatted like wall time).
struct CpuTime;

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

static WALL: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

type Crit = Criterion<CpuTime>;

const SIZES: [(usize, &str); 2] = [(4 << 20, "4MiB"), (32 << 20, "32MiB")];
const FIELDS: [(Field, &str); 2] = [(Field::Gf2, "gf2"), (Field::Gf256, "gf256")];
const BATCH: usize = 64;

fn segment(len: usize) -> Vec<u8> {
    let mut p = Prng::new(0xC0DEC);
    let mut v = vec![0u8; len];
    p.fill_bytes(&mut v);
    v
}

fn layout(len: usize, field: Field) -> Layout {
    CodeParams::new(len as u64)
        .field(field)
        .validate()
        .expect("valid parameters")
}

fn encode(c: &mut Crit) {
    let mut g = c.benchmark_group("encode");
    for (len, name) in SIZES {
        let data = segment(len);
        for (field, fname) in FIELDS {
            let l = layout(len, field);
            let enc = Encoder::new(&l, &data).expect("encoder");
            let slot = packet::max_len(&l);
            let mut out = vec![0u8; slot * BATCH];
            g.throughput(Throughput::Bytes((BATCH * l.symbol_size()) as u64));
            let mut stream = Stream::new(1);
            g.bench_function(BenchmarkId::new(format!("{fname}/{name}"), "stream"), |b| {
                b.iter(|| {
                    for i in 0..BATCH {
                        enc.write_next(&mut stream, &mut out[i * slot..(i + 1) * slot])
                            .expect("write");
                    }
                    black_box(&out);
                })
            });
            let mut streams: Vec<Stream> = (0..16).map(|k| Stream::with_schedule(k, 77)).collect();
            g.bench_function(
                BenchmarkId::new(format!("{fname}/{name}"), "fanout16"),
                |b| {
                    b.iter(|| {
                        for r in 0..BATCH / 16 {
                            let at = r * 16 * slot;
                            enc.write_fanout(&mut streams, &mut out[at..at + 16 * slot], slot)
                                .expect("fanout");
                        }
                        black_box(&out);
                    })
                },
            );
        }
    }
    g.finish();
}

fn encode_setup(c: &mut Crit) {
    let mut g = c.benchmark_group("encode_setup");
    g.sample_size(10);
    for (len, name) in SIZES {
        let data = segment(len);
        for (field, fname) in FIELDS {
            let l = layout(len, field);
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(BenchmarkId::new(fname, name), |b| {
                b.iter(|| black_box(Encoder::new(&l, &data).expect("encoder")))
            });
        }
    }
    g.finish();
}

fn recode(c: &mut Crit) {
    let mut g = c.benchmark_group("recode");
    for (len, name) in SIZES {
        let data = segment(len);
        for (field, fname) in FIELDS {
            let l = layout(len, field);
            let enc = Encoder::new(&l, &data).expect("encoder");
            let slot = packet::max_len(&l);
            let mut buf = vec![0u8; slot];
            let mut rec = Recoder::new(&l, 2 * len);
            let mut stream = Stream::new(3);
            let mut loss = Prng::new(5);
            let mut held = 0;
            while held < l.source_count() {
                let n = enc.write_next(&mut stream, &mut buf).expect("write");
                if loss.below(10) == 0 {
                    continue;
                }
                let v = packet::parse(&l, &buf[..n]).expect("parse");
                rec.push(&v).expect("push");
                held += 1;
            }
            let mut out = vec![0u8; slot * BATCH];
            let mut rng = Prng::new(9);
            g.throughput(Throughput::Bytes((BATCH * l.symbol_size()) as u64));
            g.bench_function(BenchmarkId::new(format!("{fname}/{name}"), "single"), |b| {
                b.iter(|| {
                    for i in 0..BATCH {
                        rec.recode(&mut rng, &mut out[i * slot..(i + 1) * slot])
                            .expect("recode");
                    }
                    black_box(&out);
                })
            });
            let mut lens = [0usize; 16];
            g.bench_function(
                BenchmarkId::new(format!("{fname}/{name}"), "batch16"),
                |b| {
                    b.iter(|| {
                        for r in 0..BATCH / 16 {
                            let at = r * 16 * slot;
                            let n = rec.recode_batch(
                                &mut rng,
                                &mut out[at..at + 16 * slot],
                                slot,
                                &mut lens,
                            );
                            assert_eq!(n, 16);
                        }
                        black_box(&out);
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = encode, encode_setup, recode
}
criterion_main!(benches);
