//! Counter-based, seekable pseudo-random generator for coefficients, schedules and grouping.
//!
//! Contract:
//! * Output word `i` of the stream keyed by `seed` is `mix64(seed + (i + 1) * GOLDEN)` where
//!   [`mix64`] is the SplitMix64 finaliser (a bijective 64-bit avalanche mixer). Any word can be
//!   computed directly ([`word`]), so a receiver regenerates a packet's coefficient vector from the
//!   packet's 64-bit seed alone, and a generator can seek ([`Prng::seek`]).
//! * There is no global state: every generator is a value owned by its user.
//! * One 64-bit word gives 64 GF(2) coefficients (bit `j` = coefficient `j`) or 8 GF(2^8)
//!   coefficients (byte `j` in little-endian order = coefficient `j`).
//! * The function is pinned by the known-answer tests (`tests/known_answers.rs`): changing it
//!   changes the wire meaning of every coded packet, so it must never change silently.
//!
//! Not cryptographic. SplitMix64 has no GF(2)-linear structure of its own (unlike glibc
//! `rand()`, whose GF(2) rank caps at ~500, SNC-REFERENCE.md §1.2(e)), which is what binary
//! coding needs.

/// The 64-bit golden-ratio increment (Weyl step) of SplitMix64.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 finaliser: a bijective mixer with full avalanche.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Word number `index` of the stream keyed by `seed`.
#[inline]
pub const fn word(seed: u64, index: u64) -> u64 {
    mix64(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Derives the independent seed of a sub-stream, e.g. packet `counter` of the stream `key`.
///
/// Distinct `(key, counter)` pairs give unrelated seeds (two rounds of mixing).
#[inline]
pub const fn derive(key: u64, counter: u64) -> u64 {
    mix64(key ^ mix64(counter.wrapping_add(0x5851_F42D_4C95_7F2D)))
}

/// A seekable generator: `seed` plus a word counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prng {
    seed: u64,
    counter: u64,
}

impl Prng {
    /// A generator at word 0 of the stream keyed by `seed`.
    pub const fn new(seed: u64) -> Prng {
        Prng { seed, counter: 0 }
    }

    /// The stream key.
    pub const fn seed(&self) -> u64 {
        self.seed
    }

    /// Index of the next word [`Prng::next_u64`] will return.
    pub const fn position(&self) -> u64 {
        self.counter
    }

    /// Moves to word `index`.
    pub fn seek(&mut self, index: u64) {
        self.counter = index;
    }

    /// The next 64-bit word.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let w = word(self.seed, self.counter);
        self.counter = self.counter.wrapping_add(1);
        w
    }

    /// A uniform value in `0..bound` (`bound > 0`; Lemire's multiply-shift, bias < 2^-32 for
    /// bounds below 2^32).
    #[inline]
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Fills `out` with bytes (little-endian words).
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let w = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&w[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seek_matches_sequential() {
        let mut a = Prng::new(42);
        let seq: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let mut b = Prng::new(42);
        b.seek(7);
        assert_eq!(b.next_u64(), seq[7]);
        assert_eq!(word(42, 3), seq[3]);
    }

    #[test]
    fn splitmix_reference_value() {
        // SplitMix64 with state 0: first output is the published 0xE220A8397B1DCDAF.
        assert_eq!(word(0, 0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn below_stays_in_range() {
        let mut p = Prng::new(9);
        for bound in [1u64, 2, 3, 17, 1000] {
            for _ in 0..200 {
                assert!(p.below(bound) < bound);
            }
        }
    }

    #[test]
    fn gf2_rank_is_full() {
        // 600 vectors of 600 bits from consecutive words: the glibc rand() failure mode
        // (rank capped near 500) must not occur.
        let n: usize = 600;
        let words = n.div_ceil(64);
        let mut p = Prng::new(1);
        let mut rows: Vec<Vec<u64>> = (0..n)
            .map(|_| (0..words).map(|_| p.next_u64()).collect())
            .collect();
        for r in rows.iter_mut() {
            let extra = words * 64 - n;
            let last = r.last_mut().unwrap();
            *last &= u64::MAX >> extra;
        }
        let mut rank = 0;
        for col in 0..n {
            let (w, b) = (col / 64, col % 64);
            if let Some(p) = (rank..n).find(|&i| rows[i][w] >> b & 1 == 1) {
                rows.swap(rank, p);
                for i in 0..n {
                    if i != rank && rows[i][w] >> b & 1 == 1 {
                        let pivot = rows[rank].clone();
                        for (x, y) in rows[i].iter_mut().zip(&pivot) {
                            *x ^= y;
                        }
                    }
                }
                rank += 1;
            }
        }
        assert!(rank >= n - 12, "rank {rank} of {n}");
    }
}
