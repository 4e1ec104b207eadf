//! The coded-packet payload format (versions 1 and 2).
//!
//! Little-endian, no padding:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version: 2 for a coded packet with sparse coefficients, else 1 |
//! | 1 | 1 | flags: bit 0 = GF(2^8) field, bit 1 = systematic, bit 2 = recoded (explicit vector), bit 3 = sparse coefficients (set exactly in version 2); other bits 0 |
//! | 2 | 2 | reserved, 0 |
//! | 4 | 4 | index: source symbol index (`< K`) if systematic, else subgeneration id (`< G`) |
//! | 8 | V | coded: `u64` coefficient seed (V = 8); recoded: coefficient vector (V = `ceil(w/8)` bytes LSB-first for GF(2), `w` bytes for GF(2^8), `w` = [`Layout::window`]); systematic: nothing (V = 0) |
//! | 8+V | S | the symbol, exactly `symbol_size` bytes |
//!
//! Systematic and recoded are mutually exclusive. A coded packet's coefficients are regenerated
//! from its seed by [`crate::coeffs`]: uniform ones in version 1, sparse ones in version 2
//! (added for encoder and decoder speed; version 1 is unchanged and still read and written).
//! The density is a code parameter ([`crate::Density`], [`Layout::sparse`]): a layout's coded
//! packets are all of one version, and [`parse`] rejects a coded packet of the other with
//! [`PacketError::Density`]. Unused bits of a GF(2) vector's last byte must be 0, so
//! every accepted packet has exactly one encoding.
//!
//! [`parse`] checks everything against the [`Layout`] (version, flags, the field, index range,
//! exact length) and never panics; the writers check the caller's buffer size.

use crate::layout::Layout;
use crate::params::Field;
use thiserror::Error;

/// Format version 1: every packet that is not a sparse coded packet (systematic, recoded and
/// uniform coded packets).
pub const VERSION: u8 = 1;
/// Format version 2: coded packets with sparse coefficients ([`FLAG_SPARSE`]).
pub const VERSION_SPARSE: u8 = 2;
/// Size of the fixed header (version, flags, reserved, index).
pub const HEADER_LEN: usize = 8;
/// Flag: coefficients are GF(2^8) elements.
pub const FLAG_GF256: u8 = 0x01;
/// Flag: the packet is source symbol `index`, uncoded.
pub const FLAG_SYSTEMATIC: u8 = 0x02;
/// Flag: the packet carries an explicit coefficient vector (recoded).
pub const FLAG_RECODED: u8 = 0x04;
/// Flag (version 2 only, coded packets only): the seed expands to sparse coefficients.
pub const FLAG_SPARSE: u8 = 0x08;
const KNOWN_FLAGS: u8 = FLAG_GF256 | FLAG_SYSTEMATIC | FLAG_RECODED | FLAG_SPARSE;

/// Which of the three packet forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// A source symbol, uncoded.
    Systematic,
    /// A combination of one subgeneration with coefficients from a seed.
    Coded,
    /// A combination of one subgeneration with an explicit coefficient vector.
    Recoded,
}

/// What a packet says about its coefficients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header<'a> {
    /// Source symbol `index`, uncoded.
    Systematic {
        /// Source index (`< K`).
        index: u32,
    },
    /// Subgeneration `subgen` combined with coefficients regenerated from `seed`.
    Coded {
        /// Subgeneration id (`< G`).
        subgen: u32,
        /// Coefficient seed.
        seed: u64,
    },
    /// Subgeneration `subgen` combined with an explicit vector.
    Recoded {
        /// Subgeneration id (`< G`).
        subgen: u32,
        /// The coefficient vector in wire form (see the module docs).
        coeffs: &'a [u8],
    },
}

impl Header<'_> {
    /// The packet form.
    pub fn kind(&self) -> PacketKind {
        match self {
            Header::Systematic { .. } => PacketKind::Systematic,
            Header::Coded { .. } => PacketKind::Coded,
            Header::Recoded { .. } => PacketKind::Recoded,
        }
    }
}

/// A parsed packet borrowing the datagram payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketView<'a> {
    /// Coefficient description.
    pub header: Header<'a>,
    /// The symbol (`symbol_size` bytes).
    pub symbol: &'a [u8],
}

