//! Arrival-driven relaying ([`Recoder::recode_arrival`]): one source stream split into disjoint
//! shares over three relays (as a server hands each receiver its own source symbols, then coded
//! packets of its own stream), each relay sending every arrival once, in arrival order, to a sink
//! that hears all three. The sink must decode byte for byte with an overhead close to what the
//! source's own stream needs, in both fields, systematic or not, with loss on every link.

use proptest::prelude::*;
use snc::decoder::Decoder;
use snc::encoder::{Encoder, Stream};
use snc::packet::{self, Header};
use snc::prng::Prng;
use snc::recoder::Recoder;
use snc::{CodeKind, CodeParams, Field, Layout};

fn layout(len: u64, field: Field, systematic: bool) -> Layout {
    CodeParams::new(len)
        .symbol_size(256)
        .subgen_size(64)
        .stride(16)
        .field(field)
        .systematic(systematic)
        .kind(CodeKind::Band)
        .validate()
        .expect("valid parameters")
}

/// What the sink needed.
#[derive(Debug)]
struct Outcome {
    /// Packets the sink received until it decoded.
    received: u64,
    /// Packets the relays forwarded uncoded.
    forwarded: u64,
}

/// Source -> relay `i % relays` (loss `up_pct`) -> sink (loss `down_pct`), one source packet per
/// tick; each relay sends its new arrival at once (`direct`: the source's packet goes straight to
/// the sink instead, the baseline with the same losses).
fn split(
    l: &Layout,
    input: &[u8],
    relays: usize,
    up_pct: u64,
    down_pct: u64,
    seed: u64,
    direct: bool,
) -> Outcome {
    let enc = Encoder::new(l, input).expect("encoder");
    let mut stream = Stream::new(seed);
    let mut buffers: Vec<Recoder> = (0..relays).map(|_| Recoder::new(l, 64 << 20)).collect();
    let mut cursors = vec![0u64; relays];
    let mut rngs: Vec<Prng> = (0..relays)
        .map(|i| Prng::new(seed + 7 * i as u64))
        .collect();
    let mut up = Prng::new(seed ^ 0xA5A5);
    let mut down = Prng::new(seed ^ 0x5A5A);
    let mut out = vec![0u8; input.len()];
    let mut dec = Decoder::new(l, &mut out).expect("decoder");
    let mut buf = vec![0u8; packet::max_len(l)];
    let mut relayed = vec![0u8; packet::max_len(l)];
    let mut outcome = Outcome {
        received: 0,
        forwarded: 0,
    };
    let limit = 4 * l.column_count() as u64 + 1000;
    for tick in 0..limit {
        let n = enc.write_next(&mut stream, &mut buf).expect("encode");
        let lost_up = up.below(100) < up_pct;
        let lost_down = down.below(100) < down_pct;
        if direct {
            if !lost_up && !lost_down {
                outcome.received += 1;
                dec.push(&buf[..n]).expect("sink push");
            }
        } else {
            let r = tick as usize % relays;
            if !lost_up {
                let view = packet::parse(l, &buf[..n]).expect("source packet");
                buffers[r].push(&view).expect("relay push");
            }
            // The relay sends what it got, once, in order.
            while cursors[r] < buffers[r].arrivals() {
                let stamp = cursors[r];
                cursors[r] += 1;
                let m = buffers[r]
                    .recode_arrival(stamp, &mut rngs[r], &mut relayed)
                    .expect("a fresh arrival is held");
                let view = packet::parse(l, &relayed[..m]).expect("relay packets parse");
                if let Header::Systematic { index } = view.header {
                    assert_eq!(relayed[..m], buf[..n], "forwarded symbol {index} changed");
                    outcome.forwarded += 1;
                }
                if !lost_down {
                    outcome.received += 1;
                    dec.push(&relayed[..m]).expect("sink push");
                }
            }
        }
        if dec.is_complete() {
            drop(dec);
            assert!(out == input, "sink output differs");
            return outcome;
        }
    }
    panic!("sink not complete after {limit} ticks");
}

fn input(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Prng::new(seed).fill_bytes(&mut v);
    v
}

#[test]
fn three_relays_of_disjoint_shares_cost_what_the_source_stream_costs() {
    for field in [Field::Gf2, Field::Gf256] {
        for systematic in [true, false] {
            let len = 1 << 20;
            let l = layout(len as u64, field, systematic);
            let k = l.source_count() as f64;
            let data = input(len, 3);
            let (mut relayed, mut direct) = (0.0, 0.0);
            let seeds = 3;
            for seed in 0..seeds {
                let r = split(&l, &data, 3, 3, 2, seed, false);
                let d = split(&l, &data, 3, 3, 2, seed, true);
                if systematic {
                    // Every symbol a relay got before the coded packets went out uncoded.
                    assert!(r.forwarded as f64 > 0.9 * k, "{field:?}: {r:?}");
                } else {
                    assert_eq!(r.forwarded, 0);
                }
                relayed += r.received as f64 / k / seeds as f64;
                direct += d.received as f64 / k / seeds as f64;
            }
            // Measured (3 seeds): relayed = direct within 0.01; non-systematic 1.000-1.001,
            // systematic 1.05 (GF(2)) and 1.03 (GF(2^8)): the source's own stream needs that
            // much to fill 5 % of lost source symbols.
            let bound = if systematic { 1.08 } else { 1.03 };
            assert!(
                relayed <= bound && relayed <= direct + 0.01,
                "{field:?} systematic {systematic}: overhead {relayed:.4} relayed, {direct:.4} direct"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any length, relay count and losses: the relayed shares decode byte for byte.
    #[test]
    fn relayed_shares_decode(
        len in 1usize..200_000,
        relays in 1usize..=4,
        up in 0u64..=20,
        down in 0u64..=20,
        gf256 in any::<bool>(),
        systematic in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let field = if gf256 { Field::Gf256 } else { Field::Gf2 };
        let l = layout(len as u64, field, systematic);
        let data = input(len, seed);
        let outcome = split(&l, &data, relays, up, down, seed, false);
        prop_assert!(outcome.received >= u64::from(l.source_count()));
    }
}
