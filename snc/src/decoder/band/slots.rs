//! Symbol slots: column `c`'s symbol lives in the caller's output buffer when it is a whole
//! source symbol, and in a small side buffer otherwise (the zero-padded last source symbol and
//! the `C` check columns). This is how the decoder avoids a second copy of the segment.

use crate::field::Kernel;

/// The `N` symbol slots of one segment.
#[derive(Debug)]
pub(crate) struct Slots<'a> {
    out: &'a mut [u8],
    side: Vec<u8>,
    sym: usize,
    /// Columns below `split` live in `out`.
    split: u32,
}

impl<'a> Slots<'a> {
    /// `out` holds the segment (`out.len()` bytes); `n` columns of `sym` bytes.
    pub(crate) fn new(out: &'a mut [u8], n: u32, sym: usize) -> Slots<'a> {
        let split = ((out.len() / sym) as u32).min(n);
        let side = vec![0; (n - split) as usize * sym];
        Slots {
            out,
            side,
            sym,
            split,
        }
    }

    pub(crate) fn side_bytes(&self) -> usize {
        self.side.capacity()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, c: u32) -> &mut [u8] {
        let sym = self.sym;
        if c < self.split {
            &mut self.out[c as usize * sym..][..sym]
        } else {
            &mut self.side[(c - self.split) as usize * sym..][..sym]
        }
    }

    /// Splits the slots into `c`'s slot (mutable) and every other slot (shared).
    #[inline]
    pub(crate) fn split_at(&mut self, c: u32) -> (&mut [u8], Others<'_>) {
        let sym = self.sym;
        if c < self.split {
            let (lo, rest) = self.out.split_at_mut(c as usize * sym);
            let (dst, hi) = rest.split_at_mut(sym);
            (
                dst,
                Others {
                    lo,
                    hi,
                    side_lo: &[],
                    side_hi: &self.side,
                    dst: c,
                    split: self.split,
                    sym,
                },
            )
        } else {
            let s = (c - self.split) as usize;
            let (side_lo, rest) = self.side.split_at_mut(s * sym);
            let (dst, side_hi) = rest.split_at_mut(sym);
            (
                dst,
                Others {
                    lo: self.out,
                    hi: &[],
                    side_lo,
                    side_hi,
                    dst: c,
                    split: self.split,
                    sym,
                },
            )
        }
    }

    /// Starts loading column `c`'s slot into cache (nothing if `c >= n`): the passes walk
    /// the segment one slot at a time and ask for the slot they reach next.
    #[inline]
    pub(crate) fn prefetch(&self, c: u32) {
        let sym = self.sym;
        if c < self.split {
            crate::field::prefetch(&self.out[c as usize * sym..][..sym]);
        } else if let Some(slot) = self.side.get((c - self.split) as usize * sym..) {
            crate::field::prefetch(&slot[..sym.min(slot.len())]);
        }
    }

    /// Shared view of every slot (no destination).
    pub(crate) fn all(&self) -> Others<'_> {
        Others {
            lo: self.out,
            hi: &[],
            side_lo: &self.side,
            side_hi: &[],
            dst: u32::MAX,
            split: self.split,
            sym: self.sym,
        }
    }

    /// Copies the decoded part of the side buffer's source symbol (the partial last one) into
    /// the output buffer. Call once, after decoding.
    pub(crate) fn finish(&mut self, k: u32) {
        if self.split < k {
            let start = self.split as usize * self.sym;
            let tail = self.out.len() - start;
            self.out[start..].copy_from_slice(&self.side[..tail]);
        }
        self.side = Vec::new();
    }
}

/// Every slot but one, for reading while that one is written.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Others<'s> {
    lo: &'s [u8],
    hi: &'s [u8],
    side_lo: &'s [u8],
    side_hi: &'s [u8],
    dst: u32,
    split: u32,
    sym: usize,
}

