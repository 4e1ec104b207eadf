//! Payload format properties: `parse(write(x)) == x` for every packet form over random
//! layouts, `write(parse(b)) == b` for every accepted payload, and exact-length/range checks.

use proptest::prelude::*;
use snc::packet::{self, Header, PacketError, PacketKind, PacketView};
use snc::{CodeParams, Field, Layout};

fn layout(len: u64, symbol: u32, subgen: u32, field: Field) -> Layout {
    CodeParams::new(len)
        .symbol_size(symbol)
        .subgen_size(subgen)
        .stride(subgen.div_ceil(4))
        .field(field)
        .validate()
        .expect("valid parameters")
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![Just(Field::Gf2), Just(Field::Gf256)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn parse_inverts_write(
        len in 1u64..200_000,
        symbol in 1u32..600,
        subgen in 1u32..=256,
        field in field(),
        pick in 0u8..3,
        index_frac in 0.0f64..1.0,
        seed: u64,
        vector_seed: u64,
        fill: u8,
    ) {
        let l = layout(len, symbol, subgen, field);
        let vlen = packet::vector_len(&l);
        let mut vector = vec![0u8; vlen];
        snc::prng::Prng::new(vector_seed).fill_bytes(&mut vector);
        if field == Field::Gf2 && !l.window().is_multiple_of(8) {
            // Unused high bits of the last byte must be zero.
            vector[vlen - 1] &= (1u8 << (l.window() % 8)) - 1;
        }
        let header = match pick {
            0 => Header::Systematic { index: (index_frac * l.source_count() as f64) as u32 },
            1 => Header::Coded { subgen: (index_frac * l.subgen_count() as f64) as u32, seed },
            _ => Header::Recoded {
                subgen: (index_frac * l.subgen_count() as f64) as u32,
                coeffs: &vector,
            },
        };
        let symbol_bytes = vec![fill; l.symbol_size()];
        let view = PacketView { header, symbol: &symbol_bytes };
        let mut buf = vec![0xEEu8; packet::max_len(&l) + 8];
        let n = packet::write(&l, &view, &mut buf).unwrap();
        prop_assert_eq!(n, packet::len(&l, header.kind()));
        let parsed = packet::parse(&l, &buf[..n]).unwrap();
        prop_assert_eq!(parsed, view);
        // Any other length is refused.
        prop_assert!(packet::parse(&l, &buf[..n - 1]).is_err());
        prop_assert!(packet::parse(&l, &buf[..n + 1]).is_err());
    }

    #[test]
    fn accepted_payloads_reserialize_identically(
        len in 1u64..50_000,
        symbol in 1u32..64,
        field in field(),
        mut bytes in proptest::collection::vec(any::<u8>(), 0..400),
        force_header: bool,
    ) {
        let l = layout(len, symbol, 64, field);
        if force_header && bytes.len() >= 8 {
            // Steer toward valid headers so the accept path is exercised too.
            bytes[0] = packet::VERSION;
            bytes[1] &= packet::FLAG_SYSTEMATIC | packet::FLAG_RECODED;
            bytes[1] |= if field == Field::Gf256 { packet::FLAG_GF256 } else { 0 };
            if bytes[1] & (packet::FLAG_SYSTEMATIC | packet::FLAG_RECODED) == 0 && l.sparse() {
                bytes[0] = packet::VERSION_SPARSE;
                bytes[1] |= packet::FLAG_SPARSE;
            }
            bytes[2] = 0;
            bytes[3] = 0;
            bytes[5] = 0;
            bytes[6] = 0;
            bytes[7] = 0;
            bytes[4] %= 4;
        }
        if let Ok(view) = packet::parse(&l, &bytes) {
            let mut buf = vec![0u8; packet::max_len(&l)];
            let n = packet::write(&l, &view, &mut buf).unwrap();
            prop_assert_eq!(&buf[..n], &bytes[..]);
        }
    }
}

#[test]
fn lengths_per_form() {
    let l = layout(1 << 20, 1280, 64, Field::Gf2);
    assert_eq!(packet::len(&l, PacketKind::Systematic), 8 + 1280);
    assert_eq!(packet::len(&l, PacketKind::Coded), 16 + 1280);
    assert_eq!(packet::len(&l, PacketKind::Recoded), 16 + 1280);
    let l = layout(1 << 20, 1280, 64, Field::Gf256);
    assert_eq!(packet::len(&l, PacketKind::Recoded), 8 + 64 + 1280);
    assert_eq!(packet::max_len(&l), 8 + 64 + 1280);
}

#[test]
fn writers_check_buffers_and_ranges() {
    let l = layout(10_000, 100, 64, Field::Gf2);
    let sym = vec![0u8; 100];
    let mut small = vec![0u8; 50];
    let view = PacketView {
        header: Header::Coded { subgen: 0, seed: 1 },
        symbol: &sym,
    };
    assert!(matches!(
        packet::write(&l, &view, &mut small),
        Err(PacketError::Buffer { .. })
    ));
    let mut buf = vec![0u8; 200];
    let bad = PacketView {
        header: Header::Systematic { index: 100 },
        symbol: &sym,
    };
    assert!(matches!(
        packet::write(&l, &bad, &mut buf),
        Err(PacketError::IndexOutOfRange { .. })
    ));
    let short = PacketView {
        header: Header::Systematic { index: 0 },
        symbol: &sym[..99],
    };
    assert!(packet::write(&l, &short, &mut buf).is_err());
    let padded = [0xFFu8; 8];
    // Window 64: every bit is used, so 0xFF is fine; with a 60-column window it is not.
    let l60 = layout(10_000, 100, 60, Field::Gf2);
    let v = PacketView {
        header: Header::Recoded {
            subgen: 0,
            coeffs: &padded,
        },
        symbol: &sym,
    };
    assert!(packet::write(&l, &v, &mut buf).is_ok());
    assert_eq!(
        packet::write(&l60, &v, &mut buf),
        Err(PacketError::VectorPadding)
    );
}
