//! Decoder throughput (criterion, `Throughput::Bytes` = segment bytes): 4 MiB and 32 MiB
//! segments, 1280-byte symbols, default band code, GF(2) and GF(2^8), non-systematic, 10 %
//! loss. Packets are generated once per configuration; each iteration builds a decoder and
//! pushes the surviving packets until the segment is complete.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snc::decoder::{Decoder, Progress};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::{CodeParams, Field};
use std::hint::black_box;

fn packets(len: usize, field: Field) -> (snc::Layout, Vec<u8>, Vec<Vec<u8>>) {
    let layout = CodeParams::new(len as u64).field(field).validate().unwrap();
    let mut data = vec![0u8; len];
    Prng::new(7).fill_bytes(&mut data);
    let enc = Encoder::new(&layout, &data).unwrap();
    let mut s = Stream::new(1);
    let mut loss = Prng::new(2);
    let mut buf = vec![0u8; packet::max_len(&layout)];
    let mut out = Vec::new();
    let want = layout.source_count() as usize * 105 / 100 + 64;
    while out.len() < want {
        let n = enc.write_next(&mut s, &mut buf).unwrap();
        if loss.below(10) != 0 {
            out.push(buf[..n].to_vec());
        }
    }
    (layout, data, out)
}

/// Decodes the packets into `out`; returns the packets used.
fn run(layout: &snc::Layout, pkts: &[Vec<u8>], out: &mut [u8]) -> u64 {
    let mut dec = Decoder::new(layout, out).unwrap();
    for p in pkts {
        if dec.push(p).unwrap() == Progress::Complete {
            break;
        }
    }
    assert!(dec.is_complete());
    dec.received()
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.sample_size(10);
    for len in [4usize << 20, 32 << 20] {
        for field in [Field::Gf2, Field::Gf256] {
            let (layout, data, pkts) = packets(len, field);
            let mut out = vec![0u8; len];
            run(&layout, &pkts, &mut out);
            assert!(out == data, "decoded data differs");
            g.throughput(Throughput::Bytes(len as u64));
            let id = BenchmarkId::new(format!("{field:?}-loss10"), format!("{}MiB", len >> 20));
            g.bench_function(id, |b| b.iter(|| black_box(run(&layout, &pkts, &mut out))));
        }
    }
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
