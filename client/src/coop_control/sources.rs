//! Per-source receive statistics of the packets peers send us, kept by the decoder thread and read by
//! the cooperation control (which heartbeats them to each source so it paces its stream by them).
//!
//! The decoder thread keeps a [`SourceTally`] (a few entries, keyed by the sender's IP: every host has
//! its own IP, and a peer's packets come from its cooperation shard's socket on that IP) for the session
//! being received and publishes it on the shared [`SourceBoard`] after every receive batch. Publishing
//! never blocks the decoder: when the reader holds the board the copy is skipped and the next batch
//! publishes again.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// Most sources tallied per session (extra sources are still decoded, not tallied).
pub const MAX_SOURCES: usize = 32;

/// What one source sent us in the session being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceEntry {
    /// The sender's IP.
    pub ip: IpAddr,
    /// Packets accepted from it.
    pub packets: u64,
    /// Codec payload bytes of those packets.
    pub bytes: u64,
    /// Codec payload bytes of those packets that were innovative (raised the decoder's rank).
    pub useful_bytes: u64,
    /// Packets of those that were innovative.
    pub useful_packets: u64,
    /// Sequence number of its first accepted packet.
    pub seq_first: u32,
    /// Highest sequence number accepted from it.
    pub seq_max: u32,
}

impl SourceEntry {
    /// Packets the source sent over the span seen (`seq_max - seq_first + 1`), for loss.
    pub fn seq_span(&self) -> u64 {
        u64::from(self.seq_max.wrapping_sub(self.seq_first)) + 1
    }
}

/// The decoder thread's tally for one session (not shared).
#[derive(Debug, Default)]
pub struct SourceTally {
    session: u32,
    entries: Vec<SourceEntry>,
    dirty: bool,
}

impl SourceTally {
    /// An empty tally for `session`.
    pub fn new(session: u32) -> Self {
        SourceTally {
            session,
            entries: Vec::new(),
            dirty: true,
        }
    }

    /// Counts one accepted packet of `bytes` payload bytes with sequence number `seq` from `ip`;
    /// `innovative` when it raised the decoder's rank.
    pub fn record(&mut self, ip: IpAddr, seq: u32, bytes: u64, innovative: bool) {
        self.dirty = true;
        let useful = if innovative { bytes } else { 0 };
        if let Some(e) = self.entries.iter_mut().find(|e| e.ip == ip) {
            e.packets += 1;
            e.bytes += bytes;
            e.useful_bytes += useful;
            e.useful_packets += u64::from(innovative);
            // Sequence numbers only grow within a stream (a restart shows as a new first).
            if seq.wrapping_sub(e.seq_max) < u32::MAX / 2 {
                e.seq_max = seq;
            }
            return;
        }
        if self.entries.len() < MAX_SOURCES {
            self.entries.push(SourceEntry {
                ip,
                packets: 1,
                bytes,
                useful_bytes: useful,
                useful_packets: u64::from(innovative),
                seq_first: seq,
                seq_max: seq,
            });
        }
    }

    /// The entries so far.
    pub fn entries(&self) -> &[SourceEntry] {
        &self.entries
    }
}

/// The published tallies, shared by the decoder thread (writer) and the cooperation control (reader).
#[derive(Debug, Default)]
pub struct SourceBoard {
    published: Mutex<Published>,
    /// Packets dropped because the segment is fetched from the server alone (after a digest failure)
    /// and they came from another address or claimed to come from a peer.
    pub dropped_not_server: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct Published {
    session: Option<u32>,
    entries: Vec<SourceEntry>,
}

impl SourceBoard {
    /// Copies `tally` onto the board unless a reader holds it right now (never blocks).
    pub fn publish(&self, tally: &mut SourceTally) {
        if !tally.dirty {
            return;
        }
        if let Ok(mut published) = self.published.try_lock() {
            published.session = Some(tally.session);
            published.entries.clear();
            published.entries.extend_from_slice(&tally.entries);
            tally.dirty = false;
        }
    }

    /// The latest published tally: its session and entries (`None` before the first).
    pub fn snapshot(&self) -> (Option<u32>, Vec<SourceEntry>) {
        match self.published.lock() {
            Ok(p) => (p.session, p.entries.clone()),
            Err(poisoned) => {
                let p = poisoned.into_inner();
                (p.session, p.entries.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_per_ip_and_publishes() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let mut tally = SourceTally::new(7);
        for seq in [10, 11, 13, 14] {
            tally.record(a, seq, 100, seq != 13);
        }
        tally.record(b, 0, 50, true);
        let board = SourceBoard::default();
        board.publish(&mut tally);
        let (session, entries) = board.snapshot();
        assert_eq!(session, Some(7));
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].packets, 4);
        assert_eq!(entries[0].bytes, 400);
        assert_eq!(entries[0].useful_bytes, 300);
        assert_eq!(entries[0].seq_span(), 5);
        assert_eq!(entries[1].seq_span(), 1);
    }
}
