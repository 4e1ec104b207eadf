//! The encoder: coded packets of one segment, written into caller buffers.
//!
//! Contract:
//! * [`Encoder::new`] borrows the segment (`segment_len` bytes, typically an mmapped slice) and
//!   never copies it. It allocates exactly two things: one zero-padded copy of the last source
//!   symbol when the segment is not a multiple of the symbol size, and the `C` check symbols,
//!   computed once here (check `r` = XOR of [`Layout::check_sources`]).
//! * Packets are described by a [`PacketPlan`] (systematic symbol `index`, or subgeneration +
//!   coefficient seed) and written by [`Encoder::write`] / [`Encoder::write_batch`] in the
//!   [`crate::packet`] format into caller-provided buffers.
//! * Streams: packet `n` of a [`Stream`] is a pure function of `(stream, n)` ([`Encoder::plan`]):
//!   - systematic layouts send the `K` source symbols first, in the interleaved order
//!     `(n * step + offset) mod K` (`step` coprime with `K`, near `K / golden ratio`; `offset`
//!     from the stream key), so a burst loss leaves holes spread over the band;
//!   - non-systematic band layouts open with a sweep ([`SWEEP_EIGHTHS`]): blocks of
//!     [`SCHEDULE_SPAN`] consecutive subgenerations, each block making several rounds over its
//!     subgenerations before the next (adjacent) block, from a keyed start around the
//!     edge-weighted line, until every subgeneration has `SWEEP_EIGHTHS / 8` of a packet per
//!     column of the stride (edges in proportion to their weight below) and the band is covered
//!     exactly evenly. That is `(7/8) N`-ish packets by default, fewer than any receiver needs,
//!     so no receiver completes inside it, and consecutive blocks share their windows' overlap:
//!     the encoder loads each symbol from DRAM about once for the whole sweep;
//!   - then coded packets come in visits of [`SCHEDULE_RUN`] packets: [`SCHEDULE_ROUNDS`] rounds
//!     over the same [`SCHEDULE_SPAN`] consecutive subgenerations (packet `i` of a visit goes to
//!     its `i mod SCHEDULE_SPAN`-th subgeneration; systematic layouts make one round); visit `v`
//!     starts at point `v` of a golden-ratio (Weyl) sequence keyed by the stream's schedule key
//!     over the edge-weighted line of subgenerations: deterministic, low-discrepancy for every
//!     prefix and every run of visits, and edge-weighted: the first and last subgenerations get
//!     weight `(window/stride + 1) / 2` (interior ones 1), which equalises the mean coverage of
//!     the band's end columns, covered by fewer windows, with the interior (the reference's
//!     `banded_nonuniform_sched` generalised to any stride, SNC-REFERENCE §3.9);
//!   - the coefficient seed is [`crate::prng::derive`]`(key, n)`.
//! * Locality: a GF(2) coded packet is one fused `xor_sum` (no zero fill) over the selected symbols of its
//!   window (~`window/8` with the default sparse coefficients, ~`window/2` uniform).
//!   [`Encoder::write_batch`] writes the packets of each subgeneration together so the
//!   window (80 KiB by default) stays in L2; give several receivers the same
//!   schedule key ([`Stream::with_schedule`]) and batch one packet per receiver to profit.

use crate::coeffs::{gf256_coefficients, gf2_coefficients};
use crate::field::Kernel;
use crate::layout::{Layout, SubgenColumns};
use crate::packet::{self, Header, PacketError, PacketKind};
use crate::params::{CodeKind, Field, MAX_SUBGEN_SIZE};
use crate::prng::{derive, mix64, GOLDEN};
use thiserror::Error;

/// Consecutive subgenerations one visit covers.
///
/// Neighbouring band windows share `window - stride` columns, so a visit reads about
/// `window + (SCHEDULE_SPAN - 1) * stride` symbols (225 KiB by default) instead of
/// [`SCHEDULE_RUN`] scattered windows, and reads them [`SCHEDULE_ROUNDS`] times: the encoder
/// loads each symbol from DRAM about once per visit and streams the other rounds from L2.
/// Consecutive packets still go to different subgenerations, so a burst loss of up to
/// `SCHEDULE_SPAN` packets costs each subgeneration of the visit at most one packet.
pub const SCHEDULE_SPAN: u64 = 8;

