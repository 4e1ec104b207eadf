//! Pacing: how many bytes a shard may send now, per receiver and in total.
//!
//! Pure logic over simulated time (`now` is nanoseconds on any monotonic clock); no clock is read here.
//! Every rate and byte count here is in wire bytes ([`wire_len`]: each datagram with its IP, UDP
//! and Ethernet headers), as `--max-rate` and the receivers' reported rates are.
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
//! - [`SendWindow`]: one per receiver, a cap on the packets in flight from the progress the receiver
//!   reports (packets received, decoder rank): no more in flight than the receiver still needs plus a
//!   margin. Without it a fast sender fills the receiver's socket buffer with packets that arrive
//!   after the segment decoded (a big buffer gives no loss signal), and all of them are wasted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use ccfd_proto::pacing::{batch_datagrams, wire_len, TokenBucket, BURST_WINDOW};

const NANOS_PER_SEC: f64 = 1e9;

/// Burst tolerance of the server-wide [`EgressLimiter`]: the total egress stays near `--max-rate` over
/// any ten milliseconds, and a shard woken a few milliseconds late (a busy host) catches up instead of
/// losing that time (with 2 ms the total ran 5-10 % under the cap).
pub const EGRESS_TOLERANCE: Duration = Duration::from_millis(6);

/// Send buffer asked for on every data socket (`SO_SNDBUFFORCE` when privileged, else `SO_SNDBUF`
/// clamped by `net.core.wmem_max`; the ring warns once when it gets less).
///
/// With the default (~208 KiB, about 90 datagrams of kernel memory) a queue of a few milliseconds
/// at the uplink's qdisc fills the buffer; io_uring then parks the send and retries it once space
/// frees, while later sends on the socket go out first. Receivers saw that reordering (a lab
/// capture: 12 % of the server's and peers' packets out of order, up to 3,500 deep) as sequence
/// gaps, i.e. as loss of 20-70 % in a 100 ms report, and rates were cut on it. A buffer larger
/// than the qdisc's queue keeps each socket's packets in order: what overflows is dropped by the
/// qdisc and reported as the loss it is.
pub const SEND_BUFFER_BYTES: usize = 4 << 20;

/// Packets a [`SendWindow`] allows beyond the estimate of what the receiver still needs (one GSO
/// batch, so the tail of a segment is not sent one packet at a time).
pub const WINDOW_SLACK: u64 = 64;

/// Reports with no new packet while the window was closed after which the packets in flight are
/// counted as lost (the window opens again).
pub const WINDOW_LOSS_REPORTS: u32 = 2;

/// Reports in a row without rank progress, while the window was held shut for packets peers owe,
/// after which the receiver's peers are taken not to deliver (for the rest of the segment).
///
/// Receivers report every 20 ms: 10 reports are 200 ms. With 3 (60 ms) the rule fired in the lab
/// on receivers whose peers were delivering, whenever a decoder thread or a peer's encoder build
/// was held up that long on a loaded host (or a late joiner's peer streams were still starting),
/// and the server then sent that receiver everything it lacked a second time. Since the windows
/// leave the path's loss share of the relays to the server, 5 (100 ms) no longer fires on
/// delivering peers (lab N=4: copies unchanged at 1.16-1.17 at 2 % loss, load 8-9) and the first
/// receiver to near full rank at 2 % loss waits half as long for relays that are not coming.
pub const PEER_STALL_REPORTS: u32 = 5;

