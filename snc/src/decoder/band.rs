//! The band decoder: compact rows, lazy payload work, and the precode solved over the holes.
//!
//! Per packet only coefficients are touched ([`rows`]): the window is reduced against the
//! stored rows (one `u64` XOR and a trailing-zero count per step for GF(2)), and an innovative
//! packet's symbol is copied once into the slot of its pivot column ([`slots`]), which is the
//! caller's output buffer for source columns. The pivots it was reduced against are recorded.
//! A redundant packet therefore costs no payload work at all.
//!
//! When the rows leave `h <= C` holes, the hole system is tried ([`holes`], coefficients
//! only); if the checks leave `d` holes undetermined, the next try waits for `d` more
//! innovative packets (each can lower the deficiency by at most one, so completion is
//! detected at the same packet as by a dense Gaussian decoder). Over bit rows (with `d <= 8`)
//! the failed try also returns a basis of the `d` homogeneous solutions (rows and checks),
//! and each later row is dotted with it (one word per vector): the deficiency drops exactly
//! when the row is not orthogonal to the basis, so the solve runs again only once it is zero
//! instead of after every `d` rows (2.3 tries per 32 MiB stream at 10 % loss, up to 9). Once it is solvable, the
//! payload work runs as streaming passes whose working set is a window of `~2w` symbols:
//! 1. forward, ascending: `m_p = s_p (raw_p + sum c_q m_q)` over the recorded pivots;
//! 2. back-substitution, descending: `v_p = m_p + sum U_pj v_j` (holes count as zero), each
//!    finished `v_p` folded into the right-hand sides of its (<= 3) checks. Rows whose value
//!    depends on a hole (`d_p != 0` below) keep `m_p` in their slot and put `v_p` in a ring of
//!    `w` symbols when step 4 redoes them; every other row writes `v_p` in place. Dense GF(2)
//!    rows (uniform coefficients, ~32 entries of 64) add one tabulated subset per group of
//!    four columns ([`tables`]) instead of one symbol per set bit; sparse rows (~12 entries)
//!    add their entries directly, which costs less than building the tables;
//! 3. the holes: `x_h` from the check sums (`~h * C / 2` symbol operations);
//! 4. the rows that depend on a hole, descending, one of two ways chosen by counting terms
//!    (coefficients only):
//!    * redo: `x_p = m_p + sum U_pj x_j` in place over the whole row; for coded streams,
//!      whose entries nearly all depend on a hole, this adds the fewest symbols and writes
//!      each slot once;
//!    * fix-up (systematic streams, whose entries are mostly received source symbols, and
//!      tabulated rows): `d = U_nh^-1 (U_h x_h)` in a ring of `w` symbols, `x_p = v_p + d_p`
//!      in place, adding only the terms at holes and at dependent rows (dense GF(2) rows one
//!      tabulated subset of `e_j` per group of four, `e_j` = `x_j` at a hole, else `d_j`).
//!
//! When every hole is a check column and no source row reaches a check column (a systematic
//! receiver that got every source symbol, or whose repair rows all end before the checks),
//! the sources follow from the source rows alone: there is no hole solve, and passes 1-2 run
//! only over the span of source rows that carry work (none for a loss-free systematic
//! stream, whose symbols are already in place). The checks are not part of the output.

mod holes;
mod rows;
mod slots;
mod tables;

use crate::coeffs::CoeffRow;
use crate::field::Kernel;
use crate::layout::Layout;
use crate::params::Field;
use holes::{checks_of, Combos, Solve};
use rows::{Pivots, Rows, Walk};
use slots::{combine, combine_from, Slots};
use std::ops::Range;
use tables::GroupTables;

/// Slots ahead of the current one that the payload passes prefetch: each pass streams the
/// segment from DRAM one slot at a time, and a slot's lines should be in flight several rows
/// before the row that adds into it.
// CODEC: measured (32 MiB nonsys 10 % loss, thread CPU, alternating, 12 runs each): 8 decodes
// GF(2) 1.03-1.04x and GF(2^8) 1.07-1.25x faster than 4; 2 and 4 were within noise of
// each other.
const PREFETCH_AHEAD: u32 = 8;

/// One bit per column: the pivot rows whose value depends on a hole.
#[derive(Debug)]
struct Live {
    words: Vec<u64>,
    /// The highest such row.
    top: u32,
    /// Symbols the redo pass would add (every entry of these rows) and the fix-up would add
    /// (their entries at holes and at such rows, plus `d_p` into the slot).
    redo_terms: u64,
    fix_up_terms: u64,
}

