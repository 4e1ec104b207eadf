//! Compact band rows, the pivot bitmap and the per-packet elimination walk.
//!
//! A row stored at pivot column `p` only spans `[p, p + w)` (`w` = the window): reducing a
//! window `[L, L + w)` against pivot rows keeps every intermediate vector inside
//! `[a, a + w)` where `a` is its lowest non-zero column (each pivot row used at column `i`
//! spans at most `[i, i + w)` and the next `a` is above `i`). So a row is one `u64` bit window
//! (GF(2), `w <= 64`) or `w` bytes normalised to a leading 1 (every other case; GF(2)
//! coefficients are a subfield of GF(2^8), so wide binary windows use the byte rows too).
//!
//! The walk only touches coefficients. It records the pivots it hit (and, for bytes, the
//! multipliers) so that the caller can replay the payload side later, or drop it for free
//! when the packet turns out redundant.

use crate::field::{gf256, Kernel};

/// Outcome of reducing one coefficient vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    /// The vector was stored as a new row at this pivot column.
    Stored {
        /// Pivot column.
        pivot: u32,
        /// The non-zero leading coefficient before normalisation (1 for bit rows).
        lead: u8,
    },
    /// The vector reduced to zero.
    Redundant,
}

/// One bit per column: does the column hold a pivot row?
#[derive(Clone, Debug, Default)]
pub(crate) struct Pivots {
    words: Vec<u64>,
}

impl Pivots {
    pub(crate) fn new(n: u32) -> Pivots {
        Pivots {
            words: vec![0; (n as usize).div_ceil(64)],
        }
    }

    #[inline]
    pub(crate) fn get(&self, c: u32) -> bool {
        (self.words[(c / 64) as usize] >> (c % 64)) & 1 == 1
    }

    #[inline]
    fn set(&mut self, c: u32) {
        self.words[(c / 64) as usize] |= 1 << (c % 64);
    }

    /// Pivot bits of columns `4a..4a + 4` (bit `i` = column `4a + i`).
    #[inline]
    pub(crate) fn nibble(&self, a: u32) -> u32 {
        let c = 4 * a;
        ((self.words[(c / 64) as usize] >> (c % 64)) & 0xF) as u32
    }

    /// Columns without a pivot below `n`, ascending.
    pub(crate) fn holes(&self, n: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, &w) in self.words.iter().enumerate() {
            let mut free = !w;
            while free != 0 {
                let b = free.trailing_zeros();
                let c = i as u32 * 64 + b;
                if c >= n {
                    return out;
                }
                out.push(c);
                free &= free - 1;
            }
        }
        out
    }

    pub(crate) fn bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// Row storage indexed by pivot column.
#[derive(Debug)]
pub(crate) enum Rows {
    /// GF(2) with `w <= 64`: the row at `p` is a word whose bit `i` is column `p + i`.
    Bits(Vec<u64>),
    /// `w` bytes per column, byte `i` = coefficient of column `p + i`, byte 0 = 1.
    Bytes {
        /// Window width.
        w: usize,
        /// `n * w` bytes.
        data: Vec<u8>,
        /// Sliding work buffer of the walk (`4 * w` bytes).
        scratch: Vec<u8>,
    },
}

impl Rows {
    pub(crate) fn bits(n: u32) -> Rows {
        Rows::Bits(vec![0; n as usize])
    }

    pub(crate) fn bytes(n: u32, w: usize) -> Rows {
        Rows::Bytes {
            w,
            data: vec![0; n as usize * w],
            scratch: vec![0; 4 * w],
        }
    }

    pub(crate) fn bytes_used(&self) -> usize {
        match self {
            Rows::Bits(v) => v.capacity() * 8,
            Rows::Bytes { data, scratch, .. } => data.capacity() + scratch.capacity(),
        }
    }

    /// Calls `f(column, coefficient)` for every non-zero entry of row `p` right of the pivot.
    #[inline]
    pub(crate) fn for_each_entry(&self, p: u32, mut f: impl FnMut(u32, u8)) {
        for (j, c) in self.entries(p) {
            f(j, c);
        }
    }

