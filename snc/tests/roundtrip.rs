//! Property tests of the public decoder: random segment sizes (0 B .. 8 MiB, not multiples of
//! the symbol size), loss 0-50 %, both fields, systematic on/off, several subgeneration
//! sizes; the output must equal the input byte for byte. On small layouts every stream is also
//! fed to the dense Gaussian oracle, and the band decoder must complete at exactly the same
//! packet, never call a packet redundant that the oracle found innovative, and keep a rank
//! consistent with it. Arbitrary bytes pushed into a decoder must never panic.

use proptest::prelude::*;
use snc::decoder::dense::{DenseDecoder, DensePush};
use snc::decoder::{Decoder, Progress};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::{CodeKind, CodeParams, Density, Field, Layout};

/// Deterministic test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A code configuration drawn by proptest.
#[derive(Clone, Debug)]
struct Case {
    len: usize,
    symbol_size: u32,
    subgen: u32,
    stride: u32,
    checks: Option<u32>,
    field: Field,
    systematic: bool,
    density: Density,
    loss_pct: u64,
    seed: u64,
}

impl Case {
    fn layout(&self, kind: CodeKind) -> Layout {
        CodeParams::new(self.len as u64)
            .symbol_size(self.symbol_size)
            .subgen_size(self.subgen)
            .stride(self.stride)
            .checks(self.checks)
            .field(self.field)
            .systematic(self.systematic)
            .density(self.density)
            .kind(kind)
            .validate()
            .expect("valid parameters")
    }
}

fn case(max_len: usize) -> impl Strategy<Value = Case> {
    (
        0..=max_len,
        prop_oneof![Just(1280u32), 16u32..300],
        prop_oneof![
            Just((64u32, 16u32)),
            Just((16, 4)),
            Just((32, 32)),
            Just((100, 30)),
            Just((8, 3)),
            Just((128, 40))
        ],
        prop_oneof![3 => Just(None), 1 => (0u32..40).prop_map(Some)],
        prop_oneof![Just(Field::Gf2), Just(Field::Gf256)],
        any::<bool>(),
        prop_oneof![3 => Just(Density::Sparse), 1 => Just(Density::Uniform)],
        0u64..=50,
        any::<u64>(),
    )
        .prop_map(
            |(
                len,
                symbol_size,
                (subgen, stride),
                checks,
                field,
                systematic,
                density,
                loss_pct,
                seed,
            )| {
                Case {
                    len,
                    symbol_size,
                    subgen,
                    stride,
                    checks,
                    field,
                    systematic,
                    density,
                    loss_pct,
                    seed,
                }
            },
        )
}

/// Streams packets of `case` through a lossy channel into `sink` until it returns true;
/// returns the number of packets delivered. Panics if the stream does not finish in time.
fn stream(layout: &Layout, input: &[u8], case: &Case, mut sink: impl FnMut(&[u8]) -> bool) -> u64 {
    let enc = Encoder::new(layout, input).expect("encoder");
    let mut s = Stream::new(case.seed);
    let mut loss = Prng::new(case.seed ^ 0x5eed);
    let mut buf = vec![0u8; packet::max_len(layout)];
    let n = layout.column_count() as u64;
    let budget = (4 * n + 200) * 100 / (100 - case.loss_pct).max(1);
    let mut delivered = 0;
    for _ in 0..budget {
        let len = enc.write_next(&mut s, &mut buf).expect("write");
        if loss.below(100) < case.loss_pct {
            continue;
        }
        delivered += 1;
        if sink(&buf[..len]) {
            return delivered;
        }
    }
    panic!("not decoded after {budget} packets: {case:?}");
}

fn roundtrip(case: &Case, kind: CodeKind) {
    let layout = case.layout(kind);
    let input = data(case.len, case.seed);
    let mut out = vec![0xA5u8; case.len];
    let mut dec = Decoder::new(&layout, &mut out).expect("decoder");
    if layout.column_count() == 0 {
        assert!(dec.is_complete());
        return;
    }
    let delivered = stream(&layout, &input, case, |p| {
        dec.push(p).expect("valid packet") == Progress::Complete
    });
    assert!(dec.is_complete());
    assert_eq!(dec.received(), delivered);
    drop(dec);
    assert!(out == input, "output differs from input: {case:?}");
}

