//! Where the shard's packets come from: the codec layout of a segment, the read-only map of our
//! output file with an encoder per complete segment, and the bounded recoding buffer of the
//! segment being received.

use std::collections::VecDeque;
use std::fs::File;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ccfd_proto::FileMeta;
use ccfd_ring::mapped::{map_file, Mmap};
use snc::encoder::{EncodeError, Encoder};
use snc::recoder::{Recoder, RecoderPush};
use snc::Layout;

use crate::params::code_params;

/// Most memory a recoding buffer may hold, whatever the segment size.
pub const RECODER_MAX_BYTES: usize = 64 << 20;

/// The codec layout of `segment` of the file.
///
/// `meta.code.checks` is exact for a full-size segment (`min(segment_size, size)` bytes) and
/// `meta.last_segment_checks` for the last one, which may be shorter.
pub fn segment_layout(meta: &FileMeta, segment: u32) -> Result<Layout, String> {
    let len = meta
        .segment_len(segment)
        .ok_or_else(|| format!("segment {segment} is outside the file"))?;
    let mut params = code_params(&meta.code, len);
    if segment + 1 == meta.segment_count {
        params = params.checks(Some(meta.last_segment_checks));
    }
    params.validate().map_err(|e| {
        format!(
            "segment {segment} of {:?}: bad code parameters: {e}",
            meta.name
        )
    })
}

/// One segment's bytes in the shared read-only map of the output.
#[derive(Debug)]
pub struct SegmentBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl SegmentBytes {
    /// The bytes (empty if the map is shorter than the range, which [`OutputMap`] prevents).
    pub fn bytes(&self) -> &[u8] {
        self.map.get(self.range.clone()).unwrap_or(&[])
    }
}

/// Wrapper so the encoder can be the dependent of a `self_cell`.
#[derive(Debug)]
pub struct BorrowedEncoder<'a>(pub Encoder<'a>);

self_cell::self_cell!(
    /// A complete segment's mapped bytes and the snc encoder over them.
    pub struct SegmentCoder {
        owner: SegmentBytes,
        #[covariant]
        dependent: BorrowedEncoder,
    }
    impl {Debug}
);

impl SegmentCoder {
    /// Builds the encoder (computes the precode checks: tens of milliseconds for 32 MiB).
    pub fn build(layout: &Layout, bytes: SegmentBytes) -> Result<SegmentCoder, EncodeError> {
        SegmentCoder::try_new(bytes, |bytes| {
            Encoder::new(layout, bytes.bytes()).map(BorrowedEncoder)
        })
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder<'_> {
        &self.borrow_dependent().0
    }
}

/// The output file mapped read-only (`MAP_SHARED`: the decoder's writes through its own shared
/// mapping are visible), mapped at start and again when a segment lies beyond the current map.
#[derive(Debug)]
pub struct OutputMap {
    path: PathBuf,
    map: Option<Arc<Mmap>>,
}

impl OutputMap {
    /// Maps `path` now if it can (a failure is retried at the first segment asked for).
    pub fn open(path: &Path) -> OutputMap {
        let mut output = OutputMap {
            path: path.to_path_buf(),
            map: None,
        };
        if let Err(error) = output.remap() {
            tracing::debug!(path = %output.path.display(), %error, "output not mapped yet");
        }
        output
    }

    fn remap(&mut self) -> Result<(), String> {
        let file =
            File::open(&self.path).map_err(|e| format!("open {}: {e}", self.path.display()))?;
        let map = map_file(&file).map_err(|e| format!("map {}: {e}", self.path.display()))?;
        self.map = Some(Arc::new(map));
        Ok(())
    }

    /// The bytes of `range` of the output, remapping when the current map is too short.
    pub fn segment(&mut self, range: Range<usize>) -> Result<SegmentBytes, String> {
        let covered = |map: &Option<Arc<Mmap>>| map.as_ref().is_some_and(|m| m.len() >= range.end);
        if !covered(&self.map) {
            self.remap()?;
        }
        match &self.map {
            Some(map) if map.len() >= range.end => Ok(SegmentBytes {
                map: Arc::clone(map),
                range,
            }),
            Some(map) => Err(format!(
                "{} holds {} bytes, segment ends at {}",
                self.path.display(),
                map.len(),
                range.end
            )),
            None => Err(format!("{} is not mapped", self.path.display())),
        }
    }
}

