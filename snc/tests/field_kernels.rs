//! Every ISA kernel of `snc::field`, tested separately against a byte-by-byte model built on
//! `gf256::mul` (itself checked against a carry-less multiply), over lengths 0..=300 and
//! symbol-sized lengths, misaligned slices, special and random coefficients and 0..=40 sources.
//! Each test compares whole buffers, including guard bytes around the slices, so writes out of
//! bounds are caught too. Kernels the CPU lacks are skipped with a message.

use snc::field::{gf256, Kernel};

/// Deterministic splitmix64 so every failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// A coefficient that is 0, 1 or 255 a quarter of the time each... and random otherwise.
    fn coef(&mut self) -> u8 {
        match self.below(6) {
            0 => 0,
            1 => 1,
            2 => 255,
            _ => self.byte(),
        }
    }
}

const GUARD: usize = 64;

fn lengths() -> Vec<usize> {
    (0..=300).chain([1279, 1280, 1281, 4096 + 7]).collect()
}

fn multi_lengths() -> Vec<usize> {
    vec![
        0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 511, 512, 513,
        1023, 1024, 1279, 1280, 1281, 4103,
    ]
}

fn coefficients(rng: &mut Rng) -> Vec<u8> {
    let mut cs = vec![0, 1, 2, 0x8E, 255];
    cs.extend((0..3).map(|_| rng.byte()));
    cs
}

/// A buffer with `off` guard bytes before and `GUARD` after a region of `len` bytes.
fn buffer(rng: &mut Rng, off: usize, len: usize) -> Vec<u8> {
    rng.bytes(off + len + GUARD)
}

fn model_mul_add(dst: &mut [u8], src: &[u8], c: u8) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= gf256::mul(c, *s);
    }
}

/// Checks `dst ^= c * src`, `dst ^= src` and `dst = c * dst` for one length/offset pair.
fn check_single(k: Kernel, rng: &mut Rng, len: usize, doff: usize, soff: usize, cs: &[u8]) {
    let src_buf = buffer(rng, soff, len);
    let src = &src_buf[soff..soff + len];
    let dst_buf = buffer(rng, doff, len);

    let mut got = dst_buf.clone();
    k.xor(&mut got[doff..doff + len], src);
    let mut want = dst_buf.clone();
    model_mul_add(&mut want[doff..doff + len], src, 1);
    assert_eq!(
        got,
        want,
        "{} xor len {len} offsets {doff}/{soff}",
        k.name()
    );

    for &c in cs {
        let mut got = dst_buf.clone();
        k.mul_add(&mut got[doff..doff + len], src, c);
        let mut want = dst_buf.clone();
        model_mul_add(&mut want[doff..doff + len], src, c);
        assert_eq!(
            got,
            want,
            "{} mul_add c {c} len {len} offsets {doff}/{soff}",
            k.name()
        );

        let mut got = dst_buf.clone();
        k.scale(&mut got[doff..doff + len], c);
        let mut want = dst_buf.clone();
        for d in &mut want[doff..doff + len] {
            *d = gf256::mul(c, *d);
        }
        assert_eq!(
            got,
            want,
            "{} scale c {c} len {len} offset {doff}",
            k.name()
        );
    }
}

