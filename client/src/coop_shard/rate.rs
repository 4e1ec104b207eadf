//! Sans-IO pacing and rate control of the shard's streams (no clock is read here: every call takes
//! `now_ns`, nanoseconds on any monotonic clock).
//!
//! - [`Pacer`]: a token bucket in wire bytes (datagrams with their IP/UDP/Ethernet headers, as
//!   receivers report their rates) refilled at the stream's rate, holding at most
//!   [`BURST_WINDOW`] of traffic (the shard asks for at least 4 datagrams), so a stream sends small
//!   GSO bursts, never a backlog.
//! - [`RateController`]: one per stream, driven by the receiver's reports ([`ReceiverStats`]:
//!   receive rate and loss over its last interval). It starts at [`INITIAL_RATE_BPS`] and
//!   1. *cuts* to 7/8 of what got through when the loss exceeds the loss floor by more than
//!      [`LOSS_HIGH_PPM`] (1 %), and remembers what got through as the path's *ceiling*; what got
//!      through is the larger of the receiver's useful rate and what we sent less the loss;
//!   2. with loss between the two thresholds, holds at most the receive rate (sheds the excess);
//!   3. otherwise, while the loss stays under floor + [`LOSS_LOW_PPM`] and we actually use the
//!      rate, *grows*: x1.5 per report while no ceiling is known (at most twice the receive rate);
//!      once one is, quickly back to 95 % of it, then probing above it with an increment that
//!      doubles with every clean report (1.5 %, 3 %, 6 %, ... of the ceiling), so a link that got
//!      faster is found in a few reports while a known bottleneck is overrun by little.
//!
//!   With the datagram size known ([`RateController::set_datagram_bytes`]) both loss thresholds
//!   are at least three standard deviations of a loss rate measured over the interval's
//!   datagrams: a slow stream's report counts few of them, and one random loss is no congestion.
//!
//!   It never settles on the receiver's *useful* rate while nothing is lost: an encoding stream's
//!   packets are fresh codes of a complete segment, and a receiver near the end of its segment
//!   finds many of them redundant (windowed codes: only a few windows still lack rank) however
//!   fast they come. Settling there took streams down to 1 Mbit/s in the lab (the asker's tail
//!   then dragged, and its next stream on the link started from that), while the server, seeing
//!   the asker's rank stall, sent it what its peers owed.
//!
//!   The *loss floor* is the least loss of the last [`FLOOR_REPORTS`] reports (at most
//!   [`FLOOR_MAX_PPM`]): random wire loss is there at every rate and is not a reason to slow
//!   down, whereas congestion loss vanishes after a cut.
//!
//!   An *arrival-driven* stream ([`RateController::set_arrival_driven`]: it relays each packet we
//!   got once, so it sends at our arrival rate, not at its own) never settles on the receiver's
//!   useful rate (slowing down would only delay packets that go out anyway), grows only while it
//!   sends at least 3/4 of its rate and is trimmed to 4/3 of what it sends when it sends less (but
//!   at least a quarter: idle streams keep their rate), so its rate stays near 4/3 of the
//!   arrivals: enough to
//!   catch up a backlog, never a burst on a receiver whose downlink our arrivals already fill.
//!   It cuts only at [`ARRIVAL_LOSS_HIGH_PPM`] above the floor (keeping no ceiling: it grows
//!   back x1.5 per clean report), below what got through measured as what it sent less the loss (the useful
//!   rate the receiver reports would be far lower while it waits for other sources' packets).
//!   When it turns into an encoding stream (the segment completed here) it keeps its rate, at
//!   least [`ENCODE_FLOOR_BPS`]: the arrivals dwindle at the end of our own segment, so what it
//!   last sent says nothing about the asker's downlink, and the asker now needs from us what the
//!   server no longer sends anyone (loss cuts the rate if the downlink is full).
//! - [`fair_shares`]: the upload cap split max-min fairly over the streams' demands.
//! - [`FreshWindow`]: a stream's fresh (non-relayed) packets in flight stay under half of what
//!   the asker still lacks.

use std::collections::VecDeque;
use std::time::Duration;

use ccfd_proto::ReceiverStats;

