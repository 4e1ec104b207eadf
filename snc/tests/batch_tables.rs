//! The GF(2) group-table batch path ("four Russians") writes the same bytes as single
//! [`Encoder::write`] calls: random layouts (windows below 64, strides that do not align the
//! windows to the 4-column groups, a tail-padded last symbol, the check columns at the band's
//! end), random seeds, every policy, and a scratch reused across encoders and calls.

use proptest::prelude::*;
use snc::encoder::{BatchScratch, Encoder, PacketPlan, Stream, TablePolicy};
use snc::packet;
use snc::prng::Prng;
use snc::{CodeKind, CodeParams, Field, Layout};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Prng::new(seed).fill_bytes(&mut v);
    v
}

/// Writes `plans` with `write_batch_with` under `policy` and checks every slot against `write`.
fn check_batch(enc: &Encoder<'_>, plans: &[PacketPlan], scratch: &mut BatchScratch) {
    let l = enc.layout();
    let slot = packet::max_len(l);
    let mut out = vec![0xA5u8; slot * plans.len()];
    enc.write_batch_with(plans, &mut out, slot, scratch)
        .expect("batch");
    let mut one = vec![0u8; slot];
    for (i, plan) in plans.iter().enumerate() {
        let n = enc.write(plan, &mut one).expect("write");
        assert_eq!(
            &out[i * slot..i * slot + n],
            &one[..n],
            "packet {i} {plan:?} under {:?}",
            scratch.policy()
        );
    }
}

/// Plans covering the first and last subgenerations (band ends, check columns) plus random
/// ones, several packets per subgeneration, shuffled.
fn plans(l: &Layout, rng: &mut Prng, count: usize) -> Vec<PacketPlan> {
    let g = l.subgen_count() as u64;
    (0..count)
        .map(|i| {
            let subgen = match i % 4 {
                0 => 0,
                1 => g - 1,
                _ => rng.below(g),
            } as u32;
            PacketPlan::Coded {
                subgen,
                seed: rng.next_u64(),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn tabled_batches_equal_single_writes(
        len in 1usize..60_000,
        symbol in prop_oneof![Just(1u32), 1u32..200, Just(64), Just(1280)],
        window in prop_oneof![1u32..=70, Just(64), 100u32..=256],
        stride_frac in 1u32..=100,
        seed in any::<u64>(),
    ) {
        let stride = (window * stride_frac).div_ceil(100).clamp(1, window);
        let l = CodeParams::new(len as u64)
            .symbol_size(symbol)
            .subgen_size(window)
            .stride(stride)
            .validate()
            .expect("valid");
        let d = data(len, seed);
        let enc = Encoder::new(&l, &d).expect("encoder");
        let mut rng = Prng::new(seed ^ 0x5EED);
        for policy in [TablePolicy::Always, TablePolicy::Auto, TablePolicy::Never] {
            let mut scratch = BatchScratch::with_policy(policy);
            for _ in 0..3 {
                let n = 1 + rng.below(100) as usize;
                let p = plans(&l, &mut rng, n);
                check_batch(&enc, &p, &mut scratch);
            }
        }
    }
}

#[test]
fn scratch_moves_between_encoders_and_fields() {
    let mut scratch = BatchScratch::with_policy(TablePolicy::Always);
    let mut rng = Prng::new(3);
    for (i, field) in [Field::Gf2, Field::Gf2, Field::Gf256, Field::Gf2]
        .into_iter()
        .enumerate()
    {
        // Same layout and length each time: only the encoder id tells the tables apart.
        let l = CodeParams::new(100_003)
            .symbol_size(333)
            .field(field)
            .validate()
            .expect("valid");
        let d = data(100_003, i as u64);
        let enc = Encoder::new(&l, &d).expect("encoder");
        let p = plans(&l, &mut rng, 150);
        check_batch(&enc, &p, &mut scratch);
        check_batch(&enc, &p, &mut scratch);
    }
}

#[test]
fn random_grouping_and_systematic_plans_fall_back() {
    let l = CodeParams::new(200_000)
        .symbol_size(500)
        .kind(CodeKind::Random)
        .validate()
        .expect("valid");
    let d = data(200_000, 8);
    let enc = Encoder::new(&l, &d).expect("encoder");
    let mut rng = Prng::new(4);
    let mut p = plans(&l, &mut rng, 64);
    p.extend((0..10).map(|index| PacketPlan::Systematic { index }));
    check_batch(
        &enc,
        &p,
        &mut BatchScratch::with_policy(TablePolicy::Always),
    );
}

#[test]
fn fanout_with_scratch_equals_fanout_and_plans() {
    let l = CodeParams::new(4 << 20).validate().expect("valid");
    let d = data(4 << 20, 1);
    let enc = Encoder::new(&l, &d).expect("encoder");
    let slot = packet::max_len(&l);
    let mut a: Vec<Stream> = (0..16).map(|k| Stream::with_schedule(k, 77)).collect();
    let mut b = a.clone();
    let mut scratch = BatchScratch::with_policy(TablePolicy::Always);
    let (mut out_a, mut out_b) = (vec![0u8; 16 * slot], vec![0u8; 16 * slot]);
    let mut one = vec![0u8; slot];
    for round in 0..40u64 {
        enc.write_fanout_with(&mut a, &mut out_a, slot, &mut scratch)
            .expect("fanout");
        enc.write_fanout(&mut b, &mut out_b, slot).expect("fanout");
        assert_eq!(out_a, out_b, "round {round}");
        for k in 0..16u64 {
            let plan = enc
                .plan(&Stream::with_schedule(k, 77), round)
                .expect("plan");
            let n = enc.write(&plan, &mut one).expect("write");
            let at = k as usize * slot;
            assert_eq!(&out_a[at..at + n], &one[..n]);
        }
    }
}
