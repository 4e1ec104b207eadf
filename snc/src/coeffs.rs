//! Expanding a packet's coefficients into a row over the layout's columns.
//!
//! Every packet is one linear equation over the `N` columns. Its non-zero coefficients lie in
//! one window: the subgeneration's columns ([`crate::layout::SubgenColumns`], local position `j`
//! = the `j`-th column of the subgeneration), or the single column `index` of a systematic
//! packet. A [`CoeffRow`] holds the window and its coefficients, bit-packed for GF(2) (bit `j`
//! of word `j / 64`) and one byte per position for GF(2^8).
//!
//! Coefficients of a coded packet are regenerated from its seed with [`crate::prng::word`]
//! `word(seed, i)`, written `w(i)` below. Uniform coefficients ([`Density::Uniform`], packet
//! format 1):
//! * GF(2): `w(i)` gives positions `64 i .. 64 i + 63` (bit `b` = position `64 i + b`);
//!   bits beyond the window are cleared.
//! * GF(2^8): `w(i)` gives positions `8 i .. 8 i + 7` (little-endian byte `b` = position
//!   `8 i + b`).
//!
//! Sparse coefficients ([`Density::Sparse`] when [`Layout::sparse`], packet format 2), each
//! non-zero with probability 1/8:
//! * GF(2): positions `64 i ..` come from `w(3i) & w(3i + 1) & w(3i + 2)`, bits as above.
//! * GF(2^8): positions `8 i ..` take byte `b` of `w(2i)` where byte `b` of the mask
//!   `w(2i + 1)` has its low three bits clear, and 0 elsewhere.
//!
//! Either way, if every coefficient came out zero, position 0 is set to 1 (a zero vector
//! carries no information; this matters for small windows and rare sparse draws).
//!
//! Encoders, decoders and the recoder all go through this module, so they cannot disagree.

use crate::layout::{Layout, SubgenColumns};
use crate::packet::{Header, PacketError};
use crate::params::{Density, Field};
use crate::prng::word;

/// Fills `out[..len.div_ceil(64)]` with the GF(2) coefficients of seed `seed` over `len`
/// positions (`len >= 1`).
pub fn gf2_from_seed(seed: u64, len: usize, out: &mut [u64]) {
    let words = len.div_ceil(64);
    let out = &mut out[..words];
    let mut any = 0u64;
    for (i, w) in out.iter_mut().enumerate() {
        *w = word(seed, i as u64);
    }
    let spare = words * 64 - len;
    if let Some(last) = out.last_mut() {
        *last &= u64::MAX >> spare;
    }
    for w in out.iter() {
        any |= w;
    }
    if any == 0 {
        if let Some(first) = out.first_mut() {
            *first = 1;
        }
    }
}

/// Fills `out[..len.div_ceil(64)]` with the sparse GF(2) coefficients of seed `seed` over
/// `len` positions (`len >= 1`; density 1/8, see the module docs).
pub fn gf2_sparse_from_seed(seed: u64, len: usize, out: &mut [u64]) {
    let words = len.div_ceil(64);
    let out = &mut out[..words];
    for (i, w) in out.iter_mut().enumerate() {
        let i = 3 * i as u64;
        *w = word(seed, i) & word(seed, i + 1) & word(seed, i + 2);
    }
    let spare = words * 64 - len;
    if let Some(last) = out.last_mut() {
        *last &= u64::MAX >> spare;
    }
    if out.iter().all(|&w| w == 0) {
        if let Some(first) = out.first_mut() {
            *first = 1;
        }
    }
}

/// Fills `out[..len]` with the sparse GF(2^8) coefficients of seed `seed` (`len >= 1`;
/// density 1/8, see the module docs).
pub fn gf256_sparse_from_seed(seed: u64, len: usize, out: &mut [u8]) {
    let out = &mut out[..len];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let i = 2 * i as u64;
        let (value, mask) = (word(seed, i), word(seed, i + 1));
        // Keep byte b iff bits 8b..8b+2 of the mask are clear.
        let keep = !(mask | mask >> 1 | mask >> 2) & 0x0101_0101_0101_0101;
        let w = (value & (keep * 0xFF)).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    if out.iter().all(|&b| b == 0) {
        if let Some(first) = out.first_mut() {
            *first = 1;
        }
    }
}