pub use ccfd_proto::pacing::BURST_WINDOW;
/// A new stream's rate before its receiver reports.
pub const INITIAL_RATE_BPS: u64 = 100_000_000;
/// Least rate of a relaying stream that turns into an encoding one (see the module doc).
pub const ENCODE_FLOOR_BPS: u64 = INITIAL_RATE_BPS / 2;
/// Lowest rate a stream is paced at.
pub const MIN_RATE_BPS: u64 = 1_000_000;
/// Highest rate a stream is paced at.
pub const MAX_RATE_BPS: u64 = 40_000_000_000;
/// Loss above the floor that counts as congestion (1 %).
pub const LOSS_HIGH_PPM: u32 = 10_000;
/// Loss above the floor that counts as congestion for an arrival-driven stream (5 %): it sends at
/// our arrival rate, so a cut only delays what goes out anyway, and congestion at a full downlink
/// shows as tens of percent in one report, whereas random wire loss of a few percent swings by
/// more than [`LOSS_HIGH_PPM`] between reports.
pub const ARRIVAL_LOSS_HIGH_PPM: u32 = 50_000;
/// Loss above the floor under which the rate may grow (0.5 %).
pub const LOSS_LOW_PPM: u32 = 5_000;
/// Reports over which the loss floor is the minimum.
pub const FLOOR_REPORTS: usize = 8;
/// Largest loss accepted as a floor (5 %): more is always congestion.
pub const FLOOR_MAX_PPM: u32 = 50_000;
/// Shortest interval between two reports that is used (shorter ones are merged into the next).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(20);

const NANOS_PER_SEC: f64 = 1e9;

/// A stream's token bucket (the same one the server paces its receivers with).
pub use ccfd_proto::pacing::TokenBucket as Pacer;

/// What a report did to a stream's rate (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateChange {
    /// The report was too early or the first one: nothing measured yet.
    Ignored,
    /// Loss above the floor: cut.
    Cut,
    /// Grown.
    Grown,
    /// Unchanged (loss in between, or we do not use the rate we have).
    Held,
}

/// The rate of one stream, adapted to its receiver's reports.
#[derive(Debug, Clone)]
pub struct RateController {
    rate_bps: u64,
    ceiling_bps: Option<u64>,
    probe_step: u32,
    sent_bytes: u64,
    window_start_ns: u64,
    reports: u64,
    losses: VecDeque<u32>,
    arrival_driven: bool,
    /// Bytes of one datagram (0: unknown), to count the packets a loss rate is measured over.
    datagram_bytes: u64,
}

impl RateController {
    /// A controller starting at `initial_bps` (clamped to [`MIN_RATE_BPS`]..=[`MAX_RATE_BPS`]).
    pub fn new(initial_bps: u64, now_ns: u64) -> RateController {
        RateController {
            rate_bps: initial_bps.clamp(MIN_RATE_BPS, MAX_RATE_BPS),
            ceiling_bps: None,
            probe_step: 0,
            sent_bytes: 0,
            window_start_ns: now_ns,
            reports: 0,
            losses: VecDeque::with_capacity(FLOOR_REPORTS),
            arrival_driven: false,
            datagram_bytes: 0,
        }
    }

    /// The stream's datagram size in wire bytes: loss thresholds then widen to three standard deviations of
    /// the loss rate measured over the datagrams of one interval (at 1 Mbit/s a report covers ten
    /// datagrams, one random loss is 10 %: no reason to cut).
    pub fn set_datagram_bytes(&mut self, bytes: usize) {
        self.datagram_bytes = bytes as u64;
    }

    /// Three standard deviations of a loss rate around `floor_ppm` (at least 1 %) measured over
    /// the datagrams of `sent_bytes`, in ppm (0 when the datagram size is unknown).
    fn loss_noise_ppm(&self, floor_ppm: u32, sent_bytes: u64) -> u32 {
        if self.datagram_bytes == 0 {
            return 0;
        }
        let n = (sent_bytes / self.datagram_bytes).max(1) as f64;
        let p = f64::from(floor_ppm.max(10_000)) / 1e6;
        (3.0 * (p * (1.0 - p) / n).sqrt() * 1e6) as u32
    }

