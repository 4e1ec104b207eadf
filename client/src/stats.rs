//! Counters of one download, shared between the decoder thread (writer) and the control thread and the
//! progress bar (readers), and the `--json` summary built from them.
//!
//! Counters are relaxed atomics: each is exact, but a reader may see two of them at slightly different
//! moments. The decoder thread is the only writer of the data-plane counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Live counters of a download.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams taken from the data socket (all of them, good or bad).
    pub packets_received: AtomicU64,
    /// Bytes of those datagrams.
    pub datagram_bytes_received: AtomicU64,
    /// Packets that passed the header, session and MAC checks and were fed to a decoder.
    pub packets_accepted: AtomicU64,
    /// Codec payload bytes of accepted packets coming from the server.
    pub bytes_from_server: AtomicU64,
    /// Codec payload bytes of accepted packets coming from peers (cooperation; 0 until issue 5).
    pub bytes_from_peers: AtomicU64,
    /// Dropped: not a data packet (short, bad version, bad layout) or rejected by the decoder as malformed.
    pub dropped_malformed: AtomicU64,
    /// Dropped: the MAC does not verify under the session key.
    pub dropped_bad_mac: AtomicU64,
    /// Dropped: for a session this client does not know.
    pub dropped_wrong_session: AtomicU64,
    /// Dropped: for a session or segment already finished (late packets after StopSegment).
    pub dropped_stale: AtomicU64,
    /// Accepted packets that added no information (linearly dependent / duplicate).
    pub packets_redundant: AtomicU64,
    /// Source packets (K) of the segments decoded, for the decode overhead.
    pub source_packets_decoded: AtomicU64,
    /// Packets fed to decoders of the segments that finished decoding (their overhead numerator).
    pub packets_used_by_decoded: AtomicU64,
    /// Segments decoded and verified in this run.
    pub segments_completed: AtomicU64,
    /// Segments that were already complete when this run started (resumed).
    pub segments_resumed: AtomicU64,
    /// Decoded segments whose BLAKE3 digest failed (discarded and fetched again).
    pub segments_failed_digest: AtomicU64,
    /// Bytes of output verified in this run.
    pub bytes_verified: AtomicU64,
    /// Bytes of output that were already verified when this run started.
    pub bytes_resumed: AtomicU64,
    /// Verified packets handed to the cooperation queue.
    pub coop_forwarded: AtomicU64,
    /// Verified packets not handed to the cooperation queue because it was full.
    pub coop_dropped_full: AtomicU64,
    /// Control connections made (1 + reconnects).
    pub control_connects: AtomicU64,
    /// Codec payload bytes the cooperation shard sent to peers (the sender's side of `bytes_from_peers`).
    pub bytes_to_peers: AtomicU64,
    /// Data packets the cooperation shard sent to peers.
    pub packets_to_peers: AtomicU64,
    /// Microseconds the final flush and fsync of the output took (the writeback left at the end).
    pub fsync_micros: AtomicU64,
    /// Timing and sources of each segment decoded in this run, in decode order.
    pub segment_times: Mutex<Vec<SegmentTime>>,
}

impl Counters {
    /// Adds `n` to `counter` (relaxed).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter` (relaxed).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records the final fsync's duration.
    pub fn set_fsync(&self, took: Duration) {
        self.fsync_micros.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records a decoded segment (request to full rank `took`, and the payload bytes it got from the
    /// server and from peers).
    pub fn record_segment(&self, segment: u32, took: Duration, from_server: u64, from_peers: u64) {
        let time = SegmentTime {
            segment,
            // Milliseconds are plenty (and keep the JSON short).
            seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
            from_server,
            from_peers,
        };
        if let Ok(mut times) = self.segment_times.lock() {
            times.push(time);
        }
    }

    /// Total packets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        Self::get(&self.dropped_malformed)
            + Self::get(&self.dropped_bad_mac)
            + Self::get(&self.dropped_wrong_session)
            + Self::get(&self.dropped_stale)
    }

    /// Builds the `--json` summary of a run that took `elapsed`, for a file of `file_size` bytes.
    pub fn summary(&self, name: &str, file_size: u64, segments: u32, elapsed: Duration) -> Summary {
        let seconds = elapsed.as_secs_f64();
        let bytes_verified = Self::get(&self.bytes_verified);
        let source = Self::get(&self.source_packets_decoded);
        Summary {
            name: name.to_owned(),
            file_size,
            segments,
            segments_fetched: Self::get(&self.segments_completed),
            segments_resumed: Self::get(&self.segments_resumed),
            bytes: bytes_verified,
            bytes_resumed: Self::get(&self.bytes_resumed),
            seconds,
            rate_bytes_per_second: if seconds > 0.0 {
                bytes_verified as f64 / seconds
            } else {
                0.0
            },
            packets_received: Self::get(&self.packets_received),
            datagram_bytes_received: Self::get(&self.datagram_bytes_received),
            packets_accepted: Self::get(&self.packets_accepted),
            packets_redundant: Self::get(&self.packets_redundant),
            dropped: Dropped {
                malformed: Self::get(&self.dropped_malformed),
                bad_mac: Self::get(&self.dropped_bad_mac),
                wrong_session: Self::get(&self.dropped_wrong_session),
                stale: Self::get(&self.dropped_stale),
            },
            decode_overhead: if source > 0 {
                Self::get(&self.packets_used_by_decoded) as f64 / source as f64 - 1.0
            } else {
                0.0
            },
            segments_failed_digest: Self::get(&self.segments_failed_digest),
            bytes_from_server: Self::get(&self.bytes_from_server),
            bytes_from_peers: Self::get(&self.bytes_from_peers),
            coop_forwarded: Self::get(&self.coop_forwarded),
            coop_dropped_full: Self::get(&self.coop_dropped_full),
            control_connects: Self::get(&self.control_connects),
            bytes_to_peers: Self::get(&self.bytes_to_peers),
            packets_to_peers: Self::get(&self.packets_to_peers),
            fsync_seconds: Self::get(&self.fsync_micros) as f64 / 1e6,
            segment_times: self
                .segment_times
                .lock()
                .map(|times| times.clone())
                .unwrap_or_default(),
        }
    }
}

/// One decoded segment in the `--json` summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SegmentTime {
    /// Segment index.
    pub segment: u32,
    /// Seconds from its `RequestSegment` to full rank (before the symbol passes and the digest).
    pub seconds: f64,
    /// Codec payload bytes accepted for it from the server.
    pub from_server: u64,
    /// Codec payload bytes accepted for it from peers.
    pub from_peers: u64,
}