/// Feeds one stream to the band decoder and the dense oracle side by side; returns the band
/// decoder's hole-solve attempts.
fn against_oracle(case: &Case) -> u32 {
    let layout = case.layout(CodeKind::Band);
    let input = data(case.len, case.seed);
    let mut out = vec![0u8; case.len];
    let mut oracle_out = vec![0u8; case.len];
    let mut dec = Decoder::new(&layout, &mut out).expect("decoder");
    let mut oracle = DenseDecoder::new(&layout).expect("small layout");
    if layout.column_count() == 0 {
        return 0;
    }
    let c = layout.check_count();
    stream(&layout, &input, case, |p| {
        let view = packet::parse(&layout, p).expect("parse");
        let o = oracle.push(&view).expect("oracle push");
        let b = dec.push(p).expect("band push");
        if o == DensePush::Innovative {
            assert_ne!(
                b,
                Progress::Redundant,
                "band dropped an innovative packet: {case:?}"
            );
        }
        assert_eq!(
            dec.is_complete(),
            oracle.is_complete(),
            "completion differs: {case:?}"
        );
        if !dec.is_complete() {
            let (band, dense) = (dec.rank(), oracle.rank());
            assert!(
                band <= dense && dense <= band + c,
                "rank {band} vs oracle {dense}: {case:?}"
            );
        }
        dec.is_complete()
    });
    let attempts = dec.solve_attempts();
    drop(dec);
    oracle.finish(&mut oracle_out).expect("oracle finish");
    assert!(
        out == input && oracle_out == input,
        "output differs: {case:?}"
    );
    attempts
}

/// A deficient hole solve over bit rows is followed packet by packet (a row lowers the
/// deficiency iff it is not orthogonal to the null basis), so the band decoder solves at most
/// twice and still completes at exactly the oracle's packet.
#[test]
fn deficient_solves_are_tracked_not_repeated() {
    let mut deficient = 0;
    for seed in 0..40 {
        let case = Case {
            len: 1100 * 64 - 5,
            symbol_size: 64,
            subgen: 64,
            stride: 16,
            checks: None,
            field: Field::Gf2,
            systematic: seed % 4 == 3,
            density: Density::Sparse,
            loss_pct: [0, 10, 30][seed as usize % 3],
            seed,
        };
        let attempts = against_oracle(&case);
        assert!(attempts <= 2, "{attempts} solves: {case:?}");
        deficient += u32::from(attempts == 2);
    }
    assert!(deficient > 0, "no stream needed a second solve");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn small_segments_decode(case in case(200_000)) {
        roundtrip(&case, CodeKind::Band);
    }

    #[test]
    fn band_agrees_with_dense_oracle(case in case(60_000).prop_filter("oracle size", |c| {
        let l = c.layout(CodeKind::Band);
        l.column_count() <= 1500
    })) {
        against_oracle(&case);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn large_segments_decode(case in case(8 << 20).prop_map(|mut c| { c.symbol_size = 1280; c })) {
        roundtrip(&case, CodeKind::Band);
    }

    #[test]
    fn random_grouping_decodes(case in case(40_000).prop_filter("dense size", |c| {
        c.layout(CodeKind::Random).column_count() <= 600
    })) {
        roundtrip(&case, CodeKind::Random);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and valid packets with arbitrary bytes overwritten, never panic.
    #[test]
    fn arbitrary_bytes_never_panic(
        raw in proptest::collection::vec(any::<u8>(), 0..1400),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        field in prop_oneof![Just(Field::Gf2), Just(Field::Gf256)],
        random in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let kind = if random { CodeKind::Random } else { CodeKind::Band };
        let layout = CodeParams::new(5000).symbol_size(100).field(field).kind(kind).validate().unwrap();
        let input = data(5000, seed);
        let mut out = vec![0u8; 5000];
        let mut dec = Decoder::new(&layout, &mut out).unwrap();
        let _ = dec.push(&raw);
        let enc = Encoder::new(&layout, &input).unwrap();
        let mut s = Stream::new(seed);
        let mut buf = vec![0u8; packet::max_len(&layout)];
        for _ in 0..3 {
            let len = enc.write_next(&mut s, &mut buf).unwrap();
            let mut p = buf[..len].to_vec();
            for &(at, b) in &edits {
                let i = at % p.len();
                p[i] = b;
            }
            let _ = dec.push(&p);
            let _ = dec.push(&p[..at_most(p.len(), raw.len())]);
        }
        let mut p = raw.clone();
        if p.len() >= 8 {
            p[1] &= 0x0F;
            p[0] = if p[1] & packet::FLAG_SPARSE != 0 { packet::VERSION_SPARSE } else { packet::VERSION };
            p[2] = 0;
            p[3] = 0;
        }
        let _ = dec.push(&p);
    }
}

fn at_most(a: usize, b: usize) -> usize {
    a.min(b)
}

#[test]
fn wrong_output_length_is_an_error() {
    let layout = CodeParams::new(1000).validate().unwrap();
    let mut out = vec![0u8; 999];
    assert!(Decoder::new(&layout, &mut out).is_err());
}

#[test]
fn empty_segment_is_complete_at_once() {
    let layout = CodeParams::new(0).validate().unwrap();
    let mut out = [];
    let mut dec = Decoder::new(&layout, &mut out).unwrap();
    assert!(dec.is_complete());
    assert!(dec.push(&[1, 0, 0, 0, 0, 0, 0, 0]).is_ok() || dec.is_complete());
}
