//! Plain dense Gaussian decoder: the test oracle, and the decoder for random grouping.
//!
//! Contract:
//! * State is an `N x N` coefficient matrix in echelon form (row `j`, when present, has its
//!   *highest* non-zero column at `j`, normalised to 1) plus `N` symbols. The `C` precode
//!   equations are inserted at construction as rows with a zero symbol, so [`DenseDecoder::rank`]
//!   starts at `C` and the decoder is complete at rank `N`.
//! * [`DenseDecoder::push`] expands a packet with [`crate::coeffs`], reduces it from its highest
//!   column down against the stored rows, and stores it if anything is left (innovative),
//!   else drops it (redundant). Pivoting on the highest column keeps band rows inside their
//!   window and never touches the check rows except for packets that cover check columns.
//! * [`DenseDecoder::finish`] back-substitutes in ascending column order and writes the
//!   segment into the caller's buffer.
//! * Obviously correct rather than fast: `O(N^2)` memory (bits for GF(2), bytes for GF(2^8))
//!   and up to `O(N)` row operations per packet. Layouts with more than
//!   [`MAX_DENSE_COLUMNS`] columns are refused with [`DenseError::TooLarge`].

use crate::coeffs::CoeffRow;
use crate::field::{gf256, Kernel};
use crate::layout::Layout;
use crate::packet::{PacketError, PacketView};
use crate::params::Field;
use thiserror::Error;

/// Largest column count `N` the dense decoder accepts (GF(2^8): a 64 MiB matrix).
pub const MAX_DENSE_COLUMNS: u32 = 8192;
/// Largest symbol storage (`N * symbol_size`) the dense decoder accepts.
pub const MAX_DENSE_SYMBOL_BYTES: u64 = 256 << 20;

/// Why the dense decoder refused a layout, a packet or a finish.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DenseError {
    /// The layout is too large for a dense matrix.
    #[error("{columns} columns x {symbol_size} B exceed the dense decoder's limit of {MAX_DENSE_COLUMNS} columns / {MAX_DENSE_SYMBOL_BYTES} B")]
    TooLarge {
        /// `N`.
        columns: u32,
        /// Symbol size.
        symbol_size: usize,
    },
    /// The packet does not fit the layout.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The output buffer's length differs from the segment length.
    #[error("output buffer of {got} bytes, the segment has {expected}")]
    OutputLength {
        /// Segment length.
        expected: u64,
        /// Buffer length.
        got: usize,
    },
    /// [`DenseDecoder::finish`] before full rank.
    #[error("rank {rank} of {columns}: not decodable yet")]
    Incomplete {
        /// Current rank.
        rank: u32,
        /// `N`.
        columns: u32,
    },
}

/// Whether a pushed packet added rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DensePush {
    /// It added one to the rank.
    Innovative,
    /// It was a combination of what the decoder held and was dropped.
    Redundant,
}

#[derive(Debug)]
enum Matrix {
    /// `words` u64 per row, bit `c % 64` of word `c / 64` = column `c`.
    Gf2 { words: usize, bits: Vec<u64> },
    /// One byte per column.
    Gf256(Vec<u8>),
}

/// Dense Gaussian decoder of one segment.
#[derive(Debug)]
pub struct DenseDecoder {
    layout: Layout,
    kernel: Kernel,
    n: usize,
    s: usize,
    matrix: Matrix,
    present: Vec<bool>,
    symbols: Vec<u8>,
    rank: u32,
    received: u64,
    row: CoeffRow,
    scratch_bits: Vec<u64>,
    scratch_bytes: Vec<u8>,
    scratch_sym: Vec<u8>,
}

impl DenseDecoder {
    /// A decoder for `layout` with the best kernel.
    pub fn new(layout: &Layout) -> Result<DenseDecoder, DenseError> {
        Self::with_kernel(layout, Kernel::best())
    }

    /// Like [`DenseDecoder::new`] with an explicit field kernel.
    pub fn with_kernel(layout: &Layout, kernel: Kernel) -> Result<DenseDecoder, DenseError> {
        let n = layout.column_count() as usize;
        let s = layout.symbol_size();
        if layout.column_count() > MAX_DENSE_COLUMNS
            || (n as u64) * (s as u64) > MAX_DENSE_SYMBOL_BYTES
        {
            return Err(DenseError::TooLarge {
                columns: layout.column_count(),
                symbol_size: s,
            });
        }
        let words = n.div_ceil(64);
        let matrix = match layout.field() {
            Field::Gf2 => Matrix::Gf2 {
                words,
                bits: vec![0; n * words],
            },
            Field::Gf256 => Matrix::Gf256(vec![0; n * n]),
        };
        let mut d = DenseDecoder {
            layout: layout.clone(),
            kernel,
            n,
            s,
            matrix,
            present: vec![false; n],
            symbols: vec![0; n * s],
            rank: 0,
            received: 0,
            row: CoeffRow::new(layout),
            scratch_bits: vec![0; words],
            scratch_bytes: vec![0; n],
            scratch_sym: vec![0; s],
        };
        let k = layout.source_count();
        for r in 0..layout.check_count() {
            d.clear_scratch();
            d.set_scratch(k + r, 1);
            for &c in layout.check_sources(r) {
                d.set_scratch(c, 1);
            }
            d.scratch_sym.fill(0);
            d.reduce_and_store();
        }
        Ok(d)
    }

