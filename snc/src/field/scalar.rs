//! Portable reference kernels: u64-word XOR and per-byte table lookups for multiplication.
//!
//! These are the reference every SIMD kernel is tested against, and the fallback on CPUs
//! without SSSE3. Slice lengths are checked by the caller ([`super::Kernel`]).

use super::gf256::MUL;

/// Bytes of the destination held in registers while all sources are folded into it.
const BLOCK: usize = 64;

#[inline(always)]
fn load(b: &[u8]) -> u64 {
    u64::from_ne_bytes(b.try_into().expect("8-byte chunk"))
}

/// `dst ^= src` (equal lengths).
pub(super) fn xor(dst: &mut [u8], src: &[u8]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d8, s8) in (&mut d).zip(&mut s) {
        let v = load(d8) ^ load(s8);
        d8.copy_from_slice(&v.to_ne_bytes());
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a ^= *b;
    }
}

/// `dst = srcs[0] ^ srcs[1] ^ ...` (zero for no source): `dst` is never read.
pub(super) fn xor_sum(dst: &mut [u8], srcs: &[&[u8]]) {
    match srcs.split_first() {
        None => dst.fill(0),
        Some((first, rest)) => {
            dst.copy_from_slice(&first[..dst.len()]);
            xor_multi(dst, rest);
        }
    }
}

/// `dst ^= srcs[0] ^ srcs[1] ^ ...`, one pass over `dst` in 64-byte blocks.
pub(super) fn xor_multi(dst: &mut [u8], srcs: &[&[u8]]) {
    let full = dst.len() / BLOCK * BLOCK;
    for (bi, block) in dst[..full].chunks_exact_mut(BLOCK).enumerate() {
        let off = bi * BLOCK;
        let mut acc = [0u64; BLOCK / 8];
        for (a, w) in acc.iter_mut().zip(block.chunks_exact(8)) {
            *a = load(w);
        }
        for src in srcs {
            let s = &src[off..off + BLOCK];
            for (a, w) in acc.iter_mut().zip(s.chunks_exact(8)) {
                *a ^= load(w);
            }
        }
        for (a, w) in acc.iter().zip(block.chunks_exact_mut(8)) {
            w.copy_from_slice(&a.to_ne_bytes());
        }
    }
    let tail = &mut dst[full..];
    for src in srcs {
        xor(tail, &src[full..]);
    }
}

/// `dst ^= c * src` (equal lengths).
pub(super) fn mul_add(dst: &mut [u8], src: &[u8], c: u8) {
    match c {
        0 => {}
        1 => xor(dst, src),
        _ => {
            let t = &MUL[c as usize];
            for (d, s) in dst.iter_mut().zip(src) {
                *d ^= t[*s as usize];
            }
        }
    }
}

/// `dst ^= sum c_i * src_i`, one pass over `dst` in 512-byte blocks (table lookups dominate,
/// so larger blocks than for XOR amortise the per-source dispatch).
pub(super) fn mul_add_multi(dst: &mut [u8], srcs: &[(&[u8], u8)]) {
    let mut off = 0;
    for block in dst.chunks_mut(8 * BLOCK) {
        let end = off + block.len();
        for &(src, c) in srcs {
            mul_add(block, &src[off..end], c);
        }
        off = end;
    }
}

/// `dst = c * dst`.
pub(super) fn scale(dst: &mut [u8], c: u8) {
    match c {
        0 => dst.fill(0),
        1 => {}
        _ => {
            let t = &MUL[c as usize];
            for d in dst.iter_mut() {
                *d = t[*d as usize];
            }
        }
    }
}