impl Live {
    #[inline]
    fn get(&self, c: u32) -> bool {
        (self.words[(c / 64) as usize] >> (c % 64)) & 1 == 1
    }
}

/// Outcome of one push into the band decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BandPush {
    /// New row stored; not complete yet.
    Innovative,
    /// Reduced to zero.
    Redundant,
    /// This packet completed the rank; the output buffer holds the segment unless the
    /// decoder is in deferred mode (then [`BandDecoder::finish`] runs the payload passes).
    Complete,
}

/// How the payload passes complete a solvable segment.
#[derive(Debug)]
enum Plan {
    /// The full passes: the holes (ascending) and how each follows from the check sums.
    Holes { holes: Vec<u32>, combos: Combos },
    /// Only check columns are unknown and no source row reaches them: passes 1-2 over the
    /// source rows in this span (empty: nothing to do), no check sums, no holes.
    Sources(Range<u32>),
}

/// Band decoder state for one segment.
#[derive(Debug)]
pub(crate) struct BandDecoder<'a> {
    layout: Layout,
    kernel: Kernel,
    n: u32,
    w: u32,
    slots: Slots<'a>,
    pivots: Pivots,
    rows: Rows,
    /// After a deficient solve over bit rows: a basis of the homogeneous solutions (one bit per
    /// column), which shrinks by one with each row that lowers the deficiency.
    null: Vec<Vec<u64>>,
    /// Per pivot column: start and length of its recorded pivots in `hit_cols`.
    hit_start: Vec<usize>,
    hit_len: Vec<u32>,
    hit_cols: Vec<u32>,
    /// Byte rows: the multiplier of each recorded pivot, and `1 / lead` per pivot column.
    hit_coefs: Vec<u8>,
    inv_lead: Vec<u8>,
    /// Scratch of one walk.
    walk_cols: Vec<u32>,
    walk_coefs: Vec<u8>,
    wide: Vec<u8>,
    rank: u32,
    /// Rank at which the next hole solve is worth trying.
    next_try: u32,
    solve_tries: u32,
    /// False in counting mode: symbols are neither stored nor computed.
    symbols: bool,
    /// Deferred-finish mode: a successful solve parks its result in `pending` instead of
    /// running the payload passes.
    deferred: bool,
    /// A successful solve whose payload passes have not run yet.
    pending: Option<Plan>,
    /// Symbol operations of the payload passes so far (one source symbol added or one
    /// symbol scaled each).
    symbol_ops: u64,
    complete: bool,
    peak_bytes: usize,
    /// Bit rows are dense (uniform coefficients): the passes add tabulated subsets.
    tabulate: bool,
}

impl<'a> BandDecoder<'a> {
    /// A decoder for `layout` (band code, `N > 0`) writing into `out` (`segment_len` bytes).
    pub(crate) fn new(layout: &Layout, kernel: Kernel, out: &'a mut [u8]) -> BandDecoder<'a> {
        Self::build(layout, kernel, out, true)
    }

    /// A decoder that only tracks coefficients: it completes at exactly the same packet as
    /// [`BandDecoder::new`] would (completion never depends on symbol values) but stores and
    /// computes no symbols.
    pub(crate) fn counting(layout: &Layout) -> BandDecoder<'static> {
        BandDecoder::build(layout, Kernel::scalar(), &mut [], false)
    }