/// Checks the fused multi-source operations with `nsrc` sources of `len` bytes, each source at
/// its own misalignment.
fn check_multi(k: Kernel, rng: &mut Rng, len: usize, nsrc: usize) {
    let offs: Vec<usize> = (0..nsrc).map(|_| rng.below(64)).collect();
    let bufs: Vec<Vec<u8>> = offs.iter().map(|&o| buffer(rng, o, len)).collect();
    let srcs: Vec<&[u8]> = bufs
        .iter()
        .zip(&offs)
        .map(|(b, &o)| &b[o..o + len])
        .collect();
    let coefs: Vec<u8> = (0..nsrc).map(|_| rng.coef()).collect();
    let pairs: Vec<(&[u8], u8)> = srcs.iter().copied().zip(coefs.iter().copied()).collect();
    let doff = rng.below(64);
    let dst_buf = buffer(rng, doff, len);

    let mut got = dst_buf.clone();
    k.xor_multi(&mut got[doff..doff + len], &srcs);
    let mut want = dst_buf.clone();
    for s in &srcs {
        model_mul_add(&mut want[doff..doff + len], s, 1);
    }
    assert_eq!(got, want, "{} xor_multi len {len} sources {nsrc}", k.name());

    let mut got = dst_buf.clone();
    k.xor_sum(&mut got[doff..doff + len], &srcs);
    let mut want = dst_buf.clone();
    want[doff..doff + len].fill(0);
    for s in &srcs {
        model_mul_add(&mut want[doff..doff + len], s, 1);
    }
    assert_eq!(got, want, "{} xor_sum len {len} sources {nsrc}", k.name());

    let mut got = dst_buf.clone();
    k.mul_add_multi(&mut got[doff..doff + len], &pairs);
    let mut want = dst_buf.clone();
    for &(s, c) in &pairs {
        model_mul_add(&mut want[doff..doff + len], s, c);
    }
    assert_eq!(
        got,
        want,
        "{} mul_add_multi len {len} coefficients {coefs:?}",
        k.name()
    );
}

fn check_kernel(k: Kernel) {
    let mut rng = Rng(0x5EED_0000 ^ k.name().len() as u64);
    // All lengths, offsets cycling through 0..64 independently for dst and src.
    for len in lengths() {
        let cs = coefficients(&mut rng);
        check_single(k, &mut rng, len, len % 64, (len * 13 + 5) % 64, &cs);
    }
    // Every misalignment 1..=63 on symbol-sized and odd regions.
    for off in 1..=63 {
        for len in [97, 1280] {
            let cs = coefficients(&mut rng);
            check_single(k, &mut rng, len, off, 64 - off, &cs);
            check_single(k, &mut rng, len, off, off, &cs);
        }
    }
    for nsrc in 0..=40 {
        for len in multi_lengths() {
            check_multi(k, &mut rng, len, nsrc);
        }
    }
}

/// Runs `check_kernel` if the CPU has the ISA, prints why not otherwise.
fn check_isa(name: &str, k: Option<Kernel>) {
    match k {
        Some(k) => {
            assert_eq!(k.name(), name);
            check_kernel(k);
        }
        // Written to the process's stderr directly: `cargo test` does not capture that, so the
        // skip is visible in every run (CI included), never silent.
        None => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "skipping {name}: CPU lacks it");
        }
    }
}

#[test]
fn scalar_matches_model() {
    check_kernel(Kernel::scalar());
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use snc::field::{Avx2, Avx512Bw, GfniAvx2, GfniAvx512, Ssse3};

    #[test]
    fn ssse3_matches_model() {
        check_isa("ssse3", Ssse3::detect().map(Kernel::from));
    }

    #[test]
    fn avx2_matches_model() {
        check_isa("avx2", Avx2::detect().map(Kernel::from));
    }

    #[test]
    fn gfni_avx2_matches_model() {
        check_isa("gfni-avx2", GfniAvx2::detect().map(Kernel::from));
    }

    #[test]
    fn avx512bw_matches_model() {
        check_isa("avx512bw", Avx512Bw::detect().map(Kernel::from));
    }

    #[test]
    fn gfni_avx512_matches_model() {
        check_isa("gfni-avx512", GfniAvx512::detect().map(Kernel::from));
    }

    #[test]
    fn best_is_the_fastest_available() {
        let expected = if GfniAvx512::detect().is_some() {
            "gfni-avx512"
        } else if Avx512Bw::detect().is_some() {
            "avx512bw"
        } else if GfniAvx2::detect().is_some() {
            "gfni-avx2"
        } else if Avx2::detect().is_some() {
            "avx2"
        } else if Ssse3::detect().is_some() {
            "ssse3"
        } else {
            "scalar"
        };
        assert_eq!(Kernel::best().name(), expected);
        let names: Vec<&str> = Kernel::available().iter().map(|k| k.name()).collect();
        assert_eq!(names.first(), Some(&"scalar"));
        assert_eq!(names.last(), Some(&expected));
        for name in names {
            assert_eq!(Kernel::by_name(name).map(|k| k.name()), Some(name));
        }
    }
}

