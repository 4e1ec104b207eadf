//! `ccfd-perf udp`: the UDP data-plane ceiling on loopback.
//!
//! A sender thread and a receiver thread, pinned to different cores, move `--payload`-byte
//! datagrams from `--src` to `--dst` for `--secs` per mode (and at most `--max-datagrams`), in
//! one invocation, so every mode sees the same machine state:
//! * `plain`: a blocking `send_to` loop → a blocking `recv_from` loop (std sockets, no GSO/GRO);
//! * `uring`: `ccfd-ring` io_uring backend, GSO sends (one SendMsg per 64 KiB buffer) →
//!   multishot GRO receive;
//! * `syscall`: `ccfd-ring` syscall backend, sendmsg+GSO → recvmmsg+GRO;
//! * `uring-nogso`, `syscall-nogso`: the same backends with GSO and GRO off.
//!
//! `--rate-gbps R` paces every sender to R Gbit/s of payload (to show the loss at a given rate
//! rather than at the blast rate, where the receiver's queue overflows whenever it is descheduled).
//!
//! One JSON line per mode: goodput (Gbit/s) and Mpps at the receiver (received payload over the
//! receiver's active window), loss (1 − received/sent), CPU ns per datagram of each thread
//! (`CLOCK_THREAD_CPUTIME_ID`), and `foreign_cpus` (CPUs used by everything else during the run,
//! from /proc/stat minus our two threads: above ~0.3 the figures are contended), the receive
//! messages per datagram (GRO coalescing) and, for ring modes, the socket-queue drops the
//! kernel reported (`SO_RXQ_OVFL`, in packets: a GRO super-buffer counts once) and how often the
//! multishot receive had to be re-armed. Then a final
//! line with `uring_over_plain` (goodput ratio) and whether the targets were met.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ccfd_ring::{thread_cpu_time, BackendChoice, Ring, RingConfig, SocketConfig};
use serde::Serialize;

/// Options of `ccfd-perf udp`.
#[derive(Debug, clap::Args)]
pub struct UdpArgs {
    /// Seconds of sending per mode.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 1280)]
    payload: usize,
    /// Modes to run, in order (plain, uring, syscall, uring-nogso, syscall-nogso).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,uring,syscall,syscall-nogso"
    )]
    modes: Vec<String>,
    /// Sender address (port 0: any).
    #[arg(long, default_value = "127.0.0.1:0")]
    src: SocketAddr,
    /// Receiver address (port 0: any).
    #[arg(long, default_value = "127.0.0.2:0")]
    dst: SocketAddr,
    /// Core index for the sender thread.
    #[arg(long, default_value_t = 0)]
    sender_core: usize,
    /// Core index for the receiver thread.
    #[arg(long, default_value_t = 1)]
    receiver_core: usize,
    /// Upper bound on datagrams sent per mode.
    #[arg(long, default_value_t = 200_000_000)]
    max_datagrams: u64,
    /// Pace the sender to this payload rate in Gbit/s (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate_gbps: f64,
    /// io_uring buffer-ring entries (68 KiB each) of the receiving ring (a power of two).
    #[arg(long, default_value_t = 256)]
    ring_buffers: u16,
    /// Receive buffer asked for on the receiving socket, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    rcvbuf: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Ring {
        backend: BackendChoice,
        offload: bool,
    },
}

fn parse_mode(name: &str) -> anyhow::Result<Mode> {
    Ok(match name {
        "plain" => Mode::Plain,
        "uring" => Mode::Ring {
            backend: BackendChoice::Uring,
            offload: true,
        },
        "syscall" => Mode::Ring {
            backend: BackendChoice::Syscall,
            offload: true,
        },
        "uring-nogso" => Mode::Ring {
            backend: BackendChoice::Uring,
            offload: false,
        },
        "syscall-nogso" => Mode::Ring {
            backend: BackendChoice::Syscall,
            offload: false,
        },
        other => {
            bail!("unknown mode {other:?} (plain, uring, syscall, uring-nogso, syscall-nogso)")
        }
    })
}

/// One output line.
#[derive(Debug, Serialize)]
struct Report {
    mode: String,
    payload: usize,
    rate_gbps_cap: f64,
    secs: f64,
    sent: u64,
    received: u64,
    rx_gbps: f64,
    rx_mpps: f64,
    tx_gbps: f64,
    loss: f64,
    tx_cpu_ns_per_dgram: f64,
    rx_cpu_ns_per_dgram: f64,
    rx_msgs_per_dgram: f64,
    send_errors: u64,
    kernel_queue_drops: u64,
    rx_rearms: u64,
    foreign_cpus: f64,
}

/// What the sender thread measured.
struct SendStats {
    sent: u64,
    errors: u64,
    cpu: Duration,
    wall: Duration,
}

