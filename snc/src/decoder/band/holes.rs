//! The precode solve over the holes (columns without a pivot row), coefficients only.
//!
//! With `U x = m` the stored rows, split the columns into pivots (`nh`) and holes (`h`):
//! `x_nh = v + W x_h` with `v = U_nh^-1 m` and `W = U_nh^-1 U_h`. Every check `r` says
//! `P[r] x = 0`, so over the holes
//!
//! `A x_h = P_nh v` with `A = P_h + Y U_h` and `Y = P_nh U_nh^-1`.
//!
//! `Y` is computed column by column from the left (`Y_p = P_p + sum_q U_qp Y_q` over the
//! pivot rows `q` in `(p - w, p)`), so only a ring of `w` columns of `C` entries is live; the
//! same recurrence evaluated at a hole column gives that hole's column of `A`. The sweep stops
//! at the last hole. `A` (`C x h`) is then reduced Gauss-Jordan style with the identity
//! appended, which yields for every hole the combination of checks that gives its value, or
//! the rank deficiency when the checks cannot resolve the holes yet.

use super::rows::{Pivots, Rows};
use crate::field::{gf256, Kernel};
use crate::layout::Layout;

/// Checks (`0..C`) containing column `p`.
#[inline]
pub(crate) fn checks_of(layout: &Layout, p: u32) -> CheckIter<'_> {
    let k = layout.source_count();
    if p < k {
        CheckIter::Sources(layout.source_checks(p).iter())
    } else {
        CheckIter::One(Some(p - k))
    }
}

/// Iterator over the checks of one column.
pub(crate) enum CheckIter<'l> {
    Sources(std::slice::Iter<'l, u32>),
    One(Option<u32>),
}

impl Iterator for CheckIter<'_> {
    type Item = u32;
    #[inline]
    fn next(&mut self) -> Option<u32> {
        match self {
            CheckIter::Sources(it) => it.next().copied(),
            CheckIter::One(o) => o.take(),
        }
    }
}

/// How the hole values follow from the check right-hand sides.
#[derive(Debug)]
pub(crate) enum Combos {
    /// GF(2): `h` rows of `cw` words; bit `r` of row `i` = check `r` is in hole `i`'s sum.
    Bits { cw: usize, words: Vec<u64> },
    /// GF(2^8): `h` rows of `C` coefficients.
    Bytes { c: usize, coefs: Vec<u8> },
}

impl Combos {
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Combos::Bits { words, .. } => words.capacity() * 8,
            Combos::Bytes { coefs, .. } => coefs.capacity(),
        }
    }

    /// Calls `f(check, coefficient)` for the non-zero terms of hole `i`'s value.
    pub(crate) fn for_each_term(&self, i: usize, mut f: impl FnMut(u32, u8)) {
        match self {
            Combos::Bits { cw, words } => {
                for (wi, &w) in words[i * cw..][..*cw].iter().enumerate() {
                    let mut b = w;
                    while b != 0 {
                        f(wi as u32 * 64 + b.trailing_zeros(), 1);
                        b &= b - 1;
                    }
                }
            }
            Combos::Bytes { c, coefs } => {
                for (r, &k) in coefs[i * c..][..*c].iter().enumerate() {
                    if k != 0 {
                        f(r as u32, k);
                    }
                }
            }
        }
    }
}

/// Result of one solve attempt.
#[derive(Debug)]
pub(crate) enum Solve {
    /// The holes (ascending) and how to compute each from the check sums.
    Solved { holes: Vec<u32>, combos: Combos },
    /// The checks leave `deficiency` holes undetermined. For bit rows with a small
    /// deficiency, `null` holds a basis of the solutions of the homogeneous system (stored rows
    /// and checks), one bit per column: a later row lowers the deficiency exactly when it is
    /// not orthogonal to one of them (empty when not computed).
    Deficient {
        deficiency: u32,
        null: Vec<Vec<u64>>,
    },
}