#[test]
fn every_available_kernel_passes() {
    // Also runs through `available()` so a kernel added there but not above is still tested.
    for k in Kernel::available() {
        let mut rng = Rng(7);
        for len in [0, 1, 31, 1280, 1281] {
            let cs = coefficients(&mut rng);
            check_single(k, &mut rng, len, 3, 5, &cs);
            check_multi(k, &mut rng, len, 32);
        }
    }
}

#[test]
#[should_panic(expected = "field::xor: source length 9 differs from destination length 8")]
fn xor_length_mismatch_panics() {
    Kernel::best().xor(&mut [0u8; 8], &[0u8; 9]);
}

#[test]
#[should_panic(expected = "field::mul_add: source length 7 differs")]
fn mul_add_length_mismatch_panics() {
    Kernel::best().mul_add(&mut [0u8; 8], &[0u8; 7], 3);
}

#[test]
#[should_panic(expected = "field::xor_multi: source length 7 differs")]
fn xor_multi_length_mismatch_panics() {
    let a = [0u8; 8];
    let b = [0u8; 7];
    Kernel::best().xor_multi(&mut [0u8; 8], &[&a, &b]);
}

#[test]
#[should_panic(expected = "field::mul_add_multi: source length 7 differs")]
fn mul_add_multi_length_mismatch_panics() {
    let a = [0u8; 8];
    let b = [0u8; 7];
    Kernel::scalar().mul_add_multi(&mut [0u8; 8], &[(&a, 1), (&b, 0)]);
}

#[test]
fn field_axioms() {
    // Table against the bit-serial carry-less multiply modulo 0x11D, for every pair.
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            assert_eq!(gf256::mul(a, b), gf256::mul_slow(a, b), "{a} * {b}");
            assert_eq!(gf256::mul(a, b), gf256::mul(b, a));
        }
    }
    // Known answers for the 0x11D field (x^8 = x^4 + x^3 + x^2 + 1).
    assert_eq!(gf256::mul(0x80, 2), 0x1D);
    assert_eq!(gf256::inv(2), 0x8E);
    assert_eq!(gf256::pow(2, 255), 1);
    assert_eq!(gf256::inv(0), 0, "documented convention");
    for a in 1..=255u8 {
        assert_eq!(gf256::mul(a, gf256::inv(a)), 1, "inverse of {a}");
        assert_eq!(gf256::div(a, a), 1);
        assert_eq!(gf256::mul(a, 1), a);
        assert_eq!(gf256::mul(a, 0), 0);
    }
    let mut rng = Rng(42);
    for _ in 0..100_000 {
        let (a, b, c) = (rng.byte(), rng.byte(), rng.byte());
        assert_eq!(
            gf256::mul(a, b ^ c),
            gf256::mul(a, b) ^ gf256::mul(a, c),
            "distributivity {a} {b} {c}"
        );
        assert_eq!(
            gf256::mul(gf256::mul(a, b), c),
            gf256::mul(a, gf256::mul(b, c)),
            "associativity {a} {b} {c}"
        );
        if b != 0 {
            assert_eq!(gf256::mul(gf256::div(a, b), b), a, "{a} / {b}");
        }
    }
}

#[test]
fn copy_streaming_equals_copy_at_every_alignment() {
    let mut rng = Rng(0xC0B1);
    for len in lengths() {
        for (soff, doff) in [(0, 0), (1, 0), (0, 1), (7, 13), (15, 16), (31, 33)] {
            let src = buffer(&mut rng, soff, len);
            let dst_buf = buffer(&mut rng, doff, len);
            let mut got = dst_buf.clone();
            snc::field::copy_streaming(&mut got[doff..doff + len], &src[soff..soff + len]);
            let mut want = dst_buf.clone();
            want[doff..doff + len].copy_from_slice(&src[soff..soff + len]);
            assert_eq!(got, want, "len {len} src offset {soff} dst offset {doff}");
        }
    }
}

#[test]
#[should_panic(expected = "field::copy_streaming: source length 7 differs")]
fn copy_streaming_length_mismatch_panics() {
    snc::field::copy_streaming(&mut [0u8; 8], &[0u8; 7]);
}