/// The in-flight cap of one receiver, from its progress reports.
///
/// With `sent` packets sent, and the receiver's last report saying it got `received` packets of this
/// stream and holds rank `rank` of the `needed` it must reach, the window allows sending while
/// `sent < received + lost + (needed - rank) * (1 + 1/16 + loss) + WINDOW_SLACK`: the packets in
/// flight never exceed what the receiver still needs, with a margin for loss and for non-innovative
/// packets. Packets lost on the way would keep the window shut: when it was shut and
/// [`WINDOW_LOSS_REPORTS`] reports in a row show no new packet, everything in flight is counted as
/// lost (`lost`), so the window reopens. Before the first report the window is the whole segment.
///
/// Cooperation: packets of the session that reached the *other* receivers, present or gone after
/// decoding ([`SendWindow::set_owed_by_peers`]), reach this receiver through its peers (they relay
/// what they receive and encode from their copy once decoded), so what it still needs from us is
/// `needed - rank` minus what they still owe (`owed * (1 - path loss) - (rank - received)`: its
/// rank beyond our packets came from peers; the path loss, a moving average of the reported
/// loss, is the share of their relays that never arrives, since each is sent once). Without the
/// loss term a receiver at 2 % random loss waited for the last ~2 % of the others' shares that
/// were never coming, until [`PEER_STALL_REPORTS`] took its peers to have failed and the server
/// re-sent it everything it lacked (lab, N=4: 1-3 receivers of 4 in most segments, ~2000 packets
/// each). When the window is held shut that way and
/// [`PEER_STALL_REPORTS`] reports in a row show no rank progress, its peers are taken not to
/// deliver (no cooperation, peers gone) and the owed symbols no longer count.
#[derive(Debug, Clone)]
pub struct SendWindow {
    needed: u64,
    sent: u64,
    received: u64,
    rank: u64,
    lost: u64,
    loss_ppm: u64,
    /// Moving average of the reported loss (1/8 of each report), ppm: the path's loss, which
    /// the peers' relays to this receiver suffer too.
    path_loss_ppm: u64,
    reported_loss: bool,
    shut_since_report: bool,
    quiet_reports: u32,
    reported: bool,
    owed: u64,
    peers_failed: bool,
    stalled_reports: u32,
    /// Reports after which the window had been held shut for what peers owe.
    held_reports: u32,
    /// Packets sent after the peers were taken to have failed.
    sent_after_failure: u64,
}

impl SendWindow {
    /// A window for a receiver that must reach rank `needed` (the segment's source packet count).
    pub fn new(needed: u32) -> Self {
        Self {
            needed: u64::from(needed),
            sent: 0,
            received: 0,
            rank: 0,
            lost: 0,
            loss_ppm: 0,
            path_loss_ppm: 0,
            reported_loss: false,
            shut_since_report: false,
            quiet_reports: 0,
            reported: false,
            owed: 0,
            peers_failed: false,
            stalled_reports: 0,
            held_reports: 0,
            sent_after_failure: 0,
        }
    }

    /// Packets the other receivers got, present or gone after decoding (they owe them to this one
    /// through cooperation).
    pub fn set_owed_by_peers(&mut self, owed: u64) {
        self.owed = owed;
    }

    /// Symbols this receiver should still get from its peers rather than from us: what the
    /// others got, less the share the path loses (peers relay each packet once: what is lost on
    /// the way to it never comes), less what came from peers already.
    fn owed_outstanding(&self) -> u64 {
        if !self.reported || self.peers_failed {
            return 0;
        }
        let from_peers = self.rank.saturating_sub(self.received);
        let kept = 1_000_000 - self.path_loss_ppm.min(500_000);
        let arriving = (u128::from(self.owed) * u128::from(kept) / 1_000_000) as u64;
        arriving.saturating_sub(from_peers)
    }

    /// Whether the window lets anything through now (like [`SendWindow::allowance`] `> 0`,
    /// without marking it shut).
    pub fn is_open(&self) -> bool {
        self.clone().allowance() > 0
    }

    /// Packets that may be sent now.
    pub fn allowance(&mut self) -> u64 {
        let remaining = self
            .needed
            .saturating_sub(self.rank)
            .saturating_sub(self.owed_outstanding());
        // Margin: 1/16 plus twice the reported loss.
        let margin = remaining / 16 + remaining * self.loss_ppm.min(500_000) * 2 / 1_000_000;
        // No slack while what it lacks is left to its peers.
        let slack = if remaining == 0 && self.owed_outstanding() > 0 {
            0
        } else {
            WINDOW_SLACK
        };
        let limit = self.received + self.lost + remaining + margin + slack;
        let allowed = limit.saturating_sub(self.sent);
        if allowed == 0 {
            self.shut_since_report = true;
        }
        allowed
    }

