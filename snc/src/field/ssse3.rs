//! SSSE3 kernels: 16-byte vectors, split-nibble PSHUFB multiplication.

use core::arch::x86_64::*;

use super::gf256::{NIBBLE_HI, NIBBLE_LO};

/// Proof that the CPU supports SSSE3; the only way to run the SSSE3 kernels.
#[derive(Clone, Copy, Debug)]
pub struct Ssse3(());

impl Ssse3 {
    /// `Some` if this CPU supports SSSE3.
    pub fn detect() -> Option<Self> {
        is_x86_feature_detected!("ssse3").then_some(Ssse3(()))
    }
}

type V = __m128i;
const W: usize = 16;
/// Destination vectors kept in registers per block by `mul_add_multi`.
const MUL_BLOCK: usize = 8;

/// # Safety
/// `p` is valid for reading 16 bytes.
#[inline]
#[target_feature(enable = "ssse3")]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: forwarded to the caller; unaligned load.
    unsafe { _mm_loadu_si128(p.cast()) }
}

/// # Safety
/// `p` is valid for writing 16 bytes.
#[inline]
#[target_feature(enable = "ssse3")]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: forwarded to the caller; unaligned store.
    unsafe { _mm_storeu_si128(p.cast(), v) }
}

#[inline]
#[target_feature(enable = "ssse3")]
fn vxor(a: V, b: V) -> V {
    _mm_xor_si128(a, b)
}

/// Multiplication by a constant: r = shuf(lo[c], x & 15) ^ shuf(hi[c], x >> 4).
struct Mul {
    lo: V,
    hi: V,
    mask: V,
}

impl Mul {
    #[inline]
    #[target_feature(enable = "ssse3")]
    fn new(c: u8) -> Mul {
        let lo = &NIBBLE_LO[c as usize];
        let hi = &NIBBLE_HI[c as usize];
        // SAFETY: both tables are [u8; 16], valid for a 16-byte unaligned load.
        let (lo, hi) = unsafe { (load(lo.as_ptr()), load(hi.as_ptr())) };
        Mul {
            lo,
            hi,
            mask: _mm_set1_epi8(0x0F),
        }
    }

    #[inline]
    #[target_feature(enable = "ssse3")]
    fn apply(&self, x: V) -> V {
        let l = _mm_and_si128(x, self.mask);
        let h = _mm_and_si128(_mm_srli_epi16::<4>(x), self.mask);
        _mm_xor_si128(_mm_shuffle_epi8(self.lo, l), _mm_shuffle_epi8(self.hi, h))
    }
}

region_kernels!(Ssse3, "ssse3");