/// Rounds over the visit's subgenerations (non-systematic layouts; systematic ones make one).
// CODEC: measured (`ccfd-perf codec`, GF(2) nonsys 10 % loss, 20-40 seeds, loaded machine):
// span x rounds -> 32 MiB encode CPU-MB/s, overhead mean / p99 at 32 MiB; at 4 MiB:
// 8 x 1: 243, 1.00007 / 1.00027; 4 MiB 1.00044 / 1.00122
// 8 x 2: 353, 1.00007 / 1.00031; 4 MiB 1.00085 / 1.00488
// 8 x 3: 439, 1.00010 / 1.00069; 4 MiB 1.00120 / 1.00458
// 8 x 4: 553, 1.00068 / 1.00214; 4 MiB 1.00293 / 1.01770
// 4 x 8: 577, 1.00161 / 1.00336. Fewer, longer visits cover the band less evenly; with one
// round per visit, systematic layouts lost 5.9 % at 10 % loss, with four 14 %.
pub const SCHEDULE_ROUNDS: u64 = 3;

/// The opening sweep's coverage, in eighths of a packet per column of the stride (per
/// subgeneration: `stride * SWEEP_EIGHTHS / 8`, 14 packets for the default stride 16; edge
/// subgenerations in proportion to their weight). The sweep is perfectly even once complete,
/// but a receiver that completed inside it would see one side of the band better covered than
/// the other, so it stays below what any receiver needs (`K` packets received).
// CODEC: measured (profile `overhead`, GF(2) nonsys band, received / K, mean / p99):
// 4 MiB, 100 seeds, 10 % / 0 % loss: no sweep 1.00237 / 1.00915, 1.00262 / 1.03723;
// 6 eighths 1.00233 / 1.00885, 1.00105 / 1.00397; 7: 1.00229 / 1.00915, 1.00190 / 1.00610;
// 8 (a full packet per column, ~N packets): 1.00327 / 1.09521, 1.00264 / 1.14190 (receivers
// complete inside the sweep); 10 (sweep longer than K): 1.12-1.25. 32 MiB (10 % loss 100
// seeds, 0 % 50, 30 % 30): no sweep 1.00021 / 1.00149, 1.00016 / 1.00076, 1.00248 / 1.00530;
// 6: 1.00028 / 1.00118, 1.00014 / 1.00042, 1.00209 / 1.00408; 7: 1.00037 / 1.00153,
// 1.00008 / 1.00027, 1.00176 / 1.00576. GF(2^8) 10 % loss, 4 MiB 100 seeds / 32 MiB 30: no
// sweep 1.00171 / 1.00885, 1.00011 / 1.00072; 7: 1.00146 / 1.00915, 1.00019 / 1.00122.
// An earlier version that gave each edge a whole number of stride positions (3 and 2
// instead of 2.5) had 1.07-1.08 outliers in GF(2^8) at 4 MiB.
pub const SWEEP_EIGHTHS: u64 = 7;

/// Packets of one visit.
pub const SCHEDULE_RUN: u64 = SCHEDULE_SPAN * SCHEDULE_ROUNDS;

/// What one packet of a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketPlan {
    /// Source symbol `index`, uncoded.
    Systematic {
        /// Source index (`< K`).
        index: u32,
    },
    /// A combination of subgeneration `subgen` with coefficients from `seed`.
    Coded {
        /// Subgeneration (`< G`).
        subgen: u32,
        /// Coefficient seed.
        seed: u64,
    },
}

impl PacketPlan {
    /// The packet form this plan produces.
    pub fn kind(&self) -> PacketKind {
        match self {
            PacketPlan::Systematic { .. } => PacketKind::Systematic,
            PacketPlan::Coded { .. } => PacketKind::Coded,
        }
    }
}

/// A per-receiver packet stream: a key (coefficient seeds), a schedule key (subgeneration
/// sequence and systematic order) and the number of the next packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stream {
    /// Key of the coefficient seeds; distinct per receiver.
    pub key: u64,
    /// Key of the subgeneration schedule; receivers sharing it visit the same subgenerations
    /// at the same counters, which lets a fan-out batch reuse one window.
    pub schedule_key: u64,
    /// Number of the next packet.
    pub counter: u64,
}

