//! AVX-512BW kernels: 64-byte vectors, split-nibble VPSHUFB multiplication (tables broadcast to
//! all four 128-bit lanes).
//!
//! Same loops as the SSSE3/AVX2 kernels (see `template.rs`); tested against the scalar reference
//! wherever the CPU has AVX-512BW, skipped (with a message) elsewhere.

use core::arch::x86_64::*;

use super::gf256::{NIBBLE_HI, NIBBLE_LO};

/// Proof that the CPU (and OS) supports AVX-512F and AVX-512BW; the only way to run these
/// kernels.
#[derive(Clone, Copy, Debug)]
pub struct Avx512Bw(());

impl Avx512Bw {
    /// `Some` if this CPU and OS support AVX-512F and AVX-512BW (zmm state enabled).
    pub fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
            .then_some(Avx512Bw(()))
    }
}

type V = __m512i;
const W: usize = 64;
/// Destination vectors kept in registers per block by `mul_add_multi`.
const MUL_BLOCK: usize = 8;

/// # Safety
/// `p` is valid for reading 64 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: forwarded to the caller; unaligned load.
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// # Safety
/// `p` is valid for writing 64 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: forwarded to the caller; unaligned store.
    unsafe { _mm512_storeu_si512(p.cast(), v) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn vxor(a: V, b: V) -> V {
    _mm512_xor_si512(a, b)
}

/// Multiplication by a constant: r = shuf(lo[c], x & 15) ^ shuf(hi[c], x >> 4). VPSHUFB on zmm
/// shuffles within each 128-bit lane, so the 16-byte tables are broadcast to all four lanes.
struct Mul {
    lo: V,
    hi: V,
    mask: V,
}

impl Mul {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(c: u8) -> Mul {
        let lo = &NIBBLE_LO[c as usize];
        let hi = &NIBBLE_HI[c as usize];
        // SAFETY: both tables are [u8; 16], valid for a 16-byte unaligned load.
        let (lo, hi) = unsafe {
            (
                _mm_loadu_si128(lo.as_ptr().cast()),
                _mm_loadu_si128(hi.as_ptr().cast()),
            )
        };
        Mul {
            lo: _mm512_broadcast_i32x4(lo),
            hi: _mm512_broadcast_i32x4(hi),
            mask: _mm512_set1_epi8(0x0F),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn apply(&self, x: V) -> V {
        let l = _mm512_and_si512(x, self.mask);
        let h = _mm512_and_si512(_mm512_srli_epi16::<4>(x), self.mask);
        _mm512_xor_si512(
            _mm512_shuffle_epi8(self.lo, l),
            _mm512_shuffle_epi8(self.hi, h),
        )
    }
}

region_kernels!(Avx512Bw, "avx512f,avx512bw");