    fn build(layout: &Layout, kernel: Kernel, out: &'a mut [u8], symbols: bool) -> BandDecoder<'a> {
        let n = layout.column_count();
        let w = layout.window();
        let sym = layout.symbol_size();
        let bits = layout.field() == Field::Gf2 && w <= 64;
        let rows = if bits {
            Rows::bits(n)
        } else {
            Rows::bytes(n, w as usize)
        };
        let mut d = BandDecoder {
            layout: layout.clone(),
            kernel,
            n,
            w,
            slots: Slots::new(out, if symbols { n } else { 0 }, sym),
            pivots: Pivots::new(n),
            rows,
            null: Vec::new(),
            hit_start: vec![0; n as usize],
            hit_len: vec![0; n as usize],
            hit_cols: Vec::new(),
            hit_coefs: Vec::new(),
            inv_lead: if bits {
                Vec::new()
            } else {
                vec![1; n as usize]
            },
            walk_cols: Vec::new(),
            walk_coefs: Vec::new(),
            wide: vec![0; w as usize],
            rank: 0,
            next_try: n.saturating_sub(layout.check_count()),
            solve_tries: 0,
            symbols,
            deferred: false,
            pending: None,
            symbol_ops: 0,
            complete: false,
            peak_bytes: 0,
            // CODEC: measured (32 MiB GF(2) nonsys 10 % loss, thread CPU, alternating): sparse
            // rows (12.4 entries) decode 1.3-1.6x faster without the tables; uniform rows
            // (~32 entries) about the same either way.
            tabulate: bits && !layout.sparse(),
        };
        d.note_memory(0);
        d
    }

    /// Number of stored rows (innovative packets).
    pub(crate) fn rank(&self) -> u32 {
        self.rank
    }

    /// Whether the segment is decoded.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether the rank is complete (the payload passes may still be pending).
    pub(crate) fn is_solved(&self) -> bool {
        self.complete || self.pending.is_some()
    }

    /// In deferred mode the push that completes the rank parks the solve; [`Self::finish`]
    /// then runs the payload passes.
    pub(crate) fn set_deferred(&mut self, on: bool) {
        self.deferred = on;
    }

    /// Runs the pending payload passes, if any. Returns whether the segment is complete.
    pub(crate) fn finish(&mut self) -> bool {
        if let Some(plan) = self.pending.take() {
            self.run(&plan);
            self.complete = true;
            self.release();
        }
        self.complete
    }

    /// Symbol operations the payload passes performed so far (one source symbol added into
    /// a slot, or one slot scaled, each); copies of received symbols are not counted.
    pub(crate) fn symbol_ops(&self) -> u64 {
        self.symbol_ops
    }

    /// Hole-solve attempts made so far.
    pub(crate) fn solve_tries(&self) -> u32 {
        self.solve_tries
    }

    /// Peak bytes this decoder allocated (excluding the caller's output buffer).
    pub(crate) fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }

    fn held_bytes(&self) -> usize {
        self.slots.side_bytes()
            + self.pivots.bytes()
            + self.rows.bytes_used()
            + self.hit_start.capacity() * 8
            + self.hit_len.capacity() * 4
            + self.hit_cols.capacity() * 4
            + self.hit_coefs.capacity()
            + self.inv_lead.capacity()
            + self.walk_cols.capacity() * 4
            + self.walk_coefs.capacity()
            + self.wide.capacity()
            + self.null.iter().map(|z| z.capacity() * 8).sum::<usize>()
    }

    fn note_memory(&mut self, transient: usize) {
        self.peak_bytes = self.peak_bytes.max(self.held_bytes() + transient);
    }

    /// Pushes one packet's coefficients (a contiguous window) and symbol.
    pub(crate) fn push(&mut self, coeffs: &CoeffRow, symbol: &[u8]) -> BandPush {
        if self.is_solved() {
            return BandPush::Redundant;
        }
        let first = coeffs
            .first_column()
            .expect("band and systematic packets have contiguous windows");
        self.walk_cols.clear();
        self.walk_coefs.clear();
        let walk = match &mut self.rows {
            Rows::Bits(_) => {
                let v = coeffs.gf2_words().first().copied().unwrap_or(0);
                self.rows
                    .walk_bits(&mut self.pivots, first, v, &mut self.walk_cols)
            }
            Rows::Bytes { .. } => {
                let len = coeffs.len();
                match coeffs.field() {
                    Field::Gf256 => self.wide[..len].copy_from_slice(coeffs.gf256_bytes()),
                    Field::Gf2 => {
                        for (j, b) in self.wide[..len].iter_mut().enumerate() {
                            *b = coeffs.get(j);
                        }
                    }
                }
                self.rows.walk_bytes(
                    self.kernel,
                    &mut self.pivots,
                    first,
                    &self.wide[..len],
                    &mut self.walk_cols,
                    &mut self.walk_coefs,
                )
            }
        };
        let Walk::Stored { pivot, lead } = walk else {
            return BandPush::Redundant;
        };
        let p = pivot as usize;
        self.hit_start[p] = self.hit_cols.len();
        self.hit_len[p] = self.walk_cols.len() as u32;
        self.hit_cols.extend_from_slice(&self.walk_cols);
        if !self.inv_lead.is_empty() {
            self.hit_coefs.extend_from_slice(&self.walk_coefs);
            self.inv_lead[p] = crate::field::gf256::inv(lead);
        }
        if self.symbols {
            // Read back only by the passes, long after: stream it past the cache.
            crate::field::copy_streaming(self.slots.get_mut(pivot), symbol);
        }
        self.rank += 1;
        if !self.null.is_empty() {
            let v = coeffs.gf2_words().first().copied().unwrap_or(0);
            if self.lowers_deficiency(first, v) && self.null.is_empty() {
                self.try_finish();
            }
        } else if self.rank >= self.next_try {
            self.try_finish();
        }
        if self.is_solved() {
            BandPush::Complete
        } else {
            BandPush::Innovative
        }
    }

