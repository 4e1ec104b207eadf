//! Finite-field kernels: GF(2^8) scalar arithmetic ([`gf256`]) and region operations
//! (`dst ^= c * src` and friends) with run-time SIMD dispatch ([`Kernel`]).
//!
//! Contract:
//! * The field is GF(2^8) with polynomial 0x11D and generator 2 (see [`gf256`]); GF(2) codes use
//!   the XOR operations only.
//! * Pick a kernel once with [`Kernel::best`] (CPU detection, cached) and pass it (it is `Copy`)
//!   to whatever needs it; tests and benches can pin one with [`Kernel::scalar`] or any entry of
//!   [`Kernel::available`]. All kernels give bit-identical results.
//! * Every region operation works for any length (including 0) and any alignment. Slices that
//!   must have equal length and do not are a caller bug: the operation panics with a message
//!   naming the operation and both lengths.
//! * `*_multi` operations are fused: the destination is read and written once per block while
//!   all sources are folded into register accumulators, which is what an encoder that sums ~32
//!   symbols into one packet wants.
//! * ISA kernels (`Ssse3`, `Avx2`, `GfniAvx2`, `Avx512Bw`, `GfniAvx512` on x86-64) can only be
//!   constructed through their `detect()`, which checks the CPU (and OS register state); their
//!   `#[target_feature]` functions are private to their modules. All of them share one loop
//!   template (`template.rs`) and differ only in vector width and in how a vector is multiplied
//!   by a constant: split-nibble PSHUFB lookups, or one GF2P8AFFINEQB with the constant's 8x8 bit
//!   matrix (GF2P8MULB is never used: it works in the AES field 0x11B).
//!
//! ```
//! use snc::field::{gf256, Kernel};
//!
//! let k = Kernel::best();
//! let (a, b) = ([1u8, 2, 3, 4], [5u8, 6, 7, 8]);
//! let mut acc = [0u8; 4];
//! k.mul_add_multi(&mut acc, &[(&a, 2), (&b, 1)]); // acc = 2*a + b
//! for i in 0..4 {
//!     assert_eq!(acc[i], gf256::mul(2, a[i]) ^ b[i]);
//! }
//! k.scale(&mut acc, gf256::inv(3));
//! k.scale(&mut acc, 3);
//! assert_eq!(acc, [2 ^ 5, 4 ^ 6, 6 ^ 7, 8 ^ 8]);
//! ```

#[macro_use]
mod template;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod gf256;
#[cfg(target_arch = "x86_64")]
mod gfni;
#[cfg(target_arch = "x86_64")]
mod gfni_avx512;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod ssse3;

#[cfg(target_arch = "x86_64")]
pub use self::{
    avx2::Avx2, avx512::Avx512Bw, gfni::GfniAvx2, gfni_avx512::GfniAvx512, ssse3::Ssse3,
};

use std::sync::OnceLock;

#[track_caller]
fn check_len(op: &str, dst: usize, src: usize) {
    assert!(
        dst == src,
        "field::{op}: source length {src} differs from destination length {dst}"
    );
}

/// The portable reference kernels (u64-word XOR, per-byte table-lookup multiplication); runs on
/// every CPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

impl Scalar {
    /// `dst ^= src`. Panics if the lengths differ.
    #[track_caller]
    pub fn xor(self, dst: &mut [u8], src: &[u8]) {
        check_len("xor", dst.len(), src.len());
        scalar::xor(dst, src)
    }

    /// `dst ^= srcs[0] ^ srcs[1] ^ ...`, fused. Panics on a source of another length.
    #[track_caller]
    pub fn xor_multi(self, dst: &mut [u8], srcs: &[&[u8]]) {
        for s in srcs {
            check_len("xor_multi", dst.len(), s.len());
        }
        scalar::xor_multi(dst, srcs)
    }

    /// `dst = srcs[0] ^ srcs[1] ^ ...` (zero for no source); `dst` is only written. Panics on
    /// a source of another length.
    #[track_caller]
    pub fn xor_sum(self, dst: &mut [u8], srcs: &[&[u8]]) {
        for s in srcs {
            check_len("xor_sum", dst.len(), s.len());
        }
        scalar::xor_sum(dst, srcs)
    }

    /// `dst ^= c * src`. Panics if the lengths differ.
    #[track_caller]
    pub fn mul_add(self, dst: &mut [u8], src: &[u8], c: u8) {
        check_len("mul_add", dst.len(), src.len());
        scalar::mul_add(dst, src, c)
    }

