//! Decoders: the public [`Decoder`] front and the engines behind it.
//!
//! Contract:
//! * [`Decoder::new`] borrows the caller's output buffer (exactly `segment_len` bytes) and
//!   decodes into it: there is no second copy of the segment. Its contents are unspecified
//!   until [`Decoder::is_complete`]; then it holds the segment byte for byte.
//! * [`Decoder::push`] takes one packet payload (the format of [`crate::packet`]), parses and
//!   validates it against the [`Layout`], and feeds it to the engine for the code kind: the
//!   band decoder (module `band`) for [`CodeKind::Band`], the dense Gaussian decoder
//!   ([`dense`]) for [`CodeKind::Random`]. Systematic, coded (seed) and recoded (explicit
//!   vector) packets are all accepted. A malformed or out-of-range packet is answered with a
//!   [`DecodeError`] and changes nothing; no input makes it panic.
//! * Redundant (non-innovative) packets are recognised from their coefficients alone and
//!   cost no symbol work.
//! * Progress: [`Decoder::rank`] (innovative packets held), [`Decoder::received`] (valid
//!   packets pushed until completion), [`Decoder::overhead`] (`received / K`).
//!
//! The band decoder defers all symbol arithmetic until the precode can resolve the remaining
//! unknowns, then runs it as a few streaming passes (see the private module `band`): pushes
//! are cheap, and the packet that completes the segment carries the bulk of the work.
//!
//! Deferred finish ([`Decoder::set_deferred_finish`]): the push that completes the rank
//! returns [`Progress::Complete`] at once, without the symbol work; [`Decoder::is_solved`] is
//! then true while [`Decoder::is_complete`] stays false until [`Decoder::finish`] has run the
//! passes. A receiver uses it to tell the sender to stop before spending the decode time.
//! The default (immediate) mode runs the passes inside that push.

mod band;
pub mod dense;

use crate::coeffs::CoeffRow;
use crate::field::Kernel;
use crate::layout::Layout;
use crate::packet::{self, PacketError, PacketView};
use crate::params::CodeKind;
use band::{BandDecoder, BandPush};
use dense::{DenseDecoder, DenseError, DensePush};
use thiserror::Error;

/// What one accepted packet did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The packet was innovative; the segment is not complete yet.
    Innovative,
    /// The packet carried nothing new and was dropped.
    Redundant,
    /// No more packets are needed: this packet completed the rank, or it already was.
    /// In the default mode the output buffer then holds the segment; in deferred-finish mode
    /// call [`Decoder::finish`] first.
    Complete,
}

/// Why a packet or a decoder setup was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The payload failed to parse or does not fit the layout.
    #[error("malformed packet: {0}")]
    Packet(#[from] PacketError),
    /// The output buffer's length differs from the segment length.
    #[error("output buffer of {got} bytes, the segment has {expected}")]
    OutputLength {
        /// Segment length.
        expected: u64,
        /// Buffer length.
        got: usize,
    },
    /// The dense engine (random grouping) refused the layout or failed.
    #[error("dense decoder: {0}")]
    Dense(#[from] DenseError),
    /// [`Decoder::finish`] before the rank was complete.
    #[error("rank {rank} of {needed}: not solvable yet")]
    NotSolved {
        /// Innovative packets held.
        rank: u32,
        /// `K`.
        needed: u32,
    },
}

enum Engine<'a> {
    Band(Box<BandDecoder<'a>>),
    /// Random grouping: the dense decoder, finished into `out` once complete (no output in
    /// counting mode).
    Dense {
        dec: Box<DenseDecoder>,
        out: Option<&'a mut [u8]>,
        /// The solve has been written into `out` (or there is no `out`).
        finished: bool,
    },
    /// A segment of length 0: complete from the start.
    Empty,
}

/// Decoder of one segment into a caller-provided buffer.
pub struct Decoder<'a> {
    layout: Layout,
    row: CoeffRow,
    engine: Engine<'a>,
    received: u64,
    redundant: u64,
    rejected: u64,
    deferred: bool,
}