    /// After a deficient solve (bit rows): whether the new row (its packet's window `v` at
    /// column `first`) lowers the deficiency, i.e. is not orthogonal to every vector of the
    /// null basis; if so, the basis loses one dimension. The solve is due when it is empty.
    fn lowers_deficiency(&mut self, first: u32, v: u64) -> bool {
        let dots: u64 = self.null.iter().enumerate().fold(0, |acc, (i, z)| {
            acc | u64::from((holes::bit_window(z, first) & v).count_ones() % 2) << i
        });
        if dots == 0 {
            return false;
        }
        let i = dots.trailing_zeros() as usize;
        let zi = self.null.swap_remove(i);
        // `swap_remove` moved the last vector to `i`: its dot moves with it.
        let last = self.null.len();
        let dots = (dots & !(1 << i) & !(1 << last)) | ((dots >> last) & 1) << i;
        for (j, z) in self.null.iter_mut().enumerate() {
            if (dots >> j) & 1 == 1 {
                for (a, b) in z.iter_mut().zip(&zi) {
                    *a ^= b;
                }
            }
        }
        true
    }

    /// Tries the hole solve; on success runs the payload passes and completes.
    fn try_finish(&mut self) {
        let holes = self.pivots.holes(self.n);
        let c = self.layout.check_count();
        if holes.len() as u32 > c {
            self.next_try = self.n - c;
            return;
        }
        let k = self.layout.source_count();
        if holes.first().is_none_or(|&h| h >= k) && self.sources_closed(k) {
            // Every source column holds a pivot row within the sources: U_ss is triangular
            // with a unit diagonal, so the sources (and through the checks, the check
            // columns) are determined: the hole system is always solvable. Nothing to solve.
            let span = self.source_work_span(k);
            self.complete_with(Plan::Sources(span));
            return;
        }
        self.solve_tries += 1;
        let mut scratch = 0;
        let solve = holes::solve(
            &self.layout,
            self.kernel,
            &self.rows,
            &self.pivots,
            self.w,
            holes,
            &mut scratch,
        );
        self.note_memory(scratch);
        match solve {
            Solve::Deficient { deficiency, null } => {
                if null.len() == deficiency as usize && deficiency > 0 {
                    // Track the deficiency packet by packet instead of solving again.
                    self.null = null;
                    self.next_try = u32::MAX;
                    self.note_memory(0);
                } else {
                    self.next_try = self.rank + deficiency;
                }
            }
            Solve::Solved { holes, combos } => {
                self.note_memory(combos.bytes() + holes.capacity() * 4);
                self.complete_with(Plan::Holes { holes, combos });
            }
        }
    }

    /// The rank is complete: parks `plan` (deferred mode) or runs it and completes.
    fn complete_with(&mut self, plan: Plan) {
        if self.symbols && self.deferred {
            self.pending = Some(plan);
            return;
        }
        if self.symbols {
            self.run(&plan);
        }
        self.complete = true;
        self.release();
    }

    fn run(&mut self, plan: &Plan) {
        match plan {
            Plan::Holes { holes, combos } => self.payload_passes(holes, combos),
            Plan::Sources(span) => {
                if !span.is_empty() {
                    let k = self.layout.source_count();
                    // Pass 2 reads up to `w - 1` columns right of a row, through the group
                    // tables: start it where those groups get built.
                    let back = span.start..(span.end + self.w).min(k);
                    self.forward_pass(span.clone());
                    self.back_pass(back, None, 0);
                }
            }
        }
    }

    /// Whether no row of a source column has an entry at a check column (`>= k`). Call only
    /// when every source column holds a pivot row; only the last `w` rows can reach `k`.
    fn sources_closed(&self, k: u32) -> bool {
        (k.saturating_sub(self.w)..k).all(|p| self.rows.entries(p).all(|(j, _)| j < k))
    }

    /// The smallest span of source columns holding every row with payload work: recorded
    /// reductions or a scale (pass 1), or entries right of the pivot (pass 2). Rows outside it
    /// hold their received symbol, which is already the column's value.
    fn source_work_span(&self, k: u32) -> Range<u32> {
        let busy = |p: u32| {
            self.hit_len[p as usize] > 0
                || self.inv_lead.get(p as usize).is_some_and(|&s| s != 1)
                || self.rows.entries(p).next().is_some()
        };
        match (0..k).find(|&p| busy(p)) {
            None => 0..0,
            Some(lo) => {
                let hi = (lo..k).rev().find(|&p| busy(p)).unwrap_or(lo);
                lo..hi + 1
            }
        }
    }