/// The bounded recoding buffer of the segment being received: the server's packets in arrival
/// order, each sent once to every stream of the segment ([`Recoder::recode_arrival`]: a
/// systematic packet forwarded as it is, a coded one as a recoded packet that includes it).
#[derive(Debug)]
pub struct RecodeBuffer {
    /// The segment.
    pub segment: u32,
    /// Its layout.
    pub layout: Layout,
    /// The buffer (its MLPI forwarding queue is off: arrivals are sent by stamp).
    pub recoder: Recoder,
    /// Packets stored since the buffer started (its arrival stamps).
    pub stored: u64,
    /// Packets refused by the codec.
    pub rejected: u64,
    /// Which (re)start of the recoding buffer this is (streams restart from its first arrival
    /// when it changes).
    pub generation: u64,
    /// Arrivals that came from a peer (stamp, peer), oldest first: not relayed back to it.
    from_peers: VecDeque<(u64, IpAddr)>,
    /// Arrivals that came from peers, since the buffer started.
    pub stored_from_peers: u64,
    /// Our decoder reached full rank on the segment: the buffer spans it, so once a stream has
    /// relayed every arrival it may go on with fresh recoded packets ([`RecodeBuffer::recode_fresh`]).
    pub decoded: bool,
}

impl RecodeBuffer {
    /// An empty buffer for `segment` holding up to `1.25 N` packets (`N` = source + check
    /// columns: a full rank's worth with room for the redundancy of band windows), about the
    /// segment's size, at most [`RECODER_MAX_BYTES`].
    pub fn new(segment: u32, layout: Layout, generation: u64) -> RecodeBuffer {
        let per_packet = snc::packet::max_len(&layout);
        let columns = layout.column_count() as usize;
        let limit = (columns + columns / 4)
            .saturating_mul(per_packet)
            .min(RECODER_MAX_BYTES);
        let mut recoder = Recoder::new(&layout, limit);
        recoder.set_forward_systematic(false);
        RecodeBuffer {
            segment,
            layout,
            recoder,
            stored: 0,
            rejected: 0,
            generation,
            from_peers: VecDeque::new(),
            stored_from_peers: 0,
            decoded: false,
        }
    }

    /// Writes one fresh recoded packet (a random combination of the held packets of the
    /// subgeneration the buffer has sent least of: [`Recoder::recode`], systematic forwarding off)
    /// into `out`; `None` while nothing is held or `out` is too short. Once the segment decoded here
    /// the buffer spans it, so these are as useful to an asker as fresh coded packets of our copy,
    /// which we can encode only once the writer verified and wrote the segment.
    pub fn recode_fresh(&mut self, rng: &mut snc::prng::Prng, out: &mut [u8]) -> Option<usize> {
        self.recoder.recode(rng, out)
    }

    /// Buffers one verified codec payload of the segment, sent by `from_peer` (`None`: the
    /// server).
    pub fn push(&mut self, payload: &[u8], from_peer: Option<IpAddr>) {
        let Ok(view) = snc::packet::parse(&self.layout, payload) else {
            self.rejected += 1;
            return;
        };
        let stamp = self.recoder.arrivals();
        match self.recoder.push(&view) {
            Ok(RecoderPush::Stored) => {
                self.stored += 1;
                if let Some(peer) = from_peer {
                    self.stored_from_peers += 1;
                    self.from_peers.push_back((stamp, peer));
                    // Entries of arrivals evicted long ago are of no use: keep about a buffer's worth.
                    while self.from_peers.len() > self.recoder.capacity() + 16 {
                        self.from_peers.pop_front();
                    }
                }
            }
            Ok(RecoderPush::Duplicate) => {}
            Err(_) => self.rejected += 1,
        }
    }