    /// `dst ^= sum c_k * src_k`, fused. Panics on a source of another length.
    #[track_caller]
    pub fn mul_add_multi(self, dst: &mut [u8], srcs: &[(&[u8], u8)]) {
        for (s, _) in srcs {
            check_len("mul_add_multi", dst.len(), s.len());
        }
        scalar::mul_add_multi(dst, srcs)
    }

    /// `dst = c * dst`.
    pub fn scale(self, dst: &mut [u8], c: u8) {
        scalar::scale(dst, c)
    }
}

/// Asks the CPU to start loading every cache line of `region` (a hint: results never
/// change). Code that is about to read many scattered symbols issues their loads together
/// instead of waiting on each miss in turn. No-op off x86-64.
#[inline]
pub fn prefetch(region: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = region.as_ptr();
        let mut i = 0;
        while i < region.len() {
            // SAFETY: PREFETCHT0 is SSE, which every x86-64 CPU has; a prefetch never faults
            // and `p + i` is inside `region`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(i).cast()) };
            i += 64;
        }
        if let Some(last) = region.last() {
            // SAFETY: as above; the last byte's line (missed when `p` is not line-aligned).
            unsafe { _mm_prefetch::<_MM_HINT_T0>((last as *const u8).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = region;
}

/// `dst.copy_from_slice(src)` with streaming (non-temporal) stores on x86-64: the copy does
/// not read `dst`'s lines into cache first nor keep them there, for data that is written now
/// and read back only much later (a decoder's slots). Ends with a store fence, so the bytes are
/// ordered like plain stores for whoever reads them next. Panics if the lengths differ.
#[track_caller]
pub fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    check_len("copy_streaming", dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let n = dst.len();
        let head = dst.as_ptr().align_offset(16).min(n);
        let body = (n - head) / 16 * 16;
        dst[..head].copy_from_slice(&src[..head]);
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let mut i = head;
        while i < head + body {
            // SAFETY: SSE2 is part of every x86-64 CPU; i + 16 <= head + body <= n for both
            // slices; the load is unaligned and `d + i` is 16-byte aligned (head aligns it).
            unsafe {
                let v = _mm_loadu_si128(s.add(i).cast::<__m128i>());
                _mm_stream_si128(d.add(i).cast::<__m128i>(), v);
            }
            i += 16;
        }
        dst[head + body..].copy_from_slice(&src[head + body..]);
        // SAFETY: SFENCE is SSE, part of every x86-64 CPU.
        unsafe { _mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Which instruction set a [`Kernel`] uses, holding the proof that the CPU supports it.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Scalar(Scalar),
    #[cfg(target_arch = "x86_64")]
    Ssse3(Ssse3),
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    #[cfg(target_arch = "x86_64")]
    GfniAvx2(GfniAvx2),
    #[cfg(target_arch = "x86_64")]
    Avx512Bw(Avx512Bw),
    #[cfg(target_arch = "x86_64")]
    GfniAvx512(GfniAvx512),
}

/// Runs `$call` with `$k` bound to the ISA token of `$kernel`.
macro_rules! dispatch {
    ($kernel:expr, $k:ident => $call:expr) => {
        match $kernel.isa {
            Isa::Scalar($k) => $call,
            #[cfg(target_arch = "x86_64")]
            Isa::Ssse3($k) => $call,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2($k) => $call,
            #[cfg(target_arch = "x86_64")]
            Isa::GfniAvx2($k) => $call,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bw($k) => $call,
            #[cfg(target_arch = "x86_64")]
            Isa::GfniAvx512($k) => $call,
        }
    };
}

/// A set of region kernels for one instruction set, chosen at run time.
///
/// Cheap to copy; every method dispatches with one `match` and then runs a loop specialised for
/// the instruction set. All kernels produce identical bytes.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    isa: Isa,
}

impl Kernel {
    /// The fastest kernel this CPU supports (detected once, then cached).
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            *Self::available()
                .last()
                .expect("scalar is always available")
        })
    }

    /// The portable reference kernel (u64 XOR, table-lookup multiplication).
    pub fn scalar() -> Kernel {
        Kernel {
            isa: Isa::Scalar(Scalar),
        }
    }

    /// Every kernel this CPU can run, slowest first (the last one is [`Kernel::best`]):
    /// scalar, ssse3, avx2, gfni-avx2, avx512bw, gfni-avx512.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)] // only scalar on non-x86_64 targets
        let mut kernels = vec![Self::scalar()];
        #[cfg(target_arch = "x86_64")]
        {
            kernels.extend(Ssse3::detect().map(Kernel::from));
            kernels.extend(Avx2::detect().map(Kernel::from));
            kernels.extend(GfniAvx2::detect().map(Kernel::from));
            kernels.extend(Avx512Bw::detect().map(Kernel::from));
            kernels.extend(GfniAvx512::detect().map(Kernel::from));
        }
        kernels
    }

    /// The available kernel called `name` (see [`Kernel::name`]), if this CPU can run it.
    pub fn by_name(name: &str) -> Option<Kernel> {
        Self::available().into_iter().find(|k| k.name() == name)
    }

    /// Short name of the instruction set: "scalar", "ssse3", "avx2", "gfni-avx2", "avx512bw"
    /// or "gfni-avx512".
    pub fn name(&self) -> &'static str {
        match self.isa {
            Isa::Scalar(_) => "scalar",
            #[cfg(target_arch = "x86_64")]
            Isa::Ssse3(_) => "ssse3",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(_) => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::GfniAvx2(_) => "gfni-avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bw(_) => "avx512bw",
            #[cfg(target_arch = "x86_64")]
            Isa::GfniAvx512(_) => "gfni-avx512",
        }
    }

    /// `dst ^= src`. Panics if the lengths differ.
    #[track_caller]
    pub fn xor(&self, dst: &mut [u8], src: &[u8]) {
        dispatch!(self, k => k.xor(dst, src))
    }

    /// `dst ^= srcs[0] ^ srcs[1] ^ ...` in one pass over `dst` (register accumulators, each
    /// destination byte loaded and stored once). Panics if any source length differs from
    /// `dst.len()`.
    #[track_caller]
    pub fn xor_multi(&self, dst: &mut [u8], srcs: &[&[u8]]) {
        dispatch!(self, k => k.xor_multi(dst, srcs))
    }

    /// `dst = srcs[0] ^ srcs[1] ^ ...` in one pass that only writes `dst` (zero for no
    /// source): [`Kernel::xor_multi`] into a zeroed buffer without the zero fill and the loads
    /// of the zeros. Panics if any source length differs from `dst.len()`.
    #[track_caller]
    pub fn xor_sum(&self, dst: &mut [u8], srcs: &[&[u8]]) {
        dispatch!(self, k => k.xor_sum(dst, srcs))
    }

    /// `dst ^= c * src` (`c == 0` does nothing, `c == 1` is [`Kernel::xor`]). Panics if the
    /// lengths differ.
    #[track_caller]
    pub fn mul_add(&self, dst: &mut [u8], src: &[u8], c: u8) {
        dispatch!(self, k => k.mul_add(dst, src, c))
    }

    /// `dst ^= c_0 * src_0 ^ c_1 * src_1 ^ ...` in one pass over `dst` (sources with `c == 0`
    /// are skipped, `c == 1` XORed). Panics if any source length differs from `dst.len()`.
    #[track_caller]
    pub fn mul_add_multi(&self, dst: &mut [u8], srcs: &[(&[u8], u8)]) {
        dispatch!(self, k => k.mul_add_multi(dst, srcs))
    }

    /// `dst = c * dst` (`c == 0` zeroes, `c == 1` does nothing).
    pub fn scale(&self, dst: &mut [u8], c: u8) {
        dispatch!(self, k => k.scale(dst, c))
    }
}

impl From<Scalar> for Kernel {
    fn from(k: Scalar) -> Kernel {
        Kernel {
            isa: Isa::Scalar(k),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl From<Ssse3> for Kernel {
    fn from(k: Ssse3) -> Kernel {
        Kernel { isa: Isa::Ssse3(k) }
    }
}

#[cfg(target_arch = "x86_64")]
impl From<Avx2> for Kernel {
    fn from(k: Avx2) -> Kernel {
        Kernel { isa: Isa::Avx2(k) }
    }
}

#[cfg(target_arch = "x86_64")]
impl From<GfniAvx2> for Kernel {
    fn from(k: GfniAvx2) -> Kernel {
        Kernel {
            isa: Isa::GfniAvx2(k),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl From<Avx512Bw> for Kernel {
    fn from(k: Avx512Bw) -> Kernel {
        Kernel {
            isa: Isa::Avx512Bw(k),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl From<GfniAvx512> for Kernel {
    fn from(k: GfniAvx512) -> Kernel {
        Kernel {
            isa: Isa::GfniAvx512(k),
        }
    }
}
