//! The hand-off from the decoder thread to the cooperation shard (issue 5, DESIGN.md §5).
//!
//! The decoder thread pushes a copy of every verified data packet (header checked, MAC good, accepted by
//! the decoder) of the segment it is receiving into a bounded lock-free [`ArrayQueue`]. The push never
//! blocks: when the queue is full the packet is dropped and counted (`coop_dropped_full`), because the
//! decoder must never wait on cooperation.
//!
//! Until the cooperation shard exists nobody pops from the queue: it fills to capacity and every later
//! packet is counted as dropped-when-full. The shard will pop [`VerifiedPacket`]s into its recoding buffer
//! for `segment`, and use `session` to tell which packets belong to the segment peers asked for.
//!
//! Besides the server's packets, the decoder hands over the *fresh coded* packets peers sent us
//! ([`is_fresh_coded`]: a peer encodes them from its complete copy, a distinct stream per asker),
//! with the peer's address: the shard relays them to its other askers, so the peers that lag behind
//! a client that got a segment first pass its packets on to each other instead of all waiting on
//! its uplink. Peers' systematic and recoded packets are relays of what the server sent them and
//! every asker gets those from their relayer directly: they are not handed over (an echo).

use std::net::IpAddr;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::stats::Counters;

/// Default capacity of the queue, in packets (about 5 MiB of 1.3 KB packets).
pub const DEFAULT_CAPACITY: usize = 4096;

/// A copy of one verified data packet for the cooperation shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPacket {
    /// Segment index in the file.
    pub segment: u32,
    /// Server session id the packet came under.
    pub session: u32,
    /// The codec payload (coefficients or seed, then symbols) exactly as fed to the decoder.
    pub payload: Vec<u8>,
    /// The peer that sent it (`None`: the server); the shard relays it to every asker but that one.
    pub from_peer: Option<IpAddr>,
}

/// Whether a codec payload is a fresh coded packet (coefficients from a seed: neither a source
/// symbol nor a recoded packet), the form peers encode from a complete copy; malformed payloads
/// are not.
pub fn is_fresh_coded(payload: &[u8]) -> bool {
    const FLAGS: usize = 1;
    payload.len() > snc::packet::HEADER_LEN
        && payload[FLAGS] & (snc::packet::FLAG_SYSTEMATIC | snc::packet::FLAG_RECODED) == 0
}

/// The decoder's end of the cooperation queue.
#[derive(Clone, Debug)]
pub struct CoopQueue {
    queue: Arc<ArrayQueue<VerifiedPacket>>,
}

impl CoopQueue {
    /// A queue of `capacity` packets (at least 1).
    pub fn new(capacity: usize) -> Self {
        CoopQueue {
            queue: Arc::new(ArrayQueue::new(capacity.max(1))),
        }
    }

    /// Hands a packet over without blocking; counts it as forwarded or dropped-when-full.
    pub fn offer(&self, packet: VerifiedPacket, counters: &Counters) {
        match self.queue.push(packet) {
            Ok(()) => Counters::add(&counters.coop_forwarded, 1),
            Err(_) => Counters::add(&counters.coop_dropped_full, 1),
        }
    }

    /// The consumer's handle (for the cooperation shard).
    pub fn consumer(&self) -> Arc<ArrayQueue<VerifiedPacket>> {
        Arc::clone(&self.queue)
    }

    /// Packets waiting in the queue.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the queue is full (an offer now would be dropped): lets the decoder skip the copy.
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn only_fresh_coded_packets_are_relayable_from_peers() {
        let data = vec![1u8; 64 * 200];
        let layout = snc::CodeParams::new(data.len() as u64)
            .symbol_size(64)
            .systematic(true)
            .validate()
            .unwrap();
        let encoder = snc::encoder::Encoder::new(&layout, &data).unwrap();
        let mut buf = vec![0u8; snc::packet::max_len(&layout)];
        let stream = snc::encoder::Stream::new(5);
        let k = u64::from(layout.source_count());
        let systematic = encoder.plan(&stream, 0).unwrap();
        let n = encoder.write(&systematic, &mut buf).unwrap();
        assert!(!is_fresh_coded(&buf[..n]));
        let coded = encoder.plan(&stream, k).unwrap();
        let n = encoder.write(&coded, &mut buf).unwrap();
        assert!(is_fresh_coded(&buf[..n]));
        // Recoded: the same packet through a recoder.
        let mut recoder = snc::recoder::Recoder::new(&layout, 1 << 20);
        recoder.set_forward_systematic(false);
        recoder
            .push(&snc::packet::parse(&layout, &buf[..n]).unwrap())
            .unwrap();
        let mut out = vec![0u8; snc::packet::max_len(&layout)];
        let mut rng = snc::prng::Prng::new(1);
        let m = recoder.recode_arrival(0, &mut rng, &mut out).unwrap();
        assert!(!is_fresh_coded(&out[..m]));
        assert!(!is_fresh_coded(b"short"));
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let counters = Counters::default();
        let queue = CoopQueue::new(2);
        for i in 0..5 {
            queue.offer(
                VerifiedPacket {
                    segment: 0,
                    session: 1,
                    payload: vec![i],
                    from_peer: None,
                },
                &counters,
            );
        }
        assert_eq!(queue.len(), 2);
        assert_eq!(counters.coop_forwarded.load(Ordering::Relaxed), 2);
        assert_eq!(counters.coop_dropped_full.load(Ordering::Relaxed), 3);
        assert_eq!(queue.consumer().pop().unwrap().payload, vec![0]);
    }
}