/// What the receiver thread measured.
struct RecvStats {
    received: u64,
    bytes: u64,
    msgs: u64,
    queue_drops: u64,
    rearms: u64,
    cpu: Duration,
    window: Duration,
}

/// Shared between the two threads of one run.
struct Shared {
    done: AtomicBool,
    sent: AtomicU64,
}

/// Busy and total jiffies from the first line of /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

fn pin(core: usize) {
    if let Some(ids) = core_affinity::get_core_ids() {
        if let Some(id) = ids.get(core % ids.len().max(1)) {
            core_affinity::set_for_current(*id);
        }
    }
}

fn fill(buf: &mut [u8], seq: u64) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// Runs one mode and returns its report.
fn run_mode(args: &UdpArgs, name: &str, mode: Mode) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared {
        done: AtomicBool::new(false),
        sent: AtomicU64::new(0),
    });
    let (addr_tx, addr_rx) = mpsc::channel::<anyhow::Result<SocketAddr>>();
    let duration = Duration::from_secs_f64(args.secs);
    let payload = args.payload;
    let rcvbuf = args.rcvbuf;
    let ring_buffers = args.ring_buffers;
    let dst = args.dst;
    let src = args.src;
    let max = args.max_datagrams;
    let pacer = Pacer {
        bytes_per_sec: args.rate_gbps * 1e9 / 8.0,
    };
    let (rc, sc) = (args.receiver_core, args.sender_core);

    let jiffies_before = cpu_jiffies();
    let wall_start = Instant::now();
    let rx_shared = shared.clone();
    let receiver = std::thread::spawn(move || -> anyhow::Result<RecvStats> {
        pin(rc);
        match mode {
            Mode::Plain => receive_plain(dst, rcvbuf, payload, &rx_shared, addr_tx),
            Mode::Ring { backend, offload } => receive_ring(
                dst,
                rcvbuf,
                ring_buffers,
                backend,
                offload,
                &rx_shared,
                addr_tx,
            ),
        }
    });
    let to = addr_rx
        .recv()
        .context("receiver thread died before binding")??;
    let tx_shared = shared.clone();
    let sender = std::thread::spawn(move || -> anyhow::Result<SendStats> {
        pin(sc);
        let job = SendJob {
            src,
            to,
            payload,
            duration,
            max,
            pacer,
        };
        let stats = match mode {
            Mode::Plain => send_plain(job),
            Mode::Ring { backend, offload } => send_ring(job, backend, offload),
        };
        let sent = stats.as_ref().map(|s| s.sent).unwrap_or(0);
        tx_shared.sent.store(sent, Ordering::SeqCst);
        tx_shared.done.store(true, Ordering::SeqCst);
        stats
    });
    let tx = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let rx = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let wall = wall_start.elapsed().as_secs_f64();
    let foreign = match (jiffies_before, cpu_jiffies()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let busy_cpus = (b1 - b0) as f64 / (t1 - t0) as f64 * ncpu;
            busy_cpus - (tx.cpu + rx.cpu).as_secs_f64() / wall
        }
        _ => f64::NAN,
    };
    let window = rx.window.as_secs_f64().max(1e-9);
    let per = |cpu: Duration, n: u64| {
        if n == 0 {
            f64::NAN
        } else {
            cpu.as_nanos() as f64 / n as f64
        }
    };
    Ok(Report {
        mode: name.to_string(),
        payload,
        rate_gbps_cap: args.rate_gbps,
        secs: args.secs,
        sent: tx.sent,
        received: rx.received,
        rx_gbps: rx.bytes as f64 * 8.0 / window / 1e9,
        rx_mpps: rx.received as f64 / window / 1e6,
        tx_gbps: tx.sent as f64 * payload as f64 * 8.0 / tx.wall.as_secs_f64().max(1e-9) / 1e9,
        loss: if tx.sent == 0 {
            f64::NAN
        } else {
            1.0 - rx.received as f64 / tx.sent as f64
        },
        tx_cpu_ns_per_dgram: per(tx.cpu, tx.sent),
        rx_cpu_ns_per_dgram: per(rx.cpu, rx.received),
        rx_msgs_per_dgram: if rx.received == 0 {
            f64::NAN
        } else {
            rx.msgs as f64 / rx.received as f64
        },
        send_errors: tx.errors,
        kernel_queue_drops: rx.queue_drops,
        rx_rearms: rx.rearms,
        foreign_cpus: (foreign * 100.0).round() / 100.0,
    })
}

/// True once the sender is done and everything it sent arrived, or nothing came for a while.
fn finished(shared: &Shared, received: u64, last_rx: Instant, started: Instant) -> bool {
    if started.elapsed() > Duration::from_secs(600) {
        return true; // hard bound, whatever happens
    }
    shared.done.load(Ordering::SeqCst)
        && (received >= shared.sent.load(Ordering::SeqCst)
            || last_rx.elapsed() > Duration::from_millis(300))
}

