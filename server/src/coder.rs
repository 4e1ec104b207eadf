//! Code parameters (config ↔ snc ↔ wire) and the per-session encoder over a mapped segment.
//!
//! Wire convention (what clients must do): `CodeParamsWire.checks` is the **exact** precode check count
//! of the segment it describes. [`SessionMeta::code`](ccfd_proto::SessionMeta) is exact for that
//! session's segment; `FileMeta::code` is exact for a full-size segment (the last, shorter segment may
//! differ: build decoders from the `SessionMeta`). A client rebuilds the codec parameters with
//! [`snc_params_from_wire`]`(&session_meta.code, session_meta.segment_len)`; the random grouping seed is
//! always 0.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use ccfd_proto::{CodeKind as WireKind, CodeParamsWire, FieldKind};
use snc::encoder::Encoder;
use snc::{CodeKind, CodeParams, Field, Layout, ParamError};

use crate::catalog::ServedFile;
use crate::config::{CodeKindSetting, CodingSettings, FieldSetting};

/// The snc parameters the server uses for a segment of `segment_len` bytes.
pub fn snc_params(coding: &CodingSettings, segment_len: u64) -> CodeParams {
    CodeParams::new(segment_len)
        .symbol_size(coding.symbol_size)
        .kind(match coding.kind {
            CodeKindSetting::Band => CodeKind::Band,
            CodeKindSetting::Random => CodeKind::Random,
        })
        .field(match coding.field {
            FieldSetting::Gf2 => Field::Gf2,
            FieldSetting::Gf256 => Field::Gf256,
        })
        .subgen_size(coding.subgen_size)
        .stride(coding.stride)
        .checks(coding.checks)
        .systematic(coding.systematic)
}

/// The wire form of a validated layout (exact check count), with the file's nominal segment size.
pub fn wire_params(layout: &Layout, nominal_segment_size: u64) -> CodeParamsWire {
    let params = layout.params();
    CodeParamsWire {
        segment_size: nominal_segment_size,
        symbol_size: params.symbol_size,
        kind: match params.kind {
            CodeKind::Band => WireKind::Band,
            CodeKind::Random => WireKind::Random,
        },
        subgen_size: params.subgen_size,
        stride: params.stride,
        checks: layout.check_count(),
        field: match params.field {
            Field::Gf2 => FieldKind::Gf2,
            Field::Gf256 => FieldKind::Gf256,
        },
        systematic: params.systematic,
    }
}

/// snc parameters for a segment of `segment_len` bytes from its wire form (the inverse of
/// [`wire_params`]; what clients use).
pub fn snc_params_from_wire(code: &CodeParamsWire, segment_len: u64) -> CodeParams {
    CodeParams::new(segment_len)
        .symbol_size(code.symbol_size)
        .kind(match code.kind {
            WireKind::Band => CodeKind::Band,
            WireKind::Random => CodeKind::Random,
        })
        .field(match code.field {
            FieldKind::Gf2 => Field::Gf2,
            FieldKind::Gf256 => Field::Gf256,
        })
        .subgen_size(code.subgen_size)
        .stride(code.stride)
        .checks(Some(code.checks))
        .systematic(code.systematic)
}

/// Layouts kept per thread by [`segment_layout`] (every full segment of every file shares one).
const LAYOUT_CACHE: usize = 8;

/// Validated layout of segment `index` of `file` under `coding`.
///
/// Building a layout (its precode graph) costs milliseconds for a 32 MiB segment, and the control
/// plane needs the same one several times per segment (the request's reply, the session's encoder,
/// the next segment's prebuild): recent layouts are kept in a small per-thread cache keyed by their
/// parameters (a layout is a pure function of them) and cloned out.
pub fn segment_layout(
    coding: &CodingSettings,
    file: &ServedFile,
    index: u32,
) -> Result<Layout, ParamError> {
    thread_local! {
        static LAYOUTS: RefCell<VecDeque<(CodeParams, Layout)>> =
            const { RefCell::new(VecDeque::new()) };
    }
    let len = file
        .layout
        .segment_range(index)
        .map_or(0, |(_, len)| len as u64);
    let params = snc_params(coding, len);
    LAYOUTS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, layout)) = cache.iter().find(|(p, _)| *p == params) {
            return Ok(layout.clone());
        }
        let layout = params.clone().validate()?;
        if cache.len() == LAYOUT_CACHE {
            cache.pop_front();
        }
        cache.push_back((params, layout.clone()));
        Ok(layout)
    })
}

/// The bytes of one mapped segment (owner of a [`SessionCoder`]'s borrow).
#[derive(Debug)]
pub struct SegmentBytes {
    file: Arc<ServedFile>,
    index: u32,
}

impl SegmentBytes {
    /// Segment `index` of `file`.
    pub fn new(file: Arc<ServedFile>, index: u32) -> Self {
        Self { file, index }
    }

    /// The segment's bytes (empty when out of range or for an empty file).
    pub fn bytes(&self) -> &[u8] {
        self.file.segment_bytes(self.index).unwrap_or(&[])
    }

    /// The file.
    pub fn file(&self) -> &Arc<ServedFile> {
        &self.file
    }
}

/// Wrapper so the encoder can be the dependent of a `self_cell`.
#[derive(Debug)]
pub struct BorrowedEncoder<'a>(pub Encoder<'a>);

self_cell::self_cell!(
    /// A segment's mapping and the snc encoder borrowing it, kept together for the life of a session.
    pub struct SessionCoder {
        owner: SegmentBytes,
        #[covariant]
        dependent: BorrowedEncoder,
    }
    impl {Debug}
);

/// Why a session's encoder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CoderError {
    /// The parameters are invalid for this segment.
    #[error("code parameters: {0}")]
    Params(#[from] ParamError),
    /// The encoder refused the segment.
    #[error("encoder: {0}")]
    Encode(#[from] snc::encoder::EncodeError),
}

impl SessionCoder {
    /// Builds the encoder of segment `index` of `file` (computes the precode checks: blocking, tens of
    /// milliseconds for a 32 MiB segment).
    pub fn build(
        layout: &Layout,
        file: Arc<ServedFile>,
        index: u32,
    ) -> Result<SessionCoder, CoderError> {
        SessionCoder::try_new(SegmentBytes::new(file, index), |bytes| {
            Encoder::new(layout, bytes.bytes())
                .map(BorrowedEncoder)
                .map_err(CoderError::from)
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder<'_> {
        &self.borrow_dependent().0
    }

    /// The mapped segment.
    pub fn segment(&self) -> &SegmentBytes {
        self.borrow_owner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_the_layout() {
        let coding = CodingSettings {
            systematic: true,
            field: FieldSetting::Gf256,
            ..CodingSettings::default()
        };
        for len in [1u64, 1280, 1281, 1 << 20, (32 << 20) - 7] {
            let layout = snc_params(&coding, len).validate().unwrap();
            let wire = wire_params(&layout, 32 << 20);
            let back = snc_params_from_wire(&wire, len).validate().unwrap();
            assert_eq!(back.check_count(), layout.check_count(), "len {len}");
            assert_eq!(back.source_count(), layout.source_count());
            assert_eq!(back.subgen_count(), layout.subgen_count());
            assert_eq!(back.field(), layout.field());
            assert_eq!(back.systematic(), layout.systematic());
        }
    }
}
