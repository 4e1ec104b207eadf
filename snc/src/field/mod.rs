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
//! * ISA kernels (`Ssse3`, `Avx2`, ...) can only be constructed through their `detect()`, which
//!   checks the CPU; their `#[target_feature]` functions are private to their modules.

pub mod gf256;
mod scalar;

use std::sync::OnceLock;

/// Which instruction set a [`Kernel`] uses.
#[derive(Clone, Copy, Debug)]
enum Isa {
    Scalar,
}

/// A set of region kernels for one instruction set, chosen at run time.
///
/// Cheap to copy; every method dispatches with one `match` and then runs a loop specialised for
/// the instruction set.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    isa: Isa,
}

#[track_caller]
fn check_len(op: &str, dst: usize, src: usize) {
    assert!(
        dst == src,
        "field::{op}: source length {src} differs from destination length {dst}"
    );
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
        Kernel { isa: Isa::Scalar }
    }

    /// Every kernel this CPU can run, slowest first (the last one is [`Kernel::best`]).
    pub fn available() -> Vec<Kernel> {
        vec![Self::scalar()]
    }

    /// Short name of the instruction set ("scalar", "ssse3", "avx2", "avx512bw", "gfni").
    pub fn name(&self) -> &'static str {
        match self.isa {
            Isa::Scalar => "scalar",
        }
    }

    /// `dst ^= src`. Panics if the lengths differ.
    #[track_caller]
    pub fn xor(&self, dst: &mut [u8], src: &[u8]) {
        check_len("xor", dst.len(), src.len());
        match self.isa {
            Isa::Scalar => scalar::xor(dst, src),
        }
    }

    /// `dst ^= srcs[0] ^ srcs[1] ^ ...` in one pass over `dst`. Panics if any source length
    /// differs from `dst.len()`.
    #[track_caller]
    pub fn xor_multi(&self, dst: &mut [u8], srcs: &[&[u8]]) {
        for s in srcs {
            check_len("xor_multi", dst.len(), s.len());
        }
        match self.isa {
            Isa::Scalar => scalar::xor_multi(dst, srcs),
        }
    }

    /// `dst ^= c * src` (`c == 0` does nothing, `c == 1` is [`Kernel::xor`]). Panics if the
    /// lengths differ.
    #[track_caller]
    pub fn mul_add(&self, dst: &mut [u8], src: &[u8], c: u8) {
        check_len("mul_add", dst.len(), src.len());
        match self.isa {
            Isa::Scalar => scalar::mul_add(dst, src, c),
        }
    }

    /// `dst ^= c_0 * src_0 ^ c_1 * src_1 ^ ...` in one pass over `dst`. Panics if any source
    /// length differs from `dst.len()`.
    #[track_caller]
    pub fn mul_add_multi(&self, dst: &mut [u8], srcs: &[(&[u8], u8)]) {
        for (s, _) in srcs {
            check_len("mul_add_multi", dst.len(), s.len());
        }
        match self.isa {
            Isa::Scalar => scalar::mul_add_multi(dst, srcs),
        }
    }

    /// `dst = c * dst` (`c == 0` zeroes, `c == 1` does nothing).
    pub fn scale(&self, dst: &mut [u8], c: u8) {
        match self.isa {
            Isa::Scalar => scalar::scale(dst, c),
        }
    }
}
