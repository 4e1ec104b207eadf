//! One implementation of the region loops, instantiated once per instruction set.
//!
//! Every SIMD kernel (SSSE3, AVX2, AVX-512, GFNI) runs exactly the same loop structure; only
//! the vector width and the "multiply a vector by a constant" primitive differ. Writing the
//! loops once means the AVX-512 and GFNI instantiations, which cannot run on every CI machine,
//! share their indexing, unrolling and tail handling with the SSSE3/AVX2 ones that do.
//!
//! The invoking module must define, before calling [`region_kernels!`]:
//! * `type V` (the vector type), `const W: usize` (its width in bytes) and
//!   `const MUL_BLOCK: usize` (destination vectors held in registers by `mul_add_multi`);
//! * `unsafe fn load(p: *const u8) -> V` and `unsafe fn store(p: *mut u8, v: V)` (unaligned);
//! * `fn vxor(a: V, b: V) -> V`;
//! * `struct Mul` with `fn new(c: u8) -> Mul` and `fn apply(&self, x: V) -> V` computing
//!   `c * x` bytewise for any `c` (including 0 and 1);
//!
//! all with `#[target_feature]`s that are a subset of the instantiation's features.

/// Defines the private `#[target_feature]` region functions and the public safe methods of the
/// ISA token type `$isa` (whose only constructor checks the CPU for `$feat`).
macro_rules! region_kernels {
    ($isa:ident, $feat:literal) => {
        /// `dst ^= src` over the first `dst.len()` bytes.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, and `src.len() >= dst.len()`.
        #[target_feature(enable = $feat)]
        unsafe fn xor_region(dst: &mut [u8], src: &[u8]) {
            let n = dst.len();
            debug_assert!(src.len() >= n);
            let d = dst.as_mut_ptr();
            let s = src.as_ptr();
            let mut i = 0;
            while i + 4 * W <= n {
                // SAFETY: i + 4W <= n and both slices have at least n bytes (caller contract);
                // load/store are unaligned.
                unsafe {
                    let a0 = vxor(load(d.add(i)), load(s.add(i)));
                    let a1 = vxor(load(d.add(i + W)), load(s.add(i + W)));
                    let a2 = vxor(load(d.add(i + 2 * W)), load(s.add(i + 2 * W)));
                    let a3 = vxor(load(d.add(i + 3 * W)), load(s.add(i + 3 * W)));
                    store(d.add(i), a0);
                    store(d.add(i + W), a1);
                    store(d.add(i + 2 * W), a2);
                    store(d.add(i + 3 * W), a3);
                }
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: i + W <= n, as above.
                unsafe { store(d.add(i), vxor(load(d.add(i)), load(s.add(i)))) };
                i += W;
            }
            $crate::field::scalar::xor(&mut dst[i..], &src[i..n]);
        }

        /// Folds every source into `N` vectors of `dst` starting at byte `i`, keeping them in
        /// registers: one load and one store of the destination per block.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, `i + N * W <= dst_len`
        /// for the `dst_len` bytes behind `d`, and every source has at least `dst_len` bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn xor_multi_block<const N: usize>(d: *mut u8, srcs: &[&[u8]], i: usize) {
            // SAFETY: i + N * W <= dst_len (caller contract); unaligned loads.
            let mut acc = [unsafe { load(d.add(i)) }; N];
            for (k, a) in acc.iter_mut().enumerate().skip(1) {
                // SAFETY: as above, k < N.
                *a = unsafe { load(d.add(i + k * W)) };
            }
            for src in srcs {
                let s = src.as_ptr();
                for (k, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i + k * W + W <= i + N * W <= dst_len <= src.len().
                    *a = vxor(*a, unsafe { load(s.add(i + k * W)) });
                }
            }
            for (k, a) in acc.iter().enumerate() {
                // SAFETY: i + k * W + W <= dst_len; unaligned stores.
                unsafe { store(d.add(i + k * W), *a) };
            }
        }

        /// `dst ^= srcs[0] ^ srcs[1] ^ ...`: blocks of 8 (then 4, then 1) vectors of `dst` stay
        /// in registers while every source is folded in.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, and every source has at
        /// least `dst.len()` bytes.
        #[target_feature(enable = $feat)]
        unsafe fn xor_multi_region(dst: &mut [u8], srcs: &[&[u8]]) {
            let n = dst.len();
            debug_assert!(srcs.iter().all(|s| s.len() >= n));
            let d = dst.as_mut_ptr();
            let mut i = 0;
            while i + 8 * W <= n {
                // SAFETY: i + 8W <= n = dst.len(); sources checked by our caller.
                unsafe { xor_multi_block::<8>(d, srcs, i) };
                i += 8 * W;
            }
            if i + 4 * W <= n {
                // SAFETY: i + 4W <= n = dst.len(); sources checked by our caller.
                unsafe { xor_multi_block::<4>(d, srcs, i) };
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: i + W <= n = dst.len(); sources checked by our caller.
                unsafe { xor_multi_block::<1>(d, srcs, i) };
                i += W;
            }
            if i < n {
                let tail = &mut dst[i..];
                for src in srcs {
                    $crate::field::scalar::xor(tail, &src[i..n]);
                }
            }
        }

        /// Writes the XOR of every source into `N` vectors of `dst` starting at byte `i`, without
        /// reading `dst`.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, `srcs` is not empty,
        /// `i + N * W <= dst_len` for the `dst_len` bytes behind `d`, and every source has at
        /// least `dst_len` bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn xor_sum_block<const N: usize>(d: *mut u8, srcs: &[&[u8]], i: usize) {
            let first = srcs[0].as_ptr();
            // SAFETY: i + N * W <= dst_len <= srcs[0].len() (caller contract); unaligned loads.
            let mut acc = [unsafe { load(first.add(i)) }; N];
            for (k, a) in acc.iter_mut().enumerate().skip(1) {
                // SAFETY: as above, k < N.
                *a = unsafe { load(first.add(i + k * W)) };
            }
            for src in &srcs[1..] {
                let s = src.as_ptr();
                for (k, a) in acc.iter_mut().enumerate() {
                    // SAFETY: i + k * W + W <= i + N * W <= dst_len <= src.len().
                    *a = vxor(*a, unsafe { load(s.add(i + k * W)) });
                }
            }
            for (k, a) in acc.iter().enumerate() {
                // SAFETY: i + k * W + W <= dst_len; unaligned stores.
                unsafe { store(d.add(i + k * W), *a) };
            }
        }

        /// `dst = srcs[0] ^ srcs[1] ^ ...` (zero for no source) like `xor_multi_region`, but
        /// `dst` is only written: no zero fill and no load of it first.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, and every source has at
        /// least `dst.len()` bytes.
        #[target_feature(enable = $feat)]
        unsafe fn xor_sum_region(dst: &mut [u8], srcs: &[&[u8]]) {
            if srcs.is_empty() {
                return dst.fill(0);
            }
            let n = dst.len();
            debug_assert!(srcs.iter().all(|s| s.len() >= n));
            let d = dst.as_mut_ptr();
            let mut i = 0;
            while i + 8 * W <= n {
                // SAFETY: srcs is not empty, i + 8W <= n = dst.len(); sources checked by our
                // caller.
                unsafe { xor_sum_block::<8>(d, srcs, i) };
                i += 8 * W;
            }
            if i + 4 * W <= n {
                // SAFETY: as above with 4W.
                unsafe { xor_sum_block::<4>(d, srcs, i) };
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: as above with W.
                unsafe { xor_sum_block::<1>(d, srcs, i) };
                i += W;
            }
            if i < n {
                let tail = &mut dst[i..];
                tail.copy_from_slice(&srcs[0][i..n]);
                for src in &srcs[1..] {
                    $crate::field::scalar::xor(tail, &src[i..n]);
                }
            }
        }

        /// `dst ^= c * src` over the first `dst.len()` bytes.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, and `src.len() >= dst.len()`.
        #[target_feature(enable = $feat)]
        unsafe fn mul_add_region(dst: &mut [u8], src: &[u8], c: u8) {
            match c {
                0 => return,
                // SAFETY: same contract as ours.
                1 => return unsafe { xor_region(dst, src) },
                _ => {}
            }
            let n = dst.len();
            debug_assert!(src.len() >= n);
            let m = Mul::new(c);
            let d = dst.as_mut_ptr();
            let s = src.as_ptr();
            let mut i = 0;
            while i + 4 * W <= n {
                // SAFETY: i + 4W <= n and both slices have at least n bytes (caller contract).
                unsafe {
                    let a0 = vxor(load(d.add(i)), m.apply(load(s.add(i))));
                    let a1 = vxor(load(d.add(i + W)), m.apply(load(s.add(i + W))));
                    let a2 = vxor(load(d.add(i + 2 * W)), m.apply(load(s.add(i + 2 * W))));
                    let a3 = vxor(load(d.add(i + 3 * W)), m.apply(load(s.add(i + 3 * W))));
                    store(d.add(i), a0);
                    store(d.add(i + W), a1);
                    store(d.add(i + 2 * W), a2);
                    store(d.add(i + 3 * W), a3);
                }
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: i + W <= n, as above.
                unsafe { store(d.add(i), vxor(load(d.add(i)), m.apply(load(s.add(i))))) };
                i += W;
            }
            $crate::field::scalar::mul_add(&mut dst[i..], &src[i..n], c);
        }

        /// Folds `c_k * src_k` for every source into `N` vectors of `dst` starting at byte `i`,
        /// keeping them in registers (`c == 0` skipped, `c == 1` XORed).
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, `i + N * W <= dst_len`
        /// for the `dst_len` bytes behind `d`, and every source has at least `dst_len` bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn mul_add_multi_block<const N: usize>(d: *mut u8, srcs: &[(&[u8], u8)], i: usize) {
            // SAFETY: i + N * W <= dst_len (caller contract); unaligned loads.
            let mut acc = [unsafe { load(d.add(i)) }; N];
            for (k, a) in acc.iter_mut().enumerate().skip(1) {
                // SAFETY: as above, k < N.
                *a = unsafe { load(d.add(i + k * W)) };
            }
            for &(src, c) in srcs {
                let s = src.as_ptr();
                match c {
                    0 => {}
                    1 => {
                        for (k, a) in acc.iter_mut().enumerate() {
                            // SAFETY: i + k * W + W <= i + N * W <= dst_len <= src.len().
                            *a = vxor(*a, unsafe { load(s.add(i + k * W)) });
                        }
                    }
                    _ => {
                        let m = Mul::new(c);
                        for (k, a) in acc.iter_mut().enumerate() {
                            // SAFETY: i + k * W + W <= i + N * W <= dst_len <= src.len().
                            *a = vxor(*a, m.apply(unsafe { load(s.add(i + k * W)) }));
                        }
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                // SAFETY: i + k * W + W <= dst_len; unaligned stores.
                unsafe { store(d.add(i + k * W), *a) };
            }
        }

        /// `dst ^= sum c_k * src_k`: blocks of `MUL_BLOCK` (then 4, then 1) vectors of `dst` stay
        /// in registers while every source is multiplied and folded in.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel, and every source has at
        /// least `dst.len()` bytes.
        #[target_feature(enable = $feat)]
        unsafe fn mul_add_multi_region(dst: &mut [u8], srcs: &[(&[u8], u8)]) {
            let n = dst.len();
            debug_assert!(srcs.iter().all(|(s, _)| s.len() >= n));
            let d = dst.as_mut_ptr();
            let mut i = 0;
            while i + MUL_BLOCK * W <= n {
                // SAFETY: i + MUL_BLOCK * W <= n = dst.len(); sources checked by our caller.
                unsafe { mul_add_multi_block::<MUL_BLOCK>(d, srcs, i) };
                i += MUL_BLOCK * W;
            }
            while i + 4 * W <= n {
                // SAFETY: i + 4W <= n = dst.len(); sources checked by our caller.
                unsafe { mul_add_multi_block::<4>(d, srcs, i) };
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: i + W <= n = dst.len(); sources checked by our caller.
                unsafe { mul_add_multi_block::<1>(d, srcs, i) };
                i += W;
            }
            if i < n {
                let tail = &mut dst[i..];
                for &(src, c) in srcs {
                    $crate::field::scalar::mul_add(tail, &src[i..n], c);
                }
            }
        }

        /// `dst = c * dst`.
        ///
        /// # Safety
        /// The CPU supports the target features of this module's kernel.
        #[target_feature(enable = $feat)]
        unsafe fn scale_region(dst: &mut [u8], c: u8) {
            match c {
                0 => return dst.fill(0),
                1 => return,
                _ => {}
            }
            let n = dst.len();
            let m = Mul::new(c);
            let d = dst.as_mut_ptr();
            let mut i = 0;
            while i + 4 * W <= n {
                // SAFETY: i + 4W <= n = dst.len(); unaligned loads/stores.
                unsafe {
                    let a0 = m.apply(load(d.add(i)));
                    let a1 = m.apply(load(d.add(i + W)));
                    let a2 = m.apply(load(d.add(i + 2 * W)));
                    let a3 = m.apply(load(d.add(i + 3 * W)));
                    store(d.add(i), a0);
                    store(d.add(i + W), a1);
                    store(d.add(i + 2 * W), a2);
                    store(d.add(i + 3 * W), a3);
                }
                i += 4 * W;
            }
            while i + W <= n {
                // SAFETY: i + W <= n = dst.len().
                unsafe { store(d.add(i), m.apply(load(d.add(i)))) };
                i += W;
            }
            $crate::field::scalar::scale(&mut dst[i..], c);
        }

        impl $isa {
            /// `dst ^= src`. Panics if the lengths differ.
            #[track_caller]
            pub fn xor(self, dst: &mut [u8], src: &[u8]) {
                $crate::field::check_len("xor", dst.len(), src.len());
                // SAFETY: `self` exists only if `detect()` found the CPU features; lengths checked.
                unsafe { xor_region(dst, src) }
            }

            /// `dst ^= srcs[0] ^ srcs[1] ^ ...`, fused. Panics on a source of another length.
            #[track_caller]
            pub fn xor_multi(self, dst: &mut [u8], srcs: &[&[u8]]) {
                for s in srcs {
                    $crate::field::check_len("xor_multi", dst.len(), s.len());
                }
                // SAFETY: `self` proves the CPU features; every source length checked.
                unsafe { xor_multi_region(dst, srcs) }
            }

            /// `dst = srcs[0] ^ srcs[1] ^ ...` (zero for no source), fused; `dst` is only
            /// written. Panics on a source of another length.
            #[track_caller]
            pub fn xor_sum(self, dst: &mut [u8], srcs: &[&[u8]]) {
                for s in srcs {
                    $crate::field::check_len("xor_sum", dst.len(), s.len());
                }
                // SAFETY: `self` proves the CPU features; every source length checked.
                unsafe { xor_sum_region(dst, srcs) }
            }

            /// `dst ^= c * src`. Panics if the lengths differ.
            #[track_caller]
            pub fn mul_add(self, dst: &mut [u8], src: &[u8], c: u8) {
                $crate::field::check_len("mul_add", dst.len(), src.len());
                // SAFETY: `self` proves the CPU features; lengths checked.
                unsafe { mul_add_region(dst, src, c) }
            }

            /// `dst ^= sum c_k * src_k`, fused. Panics on a source of another length.
            #[track_caller]
            pub fn mul_add_multi(self, dst: &mut [u8], srcs: &[(&[u8], u8)]) {
                for (s, _) in srcs {
                    $crate::field::check_len("mul_add_multi", dst.len(), s.len());
                }
                // SAFETY: `self` proves the CPU features; every source length checked.
                unsafe { mul_add_multi_region(dst, srcs) }
            }

            /// `dst = c * dst`.
            pub fn scale(self, dst: &mut [u8], c: u8) {
                // SAFETY: `self` proves the CPU features.
                unsafe { scale_region(dst, c) }
            }
        }
    };
}