    fn release(&mut self) {
        if self.symbols {
            self.slots.finish(self.layout.source_count());
        }
        self.rows = Rows::Bits(Vec::new());
        self.null = Vec::new();
        self.pivots = Pivots::default();
        self.hit_start = Vec::new();
        self.hit_len = Vec::new();
        self.hit_cols = Vec::new();
        self.hit_coefs = Vec::new();
        self.inv_lead = Vec::new();
        self.walk_cols = Vec::new();
        self.walk_coefs = Vec::new();
    }

    fn payload_passes(&mut self, holes: &[u32], combos: &Combos) {
        let sym = self.layout.symbol_size();
        let n = self.n;
        let kernel = self.kernel;

        // 1. Forward: replay the recorded reductions in pivot order.
        self.forward_pass(0..n);

        // 2. Back-substitution with holes as zero; fold each v_p into its checks' sums.
        let c = self.layout.check_count() as usize;
        let mut rhs = if holes.is_empty() {
            Vec::new()
        } else {
            vec![0u8; c * sym]
        };
        let held = rhs.capacity() + combos.bytes();
        // Rows without group tables whose value depends on a hole (`d_p != 0`) keep `m_p` in
        // their slots and are redone once the holes are known, when that adds fewer symbols
        // than the fix-up (coded rows, whose entries nearly all depend on a hole); every other
        // row's `v_p` is final. Otherwise (systematic streams: most entries are received
        // source symbols) and for tabulated rows, the fix-up adds `d`.
        let redo = if self.tabulate || holes.is_empty() {
            None
        } else {
            self.rows_reaching_holes()
                .filter(|l| l.redo_terms <= l.fix_up_terms)
        };
        match &redo {
            Some(live) => self.back_pass_ring(live, &mut rhs, held),
            None => self.back_pass(0..n, (!rhs.is_empty()).then_some(&mut rhs[..]), held),
        }
        if holes.is_empty() {
            return;
        }

        // 3. Hole values from the check sums.
        for (i, &hcol) in holes.iter().enumerate() {
            let dst = self.slots.get_mut(hcol);
            dst.fill(0);
            let mut terms: Vec<(u32, u8)> = Vec::new();
            combos.for_each_term(i, |r, k| terms.push((r, k)));
            self.symbol_ops += combine(
                kernel,
                dst,
                terms
                    .iter()
                    .map(|&(r, k)| (&rhs[r as usize * sym..][..sym], k)),
            );
        }
        drop(rhs);

        // 4. Rows reaching a hole: x_p = m_p + sum U_pj x_j (redo), or x_p = v_p + d_p with
        //    d = U_nh^-1 (U_h x_h) descending from the last hole (group tables). Without tables
        //    and with no row reaching a hole, x = v already.
        if let Some(live) = &redo {
            self.redo_pass(live);
        } else if self.tabulate {
            self.fix_up_bits(holes);
        } else {
            self.fix_up_terms(holes);
        }
    }

    /// The pivot rows whose value depends on a hole (`d_p != 0` in the fix-up's terms): an
    /// entry at a hole or at such a row. Coefficients only, descending. `None` when no row
    /// reaches a hole (then `x = v`).
    fn rows_reaching_holes(&self) -> Option<Live> {
        let pivots = &self.pivots;
        let mut live = Live {
            words: vec![0; (self.n as usize).div_ceil(64)],
            top: 0,
            redo_terms: 0,
            fix_up_terms: 0,
        };
        let mut any = false;
        for p in (0..self.n).rev() {
            if !pivots.get(p) {
                continue;
            }
            let (mut all, mut dep) = (0u64, 0u64);
            for (j, _) in self.rows.entries(p) {
                all += 1;
                dep += u64::from(!pivots.get(j) || live.get(j));
            }
            if dep > 0 {
                live.words[(p / 64) as usize] |= 1 << (p % 64);
                live.redo_terms += all;
                live.fix_up_terms += dep + 1;
                if !any {
                    live.top = p;
                    any = true;
                }
            }
        }
        any.then_some(live)
    }