    /// Expands and eliminates one parsed packet.
    pub fn push(&mut self, packet: &PacketView<'_>) -> Result<DensePush, DenseError> {
        let mut row = std::mem::replace(&mut self.row, CoeffRow::new(&self.layout));
        let res = row
            .expand(&self.layout, &packet.header)
            .map_err(DenseError::from)
            .and_then(|()| self.push_row(&row, packet.symbol));
        self.row = row;
        res
    }

    /// Eliminates one packet given as an expanded row and its symbol.
    pub fn push_row(&mut self, row: &CoeffRow, symbol: &[u8]) -> Result<DensePush, DenseError> {
        if symbol.len() != self.s {
            return Err(PacketError::Length {
                expected: self.s,
                got: symbol.len(),
            }
            .into());
        }
        self.received += 1;
        self.clear_scratch();
        let layout = self.layout.clone();
        let cols = row.columns(&layout);
        for j in 0..row.len() {
            let c = row.get(j);
            if c != 0 {
                self.set_scratch(cols.column(j), c);
            }
        }
        self.scratch_sym.copy_from_slice(symbol);
        Ok(self.reduce_and_store())
    }

    fn clear_scratch(&mut self) {
        self.scratch_bits.fill(0);
        self.scratch_bytes.fill(0);
    }

    fn set_scratch(&mut self, col: u32, c: u8) {
        let col = col as usize;
        match self.matrix {
            Matrix::Gf2 { .. } => self.scratch_bits[col / 64] ^= 1 << (col % 64),
            Matrix::Gf256(_) => self.scratch_bytes[col] ^= c,
        }
    }

    /// Reduces the scratch row from its highest column down; stores it if non-zero.
    fn reduce_and_store(&mut self) -> DensePush {
        let (n, s) = (self.n, self.s);
        match &mut self.matrix {
            Matrix::Gf2 { words, bits } => {
                let words = *words;
                let mut wi = words;
                while wi > 0 {
                    let w = self.scratch_bits[wi - 1];
                    if w == 0 {
                        wi -= 1;
                        continue;
                    }
                    let j = (wi - 1) * 64 + 63 - w.leading_zeros() as usize;
                    if self.present[j] {
                        let prow = &bits[j * words..j * words + wi];
                        for (a, b) in self.scratch_bits[..wi].iter_mut().zip(prow) {
                            *a ^= b;
                        }
                        self.kernel
                            .xor(&mut self.scratch_sym, &self.symbols[j * s..(j + 1) * s]);
                    } else {
                        bits[j * words..(j + 1) * words].copy_from_slice(&self.scratch_bits);
                        self.symbols[j * s..(j + 1) * s].copy_from_slice(&self.scratch_sym);
                        self.present[j] = true;
                        self.rank += 1;
                        return DensePush::Innovative;
                    }
                }
                DensePush::Redundant
            }
            Matrix::Gf256(m) => {
                let mut top = n;
                loop {
                    while top > 0 && self.scratch_bytes[top - 1] == 0 {
                        top -= 1;
                    }
                    if top == 0 {
                        return DensePush::Redundant;
                    }
                    let j = top - 1;
                    let c = self.scratch_bytes[j];
                    if self.present[j] {
                        // Pivot rows are normalised: subtract c * row j.
                        let prow = &m[j * n..j * n + top];
                        self.kernel.mul_add(&mut self.scratch_bytes[..top], prow, c);
                        self.kernel.mul_add(
                            &mut self.scratch_sym,
                            &self.symbols[j * s..(j + 1) * s],
                            c,
                        );
                    } else {
                        let inv = gf256::inv(c);
                        self.kernel.scale(&mut self.scratch_bytes[..top], inv);
                        self.kernel.scale(&mut self.scratch_sym, inv);
                        m[j * n..(j + 1) * n].copy_from_slice(&self.scratch_bytes);
                        self.symbols[j * s..(j + 1) * s].copy_from_slice(&self.scratch_sym);
                        self.present[j] = true;
                        self.rank += 1;
                        return DensePush::Innovative;
                    }
                }
            }
        }
    }

