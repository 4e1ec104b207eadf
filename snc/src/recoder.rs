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
//!     a burst of `min(RECODE_BURST, score - BURST_HEADROOM)` calls (at least one;
//!     [`RECODE_BURST`], [`BURST_HEADROOM`], [`Recoder::set_burst`],
//!     [`Recoder::set_burst_headroom`]) while its score stays within [`RECODE_BURST`] of the
//!     best, so its scattered held symbols come from cache after the first packet. The last
//!     [`BURST_HEADROOM`] packets of every score level go one at a time in MLPI order, which is
//!     what keeps the end of the recoded stream as even as strict MLPI;
//!   - `None` if nothing is held.
//!
//! * Arrival-driven relaying (one hop: every packet in the buffer came from the source). Every
//!   stored packet gets an *arrival stamp*, `0, 1, 2, ...` in the order [`Recoder::push`] stored
//!   them ([`Recoder::arrivals`] = stamps issued so far; a duplicate systematic packet gets none).
//!   A sender keeps its own cursor per receiver and, for each stamp once,
//!   calls [`Recoder::recode_arrival`]:
//!   - a systematic arrival is forwarded as it is (its own index and payload, byte for byte);
//!   - a coded or recoded arrival of subgeneration `g` becomes one recoded packet of `g`: the
//!     arrival with a nonzero coefficient (1 in GF(2)) plus up to [`ARRIVAL_MIX`]
//!     ([`Recoder::set_arrival_mix`]) other held packets of `g` (systematic ones inside its
//!     window included) with random nonzero coefficients. A receiver that never saw the arrival
//!     finds it innovative exactly as often as the source's packet itself (the added packets
//!     are only a shift inside `g`'s span), and the few extra packets keep it a real recoding
//!     while costing `ARRIVAL_MIX + 1` symbol reads instead of `g`'s whole span;
//!   - `None` when that arrival is no longer held (evicted by the memory limit, replaced inside
//!     its subgeneration) or `out` is too short: the sender skips it
//!     ([`Recoder::next_arrival`] finds the next held stamp).
//!
//!   Arrival recoding never changes the MLPI state: the two modes can share a buffer.
//!
//! Scheduling is `O(log G)` per packet (a max segment tree over the scores); a GF(2) recoded
//! packet is one fused `xor_sum` over the selected held symbols (up to 64 per call), summed
//! straight from the members with no per-packet member list. A burst prefetches its
//! subgeneration's held symbols when it starts, and those of the subgeneration expected next.
//! The MLPI recoder's speed is bound by those DRAM reads: one subgeneration's held symbols per
//! burst (up to [`RECODE_BURST`] packets).

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

/// Default of [`Recoder::set_burst`]: the most recoded packets MLPI takes in a row from one
/// subgeneration (while its score stays within this many of the best). Its held symbols are
/// then read from DRAM once per burst instead of once per packet (a relay's symbols arrive
/// interleaved, so a subgeneration's are scattered).
// CODEC: measured (profile example `recode1`/`relayov`, 32 MiB GF(2) nonsys 10 % loss, relay
// holding every delivered packet, thread CPU, 5 alternating rounds x 4 runs each):
// fixed bursts of 4 (the old default) recode at median 696 MB/s, bursts of
// `min(64, score - 2)` at 1401 (2.0x; `min(16, score - 2)`: 1023). Recoded-stream overhead
// (received / K until a receiver completes; 4 MiB 24 seeds, 32 MiB 4 seeds; second hop
// loss-free / 10 % loss): strict MLPI 1.0322 / 1.0461 (4 MiB), 1.0485 / 1.0591 (32 MiB);
// fixed 4: 1.0450 / 1.0521, 1.0486 / 1.0658; `min(64, score - 2)`: 1.0307 / 1.0465, 1.0475 /
// 1.0572. Fixed bursts of 8 and 16 gave 1.068 and 1.124 at 4 MiB.
pub const RECODE_BURST: u32 = 64;

/// Default of [`Recoder::set_burst_headroom`]: a burst stops this many packets short of its
/// subgeneration's score (held rank minus sent). Bursts only take what MLPI would have sent
/// that subgeneration anyway before its score level came round again; the last packets of
/// every level go one at a time, in MLPI order, so the stream's coverage stays even where the
/// receivers complete. Margins 1, 2, 4, 6 and 8 measured alike; smaller margins give longer
/// bursts.
pub const BURST_HEADROOM: u32 = 2;