    /// Pass 1 over the pivot columns in `cols`, ascending: `m_p = s_p (raw_p + sum c_q m_q)`.
    fn forward_pass(&mut self, cols: Range<u32>) {
        let kernel = self.kernel;
        let bytes_rows = !self.inv_lead.is_empty();
        for p in cols {
            self.slots.prefetch(p + PREFETCH_AHEAD);
            if !self.pivots.get(p) {
                continue;
            }
            let (s, len) = (
                self.hit_start[p as usize],
                self.hit_len[p as usize] as usize,
            );
            if len > 0 {
                let cols = &self.hit_cols[s..s + len];
                let (dst, others) = self.slots.split_at(p);
                if bytes_rows {
                    let coefs = &self.hit_coefs[s..s + len];
                    self.symbol_ops += combine(
                        kernel,
                        dst,
                        cols.iter().zip(coefs).map(|(&q, &k)| (others.get(q), k)),
                    );
                } else {
                    self.symbol_ops +=
                        combine(kernel, dst, cols.iter().map(|&q| (others.get(q), 1)));
                }
            }
            if bytes_rows {
                let s = self.inv_lead[p as usize];
                if s != 1 {
                    kernel.scale(self.slots.get_mut(p), s);
                    self.symbol_ops += 1;
                }
            }
        }
    }

    /// Pass 2 over the pivot columns in `cols`, descending: `v_p = m_p + sum U_pj v_j` with
    /// holes as zero. With `rhs` (`C` symbols), each finished `v_p` is folded into its checks'
    /// sums. Rows reaching right of `cols` read those columns' slots as final values.
    /// `held`: transient bytes the caller holds meanwhile (for the peak).
    fn back_pass(&mut self, cols: Range<u32>, mut rhs: Option<&mut [u8]>, held: usize) {
        let kernel = self.kernel;
        let sym = self.layout.symbol_size();
        let n = self.n;
        let mut tables = match self.rows {
            Rows::Bits(_) if self.tabulate => Some(GroupTables::new(sym)),
            _ => None,
        };
        self.note_memory(held + tables.as_ref().map_or(0, |t| t.bytes()));
        let low = cols.start;
        for p in cols.rev() {
            if let Some(next) = p.checked_sub(PREFETCH_AHEAD).filter(|&c| c >= low) {
                self.slots.prefetch(next);
            }
            if let Some(t) = tables.as_mut() {
                if (p + 1) % 4 == 0 && p + 1 < n {
                    let a = (p + 1) / 4;
                    let valid = (n - 4 * a).min(4);
                    let members = self.pivots.nibble(a) & ((1 << valid) - 1);
                    let all = self.slots.all();
                    t.build_with(kernel, a, members, |c| all.get(c));
                }
            }
            if !self.pivots.get(p) {
                continue;
            }
            let (dst, others) = self.slots.split_at(p);
            let pivots = &self.pivots;
            match (&self.rows, tables.as_ref()) {
                (Rows::Bits(bits), Some(t)) => {
                    let word = bits[p as usize];
                    let mut terms: [&[u8]; 32] = [&[]; 32];
                    let mut nt = 0;
                    let first_group = (p + 1).next_multiple_of(4);
                    for j in p + 1..first_group.min(p + 64).min(n) {
                        if (word >> (j - p)) & 1 == 1 && pivots.get(j) {
                            terms[nt] = others.get(j);
                            nt += 1;
                        }
                    }
                    let mut col = first_group;
                    while col < p + 64 && col < n {
                        let a = col / 4;
                        let m = (word >> (col - p)) as u32 & 0xF & pivots.nibble(a);
                        match m.count_ones() {
                            0 => {}
                            1 => {
                                terms[nt] = others.get(col + m.trailing_zeros());
                                nt += 1;
                            }
                            _ => {
                                terms[nt] = t.entry(a, m);
                                nt += 1;
                            }
                        }
                        col += 4;
                    }
                    self.symbol_ops += nt as u64;
                    combine(kernel, dst, terms[..nt].iter().map(|&s| (s, 1)));
                }
                (rows, _) => {
                    // Straight from the row: no term list to set up per row.
                    self.symbol_ops += combine(
                        kernel,
                        dst,
                        rows.entries(p)
                            .filter(|&(j, _)| pivots.get(j))
                            .map(|(j, k)| (others.get(j), k)),
                    );
                }
            }
            if let Some(rhs) = rhs.as_deref_mut() {
                let all = self.slots.all();
                let v = all.get(p);
                for r in checks_of(&self.layout, p) {
                    kernel.xor(&mut rhs[r as usize * sym..][..sym], v);
                    self.symbol_ops += 1;
                }
            }
        }
    }

