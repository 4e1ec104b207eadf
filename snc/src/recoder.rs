//! The recoder: a bounded buffer of one segment's received packets that emits random
//! combinations of them (recoded packets) without decoding.
//!
//! Contract:
//! * [`Recoder::new`] takes a memory limit in bytes; the buffer holds at most
//!   `max(1, limit / slot_bytes)` packets (`slot_bytes` = symbol + coefficient vector). Storage
//!   grows as packets arrive, never beyond the limit.
//! * [`Recoder::push`] stores a parsed packet:
//!   - coded/recoded packets go to their subgeneration with their coefficient vector expanded
//!     (seeds are expanded once here). A subgeneration never holds more than `window` packets
//!     (more cannot add rank): a further packet replaces that subgeneration's oldest;
//!   - systematic packets are kept by source index (a duplicate is ignored) and queued for
//!     forwarding;
//!   - when the buffer is full, the oldest packet of the whole buffer is dropped.
//! * [`Recoder::recode`] writes one packet into the caller's buffer ([`Recoder::recode_batch`]
//!   several, all from one subgeneration after the forwarded ones, for several peers):
//!   - first any queued systematic packet is forwarded uncoded, each with its own payload and
//!     index (the reference forwarded the wrong payload, SNC-REFERENCE §2.9), unless
//!     [`Recoder::set_forward_systematic`] turned that off;
//!   - otherwise the subgeneration with the largest `min(held, window) - sent` (MLPI: held =
//!     coded packets of the subgeneration plus systematic packets inside its window) gets a
//!     recoded packet: every held packet of it, systematic ones included at their local
//!     position, is multiplied by a random coefficient from the caller's [`Prng`] and summed.
//!     The result carries its explicit coefficient vector ([`crate::packet`] recoded form) and
//!     is decodable by every decoder of this crate. The chosen subgeneration keeps going for
//!     up to [`RECODE_BURST`] calls ([`Recoder::set_burst`]) while its score stays within that
//!     many of the best, so its scattered held symbols come from cache after the first packet;
//!   - `None` if nothing is held.
//!
//! Scheduling is `O(log G)` per packet (a max segment tree over the scores); a GF(2) recoded
//! packet is one fused `xor_multi` over the selected held symbols.

use crate::coeffs::{gf2_to_wire, CoeffRow};
use crate::field::Kernel;
use crate::layout::{Layout, SubgenColumns};
use crate::packet::{self, Header, PacketError, PacketKind, PacketView};
use crate::params::{Field, MAX_SUBGEN_SIZE};
use crate::prng::Prng;
use std::collections::{BTreeMap, VecDeque};

/// What [`Recoder::push`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoderPush {
    /// The packet is buffered.
    Stored,
    /// A systematic packet already held; ignored.
    Duplicate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    Subgen(u32),
    Systematic(u32),
}

const NO_SCORE: i64 = i64::MIN;

/// Default of [`Recoder::set_burst`]: recoded packets MLPI may take in a row from one
/// subgeneration while its score stays within this many of the best. Its held symbols are then
/// read from DRAM once per burst instead of once per packet (a relay's symbols arrive
/// interleaved, so a subgeneration's are scattered).
// CODEC: measured (profile example, 32 MiB GF(2) nonsys 10 % loss relay holding every
// delivered packet, thread CPU, alternating): burst 4 recodes 1.28x faster than burst 1; the
// recoded stream's overhead (4 MiB, 8 seeds) is 1.041 mean vs 1.031 (burst 2: 1.035, ~1.1x).
pub const RECODE_BURST: u32 = 4;

