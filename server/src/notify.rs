//! systemd service notifications: `READY=1`, `STOPPING=1`, `STATUS=` and a watchdog fed by the workers.
//!
//! Contract:
//! - [`ready`] once the control socket is bound and every shard runs; [`stopping`] when shutdown starts.
//!   Outside systemd (no `NOTIFY_SOCKET`) both do nothing. The environment is never unset, so the
//!   shard threads can keep notifying.
//! - [`Watchdog`]: every worker loop (each shard and the control plane) calls [`Watchdog::tick`] with its
//!   participant index on each iteration. `WATCHDOG=1` goes out (from whichever loop ticks last) only when
//!   **every** participant has ticked since the previous notification and at least half the watchdog
//!   interval has passed, so one stalled shard stops the notifications and systemd restarts the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends `READY=1` (no-op outside systemd).
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// Sends `STOPPING=1` (no-op outside systemd).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Sends `STATUS=<text>` (no-op outside systemd).
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(%error, "sd_notify failed");
    }
}

/// A watchdog that notifies systemd only while every participant loop is alive.
#[derive(Debug)]
pub struct Watchdog {
    /// Minimum time between two `WATCHDOG=1` (half the configured `WatchdogSec`); `None`: disabled.
    period_ns: Option<u64>,
    epoch: Instant,
    last_tick_ns: Vec<AtomicU64>,
    last_sent_ns: AtomicU64,
    sent: AtomicU64,
    to_systemd: bool,
}

impl Watchdog {
    /// The watchdog systemd asked for (`WATCHDOG_USEC`), for `participants` loops; disabled when unset.
    pub fn from_env(participants: usize) -> Self {
        let mut usec = 0;
        let period = if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            Some(Duration::from_micros(usec) / 2)
        } else {
            None
        };
        if let Some(period) = period {
            tracing::info!(
                period_ms = period.as_millis() as u64,
                "systemd watchdog enabled"
            );
        }
        Self::new(period, participants, true)
    }

    /// A watchdog with an explicit period (tests: `to_systemd = false` only counts notifications).
    pub fn new(period: Option<Duration>, participants: usize, to_systemd: bool) -> Self {
        Self {
            period_ns: period.map(|p| p.as_nanos() as u64),
            epoch: Instant::now(),
            last_tick_ns: (0..participants).map(|_| AtomicU64::new(0)).collect(),
            last_sent_ns: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            to_systemd,
        }
    }

    /// Nanoseconds since this watchdog was made (the clock `tick` expects).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// How long a loop may sleep without delaying the watchdog.
    pub fn max_sleep(&self) -> Duration {
        self.period_ns
            .map_or(Duration::from_millis(200), |p| Duration::from_nanos(p / 4))
            .min(Duration::from_millis(200))
    }

    /// Participant `who` is alive at `now_ns`; sends `WATCHDOG=1` if everyone has ticked since the last
    /// notification and the period has passed. Returns whether it notified.
    pub fn tick(&self, who: usize, now_ns: u64) -> bool {
        let Some(period) = self.period_ns else {
            return false;
        };
        // Ticks are stored +1 so that 0 means "never ticked".
        if let Some(slot) = self.last_tick_ns.get(who) {
            slot.store(now_ns + 1, Ordering::Release);
        }
        let last_sent = self.last_sent_ns.load(Ordering::Acquire);
        if now_ns < last_sent + period {
            return false;
        }
        let everyone = self
            .last_tick_ns
            .iter()
            .all(|t| t.load(Ordering::Acquire) > last_sent);
        if !everyone {
            return false;
        }
        if self
            .last_sent_ns
            .compare_exchange(
                last_sent,
                now_ns.max(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        if self.to_systemd {
            send(&[NotifyState::Watchdog]);
        }
        true
    }

    /// Notifications sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn notifies_only_when_every_loop_ticked() {
        let dog = Watchdog::new(Some(Duration::from_millis(100)), 3, false);
        // All three alive: one notification per period.
        for t in (0..1000).step_by(10) {
            for who in 0..3 {
                dog.tick(who, t * MS);
            }
        }
        let healthy = dog.sent();
        assert!((9..=11).contains(&healthy), "{healthy}");
        // Participant 2 stalls: no more notifications.
        for t in (1000..2000).step_by(10) {
            dog.tick(0, t * MS);
            dog.tick(1, t * MS);
        }
        assert!(dog.sent() <= healthy + 1, "{} after stall", dog.sent());
        // It recovers.
        for t in (2000..2300).step_by(10) {
            for who in 0..3 {
                dog.tick(who, t * MS);
            }
        }
        assert!(dog.sent() >= healthy + 2);
    }

    #[test]
    fn disabled_watchdog_never_notifies() {
        let dog = Watchdog::new(None, 1, false);
        assert!(!dog.tick(0, 10_000 * MS));
        assert_eq!(dog.sent(), 0);
    }
}
