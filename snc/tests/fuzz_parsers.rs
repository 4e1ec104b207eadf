//! Arbitrary bytes never panic: not in the parser, the dense decoder, the recoder, or the
//! public decoder front. Random mutations of valid packets are either accepted (and then
//! consistent) or refused with a typed error.

use proptest::prelude::*;
use snc::decoder::dense::DenseDecoder;
use snc::decoder::Decoder;
use snc::encoder::{Encoder, Stream};
use snc::packet;
use snc::prng::Prng;
use snc::recoder::Recoder;
use snc::{CodeKind, CodeParams, Field, Layout};

fn layouts() -> Vec<Layout> {
    let mut v = Vec::new();
    for field in [Field::Gf2, Field::Gf256] {
        for kind in [CodeKind::Band, CodeKind::Random] {
            for len in [0u64, 1, 65, 3000] {
                v.push(
                    CodeParams::new(len)
                        .symbol_size(64)
                        .subgen_size(20)
                        .stride(5)
                        .field(field)
                        .kind(kind)
                        .systematic(len % 2 == 1)
                        .validate()
                        .expect("valid parameters"),
                );
            }
        }
    }
    v
}

fn feed_everything(l: &Layout, payloads: &[Vec<u8>]) {
    let mut dense = DenseDecoder::new(l).expect("small layout");
    let mut rec = Recoder::new(l, 64 * 1024);
    let mut out = vec![0u8; l.segment_len() as usize];
    let mut front = Decoder::new(l, &mut out).ok();
    let mut rng = Prng::new(1);
    let mut buf = vec![0u8; packet::max_len(l)];
    for p in payloads {
        if let Some(d) = front.as_mut() {
            let _ = d.push(p);
        }
        if let Ok(v) = packet::parse(l, p) {
            dense.push(&v).expect("parsed packets fit the layout");
            rec.push(&v).expect("parsed packets fit the layout");
            if let Some(n) = rec.recode(&mut rng, &mut buf) {
                let r = packet::parse(l, &buf[..n]).expect("recoder output parses");
                dense.push(&r).expect("recoded packets fit the layout");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..30),
        which in 0usize..16,
    ) {
        let ls = layouts();
        let l = &ls[which % ls.len()];
        for p in &payloads {
            let _ = packet::parse(l, p);
        }
        feed_everything(l, &payloads);
    }

    #[test]
    fn mutated_packets_never_panic(
        which in 0usize..16,
        flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..6),
        seed: u64,
    ) {
        let ls = layouts();
        let l = &ls[which % ls.len()];
        let input = vec![7u8; l.segment_len() as usize];
        let Ok(enc) = Encoder::new(l, &input) else {
            return Ok(());
        };
        let mut s = Stream::new(seed);
        let mut payloads = Vec::new();
        let mut buf = vec![0u8; packet::max_len(l)];
        for i in 0..20 {
            let Ok(n) = enc.write_next(&mut s, &mut buf) else { break };
            let mut p = buf[..n].to_vec();
            if i % 2 == 0 {
                for &(at, x) in &flips {
                    let len = p.len();
                    p[at % len] ^= x;
                }
            }
            payloads.push(p);
        }
        feed_everything(l, &payloads);
    }
}
