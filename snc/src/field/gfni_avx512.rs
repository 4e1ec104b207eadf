//! GFNI kernels on 64-byte vectors (GFNI + AVX-512F): multiplication by `c` is one
//! VGF2P8AFFINEQB on a zmm register with the 8x8 bit matrix of "multiply by c" in the 0x11D
//! field ([`super::gf256::AFFINE`]).
//!
//! GF2P8MULB is deliberately not used: it multiplies in the AES field (0x11B), not ours.
//! Same loops as the SSSE3/AVX2 kernels (see `template.rs`); tested against the scalar reference
//! wherever the CPU has GFNI and AVX-512, skipped (with a message) elsewhere.

use core::arch::x86_64::*;

use super::gf256::AFFINE;

/// Proof that the CPU (and OS) supports GFNI and AVX-512F; the only way to run these kernels.
#[derive(Clone, Copy, Debug)]
pub struct GfniAvx512(());

impl GfniAvx512 {
    /// `Some` if this CPU and OS support GFNI and AVX-512F (zmm state enabled).
    pub fn detect() -> Option<Self> {
        (is_x86_feature_detected!("gfni") && is_x86_feature_detected!("avx512f"))
            .then_some(GfniAvx512(()))
    }
}

type V = __m512i;
const W: usize = 64;
/// Destination vectors kept in registers per block by `mul_add_multi`.
const MUL_BLOCK: usize = 8;

/// # Safety
/// `p` is valid for reading 64 bytes.
#[inline]
#[target_feature(enable = "gfni,avx512f")]
unsafe fn load(p: *const u8) -> V {
    // SAFETY: forwarded to the caller; unaligned load.
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// # Safety
/// `p` is valid for writing 64 bytes.
#[inline]
#[target_feature(enable = "gfni,avx512f")]
unsafe fn store(p: *mut u8, v: V) {
    // SAFETY: forwarded to the caller; unaligned store.
    unsafe { _mm512_storeu_si512(p.cast(), v) }
}

#[inline]
#[target_feature(enable = "gfni,avx512f")]
fn vxor(a: V, b: V) -> V {
    _mm512_xor_si512(a, b)
}

/// Multiplication by a constant: an affine transform with the constant's bit matrix in every
/// 64-bit lane and no additive constant.
struct Mul {
    matrix: V,
}

impl Mul {
    #[inline]
    #[target_feature(enable = "gfni,avx512f")]
    fn new(c: u8) -> Mul {
        Mul {
            matrix: _mm512_set1_epi64(AFFINE[c as usize] as i64),
        }
    }

    #[inline]
    #[target_feature(enable = "gfni,avx512f")]
    fn apply(&self, x: V) -> V {
        _mm512_gf2p8affine_epi64_epi8::<0>(x, self.matrix)
    }
}

region_kernels!(GfniAvx512, "gfni,avx512f");
