//! Pacing of one stream: a token bucket in bytes over simulated time.
//!
//! [`TokenBucket`] is refilled at a rate in bits per second and holds at most [`BURST_WINDOW`] of
//! traffic (at least the caller's minimum, e.g. one datagram or one GSO batch), so batches stay
//! small at low rates and packets are spread, not burst. `now` is nanoseconds on any monotonic
//! clock; no clock is read here. The server paces each receiver with one, the client's
//! cooperation shard each peer stream and its upload cap.
//!
//! Every rate here counts *wire bytes*: each datagram's UDP payload plus its IP, UDP and Ethernet
//! headers ([`wire_len`]), so `--max-rate 200mbit` fills a 200 Mbit/s link and no more. Rates
//! receivers report back ([`wire_bytes`]) count the same way, so controllers compare like with like.

use std::net::IpAddr;
use std::time::Duration;

/// Traffic a receiver's bucket may send back to back: small enough that switch buffers do not
/// overflow, large enough for full GSO batches at gigabit rates and to absorb the shard's wake-up
/// latency on a busy host (a shard woken 3 ms late after a 2 ms window lost 60 % of its rate).
pub const BURST_WINDOW: Duration = Duration::from_millis(8);

const NANOS_PER_SEC: f64 = 1e9;

/// Bytes an IPv4 UDP datagram takes on an Ethernet link beyond its UDP payload: IPv4 header (20),
/// UDP header (8) and Ethernet header (14), what a link's shaper (e.g. tbf) counts. GSO does not
/// change it: every segment leaves as its own frame with its own headers.
pub const IPV4_WIRE_OVERHEAD: usize = 20 + 8 + 14;

/// Like [`IPV4_WIRE_OVERHEAD`] for IPv6: IPv6 header (40), UDP header (8), Ethernet header (14).
pub const IPV6_WIRE_OVERHEAD: usize = 40 + 8 + 14;

/// Header bytes a datagram to or from `ip` adds on the wire ([`IPV4_WIRE_OVERHEAD`] or
/// [`IPV6_WIRE_OVERHEAD`]; an IPv4-mapped IPv6 address travels as IPv4).
pub fn wire_overhead(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => IPV4_WIRE_OVERHEAD,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => IPV4_WIRE_OVERHEAD,
        IpAddr::V6(_) => IPV6_WIRE_OVERHEAD,
    }
}

/// Wire bytes of one datagram of `udp_payload_len` bytes to or from `ip`: what every pacer and rate
/// cap counts.
pub fn wire_len(udp_payload_len: usize, ip: IpAddr) -> usize {
    udp_payload_len + wire_overhead(ip)
}

/// Wire bytes of `datagrams` datagrams from `ip` that carried `bytes` bytes of which
/// `per_datagram_extra` per datagram were not counted in `bytes` (e.g. the data header and MAC
/// when `bytes` counts codec payload): how a receiver turns what it counted into the wire rate it
/// reports.
pub fn wire_bytes(bytes: u64, datagrams: u64, per_datagram_extra: usize, ip: IpAddr) -> u64 {
    let per_datagram = (per_datagram_extra + wire_overhead(ip)) as u64;
    bytes.saturating_add(datagrams.saturating_mul(per_datagram))
}

/// A token bucket in bytes, refilled continuously at `rate` bits per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bytes_per_ns: f64,
    burst_bytes: f64,
    tokens: f64,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at `rate_bps` bits/s whose burst is [`BURST_WINDOW`] of traffic but at least
    /// `min_burst_bytes` (one datagram).
    pub fn new(rate_bps: u64, min_burst_bytes: usize, now_ns: u64) -> Self {
        let mut bucket = Self {
            bytes_per_ns: 0.0,
            burst_bytes: 0.0,
            tokens: 0.0,
            last_ns: now_ns,
        };
        bucket.set_rate(rate_bps, min_burst_bytes, now_ns);
        bucket.tokens = bucket.burst_bytes;
        bucket
    }

    /// Changes the rate (tokens earned so far at the old rate are kept, capped at the new burst).
    pub fn set_rate(&mut self, rate_bps: u64, min_burst_bytes: usize, now_ns: u64) {
        self.refill(now_ns);
        self.bytes_per_ns = rate_bps.max(1) as f64 / 8.0 / NANOS_PER_SEC;
        let window = self.bytes_per_ns * BURST_WINDOW.as_nanos() as f64;
        self.burst_bytes = window.max(min_burst_bytes as f64);
        self.tokens = self.tokens.min(self.burst_bytes);
    }

    /// The rate in bits per second.
    pub fn rate_bps(&self) -> u64 {
        (self.bytes_per_ns * 8.0 * NANOS_PER_SEC).round() as u64
    }

    /// The burst in bytes.
    pub fn burst_bytes(&self) -> usize {
        self.burst_bytes as usize
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed as f64 * self.bytes_per_ns).min(self.burst_bytes);
    }

    /// Bytes that may be sent now.
    pub fn available(&mut self, now_ns: u64) -> usize {
        self.refill(now_ns);
        self.tokens.max(0.0) as usize
    }

    /// Spends `bytes` (the balance may go negative by less than one datagram when the caller sent a batch
    /// that `available` allowed; it is repaid by waiting).
    pub fn consume(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }

    /// Nanoseconds from `now_ns` until `bytes` may be sent (0 if now).
    pub fn wait_ns(&mut self, now_ns: u64, bytes: usize) -> u64 {
        self.refill(now_ns);
        let missing = bytes as f64 - self.tokens;
        if missing <= 0.0 {
            0
        } else {
            (missing / self.bytes_per_ns).ceil() as u64
        }
    }
}

