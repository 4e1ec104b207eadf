//! The dense Gaussian decoder (the oracle, and the random-grouping decoder) decodes encoder
//! output byte for byte: both fields, both code kinds, systematic on and off, loss, and sizes
//! 0, 1, symbol - 1, symbol, symbol + 1 and non-multiples. Small sizes only (the oracle is
//! O(N^2)); heavy decodes live in `roundtrip.rs`.

use proptest::prelude::*;
use snc::decoder::dense::{DenseDecoder, DensePush};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::{CodeKind, CodeParams, Field, Layout};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Prng::new(seed).fill_bytes(&mut v);
    v
}

/// Streams packets through an i.i.d. loss channel into the dense decoder until complete;
/// returns the number of packets delivered.
fn decode(l: &Layout, input: &[u8], loss_pct: u64, seed: u64) -> u64 {
    let enc = Encoder::new(l, input).expect("encoder");
    let mut dec = DenseDecoder::new(l).expect("small layout");
    let mut stream = Stream::new(seed);
    let mut channel = Prng::new(seed ^ 0xABCD);
    let mut buf = vec![0u8; packet::max_len(l)];
    let mut delivered = 0u64;
    let limit = 20 * l.column_count() as u64 + 200;
    while !dec.is_complete() {
        let Ok(n) = enc.write_next(&mut stream, &mut buf) else {
            break; // empty segment: nothing to send
        };
        if channel.below(100) < loss_pct {
            continue;
        }
        let view = packet::parse(l, &buf[..n]).expect("encoder output parses");
        dec.push(&view).expect("fits the layout");
        delivered += 1;
        assert!(
            delivered < limit,
            "no decode after {delivered} packets: {l:?}"
        );
    }
    let mut out = vec![0u8; input.len()];
    dec.finish(&mut out).expect("complete");
    assert!(out == input, "decoded bytes differ: {:?}", l.params());
    delivered
}

#[test]
fn edge_sizes_all_modes() {
    let s = 100u64;
    for field in [Field::Gf2, Field::Gf256] {
        for kind in [CodeKind::Band, CodeKind::Random] {
            for systematic in [false, true] {
                for len in [0, 1, s - 1, s, s + 1, 7 * s + 3, 64 * s, 300 * s + 99] {
                    let l = CodeParams::new(len)
                        .symbol_size(s as u32)
                        .field(field)
                        .kind(kind)
                        .systematic(systematic)
                        .grouping_seed(len)
                        .validate()
                        .expect("valid");
                    let input = data(len as usize, len);
                    decode(&l, &input, 20, len + 1);
                }
            }
        }
    }
}

#[test]
fn systematic_without_loss_needs_exactly_k() {
    let l = CodeParams::new(12_345)
        .symbol_size(100)
        .systematic(true)
        .validate()
        .expect("valid");
    assert_eq!(decode(&l, &data(12_345, 1), 0, 9), l.source_count() as u64);
}

#[test]
fn no_precode_still_decodes() {
    let l = CodeParams::new(20_000)
        .symbol_size(50)
        .checks(Some(0))
        .validate()
        .expect("valid");
    decode(&l, &data(20_000, 2), 10, 3);
}

#[test]
fn redundant_packets_are_reported() {
    let l = CodeParams::new(1000)
        .symbol_size(100)
        .validate()
        .expect("valid");
    let input = data(1000, 4);
    let enc = Encoder::new(&l, &input).expect("encoder");
    let mut dec = DenseDecoder::new(&l).expect("small");
    let mut buf = vec![0u8; packet::max_len(&l)];
    let mut s = Stream::new(1);
    let n = enc.write_next(&mut s, &mut buf).expect("write");
    let v = packet::parse(&l, &buf[..n]).expect("parse");
    assert_eq!(dec.push(&v), Ok(DensePush::Innovative));
    assert_eq!(dec.push(&v), Ok(DensePush::Redundant));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_parameters_decode(
        len in 0u64..60_000,
        symbol in 16u32..400,
        (subgen, stride) in prop_oneof![Just((64u32, 16u32)), Just((16, 4)), Just((32, 32)), Just((8, 1))],
        field in prop_oneof![Just(Field::Gf2), Just(Field::Gf256)],
        kind in prop_oneof![Just(CodeKind::Band), Just(CodeKind::Random)],
        systematic: bool,
        loss in 0u64..=50,
        seed: u64,
    ) {
        let l = CodeParams::new(len)
            .symbol_size(symbol)
            .subgen_size(subgen)
            .stride(stride)
            .field(field)
            .kind(kind)
            .systematic(systematic)
            .grouping_seed(seed)
            .validate()
            .expect("valid");
        prop_assume!(l.column_count() <= 1500);
        decode(&l, &data(len as usize, seed), loss, seed);
    }
}