/// Why a payload was rejected or could not be written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// The payload is shorter than the fixed header.
    #[error("packet of {got} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// Payload length.
        got: usize,
    },
    /// Unknown format version.
    #[error("unsupported packet version {0}")]
    Version(u8),
    /// Unknown flag bits, or systematic and recoded together.
    #[error("invalid flags {0:#04x}")]
    Flags(u8),
    /// A coded packet's coefficient density differs from the code's ([`Layout::sparse`]).
    #[error("packet coefficients sparse = {packet}, the code's sparse = {code}")]
    Density {
        /// Whether the packet says sparse.
        packet: bool,
        /// Whether the layout is sparse.
        code: bool,
    },
    /// The reserved field is not zero.
    #[error("reserved field is {0:#06x}, must be 0")]
    Reserved(u16),
    /// The packet's field differs from the session's.
    #[error("packet field {packet:?} does not match the code's field {code:?}")]
    FieldMismatch {
        /// Field named by the packet.
        packet: Field,
        /// Field of the layout.
        code: Field,
    },
    /// Source index or subgeneration id out of range.
    #[error("{what} {index} out of range (limit {limit})")]
    IndexOutOfRange {
        /// "source index" or "subgeneration".
        what: &'static str,
        /// The index.
        index: u32,
        /// Exclusive limit.
        limit: u32,
    },
    /// The payload length differs from the form's exact length.
    #[error("packet length {got} differs from the expected {expected}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// Unused bits of a GF(2) coefficient vector are set.
    #[error("padding bits of the coefficient vector are not zero")]
    VectorPadding,
    /// The caller's buffer or slice has the wrong size.
    #[error("buffer of {got} bytes, {needed} needed")]
    Buffer {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Bytes of an explicit coefficient vector for this layout.
pub fn vector_len(layout: &Layout) -> usize {
    let w = layout.window() as usize;
    match layout.field() {
        Field::Gf2 => w.div_ceil(8),
        Field::Gf256 => w,
    }
}

/// Exact payload length of a packet of `kind` for this layout.
pub fn len(layout: &Layout, kind: PacketKind) -> usize {
    HEADER_LEN
        + layout.symbol_size()
        + match kind {
            PacketKind::Systematic => 0,
            PacketKind::Coded => 8,
            PacketKind::Recoded => vector_len(layout),
        }
}

/// Largest payload length of any packet form for this layout.
pub fn max_len(layout: &Layout) -> usize {
    len(layout, PacketKind::Systematic)
        .max(len(layout, PacketKind::Coded))
        .max(len(layout, PacketKind::Recoded))
}

/// Parses and validates a payload against the layout.
pub fn parse<'a>(layout: &Layout, bytes: &'a [u8]) -> Result<PacketView<'a>, PacketError> {
    if bytes.len() < HEADER_LEN {
        return Err(PacketError::Truncated { got: bytes.len() });
    }
    let version = bytes[0];
    if version != VERSION && version != VERSION_SPARSE {
        return Err(PacketError::Version(version));
    }
    let flags = bytes[1];
    let sparse = flags & FLAG_SPARSE != 0;
    if flags & !KNOWN_FLAGS != 0
        || flags & (FLAG_SYSTEMATIC | FLAG_RECODED) == FLAG_SYSTEMATIC | FLAG_RECODED
        || sparse != (version == VERSION_SPARSE)
        || (sparse && flags & (FLAG_SYSTEMATIC | FLAG_RECODED) != 0)
    {
        return Err(PacketError::Flags(flags));
    }
    let reserved = u16::from_le_bytes([bytes[2], bytes[3]]);
    if reserved != 0 {
        return Err(PacketError::Reserved(reserved));
    }
    let field = if flags & FLAG_GF256 != 0 {
        Field::Gf256
    } else {
        Field::Gf2
    };
    if field != layout.field() {
        return Err(PacketError::FieldMismatch {
            packet: field,
            code: layout.field(),
        });
    }
    let index = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let kind = if flags & FLAG_SYSTEMATIC != 0 {
        PacketKind::Systematic
    } else if flags & FLAG_RECODED != 0 {
        PacketKind::Recoded
    } else {
        PacketKind::Coded
    };
    if kind == PacketKind::Coded && sparse != layout.sparse() {
        return Err(PacketError::Density {
            packet: sparse,
            code: layout.sparse(),
        });
    }
    let (what, limit) = match kind {
        PacketKind::Systematic => ("source index", layout.source_count()),
        _ => ("subgeneration", layout.subgen_count()),
    };
    if index >= limit {
        return Err(PacketError::IndexOutOfRange { what, index, limit });
    }
    let expected = len(layout, kind);
    if bytes.len() != expected {
        return Err(PacketError::Length {
            expected,
            got: bytes.len(),
        });
    }
    let body = &bytes[HEADER_LEN..];
    let (header, symbol) = match kind {
        PacketKind::Systematic => (Header::Systematic { index }, body),
        PacketKind::Coded => {
            let (seed, sym) = body.split_at(8);
            let seed = u64::from_le_bytes(seed.try_into().expect("split at 8"));
            (
                Header::Coded {
                    subgen: index,
                    seed,
                },
                sym,
            )
        }
        PacketKind::Recoded => {
            let (coeffs, sym) = body.split_at(vector_len(layout));
            if field == Field::Gf2 && !gf2_padding_clear(layout, coeffs) {
                return Err(PacketError::VectorPadding);
            }
            (
                Header::Recoded {
                    subgen: index,
                    coeffs,
                },
                sym,
            )
        }
    };
    Ok(PacketView { header, symbol })
}

