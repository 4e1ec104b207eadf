//! Scalar GF(2^8) arithmetic over the primitive polynomial x^8+x^4+x^3+x^2+1 (0x11D), generator 2.
//!
//! Every table here is computed at compile time by `const fn`s and lives in read-only statics:
//! there is no run-time initialisation and no global mutable state. The tables are the single
//! source of truth for the SIMD kernels in [`crate::field`] (nibble tables for PSHUFB, 8x8 bit
//! matrices for GFNI), so all kernels agree with [`mul`] by construction and by test.

/// The reduction polynomial x^8+x^4+x^3+x^2+1 with its x^8 bit.
pub const POLY: u16 = 0x11D;

/// The multiplicative generator of the field (the element x).
pub const GENERATOR: u8 = 2;

/// Carry-less multiply of `a` and `b` reduced modulo [`POLY`] (bit-serial; used to build tables).
pub const fn mul_slow(a: u8, b: u8) -> u8 {
    let mut acc: u16 = 0;
    let mut aa = a as u16;
    let mut bb = b;
    while bb != 0 {
        if bb & 1 != 0 {
            acc ^= aa;
        }
        aa <<= 1;
        if aa & 0x100 != 0 {
            aa ^= POLY;
        }
        bb >>= 1;
    }
    acc as u8
}

const fn build_exp() -> [u8; 512] {
    let mut exp = [0u8; 512];
    let mut x: u8 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x;
        exp[i + 255] = x;
        x = mul_slow(x, GENERATOR);
        i += 1;
    }
    // exp[510], exp[511] are never reached by log sums (max 254 + 254 = 508) but keep them valid.
    exp[510] = exp[0];
    exp[511] = exp[1];
    exp
}

const fn build_log(exp: &[u8; 512]) -> [u8; 256] {
    let mut log = [0u8; 256];
    let mut i = 0;
    while i < 255 {
        log[exp[i] as usize] = i as u8;
        i += 1;
    }
    // log(0) is undefined; 0 is stored and every user checks for zero first.
    log
}

/// `EXP[i] = 2^i` for `i` in `0..510` (doubled so that `EXP[LOG[a] + LOG[b]]` needs no modulo).
pub static EXP: [u8; 512] = build_exp();

/// `LOG[a]` = discrete logarithm of `a` to base 2 for `a != 0`; `LOG[0]` is 0 (meaningless).
pub static LOG: [u8; 256] = build_log(&build_exp());

const fn build_mul() -> [[u8; 256]; 256] {
    let exp = build_exp();
    let log = build_log(&exp);
    let mut t = [[0u8; 256]; 256];
    let mut a = 1;
    while a < 256 {
        let mut b = 1;
        while b < 256 {
            t[a][b] = exp[log[a] as usize + log[b] as usize];
            b += 1;
        }
        a += 1;
    }
    t
}

/// Full multiplication table: `MUL[a][b] = a * b` (64 KiB). Row `MUL[c]` is the scalar kernel's
/// lookup table for multiplying a region by `c`.
pub static MUL: [[u8; 256]; 256] = build_mul();

const fn build_inv() -> [u8; 256] {
    let exp = build_exp();
    let log = build_log(&exp);
    let mut t = [0u8; 256];
    let mut a = 1;
    while a < 256 {
        t[a] = exp[(255 - log[a] as usize) % 255];
        a += 1;
    }
    t
}

/// `INV[a]` = multiplicative inverse of `a`; `INV[0]` = 0 by convention.
pub static INV: [u8; 256] = build_inv();

const fn build_nibble_lo() -> [[u8; 16]; 256] {
    let mut t = [[0u8; 16]; 256];
    let mut c = 0;
    while c < 256 {
        let mut n = 0;
        while n < 16 {
            t[c][n] = mul_slow(c as u8, n as u8);
            n += 1;
        }
        c += 1;
    }
    t
}

const fn build_nibble_hi() -> [[u8; 16]; 256] {
    let mut t = [[0u8; 16]; 256];
    let mut c = 0;
    while c < 256 {
        let mut n = 0;
        while n < 16 {
            t[c][n] = mul_slow(c as u8, (n as u8) << 4);
            n += 1;
        }
        c += 1;
    }
    t
}

/// Split-nibble tables for PSHUFB: `NIBBLE_LO[c][n] = c * n` for the low nibble `n`.
pub static NIBBLE_LO: [[u8; 16]; 256] = build_nibble_lo();

/// Split-nibble tables for PSHUFB: `NIBBLE_HI[c][n] = c * (n << 4)` for the high nibble `n`.
pub static NIBBLE_HI: [[u8; 16]; 256] = build_nibble_hi();

/// The 8x8 bit matrix of "multiply by `c`" in the layout GF2P8AFFINEQB expects.
///
/// GF2P8AFFINEQB computes output bit `i` of each byte `x` as `parity(A.byte[7 - i] & x)`, so
/// byte `7 - i` of the matrix holds, at bit `k`, bit `i` of `c * 2^k` (column `k` of the linear
/// map is the image of the basis vector `x^k`).
pub const fn affine_matrix(c: u8) -> u64 {
    let mut m: u64 = 0;
    let mut i = 0;
    while i < 8 {
        let mut row: u8 = 0;
        let mut k = 0;
        while k < 8 {
            let column = mul_slow(c, 1u8 << k);
            row |= ((column >> i) & 1) << k;
            k += 1;
        }
        m |= (row as u64) << (8 * (7 - i));
        i += 1;
    }
    m
}