    /// Whether the stream relays arrivals (see the module doc). Turning it off keeps the rate, at
    /// least [`ENCODE_FLOOR_BPS`].
    pub fn set_arrival_driven(&mut self, on: bool) {
        if self.arrival_driven && !on {
            self.rate_bps = self.rate_bps.clamp(ENCODE_FLOOR_BPS, MAX_RATE_BPS);
        }
        self.arrival_driven = on;
    }

    /// Whether the stream relays arrivals.
    pub fn arrival_driven(&self) -> bool {
        self.arrival_driven
    }

    /// The rate the stream may be paced at (before the upload cap's share).
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// What got through at the last congestion, if any.
    pub fn ceiling_bps(&self) -> Option<u64> {
        self.ceiling_bps
    }

    /// Counts wire bytes actually sent (to tell a stream that uses its rate from one that does not).
    pub fn on_sent(&mut self, bytes: usize) {
        self.sent_bytes += bytes as u64;
    }

    /// The least loss of the recent reports (random loss that is there at every rate).
    fn loss_floor(&self) -> u32 {
        self.losses
            .iter()
            .copied()
            .min()
            .unwrap_or(0)
            .min(FLOOR_MAX_PPM)
    }

    /// Adapts the rate to a receiver report arriving at `now_ns`.
    pub fn on_report(&mut self, stats: &ReceiverStats, now_ns: u64) -> RateChange {
        let interval_ns = now_ns.saturating_sub(self.window_start_ns);
        if interval_ns < MIN_REPORT_INTERVAL.as_nanos() as u64 {
            return RateChange::Ignored;
        }
        let sent_bps = (self.sent_bytes as f64 * 8.0 * NANOS_PER_SEC / interval_ns as f64) as u64;
        let sent_bytes = self.sent_bytes;
        self.sent_bytes = 0;
        self.window_start_ns = now_ns;
        self.reports += 1;
        if self.reports == 1 {
            // The receiver's first interval may cover time before we started: measure from here.
            return RateChange::Ignored;
        }
        let floor = self.loss_floor();
        if self.losses.len() == FLOOR_REPORTS {
            self.losses.pop_front();
        }
        self.losses.push_back(stats.loss_ppm);
        let receive = stats.receive_rate_bps;
        // What we really sent: the paced rate, or less when the stream had nothing to send.
        let sent = sent_bps.min(self.rate_bps);
        let (high, low) = if self.arrival_driven {
            (ARRIVAL_LOSS_HIGH_PPM, ARRIVAL_LOSS_HIGH_PPM + 1)
        } else {
            (LOSS_HIGH_PPM, LOSS_LOW_PPM)
        };
        let noise = self.loss_noise_ppm(floor, sent_bytes);
        let (high, low) = (high.max(noise), low.max(noise));
        // The receiver reports its *useful* rate; every packet that was not lost crossed the
        // path: what got through is the larger of that and what we sent less the loss.
        let delivered =
            (sent as f64 * (1.0 - f64::from(stats.loss_ppm.min(1_000_000)) / 1e6)) as u64;
        let through = if sent == 0 && receive == 0 {
            self.rate_bps
        } else {
            receive.max(delivered).min(self.rate_bps)
        };
        let change = if stats.loss_ppm > floor.saturating_add(high) {
            // An arrival-driven stream keeps no ceiling: the congestion was a moment's (the
            // arrivals bound its rate anyway), so it grows back x1.5 per clean report.
            self.ceiling_bps = (!self.arrival_driven).then_some(through);
            self.probe_step = 0;
            self.rate_bps = through / 8 * 7;
            RateChange::Cut
        } else if stats.loss_ppm < floor.saturating_add(low) {
            let used = if self.arrival_driven {
                self.rate_bps / 4 * 3
            } else {
                self.rate_bps / 2
            };
            if sent_bps >= used {
                self.rate_bps = self.grown(receive);
                RateChange::Grown
            } else if self.arrival_driven && sent_bps >= self.rate_bps / 4 {
                // Trim an allowance the arrivals do not use (an idle stream keeps it).
                self.rate_bps = sent_bps / 3 * 4;
                RateChange::Held
            } else {
                RateChange::Held
            }
        } else if through < self.rate_bps {
            // Some loss, not enough to cut: shed the excess so it does not become the floor.
            self.rate_bps = through;
            RateChange::Held
        } else {
            RateChange::Held
        };
        self.rate_bps = self.rate_bps.clamp(MIN_RATE_BPS, MAX_RATE_BPS);
        change
    }