impl Stream {
    /// A stream whose schedule is keyed by its own key.
    pub fn new(key: u64) -> Stream {
        Stream {
            key,
            schedule_key: key,
            counter: 0,
        }
    }

    /// A stream with a separate schedule key.
    pub fn with_schedule(key: u64, schedule_key: u64) -> Stream {
        Stream {
            key,
            schedule_key,
            counter: 0,
        }
    }
}

/// Why a packet could not be written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The segment is empty: there is nothing to send.
    #[error("the segment is empty")]
    Empty,
    /// The data slice's length differs from the layout's segment length.
    #[error("data of {got} bytes, the layout says {expected}")]
    DataLength {
        /// Segment length from the layout.
        expected: u64,
        /// Length given.
        got: usize,
    },
    /// The plan or the buffer does not fit the layout.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// Encoder of one segment.
#[derive(Debug)]
pub struct Encoder<'a> {
    layout: Layout,
    data: &'a [u8],
    /// Zero-padded last source symbol (empty if the segment is a multiple of the symbol size).
    tail: Vec<u8>,
    /// The `C` check symbols, back to back.
    checks: Vec<u8>,
    kernel: Kernel,
    /// Schedule: edge weight and total weight in half units.
    edge_weight: u64,
    total_weight: u64,
    /// Systematic interleaving step (coprime with K).
    sys_step: u64,
    /// Opening sweep: visits of every half unit of the weighted line (0: no sweep).
    sweep_per_half: u64,
}

