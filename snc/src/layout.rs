//! Derived sizes of a validated parameter set: columns, subgenerations and the precode graph.
//!
//! Columns (precoded symbols) are numbered `0..N`: `0..K` are the source symbols (the last one
//! zero-padded virtually to the symbol size), `K..N` the `C` check symbols. Check `r` (column
//! `K + r`) is the XOR of its source columns, i.e. every check gives the equation
//! `x[K + r] ^ XOR(x[s] for s in check_sources(r)) = 0` (binary precode, coefficient 1, also when
//! the network code is GF(2^8)).
//!
//! Subgenerations (windows) `0..G`, each of `window() = min(subgen_size, N)` columns:
//! * Band: subgeneration `g` covers `lead(g)..lead(g) + window` with
//!   `lead(g) = min(g * stride, N - window)` and `G = ceil((N - window) / stride) + 1`; the last
//!   window is pulled back to end at `N`.
//! * Random: `G = ceil(N / stride)`; subgeneration `g` holds the base columns
//!   `(g * stride + j) mod N` for `j < min(stride, window)` (a duplicate is replaced by a random
//!   column) plus random distinct columns up to `window`, drawn from
//!   [`crate::prng`] keyed by the grouping seed; members are stored sorted ascending, and the
//!   local coefficient position `j` refers to the `j`-th smallest member.
//!
//! Precode graph (the Raptor circulant rule, SNC-REFERENCE §2.4): with `S = C`, source column
//! `c = i * S + j` (`j < S`) is in checks `j`, `(i + 1 + j) mod S` and `(2i + 2 + j) mod S`,
//! duplicates dropped (only when `S` is tiny). Both directions are kept in compressed sparse rows
//! (sorted, no linked lists, O(1) duplicate check).
//!
//! A segment of length 0 has `K = C = N = G = 0`: nothing to send, decoders are complete at once.

use crate::params::{CodeKind, CodeParams, Field};
use crate::prng::{derive, Prng};
use std::ops::Range;
use std::sync::Arc;

/// Fraction of `K` in the default check count.
pub const DEFAULT_CHECK_RATE: f64 = 0.01;

/// Smallest `X` with `X (X - 1) >= 2k` (the square-root term of the Raptor rule).
fn raptor_x(k: u64) -> u64 {
    let mut x: u64 = 1;
    while x * (x - 1) < 2 * k {
        x += 1;
    }
    x
}

fn next_prime(mut c: u64) -> u32 {
    while !is_prime(c) {
        c += 1;
    }
    c as u32
}

/// Default precode check count for `k` source symbols: the smallest prime
/// `>= max(ceil(0.01 k), min(X, 32))`, `X` the smallest integer with `X (X - 1) >= 2k`
/// (263 for k = 26215, 37 for k = 3277; small segments keep the Raptor rule's `~sqrt(2k)`).
/// `k = 0` gives 0.
// BANDDEC: measured with `ccfd-perf codec --checks C --seeds 100` (GF(2), 10 % loss, band
// 64/16, non-systematic): 32 MiB (K = 26215) C = 499 (the Raptor rule) -> overhead mean
// 1.00005 / p99 1.00023; C = 263 (1 %) -> 1.00006 / 1.00027 (again 1.00006 / 1.00027, max
// 1.00042, in CODEC's run); C = 131 -> 1.00015 / 1.00099; C = 64 -> 1.00056 / 1.00343.
// 4 MiB (K = 3277): C = 127 -> 1.00057 / 1.00214; C = 33 -> 1.00052 / 1.00183; C = 17 ->
// 1.00053 / 1.00275. The decoder's hole solve costs ~C^2 bit ops plus ~h*C/2 symbol XORs and
// its check sums (C symbols) should stay in L2, so ~1 % of K decodes faster at the same
// overhead.
pub fn default_checks(k: u64) -> u32 {
    if k == 0 {
        return 0;
    }
    let rate = (DEFAULT_CHECK_RATE * k as f64).ceil() as u64;
    next_prime(rate.max(raptor_x(k).min(32)))
}

