//! Pacing of one stream: a token bucket in bytes over simulated time.
//!
//! [`TokenBucket`] is refilled at a rate in bits per second and holds at most [`BURST_WINDOW`] of
//! traffic (at least the caller's minimum, e.g. one datagram or one GSO batch), so batches stay
//! small at low rates and packets are spread, not burst. `now` is nanoseconds on any monotonic
//! clock; no clock is read here. The server paces each receiver with one, the client's
//! cooperation shard each peer stream and its upload cap.

use std::time::Duration;

/// Traffic a receiver's bucket may send back to back: small enough that switch buffers do not
/// overflow, large enough for full GSO batches at gigabit rates and to absorb the shard's wake-up
/// latency on a busy host (a shard woken 3 ms late after a 2 ms window lost 60 % of its rate).
pub const BURST_WINDOW: Duration = Duration::from_millis(8);

const NANOS_PER_SEC: f64 = 1e9;

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