/// Attempts the hole solve for the current rows. `holes` ascending, `holes.len() <= C`.
/// `scratch_bytes` receives the peak transient memory used.
pub(crate) fn solve(
    layout: &Layout,
    kernel: Kernel,
    rows: &Rows,
    pivots: &Pivots,
    w: u32,
    holes: Vec<u32>,
    scratch_bytes: &mut usize,
) -> Solve {
    if holes.is_empty() {
        return Solve::Solved {
            holes,
            combos: Combos::Bits {
                cw: 0,
                words: Vec::new(),
            },
        };
    }
    match rows {
        Rows::Bits(bits) => solve_bits(layout, bits, pivots, holes, scratch_bytes),
        Rows::Bytes { .. } => solve_bytes(layout, kernel, rows, pivots, w, holes, scratch_bytes),
    }
}

fn solve_bits(
    layout: &Layout,
    rows: &[u64],
    pivots: &Pivots,
    holes: Vec<u32>,
    scratch_bytes: &mut usize,
) -> Solve {
    let c = layout.check_count() as usize;
    let h = holes.len();
    let cw = c.div_ceil(64);
    let last = *holes.last().expect("non-empty");
    // Scatter form: once Y_q is known it is added to the pending sums of the columns its row
    // covers (`pending[p % 64]`, w <= 64), so column p just reads its sum. A by columns.
    let acol = match cw {
        1 => sweep_fixed::<1>(layout, rows, pivots, last, h),
        2 => sweep_fixed::<2>(layout, rows, pivots, last, h),
        3 => sweep_fixed::<3>(layout, rows, pivots, last, h),
        4 => sweep_fixed::<4>(layout, rows, pivots, last, h),
        5 => sweep_fixed::<5>(layout, rows, pivots, last, h),
        6 => sweep_fixed::<6>(layout, rows, pivots, last, h),
        7 => sweep_fixed::<7>(layout, rows, pivots, last, h),
        8 => sweep_fixed::<8>(layout, rows, pivots, last, h),
        _ => sweep_any(layout, rows, pivots, last, h, cw),
    };
    // Rows of [A | I]: hw words of A then cw words of identity.
    let hw = h.div_ceil(64);
    let rw = hw + cw;
    let mut m = vec![0u64; c * rw];
    for (i, col) in acol.chunks_exact(cw).enumerate() {
        for (wi, &word) in col.iter().enumerate() {
            let mut b = word;
            while b != 0 {
                let r = wi * 64 + b.trailing_zeros() as usize;
                m[r * rw + i / 64] |= 1 << (i % 64);
                b &= b - 1;
            }
        }
    }
    drop(acol);
    for r in 0..c {
        m[r * rw + hw + r / 64] |= 1 << (r % 64);
    }
    *scratch_bytes = (*scratch_bytes).max((c * rw + 64 * cw + h * cw) * 8);
    let mut pivot_row = vec![usize::MAX; h];
    let mut rank = 0usize;
    let mut tmp = vec![0u64; rw];
    for (i, pivot) in pivot_row.iter_mut().enumerate() {
        let (wi, bit) = (i / 64, 1u64 << (i % 64));
        let Some(r) = (rank..c).find(|&r| m[r * rw + wi] & bit != 0) else {
            continue;
        };
        if r != rank {
            for j in 0..rw {
                m.swap(r * rw + j, rank * rw + j);
            }
        }
        tmp.copy_from_slice(&m[rank * rw..][..rw]);
        for r2 in 0..c {
            if r2 != rank && m[r2 * rw + wi] & bit != 0 {
                for (a, b) in m[r2 * rw..][..rw].iter_mut().zip(&tmp) {
                    *a ^= b;
                }
            }
        }
        *pivot = rank;
        rank += 1;
    }
    if rank < h {
        let deficiency = (h - rank) as u32;
        let null = if deficiency <= MAX_TRACKED_NULL {
            null_basis_bits(layout, rows, pivots, &holes, &pivot_row, &m, rw)
        } else {
            Vec::new()
        };
        return Solve::Deficient { deficiency, null };
    }
    let mut words = vec![0u64; h * cw];
    for (i, &r) in pivot_row.iter().enumerate() {
        words[i * cw..][..cw].copy_from_slice(&m[r * rw + hw..][..cw]);
    }
    Solve::Solved {
        holes,
        combos: Combos::Bits { cw, words },
    }
}