/// Optional sender pacing (a payload-rate budget since the start).
#[derive(Debug, Clone, Copy)]
struct Pacer {
    /// 0: unpaced.
    bytes_per_sec: f64,
}

impl Pacer {
    /// How long to hold off when `bytes` is ahead of the budget after `elapsed`.
    fn ahead(&self, bytes: u64, elapsed: Duration) -> Option<Duration> {
        if self.bytes_per_sec <= 0.0 {
            return None;
        }
        let excess = bytes as f64 - self.bytes_per_sec * elapsed.as_secs_f64();
        (excess > 0.0).then(|| Duration::from_secs_f64(excess / self.bytes_per_sec))
    }

    /// Sleeps (at most 1 ms) while ahead of the budget.
    fn hold(&self, bytes: u64, start: Instant) {
        if let Some(d) = self.ahead(bytes, start.elapsed()) {
            std::thread::sleep(d.min(Duration::from_millis(1)));
        }
    }
}

/// What a sender thread does: where from and to, how big, how long, how many, how fast.
struct SendJob {
    src: SocketAddr,
    to: SocketAddr,
    payload: usize,
    duration: Duration,
    max: u64,
    pacer: Pacer,
}

fn send_plain(job: SendJob) -> anyhow::Result<SendStats> {
    let SendJob {
        src,
        to,
        payload,
        duration,
        max,
        pacer,
    } = job;
    let sock = SocketConfig::new(src)
        .gro(false)
        .gso(false)
        .receive(false)
        .bind()?
        .into_std();
    sock.set_nonblocking(false)?;
    let mut buf = vec![0u8; payload];
    let (cpu0, start) = (thread_cpu_time(), Instant::now());
    let (mut sent, mut errors) = (0u64, 0u64);
    while sent < max && start.elapsed() < duration {
        pacer.hold(sent * payload as u64, start);
        for _ in 0..64 {
            fill(&mut buf, sent);
            match sock.send_to(&buf, to) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
    }
    Ok(SendStats {
        sent,
        errors,
        cpu: thread_cpu_time() - cpu0,
        wall: start.elapsed(),
    })
}

fn receive_plain(
    dst: SocketAddr,
    rcvbuf: usize,
    payload: usize,
    shared: &Shared,
    ready: mpsc::Sender<anyhow::Result<SocketAddr>>,
) -> anyhow::Result<RecvStats> {
    let bound = match SocketConfig::new(dst).recv_buffer(rcvbuf).gro(false).bind() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            bail!("receiver bind failed");
        }
    };
    let sock = bound.into_std();
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let _ = ready.send(Ok(sock.local_addr()?));
    let mut buf = vec![0u8; payload.max(2048)];
    let (mut received, mut bytes) = (0u64, 0u64);
    let cpu0 = thread_cpu_time();
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while !finished(shared, received, last, started) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            received += 1;
            bytes += n as u64;
        }
    }
    Ok(RecvStats {
        received,
        bytes,
        msgs: received,
        queue_drops: 0,
        rearms: 0,
        cpu: thread_cpu_time() - cpu0,
        window: first.map_or(Duration::ZERO, |f| last - f),
    })
}

fn ring_config(backend: BackendChoice, ring_buffers: u16) -> RingConfig {
    RingConfig::default()
        .backend(backend)
        .recv_buffers(ring_buffers, 68 * 1024)
        .send_buffers(64)
}

fn send_ring(job: SendJob, backend: BackendChoice, gso: bool) -> anyhow::Result<SendStats> {
    let SendJob {
        src,
        to,
        payload,
        duration,
        max,
        pacer,
    } = job;
    let mut ring = Ring::new(&ring_config(backend, 16))?;
    let sock = ring.bind(&SocketConfig::new(src).gso(gso).receive(false))?;
    let per_buffer = ccfd_ring::max_datagrams(payload) as u64;
    let (cpu0, start) = (thread_cpu_time(), Instant::now());
    let mut queued = 0u64;
    while queued < max && start.elapsed() < duration {
        // Fill every free buffer, then submit them together.
        pacer.hold(queued * payload as u64, start);
        while queued < max {
            if pacer
                .ahead(queued * payload as u64, start.elapsed())
                .is_some()
            {
                break;
            }
            let Ok(mut buf) = ring.send_buffer(sock, to, payload) else {
                break;
            };
            let n = per_buffer.min(max - queued);
            for _ in 0..n {
                buf.push_with(|b| {
                    fill(b, queued);
                    b.len()
                })?;
                queued += 1;
            }
            buf.queue();
            if ring.free_send_buffers() == 0 {
                break;
            }
        }
        ring.submit()?;
        ring.process(usize::MAX, |_| {})?;
        if ring.free_send_buffers() == 0 {
            ring.wait(Some(Duration::from_millis(1)))?;
            ring.process(usize::MAX, |_| {})?;
        }
    }
    // Reap the last completions (bounded).
    let drain_until = Instant::now() + Duration::from_secs(2);
    ring.submit()?;
    while ring.free_send_buffers() < 64 && Instant::now() < drain_until {
        ring.wait(Some(Duration::from_millis(10)))?;
        ring.process(usize::MAX, |_| {})?;
    }
    let c = ring.counters();
    let errors = c.send_error_datagrams;
    Ok(SendStats {
        sent: c.sent_datagrams,
        errors,
        cpu: thread_cpu_time() - cpu0,
        wall: start.elapsed(),
    })
}