impl std::fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("rank", &self.rank())
            .field("received", &self.received)
            .field("complete", &self.is_complete())
            .finish_non_exhaustive()
    }
}

impl<'a> Decoder<'a> {
    /// A decoder for `layout` writing into `out`, which must be exactly `segment_len` bytes.
    pub fn new(layout: &Layout, out: &'a mut [u8]) -> Result<Decoder<'a>, DecodeError> {
        Self::with_kernel(layout, Kernel::best(), out)
    }

    /// Like [`Decoder::new`] with an explicit field kernel.
    pub fn with_kernel(
        layout: &Layout,
        kernel: Kernel,
        out: &'a mut [u8],
    ) -> Result<Decoder<'a>, DecodeError> {
        if out.len() as u64 != layout.segment_len() {
            return Err(DecodeError::OutputLength {
                expected: layout.segment_len(),
                got: out.len(),
            });
        }
        let engine = if layout.column_count() == 0 {
            Engine::Empty
        } else {
            match layout.kind() {
                CodeKind::Band => Engine::Band(Box::new(BandDecoder::new(layout, kernel, out))),
                CodeKind::Random => Engine::Dense {
                    dec: Box::new(DenseDecoder::with_kernel(layout, kernel)?),
                    out: Some(out),
                    finished: false,
                },
            }
        };
        Ok(Decoder {
            layout: layout.clone(),
            row: CoeffRow::new(layout),
            engine,
            received: 0,
            redundant: 0,
            rejected: 0,
            deferred: false,
        })
    }