/// Largest deficiency whose null basis a deficient bit solve returns.
const MAX_TRACKED_NULL: u32 = 8;

/// Bits `c..c + 64` of the bit vector `z` (zero beyond its end).
#[inline]
pub(crate) fn bit_window(z: &[u64], c: u32) -> u64 {
    let (w, s) = ((c / 64) as usize, c % 64);
    let lo = z.get(w).copied().unwrap_or(0) >> s;
    if s == 0 {
        lo
    } else {
        lo | z.get(w + 1).copied().unwrap_or(0) << (64 - s)
    }
}

/// A basis of the solutions `x` of `U x = 0, P x = 0` (one bit per column) from the reduced
/// `[A | I]` of a deficient solve: per free hole `f`, `x_f = 1`, the other free holes 0, each
/// pivoted hole from its reduced check row, then the pivot columns by back-substitution
/// (`x_p = sum U_pj x_j`, descending).
fn null_basis_bits(
    layout: &Layout,
    rows: &[u64],
    pivots: &Pivots,
    holes: &[u32],
    pivot_row: &[usize],
    m: &[u64],
    rw: usize,
) -> Vec<Vec<u64>> {
    let n = layout.column_count();
    let words = (n as usize).div_ceil(64);
    let set = |z: &mut [u64], c: u32| z[(c / 64) as usize] |= 1 << (c % 64);
    let mut basis = Vec::new();
    for (f, _) in pivot_row
        .iter()
        .enumerate()
        .filter(|(_, &r)| r == usize::MAX)
    {
        let mut z = vec![0u64; words];
        set(&mut z, holes[f]);
        for (i, &r) in pivot_row.iter().enumerate() {
            if r != usize::MAX && (m[r * rw + f / 64] >> (f % 64)) & 1 == 1 {
                set(&mut z, holes[i]);
            }
        }
        for p in (0..n).rev() {
            if pivots.get(p) && (rows[p as usize] & !1 & bit_window(&z, p)).count_ones() % 2 == 1 {
                set(&mut z, p);
            }
        }
        debug_assert!((0..layout.check_count()).all(|r| {
            let k = layout.source_count();
            let parity = layout
                .check_sources(r)
                .iter()
                .chain(std::iter::once(&(k + r)))
                .filter(|&&c| (z[(c / 64) as usize] >> (c % 64)) & 1 == 1)
                .count();
            parity % 2 == 0
        }));
        basis.push(z);
    }
    basis
}

/// The columns of `A` (`h` x `cw` words, hole order) for `cw` words per check vector.
fn sweep_any(
    layout: &Layout,
    rows: &[u64],
    pivots: &Pivots,
    last: u32,
    h: usize,
    cw: usize,
) -> Vec<u64> {
    let mut pending = vec![0u64; 64 * cw];
    let mut acol = vec![0u64; h * cw];
    let mut z = vec![0u64; cw];
    let mut hi = 0usize;
    for p in 0..=last {
        let slot = (p % 64) as usize * cw;
        z.copy_from_slice(&pending[slot..slot + cw]);
        pending[slot..slot + cw].fill(0);
        for r in checks_of(layout, p) {
            z[r as usize / 64] ^= 1 << (r % 64);
        }
        if pivots.get(p) {
            let mut bits = rows[p as usize] & !1;
            while bits != 0 {
                let j = p + bits.trailing_zeros();
                bits &= bits - 1;
                let t = (j % 64) as usize * cw;
                for (a, b) in pending[t..t + cw].iter_mut().zip(&z) {
                    *a ^= b;
                }
            }
        } else {
            acol[hi * cw..][..cw].copy_from_slice(&z);
            hi += 1;
        }
    }
    debug_assert_eq!(hi, h);
    acol
}

