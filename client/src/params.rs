//! Conversions between the wire's code parameters / file meta and what the client works with: the
//! codec [`Layout`] of a session's segment and the meta tag that ties a resume record to one version of a
//! file.

use ccfd_proto::{CodeKind as WireKind, CodeParamsWire, FieldKind, FileMeta, Frame, SessionMeta};
use snc::{CodeKind, CodeParams, Field, Layout};

/// The codec parameters of one segment of `segment_len` bytes as announced on the wire.
///
/// `checks` is taken as the exact precode check count (the server sends the resolved count), and the
/// grouping seed is 0 (only random grouping uses it; the wire does not carry one).
pub fn code_params(wire: &CodeParamsWire, segment_len: u64) -> CodeParams {
    CodeParams::new(segment_len)
        .symbol_size(wire.symbol_size)
        .kind(match wire.kind {
            WireKind::Band => CodeKind::Band,
            WireKind::Random => CodeKind::Random,
        })
        .subgen_size(wire.subgen_size)
        .stride(wire.stride)
        .checks(Some(wire.checks))
        .field(match wire.field {
            FieldKind::Gf2 => Field::Gf2,
            FieldKind::Gf256 => Field::Gf256,
        })
        .systematic(wire.systematic)
}

/// The validated codec layout of a session's segment, or a description of what is wrong with it.
pub fn session_layout(session: &SessionMeta) -> Result<Layout, String> {
    code_params(&session.code, session.segment_len)
        .validate()
        .map_err(|e| {
            format!(
                "session {} of segment {}: bad code parameters: {e}",
                session.session.0, session.segment
            )
        })
}

/// BLAKE3 of the file meta's canonical encoding: changes whenever the name, size, segmentation, code
/// parameters, any segment digest or the server's version tag change.
pub fn meta_tag(meta: &FileMeta) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"ccfd-client meta tag v1");
    match Frame::FileMeta(meta.clone()).to_bytes() {
        Ok(bytes) => {
            hasher.update(&bytes);
        }
        // A meta that does not encode came from a decoded frame, so this cannot happen; hash the fields
        // that matter anyway rather than fail.
        Err(_) => {
            hasher.update(meta.name.as_bytes());
            hasher.update(&meta.size.to_le_bytes());
            hasher.update(&meta.version.to_le_bytes());
            for digest in &meta.digests {
                hasher.update(digest);
            }
        }
    }
    *hasher.finalize().as_bytes()
}

/// Checks that a file meta from the server is self-consistent (digest count, segmentation).
pub fn check_meta(meta: &FileMeta) -> Result<(), String> {
    let expected = if meta.size == 0 {
        Some(0)
    } else {
        ccfd_proto::segment_count(meta.size, meta.segment_size)
    };
    if expected != Some(meta.segment_count) {
        return Err(format!(
            "file meta of {:?}: {} segments of {} bytes do not cover {} bytes",
            meta.name, meta.segment_count, meta.segment_size, meta.size
        ));
    }
    if meta.digests.len() != meta.segment_count as usize {
        return Err(format!(
            "file meta of {:?}: {} digests for {} segments",
            meta.name,
            meta.digests.len(),
            meta.segment_count
        ));
    }
    if usize::try_from(meta.size).is_err() {
        return Err(format!(
            "file {:?} of {} bytes is too large for this platform",
            meta.name, meta.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> CodeParamsWire {
        CodeParamsWire {
            segment_size: 1 << 20,
            symbol_size: 1280,
            kind: WireKind::Band,
            subgen_size: 64,
            stride: 16,
            checks: 10,
            field: FieldKind::Gf2,
            systematic: false,
        }
    }

    fn meta() -> FileMeta {
        FileMeta {
            name: "f".into(),
            size: 3000,
            segment_size: 1280,
            segment_count: 3,
            code: wire(),
            last_segment_checks: wire().checks,
            digests: vec![[1; 32], [2; 32], [3; 32]],
            version: 42,
        }
    }

    #[test]
    fn wire_params_convert_field_by_field() {
        let p = code_params(&wire(), 5000);
        assert_eq!(
            (p.segment_len, p.symbol_size, p.subgen_size, p.stride),
            (5000, 1280, 64, 16)
        );
        assert_eq!(
            (p.kind, p.field, p.checks, p.systematic),
            (CodeKind::Band, Field::Gf2, Some(10), false)
        );
    }

    #[test]
    fn meta_tag_changes_with_any_digest_or_version() {
        let base = meta_tag(&meta());
        assert_eq!(base, meta_tag(&meta()));
        let mut m = meta();
        m.digests[2][0] ^= 1;
        assert_ne!(meta_tag(&m), base);
        let mut m = meta();
        m.version += 1;
        assert_ne!(meta_tag(&m), base);
    }

    #[test]
    fn inconsistent_meta_is_rejected() {
        assert!(check_meta(&meta()).is_ok());
        let mut m = meta();
        m.digests.pop();
        assert!(check_meta(&m).is_err());
        let mut m = meta();
        m.segment_count = 2;
        assert!(check_meta(&m).is_err());
        let empty = FileMeta {
            size: 0,
            segment_count: 0,
            digests: vec![],
            ..meta()
        };
        assert!(check_meta(&empty).is_ok());
    }
}