/// Default of [`Recoder::set_arrival_mix`]: held packets of the subgeneration added to a coded
/// arrival in [`Recoder::recode_arrival`].
pub const ARRIVAL_MIX: usize = 4;

/// Members of one subgeneration: `(slot, local position)`, the position `u32::MAX` for coded
/// packets (their coefficient vector is stored).
type Members = [(u32, u32); 2 * MAX_SUBGEN_SIZE as usize];

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
    /// Packets a burst leaves of its subgeneration's score (`None`: bursts of `max_burst`).
    headroom: Option<u32>,
    arrival_mix: usize,
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
            headroom: Some(BURST_HEADROOM),
            arrival_mix: ARRIVAL_MIX,
        }
    }

    /// The most recoded packets one subgeneration may make in a row ([`RECODE_BURST`] by
    /// default; 1 is strict MLPI; 0 counts as 1).
    pub fn set_burst(&mut self, packets: u32) {
        self.max_burst = packets.max(1);
        self.burst = None;
    }

    /// Packets a burst stops short of its subgeneration's score ([`BURST_HEADROOM`] by
    /// default); `None` makes every burst [`Recoder::set_burst`] packets long while the score
    /// stays within that many of the best (this crate's schedule before the headroom existed).
    pub fn set_burst_headroom(&mut self, packets: Option<u32>) {
        self.headroom = packets;
        self.burst = None;
    }

    /// Other held packets [`Recoder::recode_arrival`] adds to a coded arrival ([`ARRIVAL_MIX`]
    /// by default; 0 sends the arrival alone, in the recoded form).
    pub fn set_arrival_mix(&mut self, packets: usize) {
        self.arrival_mix = packets.min(2 * MAX_SUBGEN_SIZE as usize - 1);
    }

    /// Arrival stamps issued so far: the stored packets are stamped `0..arrivals()` in the
    /// order they were stored (some may be gone since).
    pub fn arrivals(&self) -> u64 {
        self.next_stamp
    }

    /// The slot holding arrival `stamp`, if it is still held.
    fn held_slot(&self, stamp: u64) -> Option<u32> {
        let i = self.arrivals.partition_point(|&(_, st)| st < stamp);
        let &(slot, st) = self.arrivals.get(i)?;
        (st == stamp && self.is_held(slot, st)).then_some(slot)
    }

    fn is_held(&self, slot: u32, stamp: u64) -> bool {
        self.owner[slot as usize] != Owner::Free && self.stamp[slot as usize] == stamp
    }

    /// The first arrival at or after `from` that is still held (`None`: none yet).
    pub fn next_arrival(&self, from: u64) -> Option<u64> {
        let i = self.arrivals.partition_point(|&(_, st)| st < from);
        self.arrivals
            .range(i..)
            .find(|&&(slot, st)| self.is_held(slot, st))
            .map(|&(_, st)| st)
    }

    /// The form [`Recoder::recode_arrival`] gives arrival `stamp` (systematic: forwarded as
    /// it is; else recoded), if it is still held.
    pub fn arrival_kind(&self, stamp: u64) -> Option<PacketKind> {
        match self.owner[self.held_slot(stamp)? as usize] {
            Owner::Systematic(_) => Some(PacketKind::Systematic),
            Owner::Subgen(_) => Some(PacketKind::Recoded),
            Owner::Free => None,
        }
    }

    /// Writes the packet of arrival `stamp` into `out` and returns its length: a systematic
    /// arrival forwarded as it is, a coded one as a recoded packet of its subgeneration that
    /// includes it (see the module doc). `None` if that arrival is no longer held or `out` is
    /// shorter than the packet.
    pub fn recode_arrival(&self, stamp: u64, rng: &mut Prng, out: &mut [u8]) -> Option<usize> {
        let slot = self.held_slot(stamp)?;
        match self.owner[slot as usize] {
            Owner::Systematic(index) => {
                let len = packet::len(&self.layout, PacketKind::Systematic);
                if out.len() < len {
                    return None;
                }
                let sym =
                    packet::write_header(&self.layout, &Header::Systematic { index }, out).ok()?;
                let s = self.s;
                sym[..s].copy_from_slice(&self.symbols[slot as usize * s..(slot as usize + 1) * s]);
                Some(len)
            }
            Owner::Subgen(g) => {
                if out.len() < packet::len(&self.layout, PacketKind::Recoded) {
                    return None;
                }
                let gf256 = self.layout.field() == Field::Gf256;
                let coefficient = |rng: &mut Prng| {
                    if gf256 {
                        1 + rng.below(255) as u8
                    } else {
                        1
                    }
                };
                // The others: a partial Fisher-Yates shuffle of the members but the arrival.
                let mut others: Members = [(0, u32::MAX); 2 * MAX_SUBGEN_SIZE as usize];
                let mut o = 0;
                self.for_each_member(g, |sl, pos| {
                    if sl != slot {
                        others[o] = (sl, pos);
                        o += 1;
                    }
                });
                let mut sum = Sum::new(self, g, out);
                sum.add(slot, u32::MAX, coefficient(rng));
                let take = self.arrival_mix.min(o);
                for k in 0..take {
                    let j = k + rng.below((o - k) as u64) as usize;
                    others.swap(k, j);
                    let (sl, pos) = others[k];
                    sum.add(sl, pos, coefficient(rng));
                }
                Some(sum.finish())
            }
            Owner::Free => None,
        }
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
    /// the longest burst of the best), else the best one, which starts a new burst (`true`)
    /// of `min(max_burst, score - headroom)` packets, at least one.
    fn burst_subgen(&mut self) -> Option<(u32, bool)> {
        if let Some((g, left)) = self.burst {
            let score = self.tree[self.leaves + g as usize];
            if left > 0 && score != NO_SCORE && score > self.tree[1] - self.max_burst as i64 {
                self.burst = Some((g, left - 1));
                return Some((g, false));
            }
        }
        let g = self.best_subgen()?;
        let len = match self.headroom {
            None => self.max_burst,
            Some(h) => {
                let room = self.tree[1].saturating_sub(i64::from(h));
                room.clamp(1, i64::from(self.max_burst)) as u32
            }
        };
        self.burst = Some((g, len - 1));
        Some((g, true))
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
        let Some((g, fresh)) = self.burst_subgen() else {
            return done;
        };
        self.sent[g as usize] += (count - done) as u32;
        self.update_score(g);
        if fresh {
            self.prefetch_members(g);
            // The next burst most likely goes to the best subgeneration once this one has
            // sent its whole burst (unless pushes change the scores first): its symbols load
            // during this burst.
            let left = self.burst.map_or(0, |(_, left)| left);
            self.sent[g as usize] += left;
            self.update_score(g);
            let next = self.best_subgen();
            self.sent[g as usize] -= left;
            self.update_score(g);
            if let Some(next) = next.filter(|&next| next != g) {
                self.prefetch_members(next);
            }
        }
        for i in done..count {
            lens[i] = self.combine(g, rng, &mut out[i * slot..(i + 1) * slot]);
        }
        count
    }

    /// Starts loading subgeneration `g`'s held symbols into cache: they sit scattered over
    /// the buffer in arrival order, and a sum that misses on each in turn waits on DRAM.
    fn prefetch_members(&self, g: u32) {
        let s = self.s;
        self.for_each_member(g, |slot, _| {
            crate::field::prefetch(&self.symbols[slot as usize * s..][..s]);
        });
    }

    /// Calls `f(slot, local position)` for subgeneration `g`'s held packets: coded ones first
    /// (position `u32::MAX`: their coefficient vector is stored), then systematic ones inside
    /// its window at their local position.
    #[inline]
    fn for_each_member(&self, g: u32, mut f: impl FnMut(u32, u32)) {
        for &slot in &self.per_subgen[g as usize] {
            f(slot, u32::MAX);
        }
        match self.layout.subgen_columns(g) {
            SubgenColumns::Range { first, len } => {
                for (&index, &slot) in self.systematic.range(first..first + len) {
                    f(slot, index - first);
                }
            }
            SubgenColumns::List(list) => {
                for (j, c) in list.iter().enumerate() {
                    if let Some(&slot) = self.systematic.get(c) {
                        f(slot, j as u32);
                    }
                }
            }
        }
    }

    /// Writes a random combination of subgeneration `g`'s held packets into `out`: every
    /// member is drawn (GF(2): one bit, GF(2^8): one byte of the caller's generator) and the
    /// picks are folded straight into the packet, with no per-call member list.
    fn combine(&self, g: u32, rng: &mut Prng, out: &mut [u8]) -> usize {
        let mut sum = Sum::new(self, g, out);
        let mut i = 0usize;
        match self.layout.field() {
            Field::Gf2 => {
                let mut bits = 0u64;
                self.for_each_member(g, |slot, pos| {
                    if i.is_multiple_of(64) {
                        bits = rng.next_u64();
                        if i == 0 && bits == 0 {
                            bits = 1;
                        }
                    }
                    if bits >> (i % 64) & 1 != 0 {
                        sum.add(slot, pos, 1);
                    }
                    i += 1;
                });
            }
            Field::Gf256 => {
                let mut word = [0u8; 8];
                self.for_each_member(g, |slot, pos| {
                    if i.is_multiple_of(8) {
                        word = rng.next_u64().to_le_bytes();
                        if i == 0 && word[0] == 0 {
                            word[0] = 1;
                        }
                    }
                    let beta = word[i % 8];
                    if beta != 0 {
                        sum.add(slot, pos, beta);
                    }
                    i += 1;
                });
            }
        }
        sum.finish()
    }
}