const fn build_affine() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = affine_matrix(c as u8);
        c += 1;
    }
    t
}

/// `AFFINE[c]` = [`affine_matrix`]`(c)` for every constant, for the GFNI kernels.
pub static AFFINE: [u64; 256] = build_affine();

/// Product `a * b` in GF(2^8).
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    MUL[a as usize][b as usize]
}

/// Multiplicative inverse of `a`. `a` must be non-zero; `inv(0)` returns 0 by convention
/// (it does not panic), so callers must check for zero pivots themselves.
#[inline]
pub fn inv(a: u8) -> u8 {
    INV[a as usize]
}

/// Quotient `a / b`. `b` must be non-zero; `div(a, 0)` returns 0 (like `inv(0)`), never panics.
#[inline]
pub fn div(a: u8, b: u8) -> u8 {
    MUL[a as usize][INV[b as usize] as usize]
}

/// `base` raised to the power `e` (with `pow(0, 0) == 1`).
pub fn pow(base: u8, e: u32) -> u8 {
    if e == 0 {
        return 1;
    }
    if base == 0 {
        return 0;
    }
    let l = (LOG[base as usize] as u64 * e as u64) % 255;
    EXP[l as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_has_order_255() {
        let mut seen = [false; 256];
        for &e in &EXP[..255] {
            assert!(!seen[e as usize], "2 is not primitive: repeat of {e}");
            seen[e as usize] = true;
        }
        assert!(!seen[0]);
        assert_eq!(EXP[255], 1);
    }

    #[test]
    fn mul_table_matches_carryless_multiply() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(mul(a, b), mul_slow(a, b), "{a} * {b}");
            }
        }
    }

    #[test]
    fn inverse_and_division() {
        assert_eq!(inv(0), 0);
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "a = {a}");
            for b in 1..=255u8 {
                assert_eq!(mul(div(a, b), b), a, "{a} / {b}");
            }
        }
    }

    #[test]
    fn pow_agrees_with_repeated_mul() {
        for base in 0..=255u8 {
            let mut p = 1u8;
            for e in 0..300u32 {
                assert_eq!(pow(base, e), p, "{base}^{e}");
                p = mul(p, base);
            }
        }
    }

    #[test]
    fn nibble_tables_split_mul() {
        for c in 0..=255u8 {
            for x in 0..=255u8 {
                let r = NIBBLE_LO[c as usize][(x & 15) as usize]
                    ^ NIBBLE_HI[c as usize][(x >> 4) as usize];
                assert_eq!(r, mul(c, x));
            }
        }
    }

    /// Software model of GF2P8AFFINEQB (Intel SDM pseudocode) for one byte.
    fn affine_byte(matrix: u64, x: u8, imm: u8) -> u8 {
        let mut r = 0u8;
        for i in 0..8 {
            let row = (matrix >> (8 * (7 - i))) as u8;
            let bit = ((row & x).count_ones() & 1) as u8 ^ ((imm >> i) & 1);
            r |= bit << i;
        }
        r
    }

    #[test]
    fn affine_matrices_multiply_under_the_gf2p8affineqb_model() {
        for c in 0..=255u8 {
            for x in 0..=255u8 {
                assert_eq!(
                    affine_byte(AFFINE[c as usize], x, 0),
                    mul(c, x),
                    "{c} * {x}"
                );
            }
        }
        // Identity matrix as documented by Intel (0x0102040810204080).
        assert_eq!(AFFINE[1], 0x0102_0408_1020_4080);
    }

    /// Pins the orientation of the matrix model (a transposed model would still pass the
    /// identity check) with a published non-symmetric constant: GF2P8AFFINEINVQB with matrix
    /// 0xF1E3C78F1F3E7CF8 and immediate 0x63 computes the AES S-box, i.e. the affine map applied
    /// to the inverse in the AES field 0x11B.
    #[test]
    fn affine_model_reproduces_the_aes_sbox() {
        fn aes_mul(a: u8, b: u8) -> u8 {
            let (mut a, mut b, mut r) = (a as u16, b, 0u16);
            while b != 0 {
                if b & 1 != 0 {
                    r ^= a;
                }
                a <<= 1;
                if a & 0x100 != 0 {
                    a ^= 0x11B;
                }
                b >>= 1;
            }
            r as u8
        }
        let aes_inv = |x: u8| (1..=255u8).find(|&y| aes_mul(x, y) == 1).unwrap_or(0);
        for (x, sbox) in [
            (0x00, 0x63),
            (0x01, 0x7C),
            (0x02, 0x77),
            (0x53, 0xED),
            (0xFF, 0x16),
        ] {
            assert_eq!(
                affine_byte(0xF1E3_C78F_1F3E_7CF8, aes_inv(x), 0x63),
                sbox,
                "S({x:#x})"
            );
        }
    }
}
