//! Recoded streams through a line of 1-3 relays (`source -> R1 -> ... -> Rn -> sink`), each
//! hop losing packets independently, one packet per hop per tick: the sink must decode the
//! segment byte for byte. Relays buffer what they receive in a bounded [`Recoder`] and send
//! recoded (or forwarded systematic) packets without decoding. On small layouts the sink's
//! band decoder is checked against the dense oracle on the same packet stream.

use proptest::prelude::*;
use snc::decoder::dense::{DenseDecoder, DensePush};
use snc::decoder::{Decoder, Progress};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::recoder::Recoder;
use snc::{CodeKind, CodeParams, Field, Layout};

#[derive(Clone, Debug)]
struct Line {
    len: usize,
    symbol_size: u32,
    subgen: (u32, u32),
    field: Field,
    systematic: bool,
    /// Loss in percent on each hop (source->R1, ..., Rn->sink); `hops - 1` relays.
    loss: Vec<u64>,
    /// Recoder memory limit in symbols.
    buffer_symbols: usize,
    seed: u64,
}

fn line() -> impl Strategy<Value = Line> {
    (
        1usize..300_000,
        prop_oneof![Just(1280u32), 32u32..400],
        prop_oneof![Just((64u32, 16u32)), Just((16, 8)), Just((32, 8))],
        prop_oneof![Just(Field::Gf2), Just(Field::Gf256)],
        any::<bool>(),
        proptest::collection::vec(0u64..=30, 2..=4),
        prop_oneof![Just(usize::MAX), 64usize..2000],
        any::<u64>(),
    )
        .prop_map(
            |(len, symbol_size, subgen, field, systematic, loss, buffer_symbols, seed)| Line {
                len,
                symbol_size,
                subgen,
                field,
                systematic,
                loss,
                buffer_symbols,
                seed,
            },
        )
}

fn layout(l: &Line) -> Layout {
    CodeParams::new(l.len as u64)
        .symbol_size(l.symbol_size)
        .subgen_size(l.subgen.0)
        .stride(l.subgen.1)
        .field(l.field)
        .systematic(l.systematic)
        .kind(CodeKind::Band)
        .validate()
        .expect("valid parameters")
}

fn run(l: &Line) {
    let layout = layout(l);
    let mut input = vec![0u8; l.len];
    Prng::new(l.seed).fill_bytes(&mut input);
    let enc = Encoder::new(&layout, &input).expect("encoder");
    let slot_bytes = layout.symbol_size() + packet::vector_len(&layout);
    let limit = l.buffer_symbols.saturating_mul(slot_bytes);
    let mut relays: Vec<Recoder> = (1..l.loss.len())
        .map(|_| Recoder::new(&layout, limit))
        .collect();
    let mut rngs: Vec<Prng> = (0..relays.len())
        .map(|i| Prng::new(l.seed ^ ((i as u64 + 1) * 0x9E37)))
        .collect();
    let mut losses: Vec<Prng> = (0..l.loss.len())
        .map(|i| Prng::new(l.seed.rotate_left(i as u32 + 7)))
        .collect();
    let mut out = vec![0u8; l.len];
    let mut dec = Decoder::new(&layout, &mut out).expect("decoder");
    let n = layout.column_count() as usize;
    let mut oracle = (n <= 1500).then(|| DenseDecoder::new(&layout).expect("small layout"));
    let mut stream = Stream::new(l.seed);
    let max_len = packet::max_len(&layout);
    // hop_buf[i] = packet sent on hop i this tick.
    let mut bufs = vec![vec![0u8; max_len]; l.loss.len()];
    let ticks = 40 * n + 2000;
    for _ in 0..ticks {
        // Hop 0: the source.
        let mut lens = vec![0usize; l.loss.len()];
        lens[0] = enc.write_next(&mut stream, &mut bufs[0]).expect("encode");
        // Relays send from what they held before this tick, then receive.
        for r in 0..relays.len() {
            lens[r + 1] = relays[r]
                .recode(&mut rngs[r], &mut bufs[r + 1])
                .unwrap_or(0);
        }
        for hop in 0..l.loss.len() {
            if lens[hop] == 0 || losses[hop].below(100) < l.loss[hop] {
                continue;
            }
            let p = &bufs[hop][..lens[hop]];
            let view = packet::parse(&layout, p).expect("relay packets parse");
            if hop < relays.len() {
                relays[hop].push(&view).expect("relay push");
            } else {
                let o = oracle.as_mut().map(|o| o.push(&view).expect("oracle push"));
                let b = dec.push(p).expect("sink push");
                if let Some(o) = &oracle {
                    let band_done = b == Progress::Complete;
                    assert_eq!(
                        o.is_complete(),
                        band_done,
                        "completion differs from the oracle: {l:?}"
                    );
                }
                if o == Some(DensePush::Innovative) {
                    assert_ne!(
                        b,
                        Progress::Redundant,
                        "band dropped an innovative packet: {l:?}"
                    );
                }
            }
        }
        if dec.is_complete() {
            drop(dec);
            assert!(out == input, "sink output differs: {l:?}");
            return;
        }
    }
    panic!("sink not complete after {ticks} ticks: {l:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn relayed_streams_decode(l in line()) {
        run(&l);
    }
}
