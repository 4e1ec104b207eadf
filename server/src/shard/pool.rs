//! Which packet a receiver of a session gets next: the session's shared systematic pool, then the
//! receiver's own coded stream.
//!
//! Contract:
//! - A systematic layout's `K` source symbols form the session's pool: each is handed out **once**
//!   across all receivers of the session, in the encoder's interleaved order (packets `0..K` of one
//!   session-level [`Stream`]), the next one going to whichever receiver's batch is being filled. The
//!   receivers' pacing alone decides their shares. Receivers present together thus hold disjoint
//!   source symbols (cooperating peers have something to give each other); a lone receiver gets all
//!   `K`, then coded repair, as a plain systematic stream would.
//! - Once the pool is exhausted (at once for non-systematic layouts), a receiver gets coded packets of
//!   its own stream (its own key): its `c`-th coded packet is packet `base + c` of that stream, `base`
//!   being `K` for systematic layouts (the stream's first coded counter) and 0 otherwise.
//! - Symbols handed to a receiver that leaves are not handed out again while others receive: they
//!   repair with coded packets, so correctness never depends on the pool. A receiver joining after
//!   the pool ran dry gets coded packets only, unless nobody receives the session any more: then the
//!   shard starts a fresh pool for it (no receiver present holds those symbols; a lone client that
//!   comes back within the session's idle time decodes from copies again).
//! - A receiver that does not cooperate ([`ReceiverStream::solo`]) leaves the pool alone: it gets its
//!   own stream from packet 0 (all `K` source symbols in its own interleaved order, then coded
//!   packets), because no peer would give it the other receivers' shares.
//! - Shares stay even: a receiver takes a pool symbol only while it holds at most
//!   [`SHARE_SLACK`] more than the fewest any other receiver with an open send window holds
//!   ([`ReceiverStream::set_share_cap`], set by the shard each round); above that it gets nothing
//!   (not coded packets) until the others catch up. Each receiver relays its share to every other
//!   one, so the largest share sets how long the relays take: a client that joined the session
//!   first took 40 % of the pool in the lab (N=4) and its uplink then held up the whole segment.
//! - The pool also counts the packets its receivers got before they left
//!   ([`SystematicPool::on_receiver_left`], kept across a refill): a receiver that decoded holds the
//!   whole segment and serves the session's later receivers as a peer, so what went to it is owed
//!   to them by peers too (the shard's send windows hold those packets back).
//! - [`ReceiverStream::peek`] then [`ReceiverStream::advance`]: the shard peeks at the next plan (a GSO
//!   batch stops where the packet length changes, at the pool → coded switch) and commits only what it
//!   wrote. [`ReceiverStream::seq`] numbers every packet sent to the receiver, pooled or coded, from 0
//!   (the `seq` of the data header: receivers measure loss from its gaps).

use snc::encoder::{Encoder, PacketPlan, Stream};
use snc::Layout;

/// Pool symbols a receiver may hold beyond the fewest another receiver holds (four GSO batches of
/// 64: a round's worth).
pub const SHARE_SLACK: u64 = 256;

/// A session's source symbols, each handed to one receiver.
#[derive(Debug, Clone)]
pub struct SystematicPool {
    /// Session-level stream whose packets `0..size` give the interleaved order.
    stream: Stream,
    /// Symbols handed out so far.
    handed: u64,
    /// `K` for systematic layouts, 0 otherwise.
    size: u64,
    /// Packets received by receivers that left the session.
    departed: u64,
}

impl SystematicPool {
    /// The pool of a session with `layout`, its order keyed by `key`.
    pub fn new(layout: &Layout, key: u64) -> Self {
        Self {
            stream: Stream::new(key),
            handed: 0,
            size: if layout.systematic() {
                u64::from(layout.source_count())
            } else {
                0
            },
            departed: 0,
        }
    }

