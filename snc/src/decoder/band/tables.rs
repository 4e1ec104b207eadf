//! Four-Russians tables for the GF(2) back-substitution.
//!
//! Columns are grouped by four (`4a..4a + 4`). Once the back-substitution has finished a
//! group, the XOR of every subset of two or more of its symbols is tabulated (11 entries, one
//! copy plus one XOR each, built from smaller subsets). A row then adds one symbol per group
//! it touches instead of one per set bit: ~16 sources for a 64-column row of density 1/2
//! instead of ~32, for ~2.75 table XORs per column. Only the groups a row can still reach are
//! kept (a ring of [`RING`] groups, ~240 KB for 1280-byte symbols, L2-resident).

use crate::field::Kernel;

/// Groups kept: a row spans at most 64 columns, i.e. 16 whole groups plus a partial one.
const RING: u32 = 17;
/// Entries per group: the subsets of 4 bits with at least two members.
const ENTRIES: usize = 11;
/// Entry index of each 4-bit subset (`usize::MAX` for subsets of 0 or 1 members).
const SLOT: [usize; 16] = {
    let mut s = [usize::MAX; 16];
    let mut m = 0;
    let mut i = 0;
    while m < 16 {
        if (m as u32).count_ones() >= 2 {
            s[m] = i;
            i += 1;
        }
        m += 1;
    }
    s
};

/// The live group tables.
#[derive(Debug)]
pub(crate) struct GroupTables {
    sym: usize,
    data: Vec<u8>,
}

impl GroupTables {
    pub(crate) fn new(sym: usize) -> GroupTables {
        GroupTables {
            sym,
            data: vec![0; RING as usize * ENTRIES * sym],
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.data.capacity()
    }

    /// Tabulates group `a` over its members in `members` (bit `i` = column `4a + i`; the
    /// others count as zero and their subsets are not built), reading member `c` from
    /// `get(c)`. Look-ups must mask their subset with the same `members`.
    pub(crate) fn build_with<'s>(
        &mut self,
        kernel: Kernel,
        a: u32,
        members: u32,
        get: impl Fn(u32) -> &'s [u8],
    ) {
        let sym = self.sym;
        let base = (a % RING) as usize * ENTRIES;
        for m in 3u32..16 {
            let i = SLOT[m as usize];
            if i == usize::MAX || m & !members != 0 {
                continue;
            }
            let rest = m & (m - 1);
            let low = 4 * a + m.trailing_zeros();
            let (lo, hi) = self.data.split_at_mut((base + i) * sym);
            let dst = &mut hi[..sym];
            if rest.count_ones() == 1 {
                dst.copy_from_slice(get(4 * a + rest.trailing_zeros()));
            } else {
                dst.copy_from_slice(&lo[(base + SLOT[rest as usize]) * sym..][..sym]);
            }
            kernel.xor(dst, get(low));
        }
    }

    /// The XOR of the symbols of group `a` selected by `m` (two or more bits).
    #[inline]
    pub(crate) fn entry(&self, a: u32, m: u32) -> &[u8] {
        let i = (a % RING) as usize * ENTRIES + SLOT[m as usize];
        &self.data[i * self.sym..][..self.sym]
    }
}