impl<'a> Encoder<'a> {
    /// An encoder over `data` (exactly `layout.segment_len()` bytes) with the best kernel.
    pub fn new(layout: &Layout, data: &'a [u8]) -> Result<Encoder<'a>, EncodeError> {
        Self::with_kernel(layout, data, Kernel::best())
    }

    /// Like [`Encoder::new`] with an explicit field kernel.
    pub fn with_kernel(
        layout: &Layout,
        data: &'a [u8],
        kernel: Kernel,
    ) -> Result<Encoder<'a>, EncodeError> {
        if data.len() as u64 != layout.segment_len() {
            return Err(EncodeError::DataLength {
                expected: layout.segment_len(),
                got: data.len(),
            });
        }
        let s = layout.symbol_size();
        let k = layout.source_count();
        let mut tail = Vec::new();
        if k > 0 && layout.source_bytes(k - 1) < s {
            let start = (k as usize - 1) * s;
            tail = vec![0u8; s];
            tail[..data.len() - start].copy_from_slice(&data[start..]);
        }
        let g = layout.subgen_count() as u64;
        let per_column = (layout.window() / layout.stride()).max(1) as u64;
        let edge_weight = per_column + 1;
        let total_weight = if g <= 1 {
            1
        } else {
            2 * (g - 2) + 2 * edge_weight
        };
        let mut enc = Encoder {
            layout: layout.clone(),
            data,
            tail,
            checks: vec![0u8; layout.check_count() as usize * s],
            kernel,
            edge_weight,
            total_weight,
            sys_step: interleave_step(k as u64),
            sweep_per_half: if layout.systematic() || layout.kind() != CodeKind::Band || g <= 1 {
                0
            } else {
                // Per interior subgeneration (two half units): stride * SWEEP_EIGHTHS / 8.
                layout.stride() as u64 * SWEEP_EIGHTHS / 16
            },
        };
        // One streaming pass over the segment: each source symbol is added into its (~3)
        // checks, which stay cache-resident (`C` symbols), instead of gathering each check's
        // scattered sources (about three passes over the segment from memory).
        let mut checks = std::mem::take(&mut enc.checks);
        if s > 0 && !checks.is_empty() {
            for c in 0..k {
                let src = enc.column(c);
                for &r in layout.source_checks(c) {
                    kernel.xor(&mut checks[r as usize * s..][..s], src);
                }
            }
        }
        enc.checks = checks;
        Ok(enc)
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The value of column `c` (`c < N`): a source symbol (zero-padded) or a check symbol.
    pub fn column(&self, c: u32) -> &[u8] {
        let s = self.layout.symbol_size();
        let k = self.layout.source_count();
        if c < k {
            if c == k - 1 && !self.tail.is_empty() {
                &self.tail
            } else {
                let start = c as usize * s;
                &self.data[start..start + s]
            }
        } else {
            let start = (c - k) as usize * s;
            &self.checks[start..start + s]
        }
    }

    /// Packet `counter` of the stream `stream` (ignoring `stream.counter`); `None` if the
    /// segment is empty.
    pub fn plan(&self, stream: &Stream, counter: u64) -> Option<PacketPlan> {
        let k = self.layout.source_count() as u64;
        if k == 0 {
            return None;
        }
        if self.layout.systematic() && counter < k {
            let offset = mix64(stream.schedule_key) % k;
            let index =
                ((counter as u128 * self.sys_step as u128 + offset as u128) % k as u128) as u32;
            return Some(PacketPlan::Systematic { index });
        }
        Some(PacketPlan::Coded {
            subgen: self.scheduled_subgen(stream.schedule_key, counter),
            seed: derive(stream.key, counter),
        })
    }

    /// The plan of the stream's next packet; advances the stream.
    pub fn next_plan(&self, stream: &mut Stream) -> Option<PacketPlan> {
        let p = self.plan(stream, stream.counter);
        stream.counter += 1;
        p
    }

    fn scheduled_subgen(&self, schedule_key: u64, counter: u64) -> u32 {
        let g = self.layout.subgen_count() as u64;
        if g <= 1 {
            return 0;
        }
        let sweep = self.total_weight * self.sweep_per_half;
        let u = if counter < sweep {
            // Block `b` covers half units `b * 2 SPAN ..` of the line from a keyed start, each
            // `sweep_per_half` times; inside a round, the block's even half units first, then
            // its odd ones, so consecutive packets go to consecutive subgenerations.
            let width_max = 2 * SCHEDULE_SPAN;
            let per_block = width_max * self.sweep_per_half;
            let (b, i) = (counter / per_block, counter % per_block);
            let width = (self.total_weight - b * width_max).min(width_max);
            let (j, half) = (i % width, width.div_ceil(2));
            let at = b * width_max + if j < half { 2 * j } else { 2 * (j - half) + 1 };
            (mix64(schedule_key ^ SWEEP_KEY) % self.total_weight + at) % self.total_weight
        } else {
            // Visit `v` starts at a golden-ratio point of the weighted line (half units); its
            // packets step one interior subgeneration (2 half units) at a time, wrapping, and
            // return to the start every SPAN packets.
            let run = self.schedule_run();
            let counter = counter - sweep;
            let (visit, step) = (counter / run, counter % run);
            let x = mix64(schedule_key).wrapping_add(visit.wrapping_mul(GOLDEN));
            let start = ((x as u128 * self.total_weight as u128) >> 64) as u64;
            (start + 2 * (step % SCHEDULE_SPAN)) % self.total_weight
        };
        let e = self.edge_weight;
        if u < e {
            0
        } else if u >= self.total_weight - e {
            (g - 1) as u32
        } else {
            (1 + (u - e) / 2) as u32
        }
    }

    /// Packets per visit: [`SCHEDULE_RUN`], or one round ([`SCHEDULE_SPAN`]) for systematic
    /// layouts, whose coded packets repair holes scattered by loss and need many short visits.
    fn schedule_run(&self) -> u64 {
        if self.layout.systematic() {
            SCHEDULE_SPAN
        } else {
            SCHEDULE_RUN
        }
    }

    /// Length of the packet a plan produces.
    pub fn packet_len(&self, plan: &PacketPlan) -> usize {
        packet::len(&self.layout, plan.kind())
    }

    /// Writes the packet of `plan` into `out` (at least [`Encoder::packet_len`] bytes) and
    /// returns its length.
    pub fn write(&self, plan: &PacketPlan, out: &mut [u8]) -> Result<usize, EncodeError> {
        if self.layout.source_count() == 0 {
            return Err(EncodeError::Empty);
        }
        match *plan {
            PacketPlan::Systematic { index } => {
                let sym = packet::write_header(&self.layout, &Header::Systematic { index }, out)?;
                sym.copy_from_slice(self.column(index));
            }
            PacketPlan::Coded { subgen, seed } => {
                let sym = packet::write_header(&self.layout, &Header::Coded { subgen, seed }, out)?;
                self.combine(subgen, seed, sym);
            }
        }
        Ok(self.packet_len(plan))
    }

    /// Writes the stream's next packet into `out`; advances the stream.
    pub fn write_next(&self, stream: &mut Stream, out: &mut [u8]) -> Result<usize, EncodeError> {
        let plan = self.next_plan(stream).ok_or(EncodeError::Empty)?;
        self.write(&plan, out)
    }

    /// Writes packet `i` of `plans` into `out[i * slot..(i + 1) * slot]` (`slot` at least the
    /// packet's length; [`packet::max_len`] always fits). Packets of the same subgeneration
    /// are produced together, so their window is read from cache once.
    pub fn write_batch(
        &self,
        plans: &[PacketPlan],
        out: &mut [u8],
        slot: usize,
    ) -> Result<(), EncodeError> {
        if out.len() / slot.max(1) < plans.len() {
            return Err(PacketError::Buffer {
                needed: plans.len() * slot,
                got: out.len(),
            }
            .into());
        }
        const CHUNK: usize = 64;
        for (c, chunk) in plans.chunks(CHUNK).enumerate() {
            let mut order = [0u16; CHUNK];
            for (i, o) in order.iter_mut().enumerate().take(chunk.len()) {
                *o = i as u16;
            }
            let order = &mut order[..chunk.len()];
            let key = |p: &PacketPlan| match *p {
                PacketPlan::Systematic { index } => (0u8, index),
                PacketPlan::Coded { subgen, .. } => (1u8, subgen),
            };
            if !order.is_sorted_by_key(|&i| key(&chunk[i as usize])) {
                order.sort_unstable_by_key(|&i| key(&chunk[i as usize]));
            }
            for &i in order.iter() {
                let at = (c * CHUNK + i as usize) * slot;
                self.write(&chunk[i as usize], &mut out[at..at + slot])?;
            }
        }
        Ok(())
    }

    /// Writes one packet per stream (fan-out), packet `i` into slot `i`; advances every stream.
    pub fn write_fanout(
        &self,
        streams: &mut [Stream],
        out: &mut [u8],
        slot: usize,
    ) -> Result<(), EncodeError> {
        const CHUNK: usize = 64;
        let mut plans = [PacketPlan::Systematic { index: 0 }; CHUNK];
        for (c, chunk) in streams.chunks_mut(CHUNK).enumerate() {
            for (p, s) in plans.iter_mut().zip(chunk.iter_mut()) {
                *p = self.next_plan(s).ok_or(EncodeError::Empty)?;
            }
            let start = (c * CHUNK * slot).min(out.len());
            self.write_batch(&plans[..chunk.len()], &mut out[start..], slot)?;
        }
        Ok(())
    }

    /// The bytes of a contiguous window made only of whole source symbols (no padded tail,
    /// no check column), if `cols` is one.
    fn plain_region(&self, cols: &SubgenColumns<'_>) -> Option<&'a [u8]> {
        let SubgenColumns::Range { first, len } = *cols else {
            return None;
        };
        let s = self.layout.symbol_size();
        let end = (first as usize + len as usize) * s;
        (end <= self.data.len()).then(|| &self.data[first as usize * s..end])
    }

    /// `dst = sum of coefficient(j) * column(j)` over subgeneration `subgen`'s window.
    fn combine(&self, subgen: u32, seed: u64, dst: &mut [u8]) {
        let w = self.layout.window() as usize;
        let cols = self.layout.subgen_columns(subgen);
        match self.layout.field() {
            Field::Gf2 => {
                let mut words = [0u64; MAX_SUBGEN_SIZE as usize / 64];
                gf2_coefficients(self.layout.sparse(), seed, w, &mut words);
                // One fused pass per 64 positions (one pass for the default window of 64).
                let mut srcs: [&[u8]; 64] = [&[]; 64];
                let s = self.layout.symbol_size();
                if let Some(region) = self.plain_region(&cols) {
                    // Whole source symbols only: slice the window once.
                    for (wi, &word) in words[..w.div_ceil(64)].iter().enumerate() {
                        let mut bits = word;
                        let mut m = 0;
                        while bits != 0 {
                            let j = wi * 64 + bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            srcs[m] = &region[j * s..][..s];
                            m += 1;
                        }
                        // The first 64 positions set `dst` (no zero fill), the rest add.
                        if wi == 0 {
                            self.kernel.xor_sum(dst, &srcs[..m]);
                        } else {
                            self.kernel.xor_multi(dst, &srcs[..m]);
                        }
                    }
                    return;
                }
                for (wi, &word) in words[..w.div_ceil(64)].iter().enumerate() {
                    let mut bits = word;
                    let mut m = 0;
                    while bits != 0 {
                        let j = wi * 64 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        srcs[m] = self.column(cols.column(j));
                        m += 1;
                    }
                    if wi == 0 {
                        self.kernel.xor_sum(dst, &srcs[..m]);
                    } else {
                        self.kernel.xor_multi(dst, &srcs[..m]);
                    }
                }
            }
            Field::Gf256 => {
                dst.fill(0);
                let mut coefs = [0u8; MAX_SUBGEN_SIZE as usize];
                gf256_coefficients(self.layout.sparse(), seed, w, &mut coefs);
                let mut srcs: [(&[u8], u8); 64] = [(&[], 0); 64];
                for (ci, chunk) in coefs[..w].chunks(64).enumerate() {
                    let mut m = 0;
                    for (jj, &c) in chunk.iter().enumerate() {
                        if c != 0 {
                            srcs[m] = (self.column(cols.column(ci * 64 + jj)), c);
                            m += 1;
                        }
                    }
                    self.kernel.mul_add_multi(dst, &srcs[..m]);
                }
            }
        }
    }
}

/// Salt of the opening sweep's start.
const SWEEP_KEY: u64 = 0x7377_6565_7073_7461;

/// A step coprime with `k` near `k / golden ratio` (1 for `k <= 2`).
fn interleave_step(k: u64) -> u64 {
    if k <= 2 {
        return 1;
    }
    let mut step = ((k as f64) * 0.618_033_988_75).round().max(1.0) as u64;
    while gcd(step, k) != 1 {
        step += 1;
    }
    step
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::CodeParams;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn checks_are_xor_of_sources_and_tail_is_padded() {
        let l = CodeParams::new(10_050).symbol_size(100).validate().unwrap();
        let d = data(10_050);
        let e = Encoder::new(&l, &d).unwrap();
        let last = e.column(l.source_count() - 1);
        assert_eq!(&last[..50], &d[10_000..]);
        assert!(last[50..].iter().all(|&b| b == 0));
        for r in 0..l.check_count() {
            let mut acc = vec![0u8; 100];
            for &c in l.check_sources(r) {
                for (a, b) in acc.iter_mut().zip(e.column(c)) {
                    *a ^= b;
                }
            }
            assert_eq!(acc, e.column(l.source_count() + r));
        }
    }

    #[test]
    fn systematic_order_is_an_interleaved_permutation() {
        let l = CodeParams::new(100 * 97)
            .symbol_size(100)
            .systematic(true)
            .validate()
            .unwrap();
        let d = data(100 * 97);
        let e = Encoder::new(&l, &d).unwrap();
        let s = Stream::new(5);
        let idx: Vec<u32> = (0..97)
            .map(|n| match e.plan(&s, n).unwrap() {
                PacketPlan::Systematic { index } => index,
                p => panic!("{p:?}"),
            })
            .collect();
        let mut sorted = idx.clone();
        sorted.sort();
        assert_eq!(sorted, (0..97).collect::<Vec<_>>());
        assert!(idx.windows(2).all(|w| w[0].abs_diff(w[1]) > 1));
        assert!(matches!(e.plan(&s, 97), Some(PacketPlan::Coded { .. })));
    }

    #[test]
    fn schedule_weights_edges() {
        let l = CodeParams::new(1280 * 2000).validate().unwrap();
        let d = data(1280 * 2000);
        let e = Encoder::new(&l, &d).unwrap();
        let g = l.subgen_count() as usize;
        let mut hits = vec![0u32; g];
        let n = 100 * g as u64;
        for i in 0..n {
            let PacketPlan::Coded { subgen, .. } = e.plan(&Stream::new(1), i).unwrap() else {
                panic!()
            };
            hits[subgen as usize] += 1;
        }
        // Edge weight 2.5, interior 1: the Weyl sequence keeps counts within a few visits
        // (of SCHEDULE_ROUNDS packets per subgeneration) of ideal.
        let unit = n as f64 / (g as f64 - 2.0 + 5.0);
        for (i, &h) in hits.iter().enumerate() {
            let ideal = if i == 0 || i == g - 1 {
                2.5 * unit
            } else {
                unit
            };
            assert!(
                (h as f64 - ideal).abs() <= 3.0 * SCHEDULE_ROUNDS as f64,
                "subgen {i}: {h} vs {ideal}"
            );
        }
    }

    #[test]
    fn opening_sweep_covers_the_band_evenly_in_adjacent_blocks() {
        let l = CodeParams::new(1280 * 2000).validate().unwrap();
        let d = data(1280 * 2000);
        let e = Encoder::new(&l, &d).unwrap();
        let g = l.subgen_count() as usize;
        let per = l.stride() as u64 * SWEEP_EIGHTHS / 16;
        let edge = (l.window() / l.stride()) as u64 + 1;
        let sweep = (2 * (g as u64 - 2) + 2 * edge) * per;
        let subgen = |n| match e.plan(&Stream::new(5), n).unwrap() {
            PacketPlan::Coded { subgen, .. } => subgen as usize,
            p => panic!("{p:?}"),
        };
        let mut hits = vec![0u64; g];
        for n in 0..sweep {
            hits[subgen(n)] += 1;
        }
        // Exactly the weighted share: edges weigh (window / stride + 1) / 2 interior ones.
        for (i, &h) in hits.iter().enumerate() {
            let want = if i == 0 || i == g - 1 {
                edge * per
            } else {
                2 * per
            };
            assert_eq!(h, want, "subgen {i}");
        }
        assert!(sweep < l.source_count() as u64);
        // A block of SPAN subgenerations (plus a neighbour where it straddles a half unit)
        // takes all its rounds before the next; consecutive packets differ except on an edge
        // subgeneration, which spans several half units.
        let block = 2 * SCHEDULE_SPAN * per;
        for b in 0..sweep / block {
            let mut seen: Vec<usize> = (b * block..(b + 1) * block).map(subgen).collect();
            assert!(seen
                .windows(2)
                .all(|w| w[0] != w[1] || w[0] == 0 || w[0] == g - 1));
            seen.sort_unstable();
            seen.dedup();
            assert!(
                seen.len() <= SCHEDULE_SPAN as usize + 2,
                "block {b}: {seen:?}"
            );
        }
        // Then the visits; systematic layouts never sweep.
        assert!((sweep..sweep + 100).all(|n| subgen(n) < g));
        let ls = CodeParams::new(1280 * 2000)
            .systematic(true)
            .validate()
            .unwrap();
        let es = Encoder::new(&ls, &d).unwrap();
        assert_eq!(es.sweep_per_half, 0);
    }

    #[test]
    fn batch_equals_single_writes() {
        for field in [Field::Gf2, Field::Gf256] {
            let l = CodeParams::new(50_000)
                .symbol_size(64)
                .field(field)
                .validate()
                .unwrap();
            let d = data(50_000);
            let e = Encoder::new(&l, &d).unwrap();
            let slot = packet::max_len(&l);
            let mut streams: Vec<Stream> = (0..70).map(|k| Stream::with_schedule(k, 9)).collect();
            let mut out = vec![0u8; slot * 70];
            e.write_fanout(&mut streams, &mut out, slot).unwrap();
            for k in 0..70u64 {
                let plan = e.plan(&Stream::with_schedule(k, 9), 0).unwrap();
                let mut one = vec![0u8; slot];
                let n = e.write(&plan, &mut one).unwrap();
                let at = k as usize * slot;
                assert_eq!(&out[at..at + n], &one[..n]);
            }
        }
    }

    #[test]
    fn empty_segment_has_no_packets() {
        let l = CodeParams::new(0).validate().unwrap();
        let e = Encoder::new(&l, &[]).unwrap();
        assert_eq!(e.plan(&Stream::new(0), 0), None);
        assert_eq!(
            e.write_next(&mut Stream::new(0), &mut [0u8; 100]),
            Err(EncodeError::Empty)
        );
        assert!(Encoder::new(&l, &[1]).is_err());
    }
}