    /// A fresh pool keyed by `key` (for a session nobody receives any more), keeping the count of
    /// packets its former receivers got ([`SystematicPool::departed`]).
    pub fn refill(&mut self, layout: &Layout, key: u64) {
        let departed = self.departed;
        *self = Self::new(layout, key);
        self.departed = departed;
    }

    /// A receiver left the session after getting `delivered` packets of it.
    pub fn on_receiver_left(&mut self, delivered: u64) {
        self.departed = self.departed.saturating_add(delivered);
    }

    /// Packets received by the receivers that left the session.
    pub fn departed(&self) -> u64 {
        self.departed
    }

    /// Source symbols not handed out yet.
    pub fn remaining(&self) -> u64 {
        self.size - self.handed
    }

    /// Source symbols handed out so far.
    pub fn handed(&self) -> u64 {
        self.handed
    }
}

/// The next packet of one receiver, from [`ReceiverStream::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextPacket {
    /// What to write.
    pub plan: PacketPlan,
    /// Taken from the session's pool (else from the receiver's coded stream).
    pub pooled: bool,
}

/// One receiver's packets: what it took from the pool and its own coded stream.
#[derive(Debug, Clone)]
pub struct ReceiverStream {
    /// The receiver's own stream (its key); only its coded counters are used, except for a solo
    /// receiver, which gets all of it.
    stream: Stream,
    /// A receiver that does not cooperate: it never takes from the pool (no peer would give it the
    /// others' shares) and gets its own stream from packet 0 (all `K` source symbols first, in its own
    /// interleaved order, then coded packets).
    solo: bool,
    /// Source symbols it got from the pool.
    pooled: u64,
    /// Coded packets it got.
    coded: u64,
    /// Most pool symbols it may hold for now ([`ReceiverStream::set_share_cap`]).
    share_cap: u64,
}

impl ReceiverStream {
    /// A receiver whose coded packets are keyed by `key`.
    pub fn new(key: u64) -> Self {
        Self {
            stream: Stream::new(key),
            solo: false,
            pooled: 0,
            coded: 0,
            share_cap: u64::MAX,
        }
    }

    /// A receiver that does not cooperate, its stream keyed by `key`: it gets packets `0, 1, ...`
    /// of its own stream and leaves the pool alone.
    pub fn solo(key: u64) -> Self {
        Self {
            solo: true,
            ..Self::new(key)
        }
    }

    /// Whether it is a solo receiver ([`ReceiverStream::solo`]).
    pub fn is_solo(&self) -> bool {
        self.solo
    }

    /// Caps its pool share for now at `fewest_other + SHARE_SLACK` (`fewest_other`: the fewest
    /// pool symbols another receiver with an open window holds; `None` when there is none).
    pub fn set_share_cap(&mut self, fewest_other: Option<u64>) {
        self.share_cap = fewest_other.map_or(u64::MAX, |n| n.saturating_add(SHARE_SLACK));
    }

    /// Packets sent to this receiver so far.
    pub fn sent(&self) -> u64 {
        self.pooled + self.coded
    }

    /// Source symbols it got from the pool.
    pub fn pooled(&self) -> u64 {
        self.pooled
    }

    /// Sequence number of its next packet (wraps after 2^32 packets).
    pub fn seq(&self) -> u32 {
        self.sent() as u32
    }

    /// Its next packet: the pool's next source symbol while any is left, else its next coded packet
    /// (a solo receiver: the next packet of its own stream); `None` for an empty segment, or while
    /// the pool lasts and its share is at its cap.
    pub fn peek(&self, pool: &SystematicPool, encoder: &Encoder<'_>) -> Option<NextPacket> {
        if self.solo {
            let plan = encoder.plan(&self.stream, self.coded)?;
            return Some(NextPacket {
                plan,
                pooled: false,
            });
        }
        if pool.remaining() > 0 {
            if self.pooled >= self.share_cap {
                return None;
            }
            let plan = encoder.plan(&pool.stream, pool.handed)?;
            return Some(NextPacket { plan, pooled: true });
        }
        let plan = encoder.plan(&self.stream, pool.size + self.coded)?;
        Some(NextPacket {
            plan,
            pooled: false,
        })
    }