    /// The first held arrival at or after `from` that did not come from `peer` (what a stream to
    /// `peer` relays next).
    pub fn next_arrival_for(&self, from: u64, peer: IpAddr) -> Option<u64> {
        let mut next = self.recoder.next_arrival(from)?;
        loop {
            let i = self.from_peers.partition_point(|&(stamp, _)| stamp < next);
            match self.from_peers.get(i) {
                Some(&(stamp, source)) if stamp == next && source == peer => {
                    next = self.recoder.next_arrival(next + 1)?;
                }
                _ => return Some(next),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ccfd_proto::{CodeKind, CodeParamsWire, FieldKind};

    fn meta(size: u64, segment_size: u64, checks: Option<u32>) -> FileMeta {
        let mut code = CodeParamsWire {
            segment_size,
            symbol_size: 1024,
            kind: CodeKind::Band,
            subgen_size: 64,
            stride: 16,
            checks: 0,
            field: FieldKind::Gf2,
            systematic: false,
        };
        let full = code_params(&code, segment_size.min(size))
            .checks(checks)
            .validate()
            .unwrap();
        code.checks = full.check_count();
        // As the server announces it: the last segment's own count under the same setting.
        let last_len = size - (size.div_ceil(segment_size) - 1) * segment_size;
        let last_segment_checks = code_params(&code, last_len)
            .checks(checks)
            .validate()
            .unwrap()
            .check_count();
        FileMeta {
            name: "f".into(),
            size,
            segment_size,
            segment_count: size.div_ceil(segment_size) as u32,
            code,
            last_segment_checks,
            digests: vec![[0; 32]; size.div_ceil(segment_size) as usize],
            version: 1,
        }
    }

    #[test]
    fn short_last_segment_uses_the_announced_check_count() {
        let seg = 1 << 20;
        // Default rule: the short segment gets the default count for its own size.
        let m = meta(seg * 2 + 100_000, seg, None);
        let last = segment_layout(&m, 2).unwrap();
        let expected = code_params(&m.code, 100_000)
            .checks(None)
            .validate()
            .unwrap();
        assert_eq!(last.check_count(), expected.check_count());
        assert_eq!(last.source_count(), expected.source_count());
        assert_eq!(segment_layout(&m, 0).unwrap().check_count(), m.code.checks);
        // A configured count is used for every segment.
        let m = meta(seg * 2 + 100_000, seg, Some(7));
        assert_eq!(segment_layout(&m, 2).unwrap().check_count(), 7);
        assert!(segment_layout(&m, 3).is_err());
        // A configured count that equals the full segment's default is still the configured count
        // for the short segment (a rule that guessed from `code.checks` took it for the default).
        let default_full = code_params(&m.code, seg).checks(None).validate().unwrap();
        let configured = default_full.check_count();
        let m = meta(seg * 2 + 100_000, seg, Some(configured));
        assert_eq!(segment_layout(&m, 2).unwrap().check_count(), configured);
        assert_ne!(configured, expected.check_count());
    }

    #[test]
    fn every_packet_is_an_arrival_and_duplicates_are_not() {
        let m = meta(64 * 1024, 64 * 1024, None);
        let mut sys = m.clone();
        sys.code.systematic = true;
        for m in [m, sys] {
            let layout = segment_layout(&m, 0).unwrap();
            let data = vec![5u8; 64 * 1024];
            let encoder = Encoder::new(&layout, &data).unwrap();
            let mut code = snc::encoder::Stream::new(1);
            let mut buf = vec![0u8; snc::packet::max_len(&layout)];
            let mut buffer = RecodeBuffer::new(0, layout.clone(), 1);
            for _ in 0..20 {
                let n = encoder.write_next(&mut code, &mut buf).unwrap();
                buffer.push(&buf[..n], None);
                buffer.push(&buf[..n], None);
            }
            // A coded packet again is stored again (it is one more arrival to relay); a
            // systematic one is not.
            let expected = if layout.systematic() { 20 } else { 40 };
            assert_eq!(buffer.stored, expected);
            assert_eq!(buffer.recoder.arrivals(), expected);
            buffer.push(b"garbage", None);
            assert_eq!(buffer.rejected, 1);
        }
    }

    #[test]
    fn a_peer_gets_no_arrival_back_that_came_from_it() {
        let m = meta(64 * 1024, 64 * 1024, None);
        let layout = segment_layout(&m, 0).unwrap();
        let data = vec![7u8; 64 * 1024];
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut code = snc::encoder::Stream::new(3);
        let mut buf = vec![0u8; snc::packet::max_len(&layout)];
        let mut buffer = RecodeBuffer::new(0, layout.clone(), 1);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        // Arrivals 0..6: server, a, a, server, b, a.
        for from in [None, Some(a), Some(a), None, Some(b), Some(a)] {
            let n = encoder.write_next(&mut code, &mut buf).unwrap();
            buffer.push(&buf[..n], from);
        }
        assert_eq!(buffer.stored, 6);
        assert_eq!(buffer.stored_from_peers, 4);
        let order = |peer: IpAddr| {
            let mut seen = Vec::new();
            let mut cursor = 0;
            while let Some(next) = buffer.next_arrival_for(cursor, peer) {
                seen.push(next);
                cursor = next + 1;
            }
            seen
        };
        assert_eq!(order(a), vec![0, 3, 4]);
        assert_eq!(order(b), vec![0, 1, 2, 3, 5]);
        assert_eq!(order("127.0.0.4".parse().unwrap()), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn recode_buffer_is_bounded_by_the_segment() {
        let m = meta(200 * 1024, 200 * 1024, None);
        let layout = segment_layout(&m, 0).unwrap();
        let buffer = RecodeBuffer::new(0, layout.clone(), 1);
        let columns = layout.column_count() as usize;
        assert!(buffer.recoder.capacity() >= columns + columns / 4);
        assert!(buffer.recoder.capacity() <= columns + columns / 4 + 8);
        let big = meta(1 << 30, 1 << 30, None);
        let huge = RecodeBuffer::new(0, segment_layout(&big, 0).unwrap(), 1);
        assert!(huge.recoder.capacity() * 1024 <= RECODER_MAX_BYTES);
    }
}