    /// The non-zero entries `(column, coefficient)` of row `p` right of the pivot, ascending.
    #[inline]
    pub(crate) fn entries(&self, p: u32) -> Entries<'_> {
        match self {
            Rows::Bits(v) => Entries::Bits {
                p,
                bits: v[p as usize] & !1,
            },
            Rows::Bytes { w, data, .. } => {
                let row = &data[p as usize * *w..][..*w];
                Entries::Bytes {
                    p,
                    row,
                    base: 0,
                    // Byte 0 is the pivot itself.
                    nonzero: nonzero_bytes(row, 0) & !0xFF,
                }
            }
        }
    }

    /// Reduces a GF(2) window (bit `i` = column `first + i`, `w <= 64`) against the bit
    /// rows, storing it at the first free pivot. Pushes every pivot used onto `hits`.
    pub(crate) fn walk_bits(
        &mut self,
        pivots: &mut Pivots,
        first: u32,
        window: u64,
        hits: &mut Vec<u32>,
    ) -> Walk {
        let Rows::Bits(rows) = self else {
            unreachable!("walk_bits on byte rows")
        };
        if window == 0 {
            return Walk::Redundant;
        }
        let t = window.trailing_zeros();
        let (mut a, mut v) = (first + t, window >> t);
        loop {
            if !pivots.get(a) {
                rows[a as usize] = v;
                pivots.set(a);
                return Walk::Stored { pivot: a, lead: 1 };
            }
            v ^= rows[a as usize];
            hits.push(a);
            if v == 0 {
                return Walk::Redundant;
            }
            let t = v.trailing_zeros();
            a += t;
            v >>= t;
        }
    }

    /// Reduces a byte window (`coeffs[i]` = coefficient of column `first + i`,
    /// `coeffs.len() <= w`) against the byte rows. Pushes `(pivot, multiplier)` pairs.
    pub(crate) fn walk_bytes(
        &mut self,
        kernel: Kernel,
        pivots: &mut Pivots,
        first: u32,
        coeffs: &[u8],
        hits: &mut Vec<u32>,
        hit_coefs: &mut Vec<u8>,
    ) -> Walk {
        let Rows::Bytes { w, data, scratch } = self else {
            unreachable!("walk_bytes on bit rows")
        };
        let w = *w;
        let Some(t) = coeffs.iter().position(|&c| c != 0) else {
            return Walk::Redundant;
        };
        scratch.fill(0);
        scratch[..coeffs.len() - t].copy_from_slice(&coeffs[t..]);
        let mut a = first + t as u32;
        let mut h = 0usize;
        loop {
            let c = scratch[h];
            debug_assert_ne!(c, 0);
            let row = &mut data[a as usize * w..][..w];
            if !pivots.get(a) {
                row.copy_from_slice(&scratch[h..h + w]);
                kernel.scale(row, gf256::inv(c));
                pivots.set(a);
                return Walk::Stored { pivot: a, lead: c };
            }
            kernel.mul_add(&mut scratch[h..h + w], row, c);
            hits.push(a);
            hit_coefs.push(c);
            let Some(t) = first_nonzero(&scratch[h + 1..h + w]) else {
                return Walk::Redundant;
            };
            h += t + 1;
            a += t as u32 + 1;
            if h + w > scratch.len() {
                // Everything at or beyond the old window end is zero: slide the live part down.
                let len = scratch.len();
                scratch.copy_within(h..len, 0);
                scratch[len - h..].fill(0);
                h = 0;
            }
        }
    }
}

/// Index of the first non-zero byte of `bytes`, eight bytes at a time.
#[inline]
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in chunks.by_ref() {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if x != 0 {
            return Some(base + (x.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b != 0)
        .map(|i| base + i)
}

/// Iterator over one row's entries right of the pivot ([`Rows::entries`]).
pub(crate) enum Entries<'r> {
    Bits {
        p: u32,
        bits: u64,
    },
    Bytes {
        p: u32,
        row: &'r [u8],
        /// Start of the 8-byte chunk `nonzero` describes.
        base: usize,
        /// Bit `8b + 7` set: byte `base + b` is non-zero and not yet returned.
        nonzero: u64,
    },
}

/// Bit `8b + 7` set for every non-zero byte `b` of the (up to) 8 bytes of `row` at `base`:
/// the entry scan then walks set bits instead of branching on every byte.
#[inline]
fn nonzero_bytes(row: &[u8], base: usize) -> u64 {
    let chunk = &row[base..row.len().min(base + 8)];
    let x = match <[u8; 8]>::try_from(chunk) {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            u64::from_le_bytes(b)
        }
    };
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    (x | ((x & LOW7) + LOW7)) & !LOW7
}

impl Iterator for Entries<'_> {
    type Item = (u32, u8);

    #[inline]
    fn next(&mut self) -> Option<(u32, u8)> {
        match self {
            Entries::Bits { p, bits } => {
                if *bits == 0 {
                    return None;
                }
                let j = *p + bits.trailing_zeros();
                *bits &= *bits - 1;
                Some((j, 1))
            }
            Entries::Bytes {
                p,
                row,
                base,
                nonzero,
            } => loop {
                if *nonzero != 0 {
                    let j = *base + (nonzero.trailing_zeros() / 8) as usize;
                    *nonzero &= *nonzero - 1;
                    return Some((*p + j as u32, row[j]));
                }
                *base += 8;
                if *base >= row.len() {
                    return None;
                }
                *nonzero = nonzero_bytes(row, *base);
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::Prng;

    /// The chunked entry scan of byte rows returns exactly the non-zero bytes right of the
    /// pivot, in order, for widths that are and are not multiples of 8 and any density.
    #[test]
    fn byte_row_entries_match_a_plain_scan() {
        let mut rng = Prng::new(7);
        for w in [1usize, 2, 7, 8, 9, 13, 16, 63, 64, 65, 100] {
            for density in [0u64, 1, 4, 8] {
                let n = 5u32;
                let mut data = vec![0u8; n as usize * w];
                for b in data.iter_mut() {
                    if rng.below(8) < density {
                        *b = 1 + rng.below(255) as u8;
                    }
                }
                let rows = Rows::Bytes {
                    w,
                    data: data.clone(),
                    scratch: Vec::new(),
                };
                for p in 0..n {
                    let row = &data[p as usize * w..][..w];
                    let want: Vec<(u32, u8)> = (1..w)
                        .filter(|&i| row[i] != 0)
                        .map(|i| (p + i as u32, row[i]))
                        .collect();
                    let got: Vec<(u32, u8)> = rows.entries(p).collect();
                    assert_eq!(got, want, "w {w} density {density} row {p}");
                    let mut each = Vec::new();
                    rows.for_each_entry(p, |j, c| each.push((j, c)));
                    assert_eq!(each, want);
                }
            }
        }
    }
}