    /// `next` (the last [`ReceiverStream::peek`]) was sent: takes its symbol from the pool, or counts
    /// the coded packet.
    pub fn advance(&mut self, pool: &mut SystematicPool, next: &NextPacket) {
        if next.pooled {
            pool.handed += 1;
            self.pooled += 1;
        } else {
            self.coded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snc::CodeParams;

    fn layout(len: u64, systematic: bool) -> Layout {
        CodeParams::new(len)
            .symbol_size(64)
            .systematic(systematic)
            .validate()
            .unwrap()
    }

    fn source_index(plan: PacketPlan) -> Option<u32> {
        match plan {
            PacketPlan::Systematic { index } => Some(index),
            PacketPlan::Coded { .. } => None,
        }
    }

    /// Sends `n` packets to `rx` the way a batch does; returns their plans.
    fn send(
        rx: &mut ReceiverStream,
        pool: &mut SystematicPool,
        encoder: &Encoder<'_>,
        n: usize,
    ) -> Vec<NextPacket> {
        (0..n)
            .map(|_| {
                let next = rx.peek(pool, encoder).unwrap();
                rx.advance(pool, &next);
                next
            })
            .collect()
    }

    #[test]
    fn receivers_share_the_pool_disjointly_then_get_their_own_coded_streams() {
        let data: Vec<u8> = (0..64 * 200 + 17).map(|i| (i * 7) as u8).collect();
        let layout = layout(data.len() as u64, true);
        let k = u64::from(layout.source_count());
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut pool = SystematicPool::new(&layout, 11);
        let mut a = ReceiverStream::new(1);
        let mut b = ReceiverStream::new(2);
        let mut indices = Vec::new();
        // Uneven batches: a takes 7, b 3, until the pool runs dry.
        while pool.remaining() > 0 {
            for (rx, n) in [(&mut a, 7), (&mut b, 3)] {
                let n = n.min(pool.remaining() as usize);
                for next in send(rx, &mut pool, &encoder, n) {
                    assert!(next.pooled);
                    indices.push(source_index(next.plan).unwrap());
                }
            }
        }
        assert_eq!(pool.handed(), k);
        assert_eq!(a.pooled() + b.pooled(), k);
        assert!(a.pooled() > 2 * b.pooled(), "shares follow the batches");
        // The pool follows the encoder's interleaved order of a session-level stream.
        let order: Vec<u32> = (0..k)
            .map(|n| source_index(encoder.plan(&Stream::new(11), n).unwrap()).unwrap())
            .collect();
        assert_eq!(indices, order);
        let mut sorted = indices.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..k as u32).collect::<Vec<_>>(),
            "each symbol once"
        );
        // Then each receiver gets its own stream's coded packets, from counter K on.
        let seq_before = a.seq();
        let coded_a = send(&mut a, &mut pool, &encoder, 5);
        let coded_b = send(&mut b, &mut pool, &encoder, 5);
        for (i, (na, nb)) in coded_a.iter().zip(&coded_b).enumerate() {
            assert!(!na.pooled && !nb.pooled);
            assert_eq!(
                na.plan,
                encoder.plan(&Stream::new(1), k + i as u64).unwrap()
            );
            assert_eq!(
                nb.plan,
                encoder.plan(&Stream::new(2), k + i as u64).unwrap()
            );
            assert_ne!(na.plan, nb.plan);
        }
        assert_eq!(a.seq(), seq_before + 5);
        assert_eq!(a.sent(), a.pooled() + 5);
    }

