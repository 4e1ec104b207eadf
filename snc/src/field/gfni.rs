//! GFNI kernels on 32-byte vectors (GFNI + AVX2): multiplication by `c` is one
//! VGF2P8AFFINEQB with the 8x8 bit matrix of "multiply by c" in the 0x11D field
//! ([`super::gf256::AFFINE`]).
//!
//! GF2P8MULB is deliberately not used: it multiplies in the AES field (0x11B), not ours.
//! Same loops as the SSSE3/AVX2 kernels (see `template.rs`); tested against the scalar reference
//! wherever the CPU has GFNI, skipped (with a message) elsewhere.

use core::arch::x86_64::*;

use super::gf256::AFFINE;

/// Proof that the CPU supports GFNI and AVX2; the only way to run these kernels.
#[derive(Clone, Copy, Debug)]
pub struct GfniAvx2(());

impl GfniAvx2 {
    /// `Some` if this CPU (and OS) supports GFNI and AVX2.
    pub fn detect() -> Option<Self> {
        (is_x86_feature_detected!("gfni") && is_x86_feature_detected!("avx2"))
            .then_some(GfniAvx2(()))
    }
}

type V = __m256i;
const W: usize = 32;
/// Destination vectors kept in registers per block by `mul_add_multi`.
const MUL_BLOCK: usize = 8;

/// # Safety
/// `p` is valid for reading 32 bytes.
#[inline]
#[target_feature(enable = "gfni,avx2")]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: forwarded to the caller; unaligned load.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// # Safety
/// `p` is valid for writing 32 bytes.
#[inline]
#[target_feature(enable = "gfni,avx2")]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: forwarded to the caller; unaligned store.
    unsafe { _mm256_storeu_si256(p.cast(), v) }
}

#[inline]
#[target_feature(enable = "gfni,avx2")]
fn vxor(a: V, b: V) -> V {
    _mm256_xor_si256(a, b)
}

/// Multiplication by a constant: an affine transform with the constant's bit matrix in every
/// 64-bit lane and no additive constant.
struct Mul {
    matrix: V,
}

impl Mul {
    #[inline]
    #[target_feature(enable = "gfni,avx2")]
    fn new(c: u8) -> Mul {
        Mul {
            matrix: _mm256_set1_epi64x(AFFINE[c as usize] as i64),
        }
    }

    #[inline]
    #[target_feature(enable = "gfni,avx2")]
    fn apply(&self, x: V) -> V {
        _mm256_gf2p8affine_epi64_epi8::<0>(x, self.matrix)
    }
}

region_kernels!(GfniAvx2, "gfni,avx2");