/// Bounded recoding buffer of one segment.
#[derive(Debug)]
pub struct Recoder {
    layout: Layout,
    kernel: Kernel,
    s: usize,
    w: usize,
    /// u64 words per GF(2) vector, or bytes per GF(2^8) vector.
    vec_units: usize,
    capacity: usize,
    symbols: Vec<u8>,
    vec_bits: Vec<u64>,
    vec_bytes: Vec<u8>,
    owner: Vec<Owner>,
    stamp: Vec<u64>,
    free: Vec<u32>,
    arrivals: VecDeque<(u32, u64)>,
    next_stamp: u64,
    per_subgen: Vec<Vec<u32>>,
    systematic: BTreeMap<u32, u32>,
    forward_queue: VecDeque<u32>,
    forward_systematic: bool,
    held: Vec<u32>,
    sent: Vec<u32>,
    tree: Vec<i64>,
    leaves: usize,
    row: CoeffRow,
    used: usize,
    /// The subgeneration of the current burst and the packets it may still make.
    burst: Option<(u32, u32)>,
    max_burst: u32,
}

impl Recoder {
    /// A recoder for `layout` holding at most `memory_limit_bytes` of packets (at least one).
    pub fn new(layout: &Layout, memory_limit_bytes: usize) -> Recoder {
        Self::with_kernel(layout, memory_limit_bytes, Kernel::best())
    }

    /// Like [`Recoder::new`] with an explicit field kernel.
    pub fn with_kernel(layout: &Layout, memory_limit_bytes: usize, kernel: Kernel) -> Recoder {
        let s = layout.symbol_size();
        let w = layout.window() as usize;
        let vec_units = match layout.field() {
            Field::Gf2 => w.div_ceil(64),
            Field::Gf256 => w,
        };
        let slot_bytes = s + match layout.field() {
            Field::Gf2 => vec_units * 8,
            Field::Gf256 => vec_units,
        };
        let capacity = (memory_limit_bytes / slot_bytes).max(1);
        let g = layout.subgen_count() as usize;
        let leaves = g.next_power_of_two().max(1);
        Recoder {
            layout: layout.clone(),
            kernel,
            s,
            w,
            vec_units,
            capacity,
            symbols: Vec::new(),
            vec_bits: Vec::new(),
            vec_bytes: Vec::new(),
            owner: Vec::new(),
            stamp: Vec::new(),
            free: Vec::new(),
            arrivals: VecDeque::new(),
            next_stamp: 0,
            per_subgen: vec![Vec::new(); g],
            systematic: BTreeMap::new(),
            forward_queue: VecDeque::new(),
            forward_systematic: true,
            held: vec![0; g],
            sent: vec![0; g],
            tree: vec![NO_SCORE; 2 * leaves],
            leaves,
            row: CoeffRow::new(layout),
            used: 0,
            burst: None,
            max_burst: RECODE_BURST,
        }
    }

    /// Recoded packets one subgeneration may make in a row ([`RECODE_BURST`] by default; 1 is
    /// strict MLPI, lowest overhead for receivers of the recoded stream; 0 counts as 1).
    pub fn set_burst(&mut self, packets: u32) {
        self.max_burst = packets.max(1);
        self.burst = None;
    }

    /// Whether systematic packets are forwarded uncoded before recoding (default on).
    pub fn set_forward_systematic(&mut self, on: bool) {
        self.forward_systematic = on;
        if !on {
            self.forward_queue.clear();
        }
    }