    /// Fix-up over dense bit rows with group tables. With `e_j = x_j` for a hole and `e_j = d_j`
    /// for a pivot column (zero above the last hole), `d_p = sum U_pj e_j` over the row: the
    /// same shape as the back-substitution, so it adds one tabulated subset per group of four.
    fn fix_up_bits(&mut self, holes: &[u32]) {
        let kernel = self.kernel;
        let sym = self.layout.symbol_size();
        let n = self.n;
        let last = *holes.last().expect("non-empty");
        let ring_slots = (self.w as usize).next_power_of_two().max(64);
        let mask = ring_slots as u32 - 1;
        let mut ring = vec![0u8; ring_slots * sym];
        // live[i]: ring slot i holds a non-zero d (for a pivot column below `last`).
        let mut live = vec![false; ring_slots];
        let mut tables = GroupTables::new(sym);
        self.note_memory(ring.capacity() + tables.bytes());
        let Rows::Bits(bits) = &self.rows else {
            unreachable!("bit rows")
        };
        let pivots = &self.pivots;
        // Non-zero e_j: a hole, or a live pivot column below the last hole.
        let nonzero = |j: u32, live: &[bool]| {
            j < n && (!pivots.get(j) || (j < last && live[(j & mask) as usize]))
        };
        // Groups above `last` can hold only the last hole itself.
        let top = (last + 64).min(n);
        for p in (0..top).rev() {
            if let Some(next) = p.checked_sub(PREFETCH_AHEAD) {
                self.slots.prefetch(next);
            }
            if (p + 1) % 4 == 0 && p + 1 < n {
                let a = (p + 1) / 4;
                let mut members = 0;
                for i in 0..4 {
                    if nonzero(4 * a + i, &live) {
                        members |= 1 << i;
                    }
                }
                let all = self.slots.all();
                let ring = &ring;
                tables.build_with(kernel, a, members, |j| {
                    if pivots.get(j) {
                        &ring[(j & mask) as usize * sym..][..sym]
                    } else {
                        all.get(j)
                    }
                });
            }
            if p >= last || !pivots.get(p) {
                continue;
            }
            let slot = (p & mask) as usize;
            let (lo, rest) = ring.split_at_mut(slot * sym);
            let (dst, hi) = rest.split_at_mut(sym);
            let all = self.slots.all();
            let e = |j: u32| -> &[u8] {
                if pivots.get(j) {
                    let s = (j & mask) as usize;
                    if s < slot {
                        &lo[s * sym..][..sym]
                    } else {
                        &hi[(s - slot - 1) * sym..][..sym]
                    }
                } else {
                    all.get(j)
                }
            };
            let word = bits[p as usize];
            let mut terms: [&[u8]; 32] = [&[]; 32];
            let mut nt = 0;
            let first_group = (p + 1).next_multiple_of(4);
            for j in p + 1..first_group.min(p + 64).min(n) {
                if (word >> (j - p)) & 1 == 1 && nonzero(j, &live) {
                    terms[nt] = e(j);
                    nt += 1;
                }
            }
            let mut col = first_group;
            while col < p + 64 && col < n {
                let a = col / 4;
                let mut members = 0;
                for i in 0..4 {
                    if nonzero(col + i, &live) {
                        members |= 1 << i;
                    }
                }
                let m = (word >> (col - p)) as u32 & 0xF & members;
                match m.count_ones() {
                    0 => {}
                    1 => {
                        terms[nt] = e(col + m.trailing_zeros());
                        nt += 1;
                    }
                    _ => {
                        terms[nt] = tables.entry(a, m);
                        nt += 1;
                    }
                }
                col += 4;
            }
            live[slot] = nt > 0;
            if nt > 0 {
                self.symbol_ops += nt as u64 + 1;
                dst.fill(0);
                kernel.xor_multi(dst, &terms[..nt]);
                kernel.xor(self.slots.get_mut(p), dst);
            }
        }
    }