/// The reference's check count (Raptor RFC 5053 LDPC rule): the smallest prime
/// `>= ceil(0.01 k) + X` (409 for k = 20480, 127 for k = 3277); `k = 0` gives 0.
pub fn raptor_checks(k: u64) -> u32 {
    if k == 0 {
        return 0;
    }
    next_prime((DEFAULT_CHECK_RATE * k as f64).ceil() as u64 + raptor_x(k))
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A compressed sparse row table: row `i` is `items[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, Debug, Default)]
struct Csr {
    offsets: Arc<[u32]>,
    items: Arc<[u32]>,
}

impl Csr {
    fn row(&self, i: usize) -> &[u32] {
        &self.items[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Builds the table from `(row, item)` pairs produced twice by `pairs` (count, then fill).
    fn from_pairs<I: Iterator<Item = (u32, u32)>>(rows: usize, pairs: impl Fn() -> I) -> Csr {
        let mut offsets = vec![0u32; rows + 1];
        for (r, _) in pairs() {
            offsets[r as usize + 1] += 1;
        }
        for i in 0..rows {
            offsets[i + 1] += offsets[i];
        }
        let mut fill: Vec<u32> = offsets[..rows].to_vec();
        let mut items = vec![0u32; offsets[rows] as usize];
        for (r, it) in pairs() {
            items[fill[r as usize] as usize] = it;
            fill[r as usize] += 1;
        }
        Csr {
            offsets: offsets.into(),
            items: items.into(),
        }
    }
}

/// The columns of one subgeneration, in local coefficient order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubgenColumns<'a> {
    /// Contiguous columns `first..first + len` (band code).
    Range {
        /// First column.
        first: u32,
        /// Number of columns.
        len: u32,
    },
    /// Sorted member columns (random grouping).
    List(&'a [u32]),
}

impl SubgenColumns<'_> {
    /// Number of columns.
    pub fn len(&self) -> usize {
        match self {
            SubgenColumns::Range { len, .. } => *len as usize,
            SubgenColumns::List(l) => l.len(),
        }
    }

    /// Whether the subgeneration is empty (never for a valid subgeneration).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Column of local position `j` (`j < len`).
    #[inline]
    pub fn column(&self, j: usize) -> u32 {
        match self {
            SubgenColumns::Range { first, .. } => first + j as u32,
            SubgenColumns::List(l) => l[j],
        }
    }

    /// Local position of `column`, if it belongs to this subgeneration.
    pub fn position(&self, column: u32) -> Option<usize> {
        match self {
            SubgenColumns::Range { first, len } => {
                (column >= *first && column - first < *len).then(|| (column - first) as usize)
            }
            SubgenColumns::List(l) => l.binary_search(&column).ok(),
        }
    }

    /// The columns in local order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).map(move |j| self.column(j))
    }
}

/// The subgenerations that contain one column.
#[derive(Clone, Debug)]
pub enum SubgenSet<'a> {
    /// A contiguous range of subgeneration ids (band code).
    Range(Range<u32>),
    /// An ascending list of subgeneration ids (random grouping).
    List(std::slice::Iter<'a, u32>),
}

impl Iterator for SubgenSet<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        match self {
            SubgenSet::Range(r) => r.next(),
            SubgenSet::List(l) => l.next().copied(),
        }
    }
}

/// Validated parameters plus everything derived from them. Cheap to clone (tables are shared).
#[derive(Clone, Debug)]
pub struct Layout {
    params: CodeParams,
    k: u32,
    c: u32,
    n: u32,
    window: u32,
    g: u32,
    /// Random grouping: subgeneration -> sorted members; and column -> subgenerations.
    members: Csr,
    column_subgens: Csr,
    /// Precode: check -> sorted source columns; and source column -> checks.
    check_sources: Csr,
    source_checks: Csr,
}

impl Layout {
    /// Derives the layout; `params` must have been checked by [`CodeParams::validate`].
    pub(crate) fn build(params: CodeParams, k: u32, c: u32) -> Layout {
        let n = k + c;
        let window = params.subgen_size.min(n);
        let stride = params.stride;
        let g = match (n, params.kind) {
            (0, _) => 0,
            (_, CodeKind::Band) => (n - window).div_ceil(stride) + 1,
            (_, CodeKind::Random) => n.div_ceil(stride),
        };
        let (members, column_subgens) = match params.kind {
            CodeKind::Random if n > 0 => random_grouping(&params, n, window, g),
            _ => (Csr::default(), Csr::default()),
        };
        let (check_sources, source_checks) = precode_graph(k, c);
        Layout {
            params,
            k,
            c,
            n,
            window,
            g,
            members,
            column_subgens,
            check_sources,
            source_checks,
        }
    }

    /// The parameters this layout was derived from.
    pub fn params(&self) -> &CodeParams {
        &self.params
    }

    /// Segment length in bytes.
    pub fn segment_len(&self) -> u64 {
        self.params.segment_len
    }

    /// Symbol size in bytes.
    pub fn symbol_size(&self) -> usize {
        self.params.symbol_size as usize
    }

    /// Field of the network code.
    pub fn field(&self) -> Field {
        self.params.field
    }

    /// Code kind.
    pub fn kind(&self) -> CodeKind {
        self.params.kind
    }

    /// Whether encoders send the source symbols uncoded first.
    pub fn systematic(&self) -> bool {
        self.params.systematic
    }

    /// `K`: number of source symbols.
    pub fn source_count(&self) -> u32 {
        self.k
    }

    /// `C`: number of check symbols.
    pub fn check_count(&self) -> u32 {
        self.c
    }

    /// `N = K + C`: number of columns.
    pub fn column_count(&self) -> u32 {
        self.n
    }

    /// `G`: number of subgenerations.
    pub fn subgen_count(&self) -> u32 {
        self.g
    }

    /// Columns per subgeneration: `min(subgen_size, N)`.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Whether coded packets draw sparse coefficients: [`crate::params::Density::Sparse`] in a
    /// non-systematic code with windows of at least [`crate::params::SPARSE_MIN_WINDOW`] columns.
    pub fn sparse(&self) -> bool {
        self.params.density == crate::params::Density::Sparse
            && !self.params.systematic
            && self.window >= crate::params::SPARSE_MIN_WINDOW
    }

    /// Stride between consecutive subgenerations.
    pub fn stride(&self) -> u32 {
        self.params.stride
    }

    /// Number of bytes of the source symbol `index` that lie inside the segment (the rest of
    /// the symbol is zero padding); `index < K`.
    pub fn source_bytes(&self, index: u32) -> usize {
        let s = self.params.symbol_size as u64;
        let start = index as u64 * s;
        (self.params.segment_len - start).min(s) as usize
    }

    /// Band code: first column of subgeneration `g` (`g < G`). For random grouping, the
    /// smallest member.
    pub fn subgen_lead(&self, g: u32) -> u32 {
        match self.params.kind {
            CodeKind::Band => (g * self.params.stride).min(self.n - self.window),
            CodeKind::Random => self.members.row(g as usize)[0],
        }
    }

    /// Columns of subgeneration `g` (`g < G`) in local coefficient order.
    pub fn subgen_columns(&self, g: u32) -> SubgenColumns<'_> {
        match self.params.kind {
            CodeKind::Band => SubgenColumns::Range {
                first: self.subgen_lead(g),
                len: self.window,
            },
            CodeKind::Random => SubgenColumns::List(self.members.row(g as usize)),
        }
    }

    /// Subgenerations containing `column` (`column < N`), ascending.
    pub fn subgens_containing(&self, column: u32) -> SubgenSet<'_> {
        match self.params.kind {
            CodeKind::Band => {
                let (n, w, s) = (self.n, self.window, self.params.stride);
                let hi = if column >= n - w {
                    self.g - 1
                } else {
                    (column / s).min(self.g - 1)
                };
                let lo = if column < w {
                    0
                } else {
                    ((column - w) / s + 1).min(self.g - 1)
                };
                SubgenSet::Range(lo..hi + 1)
            }
            CodeKind::Random => SubgenSet::List(self.column_subgens.row(column as usize).iter()),
        }
    }

    /// Sorted source columns of check `r` (`r < C`).
    pub fn check_sources(&self, r: u32) -> &[u32] {
        self.check_sources.row(r as usize)
    }

    /// Checks (`0..C`, not column numbers) that source column `c` (`c < K`) belongs to.
    pub fn source_checks(&self, c: u32) -> &[u32] {
        self.source_checks.row(c as usize)
    }
}

/// The circulant LDPC graph of SNC-REFERENCE §2.4 in both directions.
fn precode_graph(k: u32, c: u32) -> (Csr, Csr) {
    if c == 0 {
        return (
            Csr::from_pairs(0, std::iter::empty),
            Csr::from_pairs(k as usize, std::iter::empty),
        );
    }
    let s = c as u64;
    let edges = move || {
        (0..k).flat_map(move |col| {
            let (i, j) = (col as u64 / s, col as u64 % s);
            let r1 = j;
            let r2 = (i + 1 + j) % s;
            let r3 = (2 * i + 2 + j) % s;
            let r2 = (r2 != r1).then_some(r2);
            let r3 = (r3 != r1 && Some(r3) != r2).then_some(r3);
            [Some(r1), r2, r3]
                .into_iter()
                .flatten()
                .map(move |r| (r as u32, col))
        })
    };
    let check_sources = Csr::from_pairs(c as usize, edges);
    let source_checks = Csr::from_pairs(k as usize, move || edges().map(|(r, col)| (col, r)));
    (check_sources, source_checks)
}

/// Random grouping (SNC-REFERENCE §2.3 RAND) with the crate's PRNG.
fn random_grouping(params: &CodeParams, n: u32, window: u32, g: u32) -> (Csr, Csr) {
    let mut rng = Prng::new(derive(params.grouping_seed, 0x6772_6f75_7069_6e67));
    let mut mark = vec![u32::MAX; n as usize];
    let mut items = Vec::with_capacity(g as usize * window as usize);
    let base = params.stride.min(window);
    for sg in 0..g {
        let start = items.len();
        let mut take = |col: u32, items: &mut Vec<u32>| {
            if mark[col as usize] == sg {
                false
            } else {
                mark[col as usize] = sg;
                items.push(col);
                true
            }
        };
        for j in 0..base {
            let mut cand = ((sg as u64 * params.stride as u64 + j as u64) % n as u64) as u32;
            while !take(cand, &mut items) {
                cand = rng.below(n as u64) as u32;
            }
        }
        while items.len() - start < window as usize {
            let cand = rng.below(n as u64) as u32;
            take(cand, &mut items);
        }
        items[start..].sort_unstable();
    }
    let w = window as usize;
    let members = Csr {
        offsets: (0..=g).map(|i| i * window).collect(),
        items: items.into(),
    };
    let m = members.clone();
    let column_subgens = Csr::from_pairs(n as usize, move || {
        m.items
            .chunks(w)
            .enumerate()
            .flat_map(|(sg, cols)| cols.iter().map(move |&c| (c, sg as u32)))
            .collect::<Vec<_>>()
            .into_iter()
    });
    (members, column_subgens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::CodeParams;

    #[test]
    fn reference_check_counts() {
        assert_eq!(raptor_checks(20480), 409);
        assert_eq!(raptor_checks(3277), 127);
        assert_eq!(raptor_checks(0), 0);
    }

    #[test]
    fn default_check_counts() {
        assert_eq!(default_checks(26215), 263);
        assert_eq!(default_checks(3277), 37);
        assert_eq!(default_checks(100), raptor_checks(100));
        assert_eq!(default_checks(1), 2);
        assert_eq!(default_checks(0), 0);
    }

    #[test]
    fn band_geometry_matches_reference() {
        let l = CodeParams::new(26214400)
            .checks(Some(raptor_checks(20480)))
            .validate()
            .unwrap();
        assert_eq!((l.source_count(), l.check_count()), (20480, 409));
        assert_eq!(l.column_count(), 20889);
        assert_eq!(l.subgen_count(), 1303);
        let last = l.subgen_count() - 1;
        assert_eq!(l.subgen_lead(last) + l.window(), l.column_count());
    }

    #[test]
    fn tiny_segments_clamp_the_window() {
        let l = CodeParams::new(1).validate().unwrap();
        assert_eq!(l.source_count(), 1);
        assert_eq!(l.window(), l.column_count());
        assert_eq!(l.subgen_count(), 1);
        assert_eq!(l.source_bytes(0), 1);
        let l = CodeParams::new(1281).checks(Some(0)).validate().unwrap();
        assert_eq!((l.column_count(), l.window(), l.subgen_count()), (2, 2, 1));
        assert_eq!(l.source_bytes(1), 1);
    }

    fn check_containment(l: &Layout) {
        for col in 0..l.column_count() {
            let expect: Vec<u32> = (0..l.subgen_count())
                .filter(|&g| l.subgen_columns(g).position(col).is_some())
                .collect();
            let got: Vec<u32> = l.subgens_containing(col).collect();
            assert_eq!(got, expect, "column {col}");
            assert!(!got.is_empty());
        }
    }

    #[test]
    fn subgens_containing_is_exact() {
        for (len, sg, st) in [
            (100_000u64, 64, 16),
            (50_000, 10, 3),
            (7000, 64, 64),
            (3000, 8, 1),
        ] {
            let p = CodeParams::new(len).subgen_size(sg).stride(st);
            check_containment(&p.validate().unwrap());
            check_containment(&p.kind(CodeKind::Random).validate().unwrap());
        }
    }

    #[test]
    fn random_members_are_distinct_sorted_and_seeded() {
        let p = CodeParams::new(200_000)
            .kind(CodeKind::Random)
            .grouping_seed(7);
        let a = p.validate().unwrap();
        for g in 0..a.subgen_count() {
            let SubgenColumns::List(m) = a.subgen_columns(g) else {
                panic!("random grouping gives lists")
            };
            assert_eq!(m.len(), a.window() as usize);
            assert!(m.windows(2).all(|w| w[0] < w[1]));
        }
        let b = p.clone().grouping_seed(8).validate().unwrap();
        assert_ne!(a.subgen_columns(3), b.subgen_columns(3));
        let c = p.validate().unwrap();
        assert_eq!(a.subgen_columns(3), c.subgen_columns(3));
    }

    #[test]
    fn precode_degrees_and_symmetry() {
        let l = CodeParams::new(26214400).validate().unwrap();
        let mut edges = 0;
        for r in 0..l.check_count() {
            let s = l.check_sources(r);
            assert!(s.windows(2).all(|w| w[0] < w[1]));
            for &c in s {
                assert!(l.source_checks(c).contains(&r));
            }
            edges += s.len();
        }
        assert_eq!(edges, 3 * l.source_count() as usize);
        // Tiny check counts drop duplicate edges instead of repeating them.
        let l = CodeParams::new(5000).checks(Some(2)).validate().unwrap();
        for c in 0..l.source_count() {
            let ch = l.source_checks(c);
            assert!(!ch.is_empty() && ch.len() <= 2);
        }
    }
}