    fn grown(&mut self, receive: u64) -> u64 {
        let rate = self.rate_bps;
        let fast = rate.saturating_add(rate / 2);
        let Some(ceiling) = self.ceiling_bps else {
            // No bottleneck seen yet: x1.5, but at most twice what the receiver takes.
            return if receive > 0 {
                fast.min(receive.saturating_mul(2).max(INITIAL_RATE_BPS))
            } else {
                fast
            };
        };
        let near = ceiling / 100 * 95;
        if rate < near {
            return fast.min(near);
        }
        // Probe above the ceiling: 1.5 %, 3 %, 6 % ... of it (or of the rate, if larger: a ceiling
        // set by a receiver that found our packets useless may be tiny) per clean report, at most
        // x1.5.
        let base = ceiling.max(rate) / 64;
        let step = base.saturating_mul(1u64 << self.probe_step.min(20));
        self.probe_step += 1;
        let probed = rate.saturating_add(step.max(MIN_RATE_BPS / 8)).min(fast);
        if probed > ceiling && receive > ceiling {
            // Clean above the old ceiling: the path got faster.
            self.ceiling_bps = Some(receive.min(rate));
        }
        probed
    }
}

/// Packets a [`FreshWindow`] allows beyond its share of the asker's deficit (one GSO batch).
pub const FRESH_WINDOW_SLACK: u64 = 64;

/// Reports with no new packet while the [`FreshWindow`] was shut after which the packets in
/// flight count as lost (the window opens again).
pub const FRESH_WINDOW_LOSS_REPORTS: u32 = 2;

/// The in-flight cap of a stream's *fresh* packets (encoded from our copy, or fresh recodings of
/// a decoded segment's buffer), from the asker's reports: packets received from us and its rank.
///
/// Relayed arrivals are each innovative to the asker (the server handed each source symbol to
/// one receiver); fresh packets are random combinations, and every peer that holds the segment
/// sends them to the asker at once. Unbounded, three peers sent a laggard 3 x 100 Mbit/s of them
/// at the end of each segment (lab, N=4): its downlink overflowed (the relays and the server's
/// packets it still needed were lost with the rest) and it decoded with 20-38 % overhead. With
/// the asker's last report giving `received` packets of ours and rank `rank` of the `needed`,
/// the stream may send while `sent < received + lost + (needed - rank) / 2 + FRESH_WINDOW_SLACK`
/// (`sent` counts every packet of the stream, relays too, as `received` does): what is in flight
/// from us never exceeds half of what the asker still lacks. Packets lost on the way would keep
/// it shut: after [`FRESH_WINDOW_LOSS_REPORTS`] reports without a new packet while it was shut,
/// the packets in flight count as lost. Before the first report it is open.
#[derive(Debug, Clone)]
pub struct FreshWindow {
    needed: u64,
    received: u64,
    rank: u64,
    lost: u64,
    reported: bool,
    shut_since_report: bool,
    quiet_reports: u32,
}

impl FreshWindow {
    /// A window for an asker that must reach rank `needed` (the segment's source symbols).
    pub fn new(needed: u32) -> Self {
        Self {
            needed: u64::from(needed),
            received: 0,
            rank: 0,
            lost: 0,
            reported: false,
            shut_since_report: false,
            quiet_reports: 0,
        }
    }

    /// Fresh packets that may be sent now, `sent` packets of the stream (relays and fresh) having
    /// gone out so far.
    pub fn allowance(&mut self, sent: u64) -> u64 {
        if !self.reported {
            return u64::MAX;
        }
        let deficit = self.needed.saturating_sub(self.rank);
        let limit = self.received + self.lost + deficit / 2 + FRESH_WINDOW_SLACK;
        let allowed = limit.saturating_sub(sent);
        if allowed == 0 {
            self.shut_since_report = true;
        }
        allowed
    }

