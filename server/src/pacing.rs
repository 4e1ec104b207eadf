//! Pacing: how many bytes a shard may send now, per receiver and in total.
//!
//! Pure logic over simulated time (`now` is nanoseconds on any monotonic clock); no clock is read here.
//!
//! - The receivers' rates come from the session table (`ccfd_proto::SessionTable`): it adapts each
//!   receiver's demand to the loss and receive rate of its heartbeats (cut on loss, grow while loss is low)
//!   and splits the `--max-rate` cap max-min fairly among receivers, then tells the shard with
//!   `AddReceiver`/`SetRate`. A slow or lossy client is therefore held to what it can take.
//! - [`TokenBucket`]: one per receiver in its shard, refilled at the receiver's rate, with a burst of about
//!   [`BURST_WINDOW`] of traffic (at least one datagram), so batches stay small at low rates and packets
//!   are spread, not burst.
//! - [`EgressLimiter`]: one per server, shared by every shard (lock-free GCRA on an atomic), a hard cap of
//!   the total egress at `--max-rate` whatever the receivers' rates add up to.
//! - [`batch_datagrams`]: how many datagrams of a GSO batch the receiver's bucket allows right now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Traffic a receiver's bucket may send back to back: small enough that switch buffers do not
/// overflow, large enough for full GSO batches at gigabit rates and to absorb the shard's wake-up
/// latency on a busy host (a shard woken 3 ms late after a 2 ms window lost 60 % of its rate).
pub const BURST_WINDOW: Duration = Duration::from_millis(8);

/// Burst tolerance of the server-wide [`EgressLimiter`]: tight, so the total egress stays near
/// `--max-rate` over any few milliseconds.
pub const EGRESS_TOLERANCE: Duration = Duration::from_millis(2);

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

/// The server-wide egress cap, shared by every shard: a lock-free GCRA (virtual scheduling) over an
/// atomic "theoretical arrival time".
#[derive(Debug)]
pub struct EgressLimiter {
    ns_per_byte: f64,
    tolerance_ns: u64,
    tat_ns: AtomicU64,
}

impl EgressLimiter {
    /// A limiter at `rate_bps` bits/s admitting bursts of [`EGRESS_TOLERANCE`] (at least
    /// `min_burst_bytes`).
    pub fn new(rate_bps: u64, min_burst_bytes: usize) -> Self {
        let ns_per_byte = 8.0 * NANOS_PER_SEC / rate_bps.max(1) as f64;
        let min_burst_ns = (min_burst_bytes as f64 * ns_per_byte) as u64;
        Self {
            ns_per_byte,
            tolerance_ns: (EGRESS_TOLERANCE.as_nanos() as u64).max(min_burst_ns),
            tat_ns: AtomicU64::new(0),
        }
    }

    /// The cap in bits per second.
    pub fn rate_bps(&self) -> u64 {
        (8.0 * NANOS_PER_SEC / self.ns_per_byte).round() as u64
    }

    /// Takes `bytes` of budget at `now_ns`: `Ok(())` when granted, otherwise `Err(wait_ns)`, how long until
    /// they would be.
    pub fn try_acquire(&self, now_ns: u64, bytes: usize) -> Result<(), u64> {
        let cost = (bytes as f64 * self.ns_per_byte) as u64;
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            if start - now_ns > self.tolerance_ns {
                return Err(start - now_ns - self.tolerance_ns);
            }
            match self.tat_ns.compare_exchange_weak(
                tat,
                start + cost,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;
    const DGRAM: usize = 1312;

    /// Sends as fast as the bucket allows for `duration_ns` of simulated time in 100 us steps, in batches
    /// of at most 64; returns the bytes sent.
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

    #[test]
    fn egress_limiter_caps_shards_together() {
        // Two "shards" each wanting 1 Gbit/s share a 500 Mbit/s cap: together they get 500 Mbit/s,
        // each about half.
        let limiter = EgressLimiter::new(500_000_000, DGRAM);
        let mut sent = [0u64; 2];
        let mut now = 0;
        let mut step = 0usize;
        while now < SEC {
            // Shards poll in turn (whoever comes first in a step alternates), 8 datagrams each.
            for k in 0..2 {
                let shard = (step + k) % 2;
                for _ in 0..8 {
                    if limiter.try_acquire(now, DGRAM).is_ok() {
                        sent[shard] += DGRAM as u64;
                    }
                }
            }
            step += 1;
            now += 50_000;
        }
        let total_bits = (sent[0] + sent[1]) as f64 * 8.0;
        let err = (total_bits - 5e8).abs() / 5e8;
        assert!(err < 0.02, "total {total_bits} bits/s");
        let share = sent[0] as f64 / (sent[0] + sent[1]) as f64;
        assert!((share - 0.5).abs() < 0.1, "share {share}");
    }

    #[test]
    fn egress_limiter_reports_the_wait() {
        let limiter = EgressLimiter::new(8_000_000, DGRAM); // 1 byte/us, tolerance 2 ms
        let mut now = 0;
        let mut granted = 0;
        while limiter.try_acquire(now, 1000).is_ok() {
            granted += 1;
        }
        assert_eq!(granted, 3); // 0, 1 ms, 2 ms of virtual time are within the 2 ms tolerance
        let wait = limiter.try_acquire(now, 1000).unwrap_err();
        assert_eq!(wait, MS);
        now += wait;
        assert!(limiter.try_acquire(now, 1000).is_ok());
        assert_eq!(limiter.rate_bps(), 8_000_000);
    }
}