/// Fills `out[..len.div_ceil(64)]` with the GF(2) coefficients of seed `seed` for a layout of
/// the given sparseness ([`Layout::sparse`]).
#[inline]
pub fn gf2_coefficients(sparse: bool, seed: u64, len: usize, out: &mut [u64]) {
    if sparse {
        gf2_sparse_from_seed(seed, len, out)
    } else {
        gf2_from_seed(seed, len, out)
    }
}

/// Fills `out[..len]` with the GF(2^8) coefficients of seed `seed` for a layout of the given
/// sparseness ([`Layout::sparse`]).
#[inline]
pub fn gf256_coefficients(sparse: bool, seed: u64, len: usize, out: &mut [u8]) {
    if sparse {
        gf256_sparse_from_seed(seed, len, out)
    } else {
        gf256_from_seed(seed, len, out)
    }
}

/// The density a layout's coded packets use, as [`Layout::sparse`] decides it.
pub fn density(layout: &Layout) -> Density {
    if layout.sparse() {
        Density::Sparse
    } else {
        Density::Uniform
    }
}

/// Fills `out[..len]` with the GF(2^8) coefficients of seed `seed` (`len >= 1`).
pub fn gf256_from_seed(seed: u64, len: usize, out: &mut [u8]) {
    let out = &mut out[..len];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let w = word(seed, i as u64).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
    if out.iter().all(|&b| b == 0) {
        if let Some(first) = out.first_mut() {
            *first = 1;
        }
    }
}

/// Unpacks a GF(2) wire vector (LSB-first bytes) of `len` positions into words.
pub fn gf2_from_wire(bytes: &[u8], len: usize, out: &mut [u64]) {
    let words = len.div_ceil(64);
    for (i, w) in out[..words].iter_mut().enumerate() {
        let mut b = [0u8; 8];
        let src = &bytes[(i * 8).min(bytes.len())..((i + 1) * 8).min(bytes.len())];
        b[..src.len()].copy_from_slice(src);
        *w = u64::from_le_bytes(b);
    }
}

/// Packs GF(2) words of `len` positions into the wire form (`len.div_ceil(8)` bytes).
pub fn gf2_to_wire(words: &[u64], len: usize, out: &mut [u8]) {
    let nbytes = len.div_ceil(8);
    for (i, o) in out[..nbytes].iter_mut().enumerate() {
        *o = (words[i / 8] >> (8 * (i % 8))) as u8;
    }
}

/// Where a row's positions map to columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowWindow {
    /// Contiguous columns from `first` (band subgeneration or systematic packet).
    Contiguous { first: u32 },
    /// The members of a random-grouping subgeneration.
    Subgen(u32),
}

/// The coefficients of one packet over its window (a reusable buffer).
#[derive(Clone, Debug)]
pub struct CoeffRow {
    field: Field,
    window: RowWindow,
    subgen: Option<u32>,
    len: usize,
    bits: Vec<u64>,
    bytes: Vec<u8>,
}

impl CoeffRow {
    /// An empty row sized for the layout's windows.
    pub fn new(layout: &Layout) -> CoeffRow {
        let w = (layout.window() as usize).max(1);
        CoeffRow {
            field: layout.field(),
            window: RowWindow::Contiguous { first: 0 },
            subgen: None,
            len: 0,
            bits: vec![0; w.div_ceil(64)],
            bytes: vec![0; w],
        }
    }

