//! How busy each lab host's link was: `eth0` byte counters sampled from inside every namespace.
//!
//! [`LinkSampler::start`] runs one thread per host; each enters its host's network namespace and
//! reads `/proc/thread-self/net/dev` (the calling thread's namespace, no process spawned) every
//! interval until [`LinkSampler::finish`] or a time limit. A host's transmit counter is its uplink
//! (before the bridge), its receive counter its downlink (after shaping and loss). Counts are
//! Ethernet frame bytes as the veth sees them (IP/UDP headers included, no preamble or FCS).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab, LabError};

/// The interface whose counters are sampled in every host.
const DEVICE: &str = "eth0";

/// One reading of a host's `eth0`: seconds since the sampler started, bytes received, bytes sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSample {
    /// Seconds since [`LinkSampler::start`].
    pub seconds: f64,
    /// Bytes `eth0` has received (the host's downlink), since the interface was created.
    pub rx_bytes: u64,
    /// Bytes `eth0` has sent (the host's uplink), since the interface was created.
    pub tx_bytes: u64,
}

/// Every sample of one host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLink {
    /// The host.
    pub host: Host,
    /// Its samples, in time order.
    pub samples: Vec<LinkSample>,
}

impl HostLink {
    /// Mean (downlink, uplink) rates in bits/s between `from` and `to` seconds (linear
    /// interpolation between samples); `None` without samples spanning a positive interval.
    pub fn mean_bps(&self, from: f64, to: f64) -> Option<(f64, f64)> {
        if to <= from {
            return None;
        }
        let rx = counter_at(&self.samples, to, |s| s.rx_bytes)?
            - counter_at(&self.samples, from, |s| s.rx_bytes)?;
        let tx = counter_at(&self.samples, to, |s| s.tx_bytes)?
            - counter_at(&self.samples, from, |s| s.tx_bytes)?;
        let span = to - from;
        Some((rx * 8.0 / span, tx * 8.0 / span))
    }
}

/// A counter's value at `t`, interpolated between the samples around it (clamped to the first and
/// last sample).
fn counter_at(samples: &[LinkSample], t: f64, value: impl Fn(&LinkSample) -> u64) -> Option<f64> {
    let first = samples.first()?;
    let last = samples.last()?;
    if t <= first.seconds {
        return Some(value(first) as f64);
    }
    if t >= last.seconds {
        return Some(value(last) as f64);
    }
    samples.windows(2).find_map(|w| {
        let (a, b) = (&w[0], &w[1]);
        (a.seconds <= t && t <= b.seconds).then(|| {
            let span = b.seconds - a.seconds;
            let share = if span > 0.0 {
                (t - a.seconds) / span
            } else {
                1.0
            };
            value(a) as f64 + share * (value(b) as f64 - value(a) as f64)
        })
    })
}

/// A host's sampling thread: its samples, or why it could not enter the namespace.
type SamplerThread = JoinHandle<Result<Vec<LinkSample>, LabError>>;

/// Background samplers of every host's `eth0`, one thread per host.
#[derive(Debug)]
pub struct LinkSampler {
    stop: Arc<AtomicBool>,
    threads: Vec<(Host, SamplerThread)>,
}

impl LinkSampler {
    /// Starts sampling every host of `lab` each `interval`, with times counted from `origin`, for
    /// at most `limit` (then the threads stop by themselves and keep what they have).
    pub fn start(
        lab: &Lab,
        origin: Instant,
        interval: Duration,
        limit: Duration,
    ) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let started = origin;
        let mut threads = Vec::new();
        for host in lab.hosts() {
            let netns = lab.open_netns(host)?;
            let stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name(format!("links-{host}"))
                .spawn(move || {
                    netns.enter()?;
                    let mut samples = Vec::new();
                    let mut next = started;
                    loop {
                        if let Some((rx_bytes, tx_bytes)) = read_device_counters(DEVICE) {
                            samples.push(LinkSample {
                                seconds: started.elapsed().as_secs_f64(),
                                rx_bytes,
                                tx_bytes,
                            });
                        }
                        if stop.load(Ordering::Relaxed) || started.elapsed() >= limit {
                            return Ok(samples);
                        }
                        next += interval;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                })
                .map_err(|source| LabError::Enter {
                    netns: lab.netns(host),
                    source,
                })?;
            threads.push((host, thread));
        }
        Ok(LinkSampler { stop, threads })
    }

    /// Takes one last sample in every host, stops the threads and returns every host's samples
    /// (hosts whose thread failed are left out).
    pub fn finish(self) -> Vec<HostLink> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .filter_map(|(host, thread)| {
                let samples = thread.join().ok()?.ok()?;
                Some(HostLink { host, samples })
            })
            .collect()
    }
}

/// `device`'s (received, transmitted) byte counters in the calling thread's network namespace.
fn read_device_counters(device: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
    parse_net_dev(&text, device)
}

/// Finds `device` in the text of `/proc/net/dev` and returns its (rx bytes, tx bytes).
fn parse_net_dev(text: &str, device: &str) -> Option<(u64, u64)> {
    text.lines().skip(2).find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != device {
            return None;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // 8 receive fields (bytes first), then 8 transmit fields (bytes first).
        Some((*fields.first()?, *fields.get(8)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0: 123456789  1000    0    3    0     0          0         0 987654321    2000    0    0    0     0       0          0
";

    #[test]
    fn net_dev_lines_parse_by_device() {
        assert_eq!(
            parse_net_dev(NET_DEV, "eth0"),
            Some((123_456_789, 987_654_321))
        );
        assert_eq!(parse_net_dev(NET_DEV, "lo"), Some((100, 100)));
        assert_eq!(parse_net_dev(NET_DEV, "eth1"), None);
        assert_eq!(parse_net_dev("garbage\n\n eth0: x y\n", "eth0"), None);
    }

    #[test]
    fn mean_rates_interpolate_between_samples() {
        let link = HostLink {
            host: Host::Server,
            samples: (0..=10u32)
                .map(|i| LinkSample {
                    seconds: f64::from(i) * 0.5,
                    rx_bytes: 1000 * u64::from(i),
                    tx_bytes: 5000 * u64::from(i),
                })
                .collect(),
        };
        // 1000 bytes per 0.5 s = 16 kbit/s down, 80 kbit/s up, also across sample boundaries.
        let (rx, tx) = link.mean_bps(0.25, 3.75).unwrap();
        assert!((rx - 16_000.0).abs() < 1e-6, "{rx}");
        assert!((tx - 80_000.0).abs() < 1e-6, "{tx}");
        // Past the last sample the counters stay flat.
        assert_eq!(link.mean_bps(5.0, 7.0), Some((0.0, 0.0)));
        let (rx, _) = link.mean_bps(4.0, 6.0).unwrap();
        assert!((rx - 8_000.0).abs() < 1e-6, "{rx}");
        assert_eq!(link.mean_bps(2.0, 2.0), None);
        let empty = HostLink {
            host: Host::Client(1),
            samples: Vec::new(),
        };
        assert_eq!(empty.mean_bps(0.0, 1.0), None);
    }
}