/// Packets dropped, by reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Dropped {
    /// Not a well-formed data packet.
    pub malformed: u64,
    /// MAC failed under the session key.
    pub bad_mac: u64,
    /// Unknown session id.
    pub wrong_session: u64,
    /// Late packets for a finished session.
    pub stale: u64,
}

/// The `--json` summary printed on stdout at the end of a `get`.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Summary {
    /// The file name on the server.
    pub name: String,
    /// Its size in bytes.
    pub file_size: u64,
    /// Its segment count.
    pub segments: u32,
    /// Segments fetched and verified in this run.
    pub segments_fetched: u64,
    /// Segments found complete from an earlier run (not fetched again).
    pub segments_resumed: u64,
    /// Output bytes fetched and verified in this run.
    pub bytes: u64,
    /// Output bytes found complete from an earlier run.
    pub bytes_resumed: u64,
    /// Wall time of this run.
    pub seconds: f64,
    /// `bytes / seconds`.
    pub rate_bytes_per_second: f64,
    /// Datagrams received on the data socket, good or bad.
    pub packets_received: u64,
    /// Bytes of those datagrams.
    pub datagram_bytes_received: u64,
    /// Packets that passed every check and were fed to a decoder.
    pub packets_accepted: u64,
    /// Accepted packets that added no information.
    pub packets_redundant: u64,
    /// Packets dropped, by reason.
    pub dropped: Dropped,
    /// Packets needed per source packet minus one, over the segments decoded in this run.
    pub decode_overhead: f64,
    /// Decoded segments that failed their digest and were fetched again.
    pub segments_failed_digest: u64,
    /// Codec payload bytes accepted from the server.
    pub bytes_from_server: u64,
    /// Codec payload bytes accepted from peers (0 until cooperation lands).
    pub bytes_from_peers: u64,
    /// Verified packets handed to the cooperation queue.
    pub coop_forwarded: u64,
    /// Verified packets dropped because the cooperation queue was full.
    pub coop_dropped_full: u64,
    /// Control connections made (1 + reconnects).
    pub control_connects: u64,
    /// Codec payload bytes sent to peers by the cooperation shard.
    #[serde(default)]
    pub bytes_to_peers: u64,
    /// Data packets sent to peers by the cooperation shard.
    #[serde(default)]
    pub packets_to_peers: u64,
    /// Seconds the final flush and fsync of the output took (what early writeback left to do).
    #[serde(default)]
    pub fsync_seconds: f64,
    /// Each segment decoded in this run, in decode order (a refetched segment appears twice).
    #[serde(default)]
    pub segment_times: Vec<SegmentTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_derives_rate_and_overhead() {
        let counters = Counters::default();
        Counters::add(&counters.bytes_verified, 1000);
        Counters::add(&counters.source_packets_decoded, 100);
        Counters::add(&counters.packets_used_by_decoded, 103);
        Counters::add(&counters.dropped_bad_mac, 2);
        Counters::add(&counters.dropped_stale, 1);
        counters.set_fsync(Duration::from_millis(250));
        counters.record_segment(0, Duration::from_micros(191_400), 1000, 24);
        let summary = counters.summary("f", 1000, 1, Duration::from_millis(500));
        assert_eq!(summary.fsync_seconds, 0.25);
        assert_eq!(
            summary.segment_times,
            vec![SegmentTime {
                segment: 0,
                seconds: 0.191,
                from_server: 1000,
                from_peers: 24
            }]
        );
        assert_eq!(summary.rate_bytes_per_second, 2000.0);
        assert!((summary.decode_overhead - 0.03).abs() < 1e-9);
        assert_eq!(counters.dropped_total(), 3);
        let json = serde_json::to_string(&summary).unwrap();
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, summary);
    }
}