    /// Expands a parsed packet header (from [`crate::packet::parse`], so indices are in range)
    /// into this row. Fails only for hand-made headers that do not fit the layout.
    pub fn expand(&mut self, layout: &Layout, header: &Header<'_>) -> Result<(), PacketError> {
        if self.field != layout.field() || self.bytes.len() < layout.window() as usize {
            *self = CoeffRow::new(layout);
        }
        let subgen = match *header {
            Header::Systematic { index } => {
                check("source index", index, layout.source_count())?;
                self.window = RowWindow::Contiguous { first: index };
                self.subgen = None;
                self.len = 1;
                self.bits[0] = 1;
                self.bytes[0] = 1;
                return Ok(());
            }
            Header::Coded { subgen, .. } | Header::Recoded { subgen, .. } => subgen,
        };
        check("subgeneration", subgen, layout.subgen_count())?;
        self.subgen = Some(subgen);
        self.window = match layout.subgen_columns(subgen) {
            SubgenColumns::Range { first, .. } => RowWindow::Contiguous { first },
            SubgenColumns::List(_) => RowWindow::Subgen(subgen),
        };
        let len = layout.window() as usize;
        self.len = len;
        let sparse = layout.sparse();
        match (*header, self.field) {
            (Header::Coded { seed, .. }, Field::Gf2) => {
                gf2_coefficients(sparse, seed, len, &mut self.bits)
            }
            (Header::Coded { seed, .. }, Field::Gf256) => {
                gf256_coefficients(sparse, seed, len, &mut self.bytes)
            }
            (Header::Recoded { coeffs, .. }, field) => {
                let need = crate::packet::vector_len(layout);
                if coeffs.len() != need {
                    return Err(PacketError::Length {
                        expected: need,
                        got: coeffs.len(),
                    });
                }
                match field {
                    Field::Gf2 => gf2_from_wire(coeffs, len, &mut self.bits),
                    Field::Gf256 => self.bytes[..len].copy_from_slice(coeffs),
                }
            }
            (Header::Systematic { .. }, _) => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Field of the coefficients.
    pub fn field(&self) -> Field {
        self.field
    }

    /// Number of positions in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty (only before the first [`CoeffRow::expand`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The subgeneration, or `None` for a systematic packet.
    pub fn subgen(&self) -> Option<u32> {
        self.subgen
    }

    /// The first column if the window is contiguous (band code or systematic packet).
    pub fn first_column(&self) -> Option<u32> {
        match self.window {
            RowWindow::Contiguous { first } => Some(first),
            RowWindow::Subgen(_) => None,
        }
    }

    /// The columns of the window in position order.
    pub fn columns<'l>(&self, layout: &'l Layout) -> SubgenColumns<'l> {
        match self.window {
            RowWindow::Contiguous { first } => SubgenColumns::Range {
                first,
                len: self.len as u32,
            },
            RowWindow::Subgen(g) => layout.subgen_columns(g),
        }
    }

    /// GF(2) coefficients: `len().div_ceil(64)` words, bit `j % 64` of word `j / 64`.
    pub fn gf2_words(&self) -> &[u64] {
        &self.bits[..self.len.div_ceil(64)]
    }

    /// GF(2^8) coefficients: `len()` bytes.
    pub fn gf256_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Coefficient at position `j` (0 or 1 for GF(2)).
    #[inline]
    pub fn get(&self, j: usize) -> u8 {
        match self.field {
            Field::Gf2 => (self.bits[j / 64] >> (j % 64)) as u8 & 1,
            Field::Gf256 => self.bytes[j],
        }
    }
}

