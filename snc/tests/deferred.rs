//! Deferred finish ([`Decoder::set_deferred_finish`]) against the default mode: the same
//! packet stream completes the rank at the same packet, the deferred decoder reports
//! `is_solved` but not `is_complete` until `finish`, later pushes change nothing, and after
//! `finish` both outputs equal the input byte for byte. Band and random grouping, both fields,
//! systematic on/off, 0-byte and 1-byte segments, loss 0-50 %.

use proptest::prelude::*;
use snc::decoder::{DecodeError, Decoder, Progress};
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::{CodeKind, CodeParams, Field, Layout};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Prng::new(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn layout(len: usize, sym: u32, field: Field, kind: CodeKind, systematic: bool) -> Layout {
    CodeParams::new(len as u64)
        .symbol_size(sym)
        .field(field)
        .kind(kind)
        .systematic(systematic)
        .validate()
        .expect("valid parameters")
}

/// The delivered packets of one lossy stream, enough to decode with margin.
fn packets(layout: &Layout, input: &[u8], loss_pct: u64, seed: u64) -> Vec<Vec<u8>> {
    let enc = Encoder::new(layout, input).expect("encoder");
    let mut s = Stream::new(seed);
    let mut loss = Prng::new(seed ^ 0xdefe);
    let mut buf = vec![0u8; packet::max_len(layout)];
    let want = 3 * layout.column_count() as usize + 100;
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let len = enc.write_next(&mut s, &mut buf).expect("write");
        if loss.below(100) >= loss_pct {
            out.push(buf[..len].to_vec());
        }
    }
    out
}

/// Feeds `pkts` until the decoder says `Complete`; returns the index of that packet.
fn feed(dec: &mut Decoder<'_>, pkts: &[Vec<u8>]) -> usize {
    for (i, p) in pkts.iter().enumerate() {
        if dec.push(p).expect("valid packet") == Progress::Complete {
            return i;
        }
    }
    panic!("not solved after {} packets", pkts.len());
}

fn compare(
    len: usize,
    sym: u32,
    field: Field,
    kind: CodeKind,
    systematic: bool,
    loss: u64,
    seed: u64,
) {
    let what =
        format!("{len} B sym {sym} {field:?} {kind:?} sys {systematic} loss {loss} seed {seed}");
    let l = layout(len, sym, field, kind, systematic);
    let input = data(len, seed);
    let mut now_out = vec![0x5Au8; len];
    let mut later_out = vec![0xA5u8; len];
    let mut now = Decoder::new(&l, &mut now_out).expect("decoder");
    let mut later = Decoder::new(&l, &mut later_out).expect("decoder");
    later.set_deferred_finish(true);
    if l.column_count() == 0 {
        assert!(later.is_solved() && later.is_complete(), "{what}");
        later.finish().expect("empty finish");
        return;
    }
    assert!(!later.is_solved() && !later.is_complete(), "{what}");
    assert!(
        matches!(later.finish(), Err(DecodeError::NotSolved { rank: 0, .. })),
        "{what}"
    );
    let pkts = packets(&l, &input, loss, seed);
    let at_now = feed(&mut now, &pkts);
    assert!(now.is_solved() && now.is_complete(), "{what}");
    // A decoder that has not reached full rank refuses to finish and keeps going.
    let at_later = feed(&mut later, &pkts);
    assert_eq!(
        at_now, at_later,
        "rank completed at a different packet: {what}"
    );
    assert!(later.is_solved(), "{what}");
    assert!(!later.is_complete(), "passes ran inside the push: {what}");
    assert_eq!(later.rank(), now.rank(), "{what}");
    let received = later.received();
    assert_eq!(received, now.received(), "{what}");
    // Pushes after the solve are answered `Complete` and not counted.
    for p in &pkts[at_later + 1..(at_later + 4).min(pkts.len())] {
        assert_eq!(later.push(p).expect("valid"), Progress::Complete, "{what}");
    }
    assert_eq!(later.received(), received, "{what}");
    assert!(!later.is_complete(), "{what}");
    later.finish().expect("finish");
    assert!(later.is_solved() && later.is_complete(), "{what}");
    later.finish().expect("second finish is a no-op");
    now.finish().expect("finish when already complete");
    assert_eq!(
        later.push(&pkts[0]).expect("valid"),
        Progress::Complete,
        "{what}"
    );
    drop((now, later));
    assert!(now_out == input, "immediate output differs: {what}");
    assert!(later_out == now_out, "deferred output differs: {what}");
}

#[test]
fn tiny_segments_all_modes() {
    for len in [0usize, 1, 2, 1279, 1280, 1281] {
        for field in [Field::Gf2, Field::Gf256] {
            for kind in [CodeKind::Band, CodeKind::Random] {
                for systematic in [false, true] {
                    compare(len, 1280, field, kind, systematic, 20, len as u64 + 7);
                }
            }
        }
    }
}

#[test]
fn band_segment_with_loss_both_fields() {
    for field in [Field::Gf2, Field::Gf256] {
        compare(3 << 20, 1280, field, CodeKind::Band, false, 10, 42);
    }
}

#[test]
fn switching_deferred_off_keeps_a_pending_finish() {
    let l = layout(100_000, 1000, Field::Gf2, CodeKind::Band, false);
    let input = data(100_000, 3);
    let mut out = vec![0u8; 100_000];
    let mut dec = Decoder::new(&l, &mut out).expect("decoder");
    dec.set_deferred_finish(true);
    let pkts = packets(&l, &input, 0, 3);
    feed(&mut dec, &pkts);
    dec.set_deferred_finish(false);
    assert!(dec.is_solved() && !dec.is_complete());
    dec.finish().expect("finish");
    assert!(dec.is_complete());
    drop(dec);
    assert!(out == input);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn deferred_equals_immediate(
        len in 0usize..120_000,
        sym in prop_oneof![Just(1280u32), 16u32..400],
        field in prop_oneof![Just(Field::Gf2), Just(Field::Gf256)],
        random in any::<bool>(),
        systematic in any::<bool>(),
        loss in 0u64..=50,
        seed in any::<u64>(),
    ) {
        let kind = if random { CodeKind::Random } else { CodeKind::Band };
        let l = layout(len, sym, field, kind, systematic);
        // The dense engine behind random grouping is O(N^2): keep it small.
        prop_assume!(!random || l.column_count() <= 600);
        compare(len, sym, field, kind, systematic, loss, seed);
    }
}