    /// A band-code decoder that tracks coefficients only (no output, no symbol work). It
    /// completes at exactly the same packet as a full decoder fed the same stream, because
    /// completion depends on coefficients alone; benchmarks use it to measure overhead over
    /// many seeds. Random grouping gets a dense decoder that skips the final write-out.
    pub fn counting(layout: &Layout) -> Result<Decoder<'static>, DecodeError> {
        let engine = if layout.column_count() == 0 {
            Engine::Empty
        } else {
            match layout.kind() {
                CodeKind::Band => Engine::Band(Box::new(BandDecoder::counting(layout))),
                CodeKind::Random => Engine::Dense {
                    dec: Box::new(DenseDecoder::new(layout)?),
                    out: None,
                    finished: false,
                },
            }
        };
        Ok(Decoder {
            layout: layout.clone(),
            row: CoeffRow::new(layout),
            engine,
            received: 0,
            redundant: 0,
            rejected: 0,
            deferred: false,
        })
    }

    /// Deferred-finish mode on or off (off by default). When on, the push that completes the
    /// rank returns [`Progress::Complete`] without running the symbol passes; call
    /// [`Decoder::finish`] to run them. Switching it off does not run a pending finish.
    pub fn set_deferred_finish(&mut self, on: bool) {
        self.deferred = on;
        if let Engine::Band(b) = &mut self.engine {
            b.set_deferred(on);
        }
    }

    /// Runs the pending symbol passes so that the output buffer holds the segment. Idempotent:
    /// a no-op when already complete. [`DecodeError::NotSolved`] before the rank is complete.
    pub fn finish(&mut self) -> Result<(), DecodeError> {
        if !self.is_solved() {
            return Err(DecodeError::NotSolved {
                rank: self.rank(),
                needed: self.needed(),
            });
        }
        match &mut self.engine {
            Engine::Band(b) => {
                b.finish();
            }
            Engine::Dense { dec, out, finished } => {
                if !*finished {
                    if let Some(out) = out {
                        dec.finish(out)?;
                    }
                    *finished = true;
                }
            }
            Engine::Empty => {}
        }
        Ok(())
    }

    /// Parses one packet payload and feeds it to the decoder.
    pub fn push(&mut self, payload: &[u8]) -> Result<Progress, DecodeError> {
        match packet::parse(&self.layout, payload) {
            Ok(view) => self.push_view(&view),
            Err(e) => {
                self.rejected += 1;
                Err(e.into())
            }
        }
    }

    /// Feeds an already parsed packet (from [`packet::parse`] with this decoder's layout).
    pub fn push_view(&mut self, view: &PacketView<'_>) -> Result<Progress, DecodeError> {
        if self.is_solved() {
            return Ok(Progress::Complete);
        }
        if view.symbol.len() != self.layout.symbol_size() {
            self.rejected += 1;
            return Err(PacketError::Length {
                expected: self.layout.symbol_size(),
                got: view.symbol.len(),
            }
            .into());
        }
        if let Err(e) = self.row.expand(&self.layout, &view.header) {
            self.rejected += 1;
            return Err(e.into());
        }
        self.received += 1;
        let progress = match &mut self.engine {
            Engine::Band(b) => match b.push(&self.row, view.symbol) {
                BandPush::Innovative => Progress::Innovative,
                BandPush::Redundant => Progress::Redundant,
                BandPush::Complete => Progress::Complete,
            },
            Engine::Dense { dec, out, finished } => match dec.push_row(&self.row, view.symbol)? {
                DensePush::Redundant => Progress::Redundant,
                DensePush::Innovative if dec.is_complete() => {
                    if !self.deferred {
                        if let Some(out) = out {
                            dec.finish(out)?;
                        }
                        *finished = true;
                    }
                    Progress::Complete
                }
                DensePush::Innovative => Progress::Innovative,
            },
            Engine::Empty => Progress::Complete,
        };
        if progress == Progress::Redundant {
            self.redundant += 1;
        }
        Ok(progress)
    }

    /// Whether the output buffer holds the decoded segment.
    pub fn is_complete(&self) -> bool {
        match &self.engine {
            Engine::Band(b) => b.is_complete(),
            Engine::Dense { finished, .. } => *finished,
            Engine::Empty => true,
        }
    }

    /// Whether the rank is complete: no more packets are needed. Equal to
    /// [`Decoder::is_complete`] in the default mode; in deferred-finish mode it turns true
    /// first, and [`Decoder::finish`] completes the segment.
    pub fn is_solved(&self) -> bool {
        match &self.engine {
            Engine::Band(b) => b.is_solved(),
            Engine::Dense { dec, .. } => dec.is_complete(),
            Engine::Empty => true,
        }
    }

    /// Innovative packets held (the rank of the received equations, checks excluded).
    pub fn rank(&self) -> u32 {
        match &self.engine {
            Engine::Band(b) => b.rank(),
            Engine::Dense { dec, .. } => dec.rank() - self.layout.check_count(),
            Engine::Empty => 0,
        }
    }

    /// Valid packets pushed until completion (redundant ones included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Valid packets that were redundant.
    pub fn redundant(&self) -> u64 {
        self.redundant
    }

    /// Packets rejected as malformed or out of range.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// `K`: the number of packets a perfect code would need.
    pub fn needed(&self) -> u32 {
        self.layout.source_count()
    }

    /// `received / K` (1.0 for an empty segment).
    pub fn overhead(&self) -> f64 {
        match self.layout.source_count() {
            0 => 1.0,
            k => self.received as f64 / k as f64,
        }
    }

    /// Peak bytes the decoder itself allocated (the output buffer excluded); band code only,
    /// 0 for the other engines.
    pub fn peak_memory(&self) -> usize {
        match &self.engine {
            Engine::Band(b) => b.peak_bytes(),
            _ => 0,
        }
    }

    /// Hole-solve attempts of the band decoder so far (0 for other engines).
    pub fn solve_attempts(&self) -> u32 {
        match &self.engine {
            Engine::Band(b) => b.solve_tries(),
            _ => 0,
        }
    }

    /// Symbol operations the band decoder's payload passes performed so far: one source
    /// symbol added into a slot, or one slot scaled, each (copies of received symbols are not
    /// counted); 0 for the other engines. A systematic stream that delivered every source
    /// symbol decodes with none.
    pub fn symbol_ops(&self) -> u64 {
        match &self.engine {
            Engine::Band(b) => b.symbol_ops(),
            _ => 0,
        }
    }

    /// The layout this decoder was built for.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}