fn gf2_padding_clear(layout: &Layout, coeffs: &[u8]) -> bool {
    let used = layout.window() as usize % 8;
    used == 0 || coeffs.last().is_none_or(|&b| b >> used == 0)
}

/// Writes the header (and seed or vector) of a packet into `out` and returns the symbol area
/// (`symbol_size` bytes) for the caller to fill. `out` must be at least [`len`] bytes; only
/// that prefix is touched. Indices and vectors are checked like [`parse`] checks them.
pub fn write_header<'o>(
    layout: &Layout,
    header: &Header<'_>,
    out: &'o mut [u8],
) -> Result<&'o mut [u8], PacketError> {
    let kind = header.kind();
    let needed = len(layout, kind);
    if out.len() < needed {
        return Err(PacketError::Buffer {
            needed,
            got: out.len(),
        });
    }
    let mut flags = match layout.field() {
        Field::Gf2 => 0,
        Field::Gf256 => FLAG_GF256,
    };
    let index = match *header {
        Header::Systematic { index } => {
            flags |= FLAG_SYSTEMATIC;
            check_index("source index", index, layout.source_count())?;
            index
        }
        Header::Coded { subgen, .. } => {
            check_index("subgeneration", subgen, layout.subgen_count())?;
            if layout.sparse() {
                flags |= FLAG_SPARSE;
            }
            subgen
        }
        Header::Recoded { subgen, coeffs } => {
            flags |= FLAG_RECODED;
            check_index("subgeneration", subgen, layout.subgen_count())?;
            if coeffs.len() != vector_len(layout) {
                return Err(PacketError::Buffer {
                    needed: vector_len(layout),
                    got: coeffs.len(),
                });
            }
            if layout.field() == Field::Gf2 && !gf2_padding_clear(layout, coeffs) {
                return Err(PacketError::VectorPadding);
            }
            subgen
        }
    };
    let out = &mut out[..needed];
    out[0] = if flags & FLAG_SPARSE != 0 {
        VERSION_SPARSE
    } else {
        VERSION
    };
    out[1] = flags;
    out[2..4].fill(0);
    out[4..8].copy_from_slice(&index.to_le_bytes());
    let body = &mut out[HEADER_LEN..];
    let sym = match *header {
        Header::Systematic { .. } => body,
        Header::Coded { seed, .. } => {
            body[..8].copy_from_slice(&seed.to_le_bytes());
            &mut body[8..]
        }
        Header::Recoded { coeffs, .. } => {
            body[..coeffs.len()].copy_from_slice(coeffs);
            &mut body[coeffs.len()..]
        }
    };
    Ok(sym)
}