    /// Maximum number of buffered packets.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of buffered packets.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Bytes allocated for buffered packets.
    pub fn memory_bytes(&self) -> usize {
        self.symbols.capacity() + self.vec_bits.capacity() * 8 + self.vec_bytes.capacity()
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Buffers a parsed packet (from [`packet::parse`] with this layout).
    pub fn push(&mut self, view: &PacketView<'_>) -> Result<RecoderPush, PacketError> {
        if view.symbol.len() != self.s {
            return Err(PacketError::Length {
                expected: self.s,
                got: view.symbol.len(),
            });
        }
        self.row.expand(&self.layout, &view.header)?;
        let owner = match view.header {
            Header::Systematic { index } => {
                if self.systematic.contains_key(&index) {
                    return Ok(RecoderPush::Duplicate);
                }
                Owner::Systematic(index)
            }
            Header::Coded { subgen, .. } | Header::Recoded { subgen, .. } => {
                let list = &self.per_subgen[subgen as usize];
                if list.len() >= self.w {
                    // Replace this subgeneration's oldest packet.
                    let slot = list[0];
                    self.release(slot);
                }
                Owner::Subgen(subgen)
            }
        };
        let slot = self.allocate();
        let (s, u) = (self.s, self.vec_units);
        self.symbols[slot as usize * s..(slot as usize + 1) * s].copy_from_slice(view.symbol);
        self.owner[slot as usize] = owner;
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.stamp[slot as usize] = stamp;
        self.arrivals.push_back((slot, stamp));
        if self.arrivals.len() > 2 * self.capacity + 16 {
            // Replacements inside a subgeneration leave stale entries: drop them.
            let (owner, stamps) = (&self.owner, &self.stamp);
            self.arrivals
                .retain(|&(sl, st)| owner[sl as usize] != Owner::Free && stamps[sl as usize] == st);
        }
        self.used += 1;
        match owner {
            Owner::Subgen(g) => {
                match self.layout.field() {
                    Field::Gf2 => self.vec_bits[slot as usize * u..(slot as usize + 1) * u]
                        .copy_from_slice(self.row.gf2_words()),
                    Field::Gf256 => self.vec_bytes[slot as usize * u..(slot as usize + 1) * u]
                        .copy_from_slice(self.row.gf256_bytes()),
                }
                self.per_subgen[g as usize].push(slot);
                self.bump_held(g, 1);
            }
            Owner::Systematic(index) => {
                self.systematic.insert(index, slot);
                if self.forward_systematic {
                    if self.forward_queue.len() >= self.capacity {
                        self.forward_queue.pop_front();
                    }
                    self.forward_queue.push_back(index);
                }
                let gs: Vec<u32> = self.layout.subgens_containing(index).collect();
                for g in gs {
                    self.bump_held(g, 1);
                }
            }
            Owner::Free => unreachable!("just assigned"),
        }
        Ok(RecoderPush::Stored)
    }

    /// A free slot, growing storage or evicting the oldest packet when full.
    fn allocate(&mut self) -> u32 {
        if let Some(slot) = self.free.pop() {
            return slot;
        }
        if self.owner.len() < self.capacity {
            let slot = self.owner.len() as u32;
            self.owner.push(Owner::Free);
            self.stamp.push(0);
            self.symbols.resize(self.symbols.len() + self.s, 0);
            match self.layout.field() {
                Field::Gf2 => self
                    .vec_bits
                    .resize(self.vec_bits.len() + self.vec_units, 0),
                Field::Gf256 => self
                    .vec_bytes
                    .resize(self.vec_bytes.len() + self.vec_units, 0),
            }
            return slot;
        }
        while let Some((slot, stamp)) = self.arrivals.pop_front() {
            if self.owner[slot as usize] != Owner::Free && self.stamp[slot as usize] == stamp {
                self.release(slot);
                break;
            }
        }
        self.free.pop().expect("a full buffer has an oldest packet")
    }

    /// Drops the packet in `slot`.
    fn release(&mut self, slot: u32) {
        match self.owner[slot as usize] {
            Owner::Free => return,
            Owner::Subgen(g) => {
                let list = &mut self.per_subgen[g as usize];
                if let Some(p) = list.iter().position(|&x| x == slot) {
                    list.remove(p);
                }
                self.bump_held(g, -1);
            }
            Owner::Systematic(index) => {
                self.systematic.remove(&index);
                let gs: Vec<u32> = self.layout.subgens_containing(index).collect();
                for g in gs {
                    self.bump_held(g, -1);
                }
            }
        }
        self.owner[slot as usize] = Owner::Free;
        self.free.push(slot);
        self.used -= 1;
    }

    fn bump_held(&mut self, g: u32, delta: i32) {
        let h = &mut self.held[g as usize];
        *h = h.wrapping_add_signed(delta);
        self.update_score(g);
    }

    fn update_score(&mut self, g: u32) {
        let held = self.held[g as usize];
        let score = if held == 0 {
            NO_SCORE
        } else {
            held.min(self.w as u32) as i64 - self.sent[g as usize] as i64
        };
        let mut i = self.leaves + g as usize;
        self.tree[i] = score;
        while i > 1 {
            i /= 2;
            self.tree[i] = self.tree[2 * i].max(self.tree[2 * i + 1]);
        }
    }

    /// The current burst's subgeneration while it may continue (packets left, score within
    /// the burst length of the best), else the best one, which starts a new burst.
    fn burst_subgen(&mut self) -> Option<u32> {
        if let Some((g, left)) = self.burst {
            let score = self.tree[self.leaves + g as usize];
            if left > 0 && score != NO_SCORE && score > self.tree[1] - self.max_burst as i64 {
                self.burst = Some((g, left - 1));
                return Some(g);
            }
        }
        let g = self.best_subgen()?;
        self.burst = Some((g, self.max_burst - 1));
        Some(g)
    }

    /// Leftmost subgeneration with the highest score, if any holds packets.
    fn best_subgen(&self) -> Option<u32> {
        if self.tree.len() < 2 || self.tree[1] == NO_SCORE {
            return None;
        }
        let top = self.tree[1];
        let mut i = 1;
        while i < self.leaves {
            i = if self.tree[2 * i] == top {
                2 * i
            } else {
                2 * i + 1
            };
        }
        Some((i - self.leaves) as u32)
    }

    /// Writes the next packet (forwarded systematic or recoded) into `out` (at least
    /// [`packet::max_len`] bytes) and returns its length; `None` if nothing is buffered or `out`
    /// is too small.
    pub fn recode(&mut self, rng: &mut Prng, out: &mut [u8]) -> Option<usize> {
        let mut len = [0usize; 1];
        let slot = out.len();
        (self.recode_batch(rng, out, slot, &mut len) == 1).then_some(len[0])
    }

    /// Writes up to `lens.len()` packets, packet `i` into `out[i * slot..]` with its length in
    /// `lens[i]`, and returns how many it wrote. Queued systematic packets go first; the
    /// remaining packets are all recoded from the one subgeneration MLPI picks (each with its
    /// own random coefficients), so its held symbols are read from cache once: use it to make
    /// one packet for each of several peers.
    pub fn recode_batch(
        &mut self,
        rng: &mut Prng,
        out: &mut [u8],
        slot: usize,
        lens: &mut [usize],
    ) -> usize {
        let sys_len = packet::len(&self.layout, PacketKind::Systematic);
        let rec_len = packet::len(&self.layout, PacketKind::Recoded);
        let count = lens.len().min(out.len() / slot.max(1));
        let mut done = 0;
        while done < count && slot >= sys_len {
            let Some(index) = self.forward_queue.pop_front() else {
                break;
            };
            let Some(&held) = self.systematic.get(&index) else {
                continue;
            };
            let dst = &mut out[done * slot..(done + 1) * slot];
            let Ok(sym) = packet::write_header(&self.layout, &Header::Systematic { index }, dst)
            else {
                break;
            };
            let s = self.s;
            sym.copy_from_slice(&self.symbols[held as usize * s..(held as usize + 1) * s]);
            lens[done] = sys_len;
            done += 1;
        }
        if done == count || slot < rec_len {
            return done;
        }
        let Some(g) = self.burst_subgen() else {
            return done;
        };
        for i in done..count {
            lens[i] = self.combine(g, rng, &mut out[i * slot..(i + 1) * slot]);
        }
        self.sent[g as usize] += (count - done) as u32;
        self.update_score(g);
        count
    }

    /// Writes a random combination of subgeneration `g`'s held packets into `out`.
    fn combine(&self, g: u32, rng: &mut Prng, out: &mut [u8]) -> usize {
        let (s, u, w) = (self.s, self.vec_units, self.w);
        let layout = &self.layout;
        let cols = layout.subgen_columns(g);
        // Members: (slot, local position for systematic packets).
        let mut members: [(u32, u32); 2 * MAX_SUBGEN_SIZE as usize] =
            [(0, u32::MAX); 2 * MAX_SUBGEN_SIZE as usize];
        let mut m = 0;
        for &slot in &self.per_subgen[g as usize] {
            members[m] = (slot, u32::MAX);
            m += 1;
        }
        match cols {
            SubgenColumns::Range { first, len } => {
                for (&index, &slot) in self.systematic.range(first..first + len) {
                    members[m] = (slot, index - first);
                    m += 1;
                }
            }
            SubgenColumns::List(list) => {
                for (j, c) in list.iter().enumerate() {
                    if let Some(&slot) = self.systematic.get(c) {
                        members[m] = (slot, j as u32);
                        m += 1;
                    }
                }
            }
        }
        let members = &members[..m];
        let vlen = packet::vector_len(layout);
        let header_len = packet::HEADER_LEN;
        let (head, rest) = out.split_at_mut(header_len);
        let (wire, sym) = rest.split_at_mut(vlen);
        let sym = &mut sym[..s];
        sym.fill(0);
        match layout.field() {
            Field::Gf2 => {
                let mut vec = [0u64; MAX_SUBGEN_SIZE as usize / 64];
                let mut srcs: [&[u8]; 2 * MAX_SUBGEN_SIZE as usize] =
                    [&[]; 2 * MAX_SUBGEN_SIZE as usize];
                let mut n = 0;
                let mut bits = 0u64;
                for (i, &(slot, pos)) in members.iter().enumerate() {
                    if i % 64 == 0 {
                        bits = rng.next_u64();
                        if i == 0 && bits == 0 {
                            bits = 1;
                        }
                    }
                    if bits >> (i % 64) & 1 == 0 {
                        continue;
                    }
                    let slot = slot as usize;
                    if pos == u32::MAX {
                        for (a, b) in vec.iter_mut().zip(&self.vec_bits[slot * u..(slot + 1) * u]) {
                            *a ^= b;
                        }
                    } else {
                        vec[pos as usize / 64] ^= 1 << (pos % 64);
                    }
                    srcs[n] = &self.symbols[slot * s..(slot + 1) * s];
                    n += 1;
                }
                self.kernel.xor_multi(sym, &srcs[..n]);
                gf2_to_wire(&vec, w, wire);
            }
            Field::Gf256 => {
                wire.fill(0);
                let mut srcs: [(&[u8], u8); 2 * MAX_SUBGEN_SIZE as usize] =
                    [(&[], 0); 2 * MAX_SUBGEN_SIZE as usize];
                let mut n = 0;
                let mut word = [0u8; 8];
                for (i, &(slot, pos)) in members.iter().enumerate() {
                    if i % 8 == 0 {
                        word = rng.next_u64().to_le_bytes();
                        if i == 0 && word[0] == 0 {
                            word[0] = 1;
                        }
                    }
                    let beta = word[i % 8];
                    if beta == 0 {
                        continue;
                    }
                    let slot = slot as usize;
                    if pos == u32::MAX {
                        self.kernel
                            .mul_add(wire, &self.vec_bytes[slot * u..(slot + 1) * u], beta);
                    } else {
                        wire[pos as usize] ^= beta;
                    }
                    srcs[n] = (&self.symbols[slot * s..(slot + 1) * s], beta);
                    n += 1;
                }
                self.kernel.mul_add_multi(sym, &srcs[..n]);
            }
        }
        // Header last: the vector and symbol are already in place.
        let flags = match layout.field() {
            Field::Gf2 => packet::FLAG_RECODED,
            Field::Gf256 => packet::FLAG_RECODED | packet::FLAG_GF256,
        };
        head[0] = packet::VERSION;
        head[1] = flags;
        head[2..4].fill(0);
        head[4..8].copy_from_slice(&g.to_le_bytes());
        header_len + vlen + s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::dense::DenseDecoder;
    use crate::encoder::{Encoder, Stream};
    use crate::params::CodeParams;

    #[test]
    fn forwards_each_systematic_packet_with_its_own_payload() {
        let l = CodeParams::new(1000)
            .symbol_size(10)
            .systematic(true)
            .validate()
            .unwrap();
        let data: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        let e = Encoder::new(&l, &data).unwrap();
        let mut r = Recoder::new(&l, 1 << 20);
        let mut s = Stream::new(1);
        let mut buf = vec![0u8; packet::max_len(&l)];
        let mut sent = Vec::new();
        for _ in 0..5 {
            let n = e.write_next(&mut s, &mut buf).unwrap();
            let v = packet::parse(&l, &buf[..n]).unwrap();
            assert_eq!(r.push(&v).unwrap(), RecoderPush::Stored);
            assert_eq!(r.push(&v).unwrap(), RecoderPush::Duplicate);
            sent.push(buf[..n].to_vec());
        }
        let mut rng = Prng::new(2);
        for expect in &sent {
            let n = r.recode(&mut rng, &mut buf).unwrap();
            assert_eq!(&buf[..n], &expect[..]);
        }
        let n = r.recode(&mut rng, &mut buf).unwrap();
        assert!(matches!(
            packet::parse(&l, &buf[..n]).unwrap().header,
            Header::Recoded { .. }
        ));
    }

    #[test]
    fn memory_limit_bounds_the_buffer() {
        let l = CodeParams::new(100_000)
            .symbol_size(100)
            .validate()
            .unwrap();
        let data = vec![3u8; 100_000];
        let e = Encoder::new(&l, &data).unwrap();
        let mut r = Recoder::new(&l, 50 * 108);
        let mut s = Stream::new(1);
        let mut buf = vec![0u8; packet::max_len(&l)];
        for _ in 0..500 {
            let n = e.write_next(&mut s, &mut buf).unwrap();
            r.push(&packet::parse(&l, &buf[..n]).unwrap()).unwrap();
        }
        assert_eq!(r.capacity(), 50);
        assert_eq!(r.len(), 50);
        assert!(r.memory_bytes() <= 2 * 50 * 108);
    }

    #[test]
    fn replacements_do_not_grow_bookkeeping() {
        let l = CodeParams::new(1000).symbol_size(100).validate().unwrap();
        let data = vec![1u8; 1000];
        let e = Encoder::new(&l, &data).unwrap();
        let mut r = Recoder::new(&l, 100 * 1000);
        let mut s = Stream::new(1);
        let mut buf = vec![0u8; packet::max_len(&l)];
        for _ in 0..5000 {
            let n = e.write_next(&mut s, &mut buf).unwrap();
            r.push(&packet::parse(&l, &buf[..n]).unwrap()).unwrap();
        }
        assert_eq!(r.len(), l.window() as usize);
        assert!(r.arrivals.len() <= 2 * r.capacity() + 16);
    }

    #[test]
    fn recoded_stream_decodes() {
        for field in [Field::Gf2, Field::Gf256] {
            let l = CodeParams::new(20_000)
                .symbol_size(50)
                .field(field)
                .validate()
                .unwrap();
            let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 256) as u8).collect();
            let e = Encoder::new(&l, &data).unwrap();
            let mut r = Recoder::new(&l, 1 << 20);
            let mut s = Stream::new(4);
            let mut buf = vec![0u8; packet::max_len(&l)];
            let mut d = DenseDecoder::new(&l).unwrap();
            let mut rng = Prng::new(7);
            let mut ticks = 0;
            while !d.is_complete() {
                let n = e.write_next(&mut s, &mut buf).unwrap();
                r.push(&packet::parse(&l, &buf[..n]).unwrap()).unwrap();
                let n = r.recode(&mut rng, &mut buf).unwrap();
                d.push(&packet::parse(&l, &buf[..n]).unwrap()).unwrap();
                ticks += 1;
                assert!(ticks < 4 * l.column_count(), "{field:?}");
            }
            let mut out = vec![0u8; 20_000];
            d.finish(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}