/// [`sweep_any`] with the vector width fixed at compile time (unrolled word loops).
fn sweep_fixed<const CW: usize>(
    layout: &Layout,
    rows: &[u64],
    pivots: &Pivots,
    last: u32,
    h: usize,
) -> Vec<u64> {
    let mut pending = [[0u64; CW]; 64];
    let mut acol = vec![0u64; h * CW];
    let mut hi = 0usize;
    for p in 0..=last {
        let mut z = std::mem::replace(&mut pending[(p % 64) as usize], [0; CW]);
        for r in checks_of(layout, p) {
            z[r as usize / 64] ^= 1 << (r % 64);
        }
        if pivots.get(p) {
            let mut bits = rows[p as usize] & !1;
            while bits != 0 {
                let j = p + bits.trailing_zeros();
                bits &= bits - 1;
                let t = &mut pending[(j % 64) as usize];
                for k in 0..CW {
                    t[k] ^= z[k];
                }
            }
        } else {
            acol[hi * CW..][..CW].copy_from_slice(&z);
            hi += 1;
        }
    }
    debug_assert_eq!(hi, h);
    acol
}

fn solve_bytes(
    layout: &Layout,
    kernel: Kernel,
    rows: &Rows,
    pivots: &Pivots,
    w: u32,
    holes: Vec<u32>,
    scratch_bytes: &mut usize,
) -> Solve {
    let c = layout.check_count() as usize;
    let h = holes.len();
    let last = *holes.last().expect("non-empty");
    let slots = (w as usize).next_power_of_two();
    let mask = slots as u32 - 1;
    // Check vectors padded to whole 32-byte vectors: the kernels then have no byte tail.
    let cp = c.next_multiple_of(32);
    let mut pending = vec![0u8; slots * cp];
    let mut acol = vec![0u8; h * c];
    let mut z = vec![0u8; cp];
    let mut hi = 0usize;
    for p in 0..=last {
        let slot = (p & mask) as usize * cp;
        z.copy_from_slice(&pending[slot..slot + cp]);
        pending[slot..slot + cp].fill(0);
        for r in checks_of(layout, p) {
            z[r as usize] ^= 1;
        }
        if pivots.get(p) {
            rows.for_each_entry(p, |j, u| {
                let t = (j & mask) as usize * cp;
                kernel.mul_add(&mut pending[t..t + cp], &z, u);
            });
        } else {
            acol[hi * c..][..c].copy_from_slice(&z[..c]);
            hi += 1;
        }
    }
    debug_assert_eq!(hi, h);
    drop(pending);
    let rw = h + c;
    let mut m = vec![0u8; c * rw];
    for (i, col) in acol.chunks_exact(c).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            m[r * rw + i] = v;
        }
    }
    drop(acol);
    for r in 0..c {
        m[r * rw + h + r] = 1;
    }
    *scratch_bytes = (*scratch_bytes).max(c * rw + slots * cp + h * c);
    let mut pivot_row = vec![usize::MAX; h];
    let mut rank = 0usize;
    let mut tmp = vec![0u8; rw];
    for (i, pivot) in pivot_row.iter_mut().enumerate() {
        let Some(r) = (rank..c).find(|&r| m[r * rw + i] != 0) else {
            continue;
        };
        if r != rank {
            for j in 0..rw {
                m.swap(r * rw + j, rank * rw + j);
            }
        }
        let s = gf256::inv(m[rank * rw + i]);
        kernel.scale(&mut m[rank * rw..][..rw], s);
        tmp.copy_from_slice(&m[rank * rw..][..rw]);
        for r2 in 0..c {
            let f = m[r2 * rw + i];
            if r2 != rank && f != 0 {
                kernel.mul_add(&mut m[r2 * rw..][..rw], &tmp, f);
            }
        }
        *pivot = rank;
        rank += 1;
    }
    if rank < h {
        return Solve::Deficient {
            deficiency: (h - rank) as u32,
            null: Vec::new(),
        };
    }
    let mut coefs = vec![0u8; h * c];
    for (i, &r) in pivot_row.iter().enumerate() {
        coefs[i * c..][..c].copy_from_slice(&m[r * rw + h..][..c]);
    }
    Solve::Solved {
        holes,
        combos: Combos::Bytes { c, coefs },
    }
}