    /// `n` packets were sent.
    pub fn on_sent(&mut self, n: u64) {
        self.sent += n;
        if self.peers_failed {
            self.sent_after_failure += n;
        }
    }

    /// Packets of this stream the receiver last reported (what it can relay to its peers).
    pub fn delivered(&self) -> u64 {
        self.received
    }

    /// Whether its peers were taken not to deliver ([`PEER_STALL_REPORTS`]).
    pub fn peers_failed(&self) -> bool {
        self.peers_failed
    }

    /// Packets sent after its peers were taken not to deliver.
    pub fn sent_after_failure(&self) -> u64 {
        self.sent_after_failure
    }

    /// Reports after which the window had been held shut for what its peers owe.
    pub fn held_reports(&self) -> u32 {
        self.held_reports
    }

    /// The receiver reports `received` packets of this stream so far, rank `rank`, and the loss it
    /// measured over its last interval (the latest report replaces the previous one).
    pub fn on_report(&mut self, received: u64, rank: u32, loss_ppm: u32) {
        let in_flight = self.sent.saturating_sub(received + self.lost);
        if self.shut_since_report && received <= self.received && in_flight > 0 {
            self.quiet_reports += 1;
            if self.quiet_reports >= WINDOW_LOSS_REPORTS {
                self.lost += in_flight;
                self.quiet_reports = 0;
            }
        } else {
            self.quiet_reports = 0;
        }
        let held = self.shut_since_report && self.owed_outstanding() > 0;
        self.held_reports += u32::from(held);
        if held && u64::from(rank) <= self.rank {
            self.stalled_reports += 1;
            if self.stalled_reports >= PEER_STALL_REPORTS {
                self.peers_failed = true;
            }
        } else {
            self.stalled_reports = 0;
        }
        // The latest report wins (reports come in order on the control connection).
        self.reported = true;
        self.received = received;
        self.rank = u64::from(rank);
        self.loss_ppm = u64::from(loss_ppm);
        self.path_loss_ppm = if self.reported_loss {
            (self.path_loss_ppm * 7 + u64::from(loss_ppm)) / 8
        } else {
            u64::from(loss_ppm)
        };
        self.reported_loss = true;
        self.shut_since_report = false;
    }

    /// Packets counted as lost so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }
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
    fn window_leaves_to_peers_what_they_owe_until_they_stall() {
        let mut w = SendWindow::new(1000);
        w.set_owed_by_peers(600);
        // Before any report the owed symbols do not count.
        assert_eq!(w.allowance(), 1000 + 1000 / 16 + WINDOW_SLACK);
        w.on_sent(200);
        w.on_report(200, 200, 0);
        // Needs 800 more, peers owe 600: 200 (+ margin and slack) from us.
        assert_eq!(w.allowance(), 200 + 12 + WINDOW_SLACK);
        w.on_sent(276);
        assert_eq!(w.allowance(), 0);
        // Peers delivered 300 and still owe 300, which is all it needs: nothing from us, no slack.
        w.on_report(476, 776, 0);
        assert_eq!(w.allowance(), 0);
        w.on_report(476, 800, 0);
        assert_eq!(w.allowance(), 0);
        // The peers stall: no rank progress while the window is held shut.
        for _ in 0..PEER_STALL_REPORTS {
            assert_eq!(w.allowance(), 0);
            w.on_report(476, 800, 0);
        }
        // Now all it lacks may come from us.
        assert_eq!(w.allowance(), 200 + 12 + WINDOW_SLACK);
    }