fn check_index(what: &'static str, index: u32, limit: u32) -> Result<(), PacketError> {
    if index < limit {
        Ok(())
    } else {
        Err(PacketError::IndexOutOfRange { what, index, limit })
    }
}

/// Writes a whole packet into `out` and returns its length.
pub fn write(
    layout: &Layout,
    packet: &PacketView<'_>,
    out: &mut [u8],
) -> Result<usize, PacketError> {
    if packet.symbol.len() != layout.symbol_size() {
        return Err(PacketError::Buffer {
            needed: layout.symbol_size(),
            got: packet.symbol.len(),
        });
    }
    let sym = write_header(layout, &packet.header, out)?;
    sym.copy_from_slice(packet.symbol);
    Ok(len(layout, packet.header.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::CodeParams;

    #[test]
    fn round_trip_each_kind() {
        let l = CodeParams::new(10_000).symbol_size(100).validate().unwrap();
        let sym = vec![7u8; 100];
        let vec = vec![0xAAu8; vector_len(&l)];
        for header in [
            Header::Systematic { index: 99 },
            Header::Coded {
                subgen: 1,
                seed: 0x0102030405060708,
            },
            Header::Recoded {
                subgen: 0,
                coeffs: &vec,
            },
        ] {
            let p = PacketView {
                header,
                symbol: &sym,
            };
            let mut buf = vec![0u8; max_len(&l) + 3];
            let n = write(&l, &p, &mut buf).unwrap();
            assert_eq!(n, len(&l, header.kind()));
            assert_eq!(parse(&l, &buf[..n]).unwrap(), p);
            assert!(parse(&l, &buf[..n - 1]).is_err());
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let l = CodeParams::new(1000).symbol_size(10).validate().unwrap();
        let mut buf = vec![0u8; len(&l, PacketKind::Coded)];
        write_header(&l, &Header::Coded { subgen: 0, seed: 1 }, &mut buf).unwrap();
        assert!(parse(&l, &buf).is_ok());
        assert_eq!((buf[0], buf[1]), (VERSION_SPARSE, FLAG_SPARSE));
        let mut b = buf.clone();
        b[0] = 3;
        assert_eq!(parse(&l, &b), Err(PacketError::Version(3)));
        let mut b = buf.clone();
        b[1] = FLAG_SYSTEMATIC | FLAG_RECODED;
        assert_eq!(parse(&l, &b), Err(PacketError::Flags(6)));
        // Version 2 exactly with the sparse flag, and only on coded packets.
        let mut b = buf.clone();
        b[1] = 0;
        assert_eq!(parse(&l, &b), Err(PacketError::Flags(0)));
        let mut b = buf.clone();
        b[0] = VERSION;
        assert_eq!(parse(&l, &b), Err(PacketError::Flags(FLAG_SPARSE)));
        let mut b = buf.clone();
        b[1] = FLAG_SPARSE | FLAG_SYSTEMATIC;
        assert_eq!(parse(&l, &b), Err(PacketError::Flags(0x0A)));
        // A uniform (version 1) coded packet against a sparse code, and the reverse.
        let mut b = buf.clone();
        b[0] = VERSION;
        b[1] = 0;
        assert_eq!(
            parse(&l, &b),
            Err(PacketError::Density {
                packet: false,
                code: true
            })
        );
        let uniform = CodeParams::new(1000)
            .symbol_size(10)
            .density(crate::Density::Uniform)
            .validate()
            .unwrap();
        assert!(parse(&uniform, &b).is_ok());
        assert_eq!(
            parse(&uniform, &buf),
            Err(PacketError::Density {
                packet: true,
                code: false
            })
        );
        let mut b = buf.clone();
        b[1] = FLAG_GF256 | FLAG_SPARSE;
        assert!(matches!(
            parse(&l, &b),
            Err(PacketError::FieldMismatch { .. })
        ));
        let mut b = buf.clone();
        b[4] = 200;
        assert!(matches!(
            parse(&l, &b),
            Err(PacketError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            parse(&l, &buf[..5]),
            Err(PacketError::Truncated { got: 5 })
        ));
        assert!(write_header(&l, &Header::Systematic { index: 100 }, &mut buf).is_err());
    }
}