fn receive_ring(
    dst: SocketAddr,
    rcvbuf: usize,
    ring_buffers: u16,
    backend: BackendChoice,
    gro: bool,
    shared: &Shared,
    ready: mpsc::Sender<anyhow::Result<SocketAddr>>,
) -> anyhow::Result<RecvStats> {
    let setup = || -> anyhow::Result<(Ring, SocketAddr)> {
        let mut ring = Ring::new(&ring_config(backend, ring_buffers))?;
        let sock = ring.bind(&SocketConfig::new(dst).recv_buffer(rcvbuf).gro(gro))?;
        let addr = ring.local_addr(sock)?;
        ring.submit()?; // arm the receive before the sender starts
        Ok((ring, addr))
    };
    let mut ring = match setup() {
        Ok((ring, addr)) => {
            let _ = ready.send(Ok(addr));
            ring
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            bail!("receiver setup failed: {msg}");
        }
    };
    let (mut received, mut bytes) = (0u64, 0u64);
    let cpu0 = thread_cpu_time();
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    while !finished(shared, received, last, started) {
        ring.wait(Some(Duration::from_millis(50)))?;
        let mut got = 0u64;
        let mut got_bytes = 0u64;
        ring.process(8192, |d| {
            got += 1;
            got_bytes += d.payload.len() as u64;
        })?;
        if got > 0 {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            received += got;
            bytes += got_bytes;
        }
    }
    let c = ring.counters();
    Ok(RecvStats {
        received,
        bytes,
        msgs: c.recv_ops,
        queue_drops: c.kernel_queue_drops,
        rearms: c.recv_rearms,
        cpu: thread_cpu_time() - cpu0,
        window: first.map_or(Duration::ZERO, |f| last - f),
    })
}

/// Final summary line.
#[derive(Debug, Serialize)]
struct Summary {
    summary: &'static str,
    plain_gbps: f64,
    uring_gbps: f64,
    uring_over_plain: f64,
    uring_loss: f64,
    target_2x_plain: bool,
    target_12_gbps: bool,
    target_loss_below_1pct: bool,
}

/// Runs the UDP benchmark.
pub fn run(args: &UdpArgs) -> anyhow::Result<()> {
    if args.payload == 0 || args.payload > ccfd_ring::MAX_SEND_PAYLOAD {
        bail!("--payload must be in 1..={}", ccfd_ring::MAX_SEND_PAYLOAD);
    }
    if !(args.rate_gbps >= 0.0 && args.rate_gbps.is_finite()) {
        bail!("--rate-gbps must be >= 0");
    }
    if !(args.secs > 0.0 && args.secs <= 120.0) {
        bail!("--secs must be in (0, 120]");
    }
    let modes = args
        .modes
        .iter()
        .map(|m| parse_mode(m.trim()).map(|mode| (m.trim().to_string(), mode)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut plain = None;
    let mut uring = None;
    for (name, mode) in modes {
        eprintln!("udp: {name} ({} B, {} s)", args.payload, args.secs);
        let report = run_mode(args, &name, mode).with_context(|| format!("mode {name}"))?;
        println!("{}", serde_json::to_string(&report)?);
        match name.as_str() {
            "plain" => plain = Some(report.rx_gbps),
            "uring" => uring = Some((report.rx_gbps, report.loss)),
            _ => {}
        }
    }
    if let (Some(p), Some((u, loss))) = (plain, uring) {
        let s = Summary {
            summary: "uring_vs_plain",
            plain_gbps: p,
            uring_gbps: u,
            uring_over_plain: u / p,
            uring_loss: loss,
            target_2x_plain: u >= 2.0 * p,
            target_12_gbps: u >= 12.0,
            target_loss_below_1pct: loss < 0.01,
        };
        println!("{}", serde_json::to_string(&s)?);
    }
    Ok(())
}