    /// Rank of the held equations over the `N` columns (check equations included).
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Packets pushed (redundant ones included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether every column is determined.
    pub fn is_complete(&self) -> bool {
        self.rank as usize == self.n
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Solves (in place, idempotent) and writes the segment into `out` (exactly
    /// `segment_len` bytes).
    pub fn finish(&mut self, out: &mut [u8]) -> Result<(), DenseError> {
        if out.len() as u64 != self.layout.segment_len() {
            return Err(DenseError::OutputLength {
                expected: self.layout.segment_len(),
                got: out.len(),
            });
        }
        if !self.is_complete() {
            return Err(DenseError::Incomplete {
                rank: self.rank,
                columns: self.n as u32,
            });
        }
        let (n, s) = (self.n, self.s);
        // Row j: x_j = sym_j - sum_{c < j} a_jc x_c. Solve ascending; clear the row so a
        // second finish is a no-op.
        for j in 0..n {
            let (done, rest) = self.symbols.split_at_mut(j * s);
            let sym = &mut rest[..s];
            match &mut self.matrix {
                Matrix::Gf2 { words, bits } => {
                    let row = &mut bits[j * *words..(j + 1) * *words];
                    for (wi, w) in row.iter_mut().enumerate() {
                        let mut b = *w;
                        if wi * 64 + 64 > j {
                            // Keep only columns below j.
                            let keep = j.saturating_sub(wi * 64);
                            b &= if keep >= 64 {
                                u64::MAX
                            } else {
                                (1u64 << keep) - 1
                            };
                        }
                        while b != 0 {
                            let c = wi * 64 + b.trailing_zeros() as usize;
                            b &= b - 1;
                            self.kernel.xor(sym, &done[c * s..(c + 1) * s]);
                        }
                        if wi * 64 + 64 <= j {
                            *w = 0;
                        } else if wi * 64 <= j {
                            *w &= !((1u64 << (j - wi * 64)) - 1);
                        }
                    }
                }
                Matrix::Gf256(m) => {
                    let row = &mut m[j * n..j * n + j];
                    for (c, a) in row.iter_mut().enumerate() {
                        if *a != 0 {
                            self.kernel.mul_add(sym, &done[c * s..(c + 1) * s], *a);
                            *a = 0;
                        }
                    }
                }
            }
        }
        let mut at = 0usize;
        for c in 0..self.layout.source_count() {
            let take = self.layout.source_bytes(c);
            out[at..at + take]
                .copy_from_slice(&self.symbols[c as usize * s..c as usize * s + take]);
            at += take;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::{Encoder, Stream};
    use crate::packet;
    use crate::params::CodeParams;

    #[test]
    fn decodes_small_band_segments() {
        for field in [Field::Gf2, Field::Gf256] {
            for len in [1u64, 100, 101, 5000] {
                let l = CodeParams::new(len)
                    .symbol_size(100)
                    .field(field)
                    .validate()
                    .unwrap();
                let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let e = Encoder::new(&l, &data).unwrap();
                let mut d = DenseDecoder::new(&l).unwrap();
                let mut s = Stream::new(3);
                let mut buf = vec![0u8; packet::max_len(&l)];
                let mut sent = 0;
                while !d.is_complete() {
                    let n = e.write_next(&mut s, &mut buf).unwrap();
                    let v = packet::parse(&l, &buf[..n]).unwrap();
                    d.push(&v).unwrap();
                    sent += 1;
                    assert!(sent < 10 * l.column_count() + 50, "{field:?} {len}");
                }
                let mut out = vec![0u8; len as usize];
                d.finish(&mut out).unwrap();
                assert_eq!(out, data, "{field:?} {len}");
                d.finish(&mut out).unwrap();
                assert_eq!(out, data);
            }
        }
    }

    #[test]
    fn refuses_large_layouts_and_early_finish() {
        let l = CodeParams::new(100 << 20).validate().unwrap();
        assert!(matches!(
            DenseDecoder::new(&l),
            Err(DenseError::TooLarge { .. })
        ));
        let l = CodeParams::new(1000).symbol_size(10).validate().unwrap();
        let mut d = DenseDecoder::new(&l).unwrap();
        assert_eq!(d.rank(), l.check_count());
        let mut out = vec![0u8; 1000];
        assert!(matches!(
            d.finish(&mut out),
            Err(DenseError::Incomplete { .. })
        ));
    }
}