    #[test]
    fn relays_lost_on_the_path_are_not_waited_for() {
        let mut w = SendWindow::new(1000);
        w.set_owed_by_peers(600);
        w.on_sent(200);
        // The path loses 10 %: 180 of our 200 arrived, and peers relayed 540 of their 600.
        w.on_report(180, 180, 100_000);
        w.on_report(180, 720, 100_000);
        // Needs 280 more; only 0.9 * 600 - 540 = 0 are still coming from peers: 280 from us
        // (+ margin and slack), not 220 (what a loss-free path would still bring from peers).
        let remaining = 1000 - 720;
        let margin = remaining / 16 + remaining * 2 / 10;
        assert_eq!(w.allowance(), 180 + remaining + margin + WINDOW_SLACK - 200);
        // Loss-free, the same report leaves 60 to the peers.
        let mut clean = SendWindow::new(1000);
        clean.set_owed_by_peers(600);
        clean.on_sent(200);
        clean.on_report(180, 180, 0);
        clean.on_report(180, 720, 0);
        let remaining = 1000 - 720 - 60;
        assert_eq!(
            clean.allowance(),
            180 + remaining + remaining / 16 + WINDOW_SLACK - 200
        );
    }

    #[test]
    fn window_keeps_in_flight_under_what_the_receiver_still_needs() {
        let mut w = SendWindow::new(1000);
        // Before any report: the whole segment plus margin and slack.
        assert_eq!(w.allowance(), 1000 + 1000 / 16 + WINDOW_SLACK);
        w.on_sent(900);
        // The receiver got 600, all innovative: 400 still needed, 300 in flight.
        w.on_report(600, 600, 0);
        assert_eq!(w.allowance(), 600 + 400 + 400 / 16 + WINDOW_SLACK - 900);
        let rest = w.allowance();
        w.on_sent(rest);
        assert_eq!(w.allowance(), 0);
        // Full rank: nothing more beyond the slack over what was received.
        w.on_report(1000, 1000, 0);
        let sent = 600 + 400 + 400 / 16 + WINDOW_SLACK;
        assert_eq!(w.allowance(), (1000 + WINDOW_SLACK).saturating_sub(sent));
        // Reported loss widens the margin.
        let mut lossy = SendWindow::new(1000);
        lossy.on_report(0, 0, 100_000);
        assert_eq!(lossy.allowance(), 1000 + 1000 / 16 + 200 + WINDOW_SLACK);
    }

    #[test]
    fn window_reopens_when_the_packets_in_flight_were_lost() {
        let mut w = SendWindow::new(1000);
        let first = w.allowance();
        w.on_sent(first);
        assert_eq!(w.allowance(), 0);
        // Only 500 arrived (the rest was dropped); the window stays shut while it can be late.
        w.on_report(500, 500, 0);
        let open = w.allowance();
        w.on_sent(open);
        assert_eq!(w.allowance(), 0);
        w.on_report(500, 500, 0);
        assert_eq!(w.allowance(), 0, "one quiet report is not enough");
        w.on_report(500, 500, 0);
        // Two quiet reports while shut: everything in flight counts as lost.
        assert_eq!(w.lost(), first + open - 500);
        assert_eq!(w.allowance(), 500 + 500 / 16 + WINDOW_SLACK);
        // Quiet reports while the window is open (nothing was sent) count nothing.
        let mut idle = SendWindow::new(10);
        idle.on_report(0, 0, 0);
        idle.on_report(0, 0, 0);
        idle.on_report(0, 0, 0);
        assert_eq!(idle.lost(), 0);
    }

    #[test]
    fn egress_limiter_reports_the_wait() {
        let limiter = EgressLimiter::new(8_000_000, DGRAM); // 1 byte/us
        let mut now = 0;
        let mut granted = 0;
        while limiter.try_acquire(now, 1000).is_ok() {
            granted += 1;
        }
        // 0, 1 ms, ..., tolerance of virtual time are within the tolerance.
        assert_eq!(granted, EGRESS_TOLERANCE.as_millis() + 1);
        let wait = limiter.try_acquire(now, 1000).unwrap_err();
        assert_eq!(wait, MS);
        now += wait;
        assert!(limiter.try_acquire(now, 1000).is_ok());
        assert_eq!(limiter.rate_bps(), 8_000_000);
    }
}