/// Sources folded per fused kernel call while summing a recoded packet: enough for a whole
/// 64-wide subgeneration's picks in one pass over the output symbol, small enough that the
/// per-packet source arrays cost nothing to set up.
const SUM_CHUNK: usize = 64;

/// A recoded packet being summed into its output buffer: the coefficient vector accumulates
/// per pick, the symbol in fused kernel calls of up to [`SUM_CHUNK`] sources.
struct Sum<'r, 'o> {
    recoder: &'r Recoder,
    g: u32,
    head: &'o mut [u8],
    wire: &'o mut [u8],
    sym: &'o mut [u8],
    vec: [u64; MAX_SUBGEN_SIZE as usize / 64],
    xs: [&'r [u8]; SUM_CHUNK],
    ms: [(&'r [u8], u8); SUM_CHUNK],
    n: usize,
    /// GF(2): nothing is in `sym` yet (the first fused call sets it instead of adding).
    unset: bool,
}

impl<'r, 'o> Sum<'r, 'o> {
    /// `out` must hold at least the recoded packet length.
    #[inline]
    fn new(recoder: &'r Recoder, g: u32, out: &'o mut [u8]) -> Self {
        let layout = &recoder.layout;
        let vlen = packet::vector_len(layout);
        let (head, rest) = out.split_at_mut(packet::HEADER_LEN);
        let (wire, sym) = rest.split_at_mut(vlen);
        let sym = &mut sym[..recoder.s];
        let unset = layout.field() == Field::Gf2;
        if !unset {
            sym.fill(0);
            wire.fill(0);
        }
        Sum {
            recoder,
            g,
            head,
            wire,
            sym,
            vec: [0; MAX_SUBGEN_SIZE as usize / 64],
            xs: [&[]; SUM_CHUNK],
            ms: [(&[], 0); SUM_CHUNK],
            n: 0,
            unset,
        }
    }

    /// Adds `beta *` the packet in `slot` (local position `pos`, `u32::MAX` for coded
    /// packets; `beta` is ignored in GF(2)).
    #[inline]
    fn add(&mut self, slot: u32, pos: u32, beta: u8) {
        let r = self.recoder;
        let (s, u) = (r.s, r.vec_units);
        let slot = slot as usize;
        let symbol = &r.symbols[slot * s..(slot + 1) * s];
        match r.layout.field() {
            Field::Gf2 => {
                if pos == u32::MAX {
                    for (a, b) in self
                        .vec
                        .iter_mut()
                        .zip(&r.vec_bits[slot * u..(slot + 1) * u])
                    {
                        *a ^= b;
                    }
                } else {
                    self.vec[pos as usize / 64] ^= 1 << (pos % 64);
                }
                self.xs[self.n] = symbol;
            }
            Field::Gf256 => {
                if pos == u32::MAX {
                    r.kernel
                        .mul_add(self.wire, &r.vec_bytes[slot * u..(slot + 1) * u], beta);
                } else {
                    self.wire[pos as usize] ^= beta;
                }
                self.ms[self.n] = (symbol, beta);
            }
        }
        self.n += 1;
        if self.n == SUM_CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let k = self.recoder.kernel;
        match self.recoder.layout.field() {
            Field::Gf2 if self.unset => {
                k.xor_sum(self.sym, &self.xs[..self.n]);
                self.unset = false;
            }
            Field::Gf2 => k.xor_multi(self.sym, &self.xs[..self.n]),
            Field::Gf256 => k.mul_add_multi(self.sym, &self.ms[..self.n]),
        }
        self.n = 0;
    }

    /// Writes the vector (GF(2)) and header; returns the packet length.
    fn finish(mut self) -> usize {
        if self.n > 0 || self.unset {
            self.flush();
        }
        let layout = &self.recoder.layout;
        let flags = match layout.field() {
            Field::Gf2 => {
                gf2_to_wire(&self.vec, self.recoder.w, self.wire);
                packet::FLAG_RECODED
            }
            Field::Gf256 => packet::FLAG_RECODED | packet::FLAG_GF256,
        };
        // Header last: the vector and symbol are already in place.
        self.head[0] = packet::VERSION;
        self.head[1] = flags;
        self.head[2..4].fill(0);
        self.head[4..8].copy_from_slice(&self.g.to_le_bytes());
        packet::HEADER_LEN + self.wire.len() + self.sym.len()
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

    /// Systematic layout of 40 symbols of 10 bytes: the first 40 packets of a stream are the
    /// source symbols, the rest coded.
    fn arrival_setup(field: Field) -> (Layout, Vec<u8>) {
        let l = CodeParams::new(400)
            .symbol_size(10)
            .field(field)
            .systematic(true)
            .validate()
            .unwrap();
        let data: Vec<u8> = (0..400u32).map(|i| (i * 7 + 1) as u8).collect();
        (l, data)
    }

    #[test]
    fn arrivals_are_forwarded_or_recoded_in_their_subgeneration() {
        for field in [Field::Gf2, Field::Gf256] {
            let (l, data) = arrival_setup(field);
            let e = Encoder::new(&l, &data).unwrap();
            let mut r = Recoder::new(&l, 1 << 20);
            r.set_arrival_mix(0);
            let mut s = Stream::new(1);
            let mut buf = vec![0u8; packet::max_len(&l)];
            let mut sent = Vec::new();
            // Every other packet of the stream: a share, as a server pool hands out.
            for i in 0..2 * l.source_count() + 40 {
                let n = e.write_next(&mut s, &mut buf).unwrap();
                if i % 2 == 0 {
                    let v = packet::parse(&l, &buf[..n]).unwrap();
                    assert_eq!(r.push(&v).unwrap(), RecoderPush::Stored);
                    if let Header::Systematic { .. } = v.header {
                        assert_eq!(r.push(&v).unwrap(), RecoderPush::Duplicate);
                    }
                    sent.push(buf[..n].to_vec());
                }
            }
            assert_eq!(r.arrivals(), sent.len() as u64, "duplicates get no stamp");
            let mut rng = Prng::new(3);
            let mut out = vec![0u8; packet::max_len(&l)];
            for (stamp, original) in sent.iter().enumerate() {
                let stamp = stamp as u64;
                let n = r.recode_arrival(stamp, &mut rng, &mut out).unwrap();
                let theirs = packet::parse(&l, original).unwrap();
                let ours = packet::parse(&l, &out[..n]).unwrap();
                match (theirs.header, ours.header) {
                    (Header::Systematic { index }, Header::Systematic { index: forwarded }) => {
                        assert_eq!(index, forwarded);
                        assert_eq!(&out[..n], &original[..], "byte for byte");
                        assert_eq!(r.arrival_kind(stamp), Some(PacketKind::Systematic));
                    }
                    (Header::Coded { subgen, .. }, Header::Recoded { subgen: g, coeffs }) => {
                        assert_eq!(subgen, g);
                        assert_eq!(r.arrival_kind(stamp), Some(PacketKind::Recoded));
                        if field == Field::Gf2 {
                            // Alone (mix 0) and with coefficient 1: the arrival itself.
                            assert_eq!(ours.symbol, theirs.symbol);
                            let mut row = CoeffRow::new(&l);
                            row.expand(&l, &theirs.header).unwrap();
                            let mut wire = vec![0u8; coeffs.len()];
                            gf2_to_wire(row.gf2_words(), l.window() as usize, &mut wire);
                            assert_eq!(coeffs, &wire[..]);
                        } else {
                            assert!(coeffs.iter().any(|&c| c != 0));
                        }
                    }
                    other => panic!("{field:?}: {other:?}"),
                }
            }
            assert_eq!(r.recode_arrival(r.arrivals(), &mut rng, &mut out), None);
            assert_eq!(r.next_arrival(0), Some(0));
            assert_eq!(r.next_arrival(r.arrivals()), None);
            // A short buffer gets nothing.
            assert_eq!(r.recode_arrival(0, &mut rng, &mut out[..5]), None);
            // Arrival recoding leaves the MLPI schedule alone.
            assert!(r.sent.iter().all(|&c| c == 0));
        }
    }

    #[test]
    fn mixed_arrivals_differ_per_call_and_stay_in_the_span() {
        let (l, data) = arrival_setup(Field::Gf2);
        let e = Encoder::new(&l, &data).unwrap();
        let mut r = Recoder::new(&l, 1 << 20);
        let mut s = Stream::new(9);
        let mut buf = vec![0u8; packet::max_len(&l)];
        // Half the source symbols, then coded packets.
        for i in 0..2 * l.source_count() {
            let n = e.write_next(&mut s, &mut buf).unwrap();
            if i % 2 == 0 || i >= l.source_count() {
                r.push(&packet::parse(&l, &buf[..n]).unwrap()).unwrap();
            }
        }
        let last = r.arrivals() - 1;
        let mut rng = Prng::new(5);
        let mut a = vec![0u8; packet::max_len(&l)];
        let mut b = vec![0u8; packet::max_len(&l)];
        let n = r.recode_arrival(last, &mut rng, &mut a).unwrap();
        let m = r.recode_arrival(last, &mut rng, &mut b).unwrap();
        assert_eq!(n, m);
        assert_ne!(a[..n], b[..m], "two receivers get different mixes");
        // Both decode (with the rest of what the relay holds) to the data.
        let mut d = DenseDecoder::new(&l).unwrap();
        d.push(&packet::parse(&l, &a[..n]).unwrap()).unwrap();
        d.push(&packet::parse(&l, &b[..m]).unwrap()).unwrap();
        let mut stamp = 0;
        while let Some(st) = r.next_arrival(stamp) {
            let n = r.recode_arrival(st, &mut rng, &mut a).unwrap();
            d.push(&packet::parse(&l, &a[..n]).unwrap()).unwrap();
            stamp = st + 1;
        }
        assert!(d.is_complete());
        let mut out = vec![0u8; 400];
        d.finish(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn evicted_arrivals_are_skipped() {
        let l = CodeParams::new(100_000)
            .symbol_size(100)
            .validate()
            .unwrap();
        let data = vec![3u8; 100_000];
        let e = Encoder::new(&l, &data).unwrap();
        let slot = 100 + packet::vector_len(&l).div_ceil(8) * 8;
        let mut r = Recoder::new(&l, 10 * slot);
        assert_eq!(r.capacity(), 10);
        let mut s = Stream::new(1);
        let mut buf = vec![0u8; packet::max_len(&l)];
        for _ in 0..30 {
            let n = e.write_next(&mut s, &mut buf).unwrap();
            r.push(&packet::parse(&l, &buf[..n]).unwrap()).unwrap();
        }
        let mut rng = Prng::new(1);
        assert_eq!(r.arrivals(), 30);
        for stamp in 0..20 {
            assert_eq!(r.recode_arrival(stamp, &mut rng, &mut buf), None, "{stamp}");
            assert_eq!(r.arrival_kind(stamp), None);
        }
        assert_eq!(r.next_arrival(0), Some(20));
        for stamp in 20..30 {
            assert!(r.recode_arrival(stamp, &mut rng, &mut buf).is_some());
        }
        // Replaced inside a full subgeneration: skipped as well.
        let small = CodeParams::new(1000).symbol_size(100).validate().unwrap();
        let e = Encoder::new(&small, &data[..1000]).unwrap();
        let mut r = Recoder::new(&small, 1 << 20);
        let mut s = Stream::new(2);
        for _ in 0..small.window() as usize + 5 {
            let n = e.write_next(&mut s, &mut buf).unwrap();
            r.push(&packet::parse(&small, &buf[..n]).unwrap()).unwrap();
        }
        assert_eq!(r.len(), small.window() as usize);
        assert_eq!(r.recode_arrival(0, &mut rng, &mut buf), None);
        assert_eq!(r.next_arrival(0), Some(5));
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