    #[test]
    fn a_lone_receiver_gets_every_source_symbol_then_coded_repair() {
        let data = vec![5u8; 64 * 50];
        let layout = layout(data.len() as u64, true);
        let k = layout.source_count() as usize;
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut pool = SystematicPool::new(&layout, 3);
        let mut rx = ReceiverStream::new(4);
        let sent = send(&mut rx, &mut pool, &encoder, k + 10);
        assert!(sent[..k].iter().all(|n| n.pooled));
        assert!(sent[k..].iter().all(|n| !n.pooled));
        assert!(sent[k..]
            .iter()
            .all(|n| matches!(n.plan, PacketPlan::Coded { .. })));
        // A late receiver finds the pool empty: coded only, its own.
        let late = ReceiverStream::new(5);
        let first = late.peek(&pool, &encoder).unwrap();
        assert!(!first.pooled);
        assert_eq!(first.plan, encoder.plan(&Stream::new(5), k as u64).unwrap());
        assert_eq!(late.seq(), 0);
    }

    #[test]
    fn a_receiver_ahead_waits_for_the_others_share() {
        let data = vec![3u8; 64 * 2000];
        let layout = layout(data.len() as u64, true);
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut pool = SystematicPool::new(&layout, 1);
        let mut early = ReceiverStream::new(2);
        let mut late = ReceiverStream::new(3);
        // Alone: no cap.
        early.set_share_cap(None);
        send(&mut early, &mut pool, &encoder, 1000);
        assert_eq!(early.pooled(), 1000);
        // The late one joins with nothing: the early one waits (gets nothing, not coded packets).
        early.set_share_cap(Some(late.pooled()));
        assert_eq!(early.peek(&pool, &encoder), None);
        late.set_share_cap(Some(early.pooled()));
        send(&mut late, &mut pool, &encoder, 800);
        early.set_share_cap(Some(late.pooled()));
        assert!(early.peek(&pool, &encoder).is_some_and(|n| n.pooled));
        send(&mut early, &mut pool, &encoder, 56);
        assert_eq!(early.peek(&pool, &encoder), None);
        assert_eq!(early.pooled(), 800 + SHARE_SLACK);
        // Once the pool is dry the cap no longer matters: coded packets.
        late.set_share_cap(None);
        let rest = pool.remaining() as usize;
        send(&mut late, &mut pool, &encoder, rest);
        assert!(early.peek(&pool, &encoder).is_some_and(|n| !n.pooled));
    }

    #[test]
    fn a_refill_keeps_what_departed_receivers_got() {
        let data = vec![3u8; 64 * 40];
        let layout = layout(data.len() as u64, true);
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut pool = SystematicPool::new(&layout, 1);
        let mut rx = ReceiverStream::new(2);
        send(&mut rx, &mut pool, &encoder, 40);
        assert_eq!(pool.remaining(), 0);
        pool.on_receiver_left(38);
        pool.on_receiver_left(5);
        assert_eq!(pool.departed(), 43);
        pool.refill(&layout, 9);
        assert_eq!(pool.remaining(), 40);
        assert_eq!(pool.handed(), 0);
        assert_eq!(pool.departed(), 43);
    }

    #[test]
    fn non_systematic_layouts_have_no_pool() {
        let data = vec![9u8; 64 * 30];
        let layout = layout(data.len() as u64, false);
        let encoder = Encoder::new(&layout, &data).unwrap();
        let mut pool = SystematicPool::new(&layout, 3);
        assert_eq!(pool.remaining(), 0);
        let mut rx = ReceiverStream::new(8);
        let sent = send(&mut rx, &mut pool, &encoder, 4);
        for (i, next) in sent.iter().enumerate() {
            assert!(!next.pooled);
            assert_eq!(next.plan, encoder.plan(&Stream::new(8), i as u64).unwrap());
        }
    }

    #[test]
    fn an_empty_segment_has_nothing_to_send() {
        let layout = layout(0, true);
        let encoder = Encoder::new(&layout, &[]).unwrap();
        let pool = SystematicPool::new(&layout, 1);
        assert_eq!(ReceiverStream::new(2).peek(&pool, &encoder), None);
    }
}