    /// Pass 2 when holes remain, over byte rows and sparse bit rows: `v_p = m_p + sum U_pj v_j`
    /// (holes as zero), descending over every column, each `v_p` folded into its checks' sums
    /// in `rhs`. A row not in `live` has its final value and writes it in place of `m_p`; a
    /// live row's `v_p` goes to a ring of `w` symbols and its slot keeps `m_p` for
    /// [`Self::redo_pass`], so the fix-up needs neither `d` nor a second write of those slots.
    /// `held`: transient bytes the caller holds meanwhile (for the peak).
    fn back_pass_ring(&mut self, live: &Live, rhs: &mut [u8], held: usize) {
        let kernel = self.kernel;
        let sym = self.layout.symbol_size();
        let ring_slots = (self.w as usize).next_power_of_two();
        let mask = ring_slots as u32 - 1;
        let mut ring = vec![0u8; ring_slots * sym];
        self.note_memory(held + ring.capacity());
        for p in (0..self.n).rev() {
            if let Some(next) = p.checked_sub(PREFETCH_AHEAD) {
                self.slots.prefetch(next);
            }
            if !self.pivots.get(p) {
                continue;
            }
            let pivots = &self.pivots;
            let terms = self.rows.entries(p).filter(|&(j, _)| pivots.get(j));
            let slot = (p & mask) as usize;
            let in_ring = live.get(p);
            if !in_ring {
                // No entry at a live row (or it would be live): in place, like pass 2.
                let (dst, others) = self.slots.split_at(p);
                self.symbol_ops += combine(kernel, dst, terms.map(|(j, k)| (others.get(j), k)));
            } else {
                let (lo, rest) = ring.split_at_mut(slot * sym);
                let (dst, hi) = rest.split_at_mut(sym);
                let all = self.slots.all();
                let v = |j: u32| -> &[u8] {
                    if !live.get(j) {
                        return all.get(j);
                    }
                    let s = (j & mask) as usize;
                    if s < slot {
                        &lo[s * sym..][..sym]
                    } else {
                        &hi[(s - slot - 1) * sym..][..sym]
                    }
                };
                // `v_p = m_p + ...` straight into the ring: `m_p` is the fused sum's first
                // source, not copied first.
                self.symbol_ops +=
                    combine_from(kernel, dst, all.get(p), terms.map(|(j, k)| (v(j), k)));
            }
            let v = if !in_ring {
                self.slots.all().get(p)
            } else {
                &ring[slot * sym..][..sym]
            };
            for r in checks_of(&self.layout, p) {
                kernel.xor(&mut rhs[r as usize * sym..][..sym], v);
                self.symbol_ops += 1;
            }
        }
    }

    /// The final pass over the `live` rows, descending: `x_p = m_p + sum U_pj x_j` over the
    /// whole row (hole slots hold their values, columns right of `p` are final), in place.
    fn redo_pass(&mut self, live: &Live) {
        let kernel = self.kernel;
        for p in (0..=live.top).rev() {
            if let Some(next) = p.checked_sub(PREFETCH_AHEAD) {
                self.slots.prefetch(next);
            }
            if !live.get(p) {
                continue;
            }
            let (dst, others) = self.slots.split_at(p);
            // Straight from the row: no term list to set up per row.
            self.symbol_ops += combine(
                kernel,
                dst,
                self.rows.entries(p).map(|(j, k)| (others.get(j), k)),
            );
        }
    }

    /// Fix-up over byte rows and sparse bit rows: `d_p = sum U_pj e_j` term by term, `d` in a
    /// ring of `w` symbols.
    fn fix_up_terms(&mut self, holes: &[u32]) {
        let kernel = self.kernel;
        let sym = self.layout.symbol_size();
        let last = *holes.last().expect("non-empty");
        let ring_slots = (self.w as usize).next_power_of_two();
        let mask = ring_slots as u32 - 1;
        let mut ring = vec![0u8; ring_slots * sym];
        // live[i]: ring slot i holds a non-zero d (for a column below `last`).
        let mut live = vec![false; ring_slots];
        self.note_memory(ring.capacity());
        for p in (0..last).rev() {
            if let Some(next) = p.checked_sub(PREFETCH_AHEAD) {
                self.slots.prefetch(next);
            }
            if !self.pivots.get(p) {
                continue;
            }
            let slot = (p & mask) as usize;
            let (lo, rest) = ring.split_at_mut(slot * sym);
            let (dst, hi) = rest.split_at_mut(sym);
            dst.fill(0);
            let ring_get = |j: u32| -> &[u8] {
                let s = (j & mask) as usize;
                if s < slot {
                    &lo[s * sym..][..sym]
                } else {
                    &hi[(s - slot - 1) * sym..][..sym]
                }
            };
            let all = self.slots.all();
            let pivots = &self.pivots;
            let mut nt = 0;
            // Straight from the row: no term list to set up per row.
            let terms = self.rows.entries(p).filter_map(|(j, k)| {
                if !pivots.get(j) {
                    Some((all.get(j), k))
                } else if j < last && live[(j & mask) as usize] {
                    Some((ring_get(j), k))
                } else {
                    None
                }
            });
            combine(kernel, dst, terms.inspect(|_| nt += 1));
            live[slot] = nt > 0;
            if nt > 0 {
                self.symbol_ops += nt + 1;
                kernel.xor(self.slots.get_mut(p), dst);
            }
        }
    }
}