/// How many datagrams of `datagram_len` bytes the bucket allows now, at most `max` (a GSO batch).
pub fn batch_datagrams(
    bucket: &mut TokenBucket,
    now_ns: u64,
    datagram_len: usize,
    max: usize,
) -> usize {
    if datagram_len == 0 {
        return 0;
    }
    (bucket.available(now_ns) / datagram_len).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const DGRAM: usize = 1312;

    fn run(bucket: &mut TokenBucket, start_ns: u64, duration_ns: u64) -> u64 {
        let mut sent = 0u64;
        let mut now = start_ns;
        while now < start_ns + duration_ns {
            let n = batch_datagrams(bucket, now, DGRAM, 64);
            bucket.consume(n * DGRAM);
            sent += (n * DGRAM) as u64;
            now += 100_000;
        }
        sent
    }

    #[test]
    fn a_link_rate_bucket_passes_the_link_rate_in_frames() {
        // 200 Mbit/s of wire: datagrams of 1330 bytes (1372 on the wire over IPv4) pass at
        // 200e6 / 8 / 1372 per second, not 200e6 / 8 / 1330.
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(wire_len(1330, v4), 1372);
        assert_eq!(wire_len(1330, v6), 1392);
        assert_eq!(wire_len(1330, mapped), 1372);
        for (ip, frame) in [(v4, 1372.0), (v6, 1392.0)] {
            let wire = wire_len(1330, ip);
            let mut bucket = TokenBucket::new(200_000_000, wire, 0);
            let mut datagrams = 0u64;
            let mut now = 0;
            while now < SEC {
                let n = batch_datagrams(&mut bucket, now, wire, 64);
                bucket.consume(n * wire);
                datagrams += n as u64;
                now += 100_000;
            }
            let expected = 200e6 / 8.0 / frame;
            let err = (datagrams as f64 - expected).abs() / expected;
            assert!(
                err < 0.01,
                "{ip}: {datagrams} datagrams in 1 s, {expected:.0} expected"
            );
        }
    }

    #[test]
    fn receivers_count_the_wire_bytes_senders_paced() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        // 1000 datagrams of 1298 codec bytes each, 32 bytes of data header and MAC not counted.
        assert_eq!(
            wire_bytes(1_298_000, 1000, 32, v4),
            1000 * wire_len(1330, v4) as u64
        );
        assert_eq!(
            wire_bytes(1_298_000, 1000, 32, v6),
            1000 * wire_len(1330, v6) as u64
        );
        assert_eq!(wire_bytes(0, 0, 32, v4), 0);
        assert_eq!(wire_bytes(u64::MAX, 1, 0, v4), u64::MAX);
    }

    #[test]
    fn bucket_holds_its_rate() {
        for rate in [10_000_000u64, 125_000_000, 1_000_000_000, 5_000_000_000] {
            let mut bucket = TokenBucket::new(rate, DGRAM, 0);
            let sent = run(&mut bucket, 0, SEC);
            let got = sent as f64 * 8.0;
            let err = (got - rate as f64).abs() / rate as f64;
            assert!(err < 0.02, "rate {rate}: sent {got} bits in 1 s ({err:.3})");
        }
    }

    #[test]
    fn bursts_are_bounded_by_the_window() {
        // After a long idle the bucket holds at most BURST_WINDOW (8 ms) of traffic (or one datagram).
        let mut slow = TokenBucket::new(1_000_000, DGRAM, 0);
        assert_eq!(slow.available(10 * SEC), DGRAM);
        let mut fast = TokenBucket::new(1_000_000_000, DGRAM, 0);
        let expected = 1_000_000_000 / 8 * 8 / 1000;
        assert!(fast.available(10 * SEC).abs_diff(expected) <= 1);
        // At 20 Mbit/s a GSO batch is 15 datagrams, not 64.
        let mut mid = TokenBucket::new(20_000_000, DGRAM, 0);
        assert_eq!(batch_datagrams(&mut mid, SEC, DGRAM, 64), 20_000 / DGRAM);
    }

    #[test]
    fn wait_tells_when_a_datagram_fits() {
        let mut bucket = TokenBucket::new(8_000_000, DGRAM, 0); // 1 byte/us
        let all = bucket.available(0);
        bucket.consume(all);
        let wait = bucket.wait_ns(0, DGRAM);
        assert_eq!(wait, DGRAM as u64 * 1000);
        assert_eq!(bucket.available(wait), DGRAM);
    }

    #[test]
    fn rate_changes_apply_from_now() {
        let mut bucket = TokenBucket::new(100_000_000, DGRAM, 0);
        let first = run(&mut bucket, 0, SEC);
        bucket.set_rate(20_000_000, DGRAM, SEC);
        assert_eq!(bucket.rate_bps(), 20_000_000);
        let second = run(&mut bucket, SEC, SEC);
        let ratio = first as f64 / second as f64;
        assert!((ratio - 5.0).abs() < 0.2, "ratio {ratio}");
    }
}