    /// The asker reports `received` packets of this stream so far and rank `rank`; `sent` of
    /// the stream's packets had gone out. A report of no packet at all says nothing of the
    /// asker's progress (askers report a source once its first packet arrived): ignored.
    pub fn on_report(&mut self, received: u64, rank: u32, sent: u64) {
        if received == 0 {
            return;
        }
        let in_flight = sent.saturating_sub(received + self.lost);
        if self.shut_since_report && received <= self.received && in_flight > 0 {
            self.quiet_reports += 1;
            if self.quiet_reports >= FRESH_WINDOW_LOSS_REPORTS {
                self.lost += in_flight;
                self.quiet_reports = 0;
            }
        } else {
            self.quiet_reports = 0;
        }
        self.reported = true;
        self.received = self.received.max(received);
        self.rank = self.rank.max(u64::from(rank));
        self.shut_since_report = false;
    }
}

/// Max-min fair split of `cap_bps` over `demands_bps` (water filling): streams that want less than
/// an equal share get what they want, the rest share what is left equally. Without a cap every
/// stream gets its demand.
pub fn fair_shares(cap_bps: Option<u64>, demands_bps: &[u64]) -> Vec<u64> {
    let Some(cap) = cap_bps else {
        return demands_bps.to_vec();
    };
    let mut shares = vec![0u64; demands_bps.len()];
    let mut order: Vec<usize> = (0..demands_bps.len()).collect();
    order.sort_by_key(|&i| demands_bps[i]);
    let mut left = cap;
    for (k, &i) in order.iter().enumerate() {
        let remaining = (order.len() - k) as u64;
        let equal = left / remaining;
        let share = demands_bps[i].min(equal);
        shares[i] = share;
        left -= share;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;
    const DGRAM: usize = 1200;

    fn report(receive_rate_bps: u64, loss_ppm: u32) -> ReceiverStats {
        ReceiverStats {
            receive_rate_bps,
            loss_ppm,
            ..ReceiverStats::default()
        }
    }

    #[test]
    fn pacer_holds_its_rate_and_bounds_bursts() {
        for rate in [5_000_000u64, 100_000_000, 2_000_000_000] {
            let mut pacer = Pacer::new(rate, DGRAM, 0);
            let mut sent = 0u64;
            let mut now = 0;
            while now < SEC {
                let n = (pacer.available(now) / DGRAM).min(64);
                pacer.consume(n * DGRAM);
                sent += (n * DGRAM) as u64;
                now += 250_000;
            }
            let err = (sent as f64 * 8.0 - rate as f64).abs() / rate as f64;
            assert!(err < 0.03, "rate {rate}: error {err:.3}");
        }
        let mut idle = Pacer::new(100_000_000, DGRAM, 0);
        assert_eq!(idle.available(10 * SEC), 100_000); // 8 ms at 100 Mbit/s
        let mut slow = Pacer::new(1_000_000, DGRAM, 0);
        assert_eq!(slow.available(10 * SEC), DGRAM);
        let all = slow.available(10 * SEC);
        slow.consume(all);
        assert_eq!(slow.wait_ns(10 * SEC, DGRAM), DGRAM as u64 * 8 * 1000);
    }

    #[test]
    fn fresh_packets_in_flight_stay_under_half_the_askers_deficit() {
        let mut w = FreshWindow::new(1000);
        // Before any report: open.
        assert_eq!(w.allowance(0), u64::MAX);
        // 600 relays sent, 500 received, rank 700: 300 lacking, at most 150 (+ slack) in flight.
        w.on_report(500, 700, 600);
        assert_eq!(w.allowance(600), 500 + 150 + FRESH_WINDOW_SLACK - 600);
        assert_eq!(w.allowance(714), 0);
        // The asker got them all and nears full rank: the window narrows with its deficit.
        w.on_report(714, 980, 714);
        assert_eq!(w.allowance(714), 10 + FRESH_WINDOW_SLACK);
        // Full rank: only the slack.
        w.on_report(788, 1000, 788);
        assert_eq!(w.allowance(788), FRESH_WINDOW_SLACK);
        // An older report (out of order) does not move it back.
        w.on_report(700, 900, 788);
        assert_eq!(w.allowance(788), FRESH_WINDOW_SLACK);
    }

    #[test]
    fn a_shut_fresh_window_reopens_when_its_packets_were_lost() {
        let mut w = FreshWindow::new(1000);
        // A report of nothing received tells nothing: still open.
        w.on_report(0, 0, 5000);
        assert_eq!(w.allowance(5000), u64::MAX);
        w.on_report(1, 0, 1);
        let first = w.allowance(1);
        assert_eq!(first, 500 + FRESH_WINDOW_SLACK);
        let sent = first + 1;
        assert_eq!(w.allowance(sent), 0);
        // Only 100 arrive; then nothing more while shut.
        w.on_report(100, 100, sent);
        assert_eq!(w.allowance(sent), 100 + 450 + FRESH_WINDOW_SLACK - sent);
        let sent = sent + w.allowance(sent);
        assert_eq!(w.allowance(sent), 0);
        w.on_report(100, 100, sent);
        assert_eq!(w.allowance(sent), 0, "one quiet report is not enough");
        w.on_report(100, 100, sent);
        // Everything in flight counted as lost: open by the deficit's half again.
        assert_eq!(w.allowance(sent), 450 + FRESH_WINDOW_SLACK);
    }

    #[test]
    fn fair_shares_fill_water_levels() {
        assert_eq!(fair_shares(None, &[5, 7]), vec![5, 7]);
        assert_eq!(fair_shares(Some(100), &[10, 200, 200]), vec![10, 45, 45]);
        assert_eq!(fair_shares(Some(100), &[30, 30]), vec![30, 30]);
        assert_eq!(fair_shares(Some(90), &[100, 100, 100]), vec![30, 30, 30]);
        assert!(fair_shares(Some(90), &[]).is_empty());
    }

    /// A receiver behind a bottleneck of `capacity` (shared with nobody) and `random_loss_ppm` of
    /// wire loss, reporting every `interval`: returns (rates sent, losses seen) of each report.
    fn simulate(
        capacity: u64,
        random_loss_ppm: u32,
        reports: usize,
        mut controller: RateController,
    ) -> Vec<(u64, u32)> {
        let interval = 250 * MS;
        let mut now = 0;
        let mut seen = Vec::new();
        for _ in 0..reports {
            let rate = controller.rate_bps();
            controller.on_sent((rate / 8 * interval / SEC) as usize);
            now += interval;
            let through = rate.min(capacity);
            let congestion = 1.0 - through as f64 / rate as f64;
            let loss = congestion + (1.0 - congestion) * random_loss_ppm as f64 / 1e6;
            let loss_ppm = (loss * 1e6) as u32;
            let receive = (rate as f64 * (1.0 - loss)) as u64;
            controller.on_report(&report(receive, loss_ppm), now);
            seen.push((rate, loss_ppm));
        }
        seen
    }

    #[test]
    fn finds_an_unknown_bottleneck_and_keeps_its_loss_low() {
        for capacity in [20_000_000u64, 200_000_000, 1_000_000_000, 5_000_000_000] {
            let seen = simulate(capacity, 0, 120, RateController::new(INITIAL_RATE_BPS, 0));
            let tail = &seen[40..];
            let mean_loss =
                tail.iter().map(|&(_, l)| l as f64).sum::<f64>() / tail.len() as f64 / 1e6;
            let mean_through = tail
                .iter()
                .map(|&(r, _)| r.min(capacity) as f64)
                .sum::<f64>()
                / tail.len() as f64;
            assert!(mean_loss < 0.02, "capacity {capacity}: loss {mean_loss:.4}");
            assert!(
                mean_through > 0.8 * capacity as f64,
                "capacity {capacity}: through {mean_through}"
            );
        }
    }

    #[test]
    fn random_loss_alone_does_not_collapse_the_rate() {
        let seen = simulate(
            200_000_000,
            20_000,
            120,
            RateController::new(INITIAL_RATE_BPS, 0),
        );
        let tail = &seen[40..];
        let mean_rate = tail.iter().map(|&(r, _)| r as f64).sum::<f64>() / tail.len() as f64;
        assert!(mean_rate > 150e6, "mean rate {mean_rate}");
        // ... and the congestion loss on top of the random loss stays small.
        let extra = tail
            .iter()
            .map(|&(_, l)| l.saturating_sub(20_000) as f64)
            .sum::<f64>()
            / tail.len() as f64
            / 1e6;
        assert!(extra < 0.02, "extra loss {extra:.4}");
    }

    #[test]
    fn loss_cuts_to_below_what_got_through() {
        let mut c = RateController::new(100_000_000, 0);
        c.on_sent(3_000_000);
        assert_eq!(c.on_report(&report(0, 0), 250 * MS), RateChange::Ignored);
        c.on_sent(3_000_000);
        assert_eq!(
            c.on_report(&report(80_000_000, 200_000), 500 * MS),
            RateChange::Cut
        );
        assert_eq!(c.rate_bps(), 70_000_000);
        assert_eq!(c.ceiling_bps(), Some(80_000_000));
    }

    #[test]
    fn a_useful_rate_below_what_is_sent_is_no_reason_to_slow_down() {
        // 100 Mbit/s sent, nothing lost, 40 Mbit/s of it useful (the receiver nears full rank):
        // the rate holds.
        let mut c = RateController::new(100_000_000, 0);
        c.on_sent(3_125_000);
        c.on_report(&report(0, 0), 250 * MS);
        c.on_sent(3_125_000); // 100 Mbit/s really sent
        assert_ne!(
            c.on_report(&report(40_000_000, 0), 500 * MS),
            RateChange::Cut
        );
        assert_eq!(c.rate_bps(), 100_000_000);
        // Loss cuts below what got through: what was sent less the loss, not the useful rate.
        c.on_sent(3_125_000);
        assert_eq!(
            c.on_report(&report(10_000_000, 100_000), 750 * MS),
            RateChange::Cut
        );
        assert_eq!(c.rate_bps(), 90_000_000 / 8 * 7);
    }

    #[test]
    fn an_arrival_driven_stream_stays_near_its_arrivals() {
        // 40 Mbit/s of arrivals, reports every 100 ms, the receiver finding a third of them
        // useless: no cut, and the rate never runs beyond 4/3 of what is sent.
        let mut c = RateController::new(100_000_000, 0);
        c.set_arrival_driven(true);
        assert!(c.arrival_driven());
        let mut now = 0;
        for _ in 0..50 {
            now += 100 * MS;
            let sent = (40_000_000u64 / 80).min(c.rate_bps() / 80) as usize; // bytes in 100 ms
            c.on_sent(sent);
            let change = c.on_report(&report(25_000_000, 0), now);
            assert_ne!(change, RateChange::Cut);
        }
        assert!(
            c.rate_bps() <= 40_000_000 / 3 * 4 + 1_000_000,
            "{}",
            c.rate_bps()
        );
        assert!(c.rate_bps() >= 40_000_000, "{}", c.rate_bps());
        // Below its arrivals it grows back.
        let mut slow = RateController::new(10_000_000, 0);
        slow.set_arrival_driven(true);
        let mut now = 0;
        for _ in 0..30 {
            now += 100 * MS;
            slow.on_sent((40_000_000u64 / 80).min(slow.rate_bps() / 80) as usize);
            slow.on_report(&report(0, 0), now);
        }
        assert!(slow.rate_bps() >= 40_000_000, "{}", slow.rate_bps());
        // Random loss swinging between 0 and 4 % is no congestion; 30 % is.
        for (i, loss) in [0u32, 40_000, 10_000, 35_000, 0, 40_000]
            .into_iter()
            .enumerate()
        {
            now += 100 * MS;
            slow.on_sent((40_000_000u64 / 80).min(slow.rate_bps() / 80) as usize);
            let change = slow.on_report(&report(0, loss), now);
            assert_ne!(change, RateChange::Cut, "report {i}");
        }
        now += 100 * MS;
        slow.on_sent(500_000);
        assert_eq!(slow.on_report(&report(0, 300_000), now), RateChange::Cut);
        // What got through (sent less the loss), not the useful rate (0 here), sets the cut.
        assert_eq!(slow.rate_bps(), 28_000_000 / 8 * 7);
        // Turned into an encoding stream: it keeps its rate, at least the encoding floor (the
        // arrivals dwindling at the end of our segment are no measure of the asker's downlink).
        now += 100 * MS;
        slow.on_sent(25_000); // 2 Mbit/s: the last arrivals
        slow.on_report(&report(0, 0), now);
        slow.set_arrival_driven(false);
        assert_eq!(slow.rate_bps(), ENCODE_FLOOR_BPS);
        let mut fast = RateController::new(150_000_000, 0);
        fast.set_arrival_driven(true);
        fast.set_arrival_driven(false);
        assert_eq!(fast.rate_bps(), 150_000_000);
    }

    #[test]
    fn random_loss_at_a_low_rate_does_not_spiral_down() {
        // From 2 Mbit/s of 1250-byte datagrams (20 per 100 ms report): one random loss in every
        // third report (5 % of that report at first).
        let mut c = RateController::new(2_000_000, 0);
        c.set_datagram_bytes(1250);
        let mut now = 0;
        for i in 0..40u32 {
            now += 100 * MS;
            let bytes = c.rate_bps() / 80;
            c.on_sent(bytes as usize);
            let datagrams = (bytes / 1250).max(1) as u32;
            let loss = if i % 3 == 0 { 1_000_000 / datagrams } else { 0 };
            let receive = c.rate_bps() / 20 * 19;
            assert_ne!(
                c.on_report(&report(receive, loss), now),
                RateChange::Cut,
                "{i}"
            );
        }
        assert!(c.rate_bps() > 2_000_000, "{}", c.rate_bps());
        // Heavy loss still cuts.
        now += 100 * MS;
        c.on_sent((c.rate_bps() / 80) as usize);
        assert_eq!(
            c.on_report(&report(1_000_000, 500_000), now),
            RateChange::Cut
        );
    }

    #[test]
    fn an_idle_stream_neither_grows_nor_settles() {
        // The stream had little to send (e.g. an empty recoding buffer): the receiver taking what
        // little we sent is no reason to cut, and not using the rate is no reason to grow.
        let mut c = RateController::new(100_000_000, 0);
        c.on_report(&report(0, 0), 250 * MS);
        c.on_sent(100_000); // 3.2 Mbit/s
        assert_eq!(
            c.on_report(&report(3_000_000, 0), 500 * MS),
            RateChange::Held
        );
        assert_eq!(c.rate_bps(), 100_000_000);
    }

    #[test]
    fn a_receiver_that_finds_us_useless_does_not_collapse_the_rate() {
        // The receiver reports the *useful* rate: 1 bit/s while our packets added nothing (the
        // end of its segment). Without loss the rate holds (it collapsed to 1 Mbit/s before).
        let mut c = RateController::new(100_000_000, 0);
        let mut now = 250 * MS;
        assert_eq!(c.on_report(&report(0, 0), now), RateChange::Ignored);
        for _ in 0..5 {
            now += 250 * MS;
            c.on_sent(3_125_000);
            assert_ne!(c.on_report(&report(1, 0), now), RateChange::Cut);
            assert_eq!(c.rate_bps(), 100_000_000);
        }
    }

    #[test]
    fn early_reports_are_merged() {
        let mut c = RateController::new(100_000_000, 0);
        assert_eq!(c.on_report(&report(0, 500_000), MS), RateChange::Ignored);
        assert_eq!(c.rate_bps(), 100_000_000);
    }

    #[test]
    fn a_faster_path_is_found_again() {
        // Bottleneck at 100 Mbit/s, then the path clears to 1 Gbit/s: the probe finds it.
        let mut c = RateController::new(INITIAL_RATE_BPS, 0);
        let seen = simulate(100_000_000, 0, 40, c.clone());
        assert!(seen[39].0 < 130_000_000);
        c = RateController::new(INITIAL_RATE_BPS, 0);
        let mut now = 0;
        for capacity in [100_000_000u64; 40].into_iter().chain([1_000_000_000; 30]) {
            let rate = c.rate_bps();
            c.on_sent((rate / 8 / 4) as usize);
            now += 250 * MS;
            let through = rate.min(capacity);
            let loss = ((1.0 - through as f64 / rate as f64) * 1e6) as u32;
            c.on_report(&report(through, loss), now);
        }
        assert!(c.rate_bps() > 700_000_000, "rate {}", c.rate_bps());
    }
}