impl<'s> Others<'s> {
    /// Slot of column `c` (`c != dst`).
    #[inline]
    pub(crate) fn get(&self, c: u32) -> &'s [u8] {
        debug_assert_ne!(c, self.dst);
        let sym = self.sym;
        if c < self.split {
            if c > self.dst {
                &self.hi[(c - self.dst - 1) as usize * sym..][..sym]
            } else {
                &self.lo[c as usize * sym..][..sym]
            }
        } else {
            let s = (c - self.split) as usize;
            if self.dst >= self.split && self.dst != u32::MAX {
                let ds = (self.dst - self.split) as usize;
                if s < ds {
                    &self.side_lo[s * sym..][..sym]
                } else {
                    &self.side_hi[(s - ds - 1) * sym..][..sym]
                }
            } else if self.dst == u32::MAX {
                &self.side_lo[s * sym..][..sym]
            } else {
                &self.side_hi[s * sym..][..sym]
            }
        }
    }
}

/// Sources folded per fused kernel call.
const BATCH: usize = 32;

/// `dst ^= sum c_i * src_i` with fused kernels: coefficient-1 sources go through
/// `xor_multi`, the others through `mul_add_multi`, `BATCH` at a time; zeros are skipped.
/// Returns the number of non-zero terms added.
pub(crate) fn combine<'s>(
    kernel: Kernel,
    dst: &mut [u8],
    srcs: impl Iterator<Item = (&'s [u8], u8)>,
) -> u64 {
    let mut added = 0;
    let mut xs: [&[u8]; BATCH] = [&[]; BATCH];
    let mut ms: [(&[u8], u8); BATCH] = [(&[], 0); BATCH];
    let (mut nx, mut nm) = (0, 0);
    for (s, c) in srcs {
        added += u64::from(c != 0);
        match c {
            0 => {}
            1 => {
                xs[nx] = s;
                nx += 1;
                if nx == BATCH {
                    kernel.xor_multi(dst, &xs);
                    nx = 0;
                }
            }
            _ => {
                ms[nm] = (s, c);
                nm += 1;
                if nm == BATCH {
                    kernel.mul_add_multi(dst, &ms);
                    nm = 0;
                }
            }
        }
    }
    if nx > 0 {
        kernel.xor_multi(dst, &xs[..nx]);
    }
    if nm > 0 {
        kernel.mul_add_multi(dst, &ms[..nm]);
    }
    added
}

/// `dst = first + sum c_i * src_i` like [`combine`], without reading `dst`: `first` is the
/// first source of the fused `xor_sum` (no copy of it into `dst` first). Returns the number of
/// non-zero terms added (`first` not counted).
pub(crate) fn combine_from<'s>(
    kernel: Kernel,
    dst: &mut [u8],
    first: &'s [u8],
    srcs: impl Iterator<Item = (&'s [u8], u8)>,
) -> u64 {
    let mut added = 0;
    let mut xs: [&[u8]; BATCH] = [&[]; BATCH];
    let mut ms: [(&[u8], u8); BATCH] = [(&[], 0); BATCH];
    xs[0] = first;
    let (mut nx, mut nm) = (1, 0);
    // Whether `dst` holds a value yet (the first fused call sets it).
    let mut set = false;
    for (s, c) in srcs {
        added += u64::from(c != 0);
        match c {
            0 => {}
            1 => {
                xs[nx] = s;
                nx += 1;
                if nx == BATCH {
                    if set {
                        kernel.xor_multi(dst, &xs);
                    } else {
                        kernel.xor_sum(dst, &xs);
                        set = true;
                    }
                    nx = 0;
                }
            }
            _ => {
                ms[nm] = (s, c);
                nm += 1;
                if nm == BATCH {
                    if !set {
                        kernel.xor_sum(dst, &xs[..nx]);
                        set = true;
                        nx = 0;
                    }
                    kernel.mul_add_multi(dst, &ms);
                    nm = 0;
                }
            }
        }
    }
    if !set {
        kernel.xor_sum(dst, &xs[..nx]);
    } else if nx > 0 {
        kernel.xor_multi(dst, &xs[..nx]);
    }
    if nm > 0 {
        kernel.mul_add_multi(dst, &ms[..nm]);
    }
    added
}
