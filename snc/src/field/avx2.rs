//! AVX2 kernels: 32-byte vectors, split-nibble VPSHUFB multiplication (tables broadcast to both
//! 128-bit lanes).

use core::arch::x86_64::*;

use super::gf256::{NIBBLE_HI, NIBBLE_LO};

/// Proof that the CPU supports AVX2; the only way to run the AVX2 kernels.
#[derive(Clone, Copy, Debug)]
pub struct Avx2(());

impl Avx2 {
    /// `Some` if this CPU (and OS) supports AVX2.
    pub fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

type V = __m256i;
const W: usize = 32;
/// Destination vectors kept in registers per block by `mul_add_multi`.
const MUL_BLOCK: usize = 8;

/// # Safety
/// `p` is valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: forwarded to the caller; unaligned load.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// # Safety
/// `p` is valid for writing 32 bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: forwarded to the caller; unaligned store.
    unsafe { _mm256_storeu_si256(p.cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn vxor(a: V, b: V) -> V {
    _mm256_xor_si256(a, b)
}

/// Multiplication by a constant: r = shuf(lo[c], x & 15) ^ shuf(hi[c], x >> 4).
struct Mul {
    lo: V,
    hi: V,
    mask: V,
}

impl Mul {
    #[inline]
    #[target_feature(enable = "avx2")]
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
            lo: _mm256_broadcastsi128_si256(lo),
            hi: _mm256_broadcastsi128_si256(hi),
            mask: _mm256_set1_epi8(0x0F),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn apply(&self, x: V) -> V {
        let l = _mm256_and_si256(x, self.mask);
        let h = _mm256_and_si256(_mm256_srli_epi16::<4>(x), self.mask);
        _mm256_xor_si256(
            _mm256_shuffle_epi8(self.lo, l),
            _mm256_shuffle_epi8(self.hi, h),
        )
    }
}

region_kernels!(Avx2, "avx2");