fn check(what: &'static str, index: u32, limit: u32) -> Result<(), PacketError> {
    if index < limit {
        Ok(())
    } else {
        Err(PacketError::IndexOutOfRange { what, index, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{CodeKind, CodeParams};

    #[test]
    fn gf2_seed_layout_and_masking() {
        let mut w = [0u64; 2];
        gf2_from_seed(5, 70, &mut w);
        assert_eq!(w[0], word(5, 0));
        assert_eq!(w[1], word(5, 1) & 0x3F);
        let mut one = [0u64; 1];
        // Over a 1-position window roughly half the seeds draw 0 and get fixed up to 1.
        for s in 0..50 {
            gf2_from_seed(s, 1, &mut one);
            assert_eq!(one[0], 1);
        }
    }

    #[test]
    fn gf256_seed_layout() {
        let mut b = [0u8; 10];
        gf256_from_seed(3, 10, &mut b);
        assert_eq!(&b[..8], &word(3, 0).to_le_bytes());
        assert_eq!(&b[8..], &word(3, 1).to_le_bytes()[..2]);
    }

    #[test]
    fn sparse_layout_and_density() {
        let mut w = [0u64; 2];
        gf2_sparse_from_seed(5, 70, &mut w);
        assert_eq!(w[0], word(5, 0) & word(5, 1) & word(5, 2));
        assert_eq!(w[1], word(5, 3) & word(5, 4) & word(5, 5) & 0x3F);
        let mut b = [0u8; 20];
        for seed in 0..20 {
            gf256_sparse_from_seed(seed, 20, &mut b);
            let expect: Vec<u8> = (0..20)
                .map(|j| {
                    let (i, k) = (j / 8, j % 8);
                    let mask = word(seed, 2 * i as u64 + 1).to_le_bytes()[k];
                    let value = word(seed, 2 * i as u64).to_le_bytes()[k];
                    if mask & 7 == 0 {
                        value
                    } else {
                        0
                    }
                })
                .collect();
            if expect.iter().all(|&c| c == 0) {
                assert_eq!(b[0], 1);
            } else {
                assert_eq!(&b[..], &expect[..], "seed {seed}");
            }
        }
        // Density 1/8 over many draws, in both fields.
        let (mut ones, mut nonzero) = (0u32, 0u32);
        let mut bytes = [0u8; 64];
        for s in 0..1000 {
            gf2_sparse_from_seed(s, 64, &mut w);
            ones += w[0].count_ones();
            gf256_sparse_from_seed(s, 64, &mut bytes);
            nonzero += bytes.iter().filter(|&&c| c != 0).count() as u32;
        }
        for count in [ones, nonzero] {
            let d = count as f64 / 64_000.0;
            assert!((0.11..0.14).contains(&d), "density {d}");
        }
        // Never the zero vector.
        let mut one = [0u64; 1];
        let mut byte = [0u8; 1];
        for s in 0..200 {
            gf2_sparse_from_seed(s, 3, &mut one);
            assert_ne!(one[0], 0);
            gf256_sparse_from_seed(s, 1, &mut byte);
            assert_ne!(byte[0], 0);
        }
    }

    #[test]
    fn sparse_only_for_wide_windows() {
        let wide = CodeParams::new(100_000)
            .symbol_size(100)
            .validate()
            .unwrap();
        assert!(wide.sparse());
        assert_eq!(density(&wide), Density::Sparse);
        let narrow = CodeParams::new(100_000)
            .symbol_size(100)
            .subgen_size(32)
            .validate()
            .unwrap();
        assert!(!narrow.sparse());
        let uniform = CodeParams::new(100_000)
            .symbol_size(100)
            .density(Density::Uniform)
            .validate()
            .unwrap();
        assert!(!uniform.sparse());
        let systematic = CodeParams::new(100_000)
            .symbol_size(100)
            .systematic(true)
            .validate()
            .unwrap();
        assert!(!systematic.sparse());
        let mut row = CoeffRow::new(&wide);
        row.expand(&wide, &Header::Coded { subgen: 3, seed: 9 })
            .unwrap();
        assert_eq!(row.gf2_words()[0], word(9, 0) & word(9, 1) & word(9, 2));
    }

    #[test]
    fn wire_round_trip() {
        let mut w = [0u64; 2];
        gf2_from_seed(11, 70, &mut w);
        let mut bytes = [0u8; 9];
        gf2_to_wire(&w, 70, &mut bytes);
        let mut back = [0u64; 2];
        gf2_from_wire(&bytes, 70, &mut back);
        assert_eq!(w, back);
    }

    #[test]
    fn expand_each_kind() {
        let l = CodeParams::new(100_000)
            .symbol_size(100)
            .density(Density::Uniform)
            .validate()
            .unwrap();
        let mut row = CoeffRow::new(&l);
        row.expand(&l, &Header::Systematic { index: 17 }).unwrap();
        assert_eq!(
            (row.first_column(), row.len(), row.get(0)),
            (Some(17), 1, 1)
        );
        row.expand(&l, &Header::Coded { subgen: 3, seed: 9 })
            .unwrap();
        assert_eq!(row.first_column(), Some(48));
        assert_eq!(row.gf2_words()[0], word(9, 0));
        let v = [0x81u8; 8];
        row.expand(
            &l,
            &Header::Recoded {
                subgen: 2,
                coeffs: &v,
            },
        )
        .unwrap();
        assert_eq!(
            (row.get(0), row.get(1), row.get(7), row.get(8)),
            (1, 0, 1, 1)
        );
        assert!(row
            .expand(
                &l,
                &Header::Coded {
                    subgen: 10_000,
                    seed: 0
                }
            )
            .is_err());

        let l = CodeParams::new(100_000)
            .symbol_size(100)
            .density(Density::Uniform)
            .kind(CodeKind::Random)
            .validate()
            .unwrap();
        let mut row = CoeffRow::new(&l);
        row.expand(&l, &Header::Coded { subgen: 3, seed: 9 })
            .unwrap();
        assert_eq!(row.columns(&l), l.subgen_columns(3));
    }
}
