//! `ccfd-perf swarm`: the one-command demo. It makes (or takes) a file, starts a real `ccfd-server`
//! and N real `ccfd-client` processes, shows one live progress line per client, checks every output
//! against the source's BLAKE3 digest, prints a table (or one JSON document) and cleans up every
//! process and file it made. It exits non-zero, with the reason, when anything failed.
//!
//! Without `--rate`/`--loss` every host gets its own loopback address `127.A.B.x` (A.B derived from
//! the process id, so concurrent runs do not collide). With either option the run happens in a
//! network-namespace lab ([`ccfd_perf::lab`]): one namespace per host behind a bridge, `tbf` at
//! `--rate` up and down, nftables loss at `--loss`; the table then adds the fluid lower bound
//! `T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i))` and each time's ratio to it.
//!
//! It builds nothing: the binaries are looked up next to the `ccfd-perf` executable (or in
//! `--bin-dir`). Every run is bounded by `--timeout`.

mod plot;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use ccfd_perf::lab::{self, Host, Lab, LabConfig};
use ccfd_perf::links::{HostLink, LinkSampler};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

/// Name of the lab used by `--rate` / `--loss` runs (its namespaces are `ccfdswarm-*`).
const LAB_NAME: &str = "ccfdswarm";
/// Subnet of that lab.
const LAB_SUBNET: [u8; 3] = [10, 201, 0];
/// Control and data ports inside the lab (the lab's addresses are private, so defaults are safe).
const LAB_CONTROL_PORT: u16 = 7653;
const LAB_UDP_BASE: u16 = 7655;
/// How many data ports above `--udp-base` must be free on loopback.
const UDP_PORT_SPAN: u16 = 64;
/// How long the server may take to accept connections.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Lines of stderr kept per process for error reports.
const LOG_TAIL_LINES: usize = 30;
/// Name under which the file is asked for by the fault-injection clients.
const MISSING_NAME: &str = "no-such-file.bin";

/// Options of `ccfd-perf swarm`.
#[derive(Debug, clap::Args)]
pub struct SwarmArgs {
    /// Number of clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=200))]
    clients: u16,
    /// Size of the random file to make: bytes or with a unit (KiB, MiB, GiB; KB, MB, GB; K, M, G
    /// are binary), e.g. 8MiB, 1GiB.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    size: u64,
    /// Distribute this existing file instead of a random one (it is not modified).
    #[arg(long, value_name = "PATH", conflicts_with = "size")]
    file: Option<PathBuf>,
    /// Per-host rate limit, up and down, in bits/s (e.g. 200mbit): the run happens in a
    /// network-namespace lab (root, iproute2, ethtool).
    #[arg(long, value_name = "RATE", value_parser = parse_rate_arg)]
    rate: Option<u64>,
    /// Random UDP loss on the wire, in percent (e.g. 2): the run happens in a network-namespace lab
    /// (root, iproute2, ethtool, nftables).
    #[arg(long, value_name = "PCT", value_parser = parse_loss)]
    loss: Option<f64>,
    /// Print one JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Draw per-client progress over time, with T_min marked, into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Give up after this long (e.g. 90s, 5m) and report what was still running.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Directory holding ccfd-server and ccfd-client (default: the directory of this executable).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Clients' upload cap (`ccfd-client --upload-rate`) in bits/s, e.g. 200mbit; default: --rate
    /// in the lab, none on loopback. Passed only when the client supports it.
    #[arg(long, value_name = "RATE", value_parser = parse_rate_arg)]
    upload_rate: Option<u64>,
    /// How long a finished client keeps serving its peers (`ccfd-client --linger`), e.g. 3s;
    /// default: the client's own. Passed only when the client supports it.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    linger: Option<Duration>,
    /// Clients do not cooperate (`ccfd-client --no-coop`): every byte comes from the server. For
    /// comparison with the cooperative run.
    #[arg(long)]
    no_coop: bool,
    /// The server's egress cap (`ccfd-server --max-rate`) in bits/s; default: --rate in the lab,
    /// none on loopback.
    #[arg(long, value_name = "RATE", value_parser = parse_rate_arg)]
    server_max_rate: Option<u64>,
    /// A TOML settings file for the server (`ccfd-server --config`), e.g. to compare coding
    /// settings; the swarm's own --root/--listen/--udp-base/--max-rate still apply on top.
    #[arg(long, value_name = "FILE")]
    server_config: Option<PathBuf>,
    /// The server's sending shards (`ccfd-server --shards`). Default on loopback, where the server
    /// and the clients share this machine: one core fewer than the machine has (at least one), so
    /// the clients' decoder threads (pinned to the last core) do not share a core with a shard; in
    /// the lab and with --server-config, the server's own default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    server_shards: Option<u16>,
    /// Start the clients against a cold server: by default the swarm first asks the server for the
    /// file's meta and waits for it, so the server's one-time hashing of the file (digests are
    /// cached while it runs) is not counted in the clients' times.
    #[arg(long)]
    cold: bool,
    /// Keep every process's whole log (stderr, without the progress events) in this directory:
    /// `server.log`, `client1.log`, ... (created if missing; old files are replaced).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// `RUST_LOG` filter for the server and the clients, e.g. `debug` or
    /// `ccfd_client=debug,info` (default: each program's own, info for the server and warn for
    /// clients). Most useful with --log-dir.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Run in the network-namespace lab even without --rate/--loss (no shaping), e.g. to read the
    /// server's egress from its veth counter.
    #[arg(long)]
    lab: bool,
    /// In the lab, let UDP GSO batches cross the wire whole (a NIC with segmentation offload and
    /// a line-rate switch) instead of one datagram at a time: cuts the lab's own per-datagram CPU.
    /// Not with --loss.
    #[arg(long)]
    wire_gso: bool,
    /// In the lab, read every host's link counters every 10 ms (instead of 100) and write them all
    /// to this CSV file (`host,unix_seconds,rx_bytes,tx_bytes`), to line them up with the logs'
    /// timestamps (segment boundaries).
    #[arg(long, value_name = "FILE")]
    link_trace: Option<PathBuf>,
    /// Fault injection (for tests): the first N clients ask for a file the server does not have.
    #[arg(long, hide = true, default_value_t = 0)]
    missing_name_clients: u16,
}

/// Parses a size: a plain byte count or a number with a unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected e.g. 8MiB"))?;
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > (1u64 << 50) as f64 {
        return Err(format!("size {text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

fn parse_rate_arg(text: &str) -> Result<u64, String> {
    lab::parse_rate(text).map_err(|e| e.to_string())
}

fn parse_loss(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("bad loss {text:?}: a percentage such as 2 or 0.5"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("loss {text:?} must be between 0 and 100"))
    }
}

/// The fluid lower bound on the swarm's completion time, in seconds: every host limited to
/// `rate_bps` up and down, `clients` clients, a file of `file_bytes`.
pub fn t_min_seconds(file_bytes: u64, clients: usize, rate_bps: u64) -> f64 {
    let bits = file_bytes as f64 * 8.0;
    let server_up = rate_bps as f64;
    let client_down = rate_bps as f64;
    let swarm_up = server_up + clients as f64 * rate_bps as f64;
    (bits / server_up)
        .max(bits / client_down)
        .max(clients as f64 * bits / swarm_up)
}

/// Live state of one client, fed by the thread that reads its stderr.
#[derive(Debug, Default)]
struct Live {
    bytes: u64,
    total: Option<u64>,
    from_server: u64,
    from_peers: u64,
    to_peers: u64,
    /// (seconds since the clients started, bytes done).
    samples: Vec<(f64, u64)>,
    log_tail: VecDeque<String>,
}

/// A process this run started, with the threads draining its pipes.
struct Proc {
    label: String,
    child: Child,
    ended: Option<(Instant, ExitStatus)>,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<()>>,
    live: Arc<Mutex<Live>>,
}

impl Proc {
    /// Starts `command`; with `log`, every line of its stderr but the progress events is also
    /// written to that file.
    fn spawn(label: String, mut command: Command, t0: Instant, log: Option<File>) -> Result<Proc> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let line = format!("{command:?}");
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {label}: {line}"))?;
        let live = Arc::new(Mutex::new(Live::default()));
        let stdout = child.stdout.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        let stderr = child.stderr.take().map(|pipe| {
            let live = Arc::clone(&live);
            std::thread::spawn(move || read_stderr(pipe, &live, t0, log))
        });
        Ok(Proc {
            label,
            child,
            ended: None,
            stdout,
            stderr,
            live,
        })
    }

    /// Checks whether the process ended (recording when).
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.ended.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.ended = Some((Instant::now(), status));
            }
        }
        self.ended.map(|(_, status)| status)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; waits for it.
    fn stop(&mut self) {
        if self.poll().is_some() {
            return;
        }
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.poll().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.ended = Some((Instant::now(), status));
        }
    }

    /// Joins the pipe readers; returns stdout.
    fn collect_stdout(&mut self) -> String {
        if let Some(handle) = self.stderr.take() {
            let _ = handle.join();
        }
        self.stdout
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        self.live
            .lock()
            .map(|live| live.log_tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a client's (or the server's) stderr: progress JSON lines update `live`, other lines are
/// kept as the log tail.
fn read_stderr(pipe: impl Read, live: &Mutex<Live>, t0: Instant, log: Option<File>) {
    let mut log = log.map(BufWriter::new);
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        let progress = serde_json::from_str::<Value>(&line)
            .ok()
            .filter(|v| v.get("event").and_then(Value::as_str) == Some("progress"));
        let Ok(mut live) = live.lock() else { break };
        match progress {
            Some(event) => {
                let field = |name: &str| event.get(name).and_then(Value::as_u64);
                live.bytes = field("bytes").unwrap_or(live.bytes);
                live.total = field("file_size").or(live.total);
                live.from_server = field("bytes_from_server").unwrap_or(live.from_server);
                live.from_peers = field("bytes_from_peers").unwrap_or(live.from_peers);
                live.to_peers = field("bytes_to_peers").unwrap_or(live.to_peers);
                let sample = (t0.elapsed().as_secs_f64(), live.bytes);
                live.samples.push(sample);
            }
            None => {
                if let Some(file) = &mut log {
                    // A full disk must not stop the run: the log is a diagnostic.
                    let _ = writeln!(file, "{line}");
                }
                if live.log_tail.len() == LOG_TAIL_LINES {
                    live.log_tail.pop_front();
                }
                live.log_tail.push_back(line);
            }
        }
    }
}

/// `RUST_LOG` from `--log-level`, and no colour codes in the files of `--log-dir`.
fn log_env(command: &mut Command, args: &SwarmArgs) {
    if let Some(filter) = &args.log_level {
        command.env("RUST_LOG", filter);
    }
    if args.log_dir.is_some() {
        command.env("NO_COLOR", "1");
    }
}

/// Creates (or truncates) `name` in the `--log-dir`, if one was given.
fn log_file(dir: Option<&Path>, name: &str) -> Result<Option<File>> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("--log-dir {}", dir.display()))?;
    let path = dir.join(name);
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Some(file))
}

/// One client's row of the report.
#[derive(Debug, Serialize)]
struct ClientRow {
    client: usize,
    address: String,
    ok: bool,
    exit: String,
    /// Seconds from the start of the clients until its output file was complete (renamed into
    /// place), or until it exited when that was not seen.
    seconds: Option<f64>,
    /// Seconds until the process exited (includes `--linger`).
    exit_seconds: Option<f64>,
    goodput_mbit_per_s: Option<f64>,
    bytes_from_server: Option<u64>,
    bytes_from_peers: Option<u64>,
    bytes_to_peers: Option<u64>,
    packets_to_peers: Option<u64>,
    packets_received: Option<u64>,
    packets_dropped: Option<u64>,
    decode_overhead: Option<f64>,
    digest_ok: Option<bool>,
    error: Option<String>,
    /// Client's own `--json` summary, as printed.
    summary: Option<Value>,
    /// (seconds since start, bytes done) samples from the live progress.
    #[serde(skip)]
    samples: Vec<(f64, u64)>,
}

/// The whole run, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    failures: Vec<String>,
    mode: &'static str,
    clients: usize,
    file_bytes: u64,
    file_blake3: String,
    rate_bits_per_s: Option<u64>,
    loss_pct: Option<f64>,
    /// GSO batches crossed the lab's wire whole (`--wire-gso`).
    wire_gso: bool,
    t_min_seconds: Option<f64>,
    slowest_seconds: Option<f64>,
    slowest_to_t_min: Option<f64>,
    /// Datagrams dropped by the lab's loss rules (nftables counters), with `--loss`.
    wire_drops: Option<u64>,
    /// Whether the clients cooperated (they support it and --no-coop was not given).
    coop: bool,
    /// Options passed to every client beyond the basics.
    client_options: Vec<String>,
    /// Options asked for that the client does not support (not passed).
    client_options_unsupported: Vec<String>,
    /// The server's `--shards` as the swarm set it (`None`: the server's default).
    server_shards: Option<usize>,
    /// The server's `--max-rate`, bits/s.
    server_max_rate_bits_per_s: Option<u64>,
    /// Data bytes the server sent (its statistics line at shutdown: UDP payloads).
    server_bytes_sent: Option<u64>,
    /// Data packets the server sent.
    server_packets_sent: Option<u64>,
    /// `server_bytes_sent / file_bytes`.
    server_copies: Option<f64>,
    /// `server_bytes_sent` over the slowest client's time, Mbit/s.
    server_egress_mbit_per_s: Option<f64>,
    /// Bytes the server's veth sent during the run (lab only; Ethernet frames).
    server_veth_tx_bytes: Option<u64>,
    /// Frames the server's veth sent during the run (lab only).
    server_veth_tx_packets: Option<u64>,
    /// `server_veth_tx_bytes / file_bytes`.
    server_veth_copies: Option<f64>,
    /// The server veth's rate between 10 % and 90 % of its final byte count (lab only), Mbit/s.
    server_veth_steady_mbit_per_s: Option<f64>,
    /// Seconds the server took to answer the warm-up request for the file's meta (hashing it),
    /// before the clients started; `None` with `--cold` (then the clients' times include it).
    server_warm_up_seconds: Option<f64>,
    /// How busy each host's link was over its own run (lab only).
    link_use: Option<LinkUse>,
    /// Every host's (downlink, uplink) Mbit/s per [`LINK_SERIES_STEP`] (lab only).
    link_series: Vec<LinkSeriesRow>,
    timeout_seconds: f64,
    still_running_at_timeout: Vec<String>,
    per_client: Vec<ClientRow>,
}

/// How often the lab's link counters are read.
const LINK_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How often the link counters are read with `--link-trace`.
const LINK_TRACE_INTERVAL: Duration = Duration::from_millis(10);

/// Writes every link sample as `host,unix_seconds,rx_bytes,tx_bytes` (`--link-trace`).
fn write_link_trace(path: &Path, links: &[HostLink], t0_unix: f64) -> Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    writeln!(out, "host,unix_seconds,rx_bytes,tx_bytes")?;
    for link in links {
        for sample in &link.samples {
            writeln!(
                out,
                "{},{:.4},{},{}",
                link.host,
                t0_unix + sample.seconds,
                sample.rx_bytes,
                sample.tx_bytes
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The bucket of `link_series` in the report, seconds.
const LINK_SERIES_STEP: f64 = 1.0;

/// One host's mean link rates over its own run: the server until the slowest client finished,
/// a client until its output was complete.
#[derive(Debug, Serialize)]
struct LinkRow {
    host: String,
    seconds: f64,
    down_mbit_per_s: f64,
    up_mbit_per_s: f64,
    /// Downlink rate over the lab's per-host rate (with `--rate`).
    down_utilisation: Option<f64>,
    /// Uplink rate over the lab's per-host rate (with `--rate`).
    up_utilisation: Option<f64>,
}

/// Link utilisation of the run, from every host's eth0 counters (Ethernet frame bytes, so headers
/// count as use).
#[derive(Debug, Serialize)]
struct LinkUse {
    /// The server's uplink over the slowest client's time, as a share of `--rate`.
    server_up_utilisation: Option<f64>,
    /// Mean over clients of each client's downlink use over its own time.
    client_down_utilisation_mean: Option<f64>,
    /// The least-used client downlink.
    client_down_utilisation_min: Option<f64>,
    /// Mean over clients of each client's uplink use over its own time.
    client_up_utilisation_mean: Option<f64>,
    hosts: Vec<LinkRow>,
}

/// One bucket of `link_series`: `hosts` maps a host (`srv`, `c1`, ...) to its (down, up) Mbit/s.
#[derive(Debug, Serialize)]
struct LinkSeriesRow {
    seconds: f64,
    hosts: std::collections::BTreeMap<String, [f64; 2]>,
}

/// Mean link rates per host over its own run, and their shares of `rate_bps`.
fn link_use(
    links: &[HostLink],
    rows: &[ClientRow],
    slowest: Option<f64>,
    rate_bps: Option<u64>,
) -> Option<LinkUse> {
    if links.is_empty() {
        return None;
    }
    let share = |bps: f64| rate_bps.map(|r| bps / r as f64);
    let mut hosts = Vec::new();
    for link in links {
        let end = match link.host {
            Host::Server => slowest,
            Host::Client(k) => rows.get(k - 1).and_then(|r| r.seconds),
        };
        let Some((down, up)) = end.and_then(|end| link.mean_bps(0.0, end)) else {
            continue;
        };
        hosts.push(LinkRow {
            host: link.host.to_string(),
            seconds: end.unwrap_or(0.0),
            down_mbit_per_s: down / 1e6,
            up_mbit_per_s: up / 1e6,
            down_utilisation: share(down),
            up_utilisation: share(up),
        });
    }
    let clients: Vec<&LinkRow> = hosts.iter().filter(|h| h.host != "srv").collect();
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    Some(LinkUse {
        server_up_utilisation: hosts
            .iter()
            .find(|h| h.host == "srv")
            .and_then(|h| h.up_utilisation),
        client_down_utilisation_mean: mean(
            clients.iter().filter_map(|h| h.down_utilisation).collect(),
        ),
        client_down_utilisation_min: clients
            .iter()
            .filter_map(|h| h.down_utilisation)
            .reduce(f64::min),
        client_up_utilisation_mean: mean(clients.iter().filter_map(|h| h.up_utilisation).collect()),
        hosts,
    })
}

/// Every host's (down, up) Mbit/s in buckets of `step` seconds, until the slowest client finished
/// (or the last sample when not every client did); a last bucket shorter than a tenth of a step is
/// left out.
fn link_series(links: &[HostLink], step: f64, slowest: Option<f64>) -> Vec<LinkSeriesRow> {
    let sampled = links
        .iter()
        .filter_map(|l| l.samples.last().map(|s| s.seconds))
        .reduce(f64::max)
        .unwrap_or(0.0);
    let end = slowest.map_or(sampled, |s| s.min(sampled));
    let mut series = Vec::new();
    let mut from = 0.0;
    while end - from > step / 10.0 {
        let to = (from + step).min(end);
        let hosts = links
            .iter()
            .filter_map(|l| {
                let (down, up) = l.mean_bps(from, to)?;
                let round = |bps: f64| (bps / 1e5).round() / 10.0;
                Some((l.host.to_string(), [round(down), round(up)]))
            })
            .collect();
        series.push(LinkSeriesRow {
            seconds: (to * 100.0).round() / 100.0,
            hosts,
        });
        from = to;
    }
    series
}

/// Where the hosts are and how processes are started on them.
enum Net {
    Loopback { base: [u8; 3] },
    Lab(Lab),
}

impl Net {
    fn addr(&self, host: Host) -> Ipv4Addr {
        match self {
            Net::Loopback { base: [a, b, c] } => {
                let last = match host {
                    Host::Server => 1,
                    Host::Client(k) => u8::try_from(k + 1).unwrap_or(u8::MAX),
                };
                Ipv4Addr::new(*a, *b, *c, last)
            }
            Net::Lab(lab) => lab.addr(host),
        }
    }

    fn command(&self, host: Host, program: &Path) -> Command {
        match self {
            Net::Loopback { .. } => Command::new(program),
            Net::Lab(lab) => lab.command(host, program),
        }
    }

    /// Tries one TCP connection to `addr` from the right network namespace.
    /// Asks the server at `addr` for the meta of `name` (which makes it hash the file) and waits
    /// for the answer; returns how long that took.
    fn fetch_meta(&self, addr: SocketAddr, name: &str, timeout: Duration) -> Result<Duration> {
        let name = name.to_owned();
        let attempt = move || fetch_meta(addr, &name, timeout);
        match self {
            Net::Loopback { .. } => attempt(),
            Net::Lab(lab) => lab.in_host(Host::Server, attempt)?,
        }
    }

    fn can_connect(&self, addr: SocketAddr) -> bool {
        let attempt = move || TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok();
        match self {
            Net::Loopback { .. } => attempt(),
            Net::Lab(lab) => lab.in_host(Host::Server, attempt).unwrap_or(false),
        }
    }
}

/// One control connection to the server: Hello, FileMetaRequest for `name`, wait for FileMeta.
fn fetch_meta(addr: SocketAddr, name: &str, timeout: Duration) -> Result<Duration> {
    use ccfd_proto::{Frame, FrameDecoder, Hello, NodeId, Role, PROTOCOL_VERSION};
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        role: Role::Client,
        node_id: NodeId(u64::from(std::process::id()) | (1 << 63)),
        data_addr: None,
        control_addr: None,
    });
    let request = Frame::FileMetaRequest {
        name: name.to_owned(),
    };
    for frame in [hello, request] {
        stream.write_all(&frame.to_bytes()?)?;
    }
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        while let Some(frame) = decoder.next_frame()? {
            match frame {
                Frame::FileMeta(_) => return Ok(started.elapsed()),
                Frame::Error { .. } => bail!("the server refused the meta of {name:?}: {frame:?}"),
                _ => {}
            }
        }
        if started.elapsed() >= timeout {
            bail!("no meta of {name:?} from {addr} within {timeout:?}");
        }
        let read = stream
            .read(&mut buf)
            .with_context(|| format!("waiting for the meta of {name:?} from {addr}"))?;
        if read == 0 {
            bail!("{addr} closed the connection before sending the meta of {name:?}");
        }
        decoder.push(&buf[..read]);
    }
}

/// A loopback /24 inside 127.0.0.0/8 that depends on the process id.
fn loopback_base() -> [u8; 3] {
    let pid = std::process::id();
    [127, 100 + ((pid >> 8) % 100) as u8, (pid % 256) as u8]
}

/// A free TCP port and a base with [`UDP_PORT_SPAN`] free UDP ports on `ip`.
fn free_ports(ip: Ipv4Addr) -> Result<(u16, u16)> {
    let control = TcpListener::bind((ip, 0))
        .with_context(|| format!("binding a TCP port on {ip}"))?
        .local_addr()?
        .port();
    let seed = u32::from(control).wrapping_mul(2_654_435_761) ^ std::process::id();
    for attempt in 0..64u32 {
        let base = 20_000 + ((seed.wrapping_add(attempt * 7919)) % 30_000) as u16;
        let free = (0..UDP_PORT_SPAN).all(|i| UdpSocket::bind((ip, base + i)).is_ok());
        if free && !(base..base + UDP_PORT_SPAN).contains(&control) {
            return Ok((control, base));
        }
    }
    bail!("no range of {UDP_PORT_SPAN} free UDP ports found on {ip}")
}

/// Fills `path` with `size` pseudo-random bytes (SplitMix64) and returns their BLAKE3 digest.
fn make_random_file(path: &Path, size: u64) -> Result<blake3::Hash> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = blake3::Hasher::new();
    let mut state = Instant::now().elapsed().as_nanos() as u64
        ^ u64::from(std::process::id())
        ^ 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        for word in chunk[..n].chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        hasher.update(&chunk[..n]);
        out.write_all(&chunk[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(hasher.finalize())
}

fn digest_of(path: &Path) -> Result<blake3::Hash> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(hasher.finalize())
}

/// Locates `ccfd-server` and `ccfd-client`.
fn find_binaries(bin_dir: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let dir = match bin_dir {
        Some(dir) => dir.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the ccfd-perf executable")?
            .parent()
            .map(Path::to_path_buf)
            .context("the ccfd-perf executable has no directory")?,
    };
    let find = |name: &str| -> Result<PathBuf> {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            bail!(
                "{name} not found in {} (ccfd-perf builds nothing): build them with \
                 `cargo build --release --workspace` (or the same profile as ccfd-perf), \
                 or point --bin-dir at them",
                dir.display()
            )
        }
    };
    Ok((find("ccfd-server")?, find("ccfd-client")?))
}

/// Which optional flags `ccfd-client get` supports (from its `--help`).
#[derive(Debug, Clone, Copy, Default)]
struct ClientFlags {
    progress_json: bool,
    no_progress: bool,
    upload_rate: bool,
    linger: bool,
    no_coop: bool,
}

fn client_flags(client: &Path) -> ClientFlags {
    let help = Command::new(client)
        .args(["get", "--help"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    ClientFlags {
        progress_json: help.contains("--progress-json"),
        no_progress: help.contains("--no-progress"),
        upload_rate: help.contains("--upload-rate"),
        linger: help.contains("--linger"),
        no_coop: help.contains("--no-coop"),
    }
}

/// The cooperation options for every client: (arguments passed, options asked for but unsupported,
/// whether clients cooperate).
fn coop_options(args: &SwarmArgs, flags: ClientFlags) -> (Vec<String>, Vec<String>, bool) {
    let mut passed = Vec::new();
    let mut unsupported = Vec::new();
    let upload = args.upload_rate.or(args.rate);
    if let Some(rate) = upload {
        if flags.upload_rate {
            passed.extend(["--upload-rate".to_owned(), format!("{rate}bit")]);
        } else if args.upload_rate.is_some() {
            unsupported.push("--upload-rate".to_owned());
        }
    }
    if let Some(linger) = args.linger {
        if flags.linger {
            passed.extend(["--linger".to_owned(), format!("{}ms", linger.as_millis())]);
        } else {
            unsupported.push("--linger".to_owned());
        }
    }
    if args.no_coop {
        if flags.no_coop {
            passed.push("--no-coop".to_owned());
        } else {
            // A client without cooperation does not cooperate anyway.
            unsupported.push("--no-coop".to_owned());
        }
    }
    // `--no-coop` exists exactly when the client can cooperate.
    let coop = flags.no_coop && !args.no_coop;
    (passed, unsupported, coop)
}

/// The server's statistics line at shutdown: (bytes sent, packets sent).
fn server_totals(stdout: &str) -> Option<(u64, u64)> {
    stdout.lines().rev().find_map(|line| {
        let v: Value = serde_json::from_str(line.trim()).ok()?;
        if v.get("event").and_then(Value::as_str) != Some("stopped") {
            return None;
        }
        Some((
            v.get("bytes_sent")?.as_u64()?,
            v.get("packets_sent")?.as_u64()?,
        ))
    })
}

/// The rate between the moments a cumulative counter passed 10 % and 90 % of its final increase,
/// from (seconds, value) samples; bits per second of a byte counter.
fn steady_rate_bps(samples: &[(f64, u64)]) -> Option<f64> {
    let (&(_, first), &(_, last)) = (samples.first()?, samples.last()?);
    let total = last.checked_sub(first)?;
    if total == 0 {
        return None;
    }
    let crossing = |fraction: f64| {
        let target = first as f64 + fraction * total as f64;
        samples.windows(2).find_map(|w| {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            ((v0 as f64) <= target && (v1 as f64) >= target && v1 > v0).then(|| {
                (
                    t0 + (t1 - t0) * (target - v0 as f64) / (v1 - v0) as f64,
                    target,
                )
            })
        })
    };
    let (t10, v10) = crossing(0.1)?;
    let (t90, v90) = crossing(0.9)?;
    (t90 > t10).then(|| (v90 - v10) * 8.0 / (t90 - t10))
}

/// Runs `ccfd-perf swarm`.
pub fn run(args: &SwarmArgs) -> Result<()> {
    let (server_bin, client_bin) = find_binaries(args.bin_dir.as_deref())?;
    let flags = client_flags(&client_bin);
    let (progress_json, no_progress) = (flags.progress_json, flags.no_progress);
    let (coop_args, coop_unsupported, coop) = coop_options(args, flags);
    lab::install_signal_teardown().context("installing the SIGINT/SIGTERM handler")?;
    let clients = usize::from(args.clients);
    let missing = usize::from(args.missing_name_clients).min(clients);

    // Files: the source (made or given) and one output per client, all in a temp dir.
    let work = tempfile::Builder::new()
        .prefix("ccfd-swarm-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (root, name, file_bytes, digest) = match &args.file {
        Some(path) => {
            let meta =
                std::fs::metadata(path).with_context(|| format!("--file {}", path.display()))?;
            if !meta.is_file() {
                bail!("--file {} is not a regular file", path.display());
            }
            let path = path
                .canonicalize()
                .with_context(|| format!("--file {}", path.display()))?;
            let root = path
                .parent()
                .context("--file has no directory")?
                .to_path_buf();
            let name = path
                .file_name()
                .context("--file has no file name")?
                .to_string_lossy()
                .into_owned();
            let digest = digest_of(&path)?;
            (root, name, meta.len(), digest)
        }
        None => {
            let root = work.path().join("root");
            std::fs::create_dir(&root)?;
            let name = "swarm.bin".to_owned();
            let digest = make_random_file(&root.join(&name), args.size)?;
            (root, name, args.size, digest)
        }
    };
    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir)?;

    // Network: loopback addresses, or the namespace lab.
    let lab_wanted = args.lab || args.wire_gso || args.rate.is_some() || args.loss.is_some();
    let net = if lab_wanted {
        let config = LabConfig {
            rate_bps: args.rate,
            loss_pct: args.loss.unwrap_or(0.0),
            subnet: LAB_SUBNET,
            wire_gso: args.wire_gso,
            ..LabConfig::new(LAB_NAME, clients)
        };
        Net::Lab(Lab::up(config).context("--rate/--loss need the network-namespace lab")?)
    } else {
        Net::Loopback {
            base: loopback_base(),
        }
    };
    let server_ip = net.addr(Host::Server);
    let (control_port, udp_base) = match net {
        Net::Loopback { .. } => free_ports(server_ip)?,
        Net::Lab(_) => (LAB_CONTROL_PORT, LAB_UDP_BASE),
    };
    let server_addr = SocketAddr::from((server_ip, control_port));

    // Server.
    let t_start = Instant::now();
    let deadline = t_start + args.timeout;
    let mut command = net.command(Host::Server, &server_bin);
    command
        .arg("--root")
        .arg(&root)
        .arg("--listen")
        .arg(server_addr.to_string())
        .arg("--udp-base")
        .arg(udp_base.to_string());
    // The operator's setting for a server whose uplink is `rate`, unless given explicitly.
    let server_max_rate = args.server_max_rate.or(args.rate);
    if let Some(rate) = server_max_rate {
        command.arg("--max-rate").arg(format!("{rate}bit"));
    }
    if let Some(config) = &args.server_config {
        command.arg("--config").arg(config);
    }
    let server_shards = args.server_shards.map(usize::from).or_else(|| {
        let shares_the_machine = matches!(net, Net::Loopback { .. });
        (shares_the_machine && args.server_config.is_none()).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(1).max(1)
        })
    });
    if let Some(shards) = server_shards {
        command.arg("--shards").arg(shards.to_string());
    }
    log_env(&mut command, args);
    let mut server = Proc::spawn(
        "ccfd-server".into(),
        command,
        t_start,
        log_file(args.log_dir.as_deref(), "server.log")?,
    )?;
    let ready_by = (t_start + SERVER_READY_TIMEOUT).min(deadline);
    loop {
        if let Some(status) = server.poll() {
            server.collect_stdout();
            bail!(
                "ccfd-server exited ({status}) before accepting connections:\n{}",
                server.log_tail()
            );
        }
        if net.can_connect(server_addr) {
            break;
        }
        if lab::interrupted() {
            bail!("interrupted by a signal while waiting for ccfd-server to accept connections");
        }
        if Instant::now() >= ready_by {
            bail!(
                "ccfd-server did not accept connections on {server_addr} within {:?}:\n{}",
                SERVER_READY_TIMEOUT,
                server.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // A long-running server has hashed its files before: so has this one, unless --cold.
    let warm_seconds = if args.cold {
        None
    } else {
        let left = deadline.saturating_duration_since(Instant::now());
        let took = net.fetch_meta(server_addr, &name, left).with_context(|| {
            format!("warming the server up (meta of {name:?}); --cold skips it")
        })?;
        Some(took.as_secs_f64())
    };

    // Clients, all at once.
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template(
        "{prefix:>18} {bar:28} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    // The server veth's counter (lab only): a baseline now, samples during the run.
    let veth = |net: &Net| match net {
        Net::Lab(lab) => lab.tx_counters(Host::Server).ok(),
        Net::Loopback { .. } => None,
    };
    let veth_start = veth(&net);
    let t0 = Instant::now();
    let t0_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let link_interval = if args.link_trace.is_some() {
        LINK_TRACE_INTERVAL
    } else {
        LINK_SAMPLE_INTERVAL
    };
    // Every host's eth0 counters (lab only), for link utilisation.
    let links = match &net {
        Net::Lab(lab) => LinkSampler::start(lab, t0, link_interval, args.timeout)
            .map_err(|e| eprintln!("link counters not sampled: {e}"))
            .ok(),
        Net::Loopback { .. } => None,
    };
    let mut veth_samples: Vec<(f64, u64)> = veth_start.map(|(b, _)| (0.0, b)).into_iter().collect();
    let mut next_veth_sample = t0;
    let mut done_at: Vec<Option<Instant>> = vec![None; clients];
    let mut procs = Vec::with_capacity(clients);
    let mut bars = Vec::with_capacity(clients);
    for k in 1..=clients {
        let ip = net.addr(Host::Client(k));
        let asked = if k <= missing { MISSING_NAME } else { &name };
        let mut command = net.command(Host::Client(k), &client_bin);
        command
            .arg("get")
            .arg(asked)
            .arg("--server")
            .arg(server_addr.to_string())
            .arg("-o")
            .arg(out_dir.join(format!("client{k}.out")))
            .arg("--bind")
            .arg(ip.to_string())
            .arg("--json");
        if progress_json {
            command.arg("--progress-json");
        }
        if no_progress {
            command.arg("--no-progress");
        }
        command.args(&coop_args);
        log_env(&mut command, args);
        procs.push(Proc::spawn(
            format!("client {k} ({ip})"),
            command,
            t0,
            log_file(args.log_dir.as_deref(), &format!("client{k}.log"))?,
        )?);
        let bar = multi.add(ProgressBar::new(file_bytes));
        bar.set_style(style.clone());
        bar.set_prefix(format!("client {k} {ip}"));
        bars.push(bar);
    }

    // Watch until every client ended, the server died, the deadline passed or a signal came.
    let mut failures = Vec::new();
    let mut still_running = Vec::new();
    loop {
        if veth_start.is_some() && Instant::now() >= next_veth_sample {
            next_veth_sample += Duration::from_millis(100);
            if let Some((bytes, _)) = veth(&net) {
                veth_samples.push((t0.elapsed().as_secs_f64(), bytes));
            }
        }
        for (index, (proc, bar)) in procs.iter_mut().zip(&bars).enumerate() {
            // Complete when its output is renamed into place (before any --linger).
            if done_at[index].is_none() && out_dir.join(format!("client{}.out", index + 1)).exists()
            {
                done_at[index] = Some(Instant::now());
            }
            let ended = proc.poll();
            if let Ok(live) = proc.live.lock() {
                bar.set_position(live.bytes);
                if let Some(total) = live.total {
                    bar.set_length(total);
                }
                if live.from_peers > 0 {
                    bar.set_message(format!(
                        "server {} peers {}",
                        indicatif::BinaryBytes(live.from_server),
                        indicatif::BinaryBytes(live.from_peers)
                    ));
                }
            }
            if let Some(status) = ended {
                if !bar.is_finished() {
                    if status.success() {
                        bar.set_position(file_bytes);
                        bar.finish_with_message("done");
                    } else {
                        bar.abandon_with_message(format!("FAILED ({status})"));
                    }
                }
            }
        }
        if procs.iter().all(|p| p.ended.is_some()) {
            break;
        }
        if let Some(status) = server.poll() {
            failures.push(format!(
                "ccfd-server exited ({status}) while clients were running:\n{}",
                server.log_tail()
            ));
            break;
        }
        if lab::interrupted() {
            failures.push("interrupted by a signal".into());
            break;
        }
        if Instant::now() >= deadline {
            for proc in &procs {
                if proc.ended.is_none() {
                    let live = proc.live.lock().map(|l| l.bytes).unwrap_or(0);
                    still_running
                        .push(format!("{} ({} of {} bytes)", proc.label, live, file_bytes));
                }
            }
            failures.push(format!(
                "timed out after {:?}; still running: {}",
                args.timeout,
                still_running.join(", ")
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for proc in &mut procs {
        proc.stop();
    }
    let veth_end = veth(&net);
    let links = links.map(LinkSampler::finish).unwrap_or_default();
    if let Some(path) = &args.link_trace {
        write_link_trace(path, &links, t0_unix)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some((bytes, _)) = veth_end {
        veth_samples.push((t0.elapsed().as_secs_f64(), bytes));
    }
    server.stop();
    let _ = multi.clear();

    // Results: exit status, the client's JSON summary, and the digest of its output.
    let mut rows = Vec::with_capacity(clients);
    for (index, proc) in procs.iter_mut().enumerate() {
        let k = index + 1;
        let stdout = proc.collect_stdout();
        let summary = stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
            .or_else(|| serde_json::from_str::<Value>(stdout.trim()).ok());
        let (ended_at, status) = proc
            .ended
            .map_or((None, None), |(at, s)| (Some(at), Some(s)));
        let exited_ok = status.is_some_and(|s| s.success());
        let output = out_dir.join(format!("client{k}.out"));
        let digest_ok = if exited_ok {
            Some(digest_of(&output).map(|d| d == digest).unwrap_or(false))
        } else {
            None
        };
        let exit_seconds = ended_at
            .filter(|_| exited_ok)
            .map(|at| at.duration_since(t0).as_secs_f64());
        let seconds = exit_seconds.map(|exit| {
            done_at[index].map_or(exit, |at| at.duration_since(t0).as_secs_f64().min(exit))
        });
        let number = |key: &str| {
            summary
                .as_ref()
                .and_then(|s| s.get(key))
                .and_then(Value::as_u64)
        };
        let dropped = summary
            .as_ref()
            .and_then(|s| s.get("dropped"))
            .map(|d| match d {
                Value::Object(map) => map.values().filter_map(Value::as_u64).sum(),
                other => other.as_u64().unwrap_or(0),
            });
        let error = if !exited_ok {
            Some(format!(
                "{} {}: {}",
                proc.label,
                status.map_or("was stopped".to_owned(), |s| format!("exited with {s}")),
                proc.log_tail()
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(no output)")
            ))
        } else if digest_ok == Some(false) {
            Some(format!(
                "{}: output digest does not match the source",
                proc.label
            ))
        } else {
            None
        };
        if let Some(error) = &error {
            failures.push(error.clone());
        }
        let samples = proc
            .live
            .lock()
            .map(|l| l.samples.clone())
            .unwrap_or_default();
        rows.push(ClientRow {
            client: k,
            address: net.addr(Host::Client(k)).to_string(),
            ok: error.is_none(),
            exit: status.map_or("still running (stopped)".into(), |s| s.to_string()),
            seconds,
            exit_seconds,
            goodput_mbit_per_s: seconds.map(|s| file_bytes as f64 * 8.0 / s / 1e6),
            bytes_from_server: number("bytes_from_server"),
            bytes_from_peers: number("bytes_from_peers"),
            bytes_to_peers: number("bytes_to_peers"),
            packets_to_peers: number("packets_to_peers"),
            packets_received: number("packets_received"),
            packets_dropped: dropped,
            decode_overhead: summary
                .as_ref()
                .and_then(|s| s.get("decode_overhead"))
                .and_then(Value::as_f64),
            digest_ok,
            error,
            summary,
            samples,
        });
    }
    let server_stdout = server.collect_stdout();
    let totals = server_totals(&server_stdout);

    let wire_drops = match &net {
        Net::Lab(lab) if args.loss.is_some_and(|l| l > 0.0) => {
            lab.loss_counters().ok().map(|c| c.values().sum())
        }
        _ => None,
    };
    let t_min = args
        .rate
        .map(|rate| t_min_seconds(file_bytes, clients, rate));
    let slowest = if rows.iter().all(|r| r.seconds.is_some()) {
        rows.iter().filter_map(|r| r.seconds).reduce(f64::max)
    } else {
        None
    };
    let report = Report {
        ok: failures.is_empty(),
        failures: failures.clone(),
        mode: if lab_wanted {
            "namespace-lab"
        } else {
            "loopback"
        },
        clients,
        file_bytes,
        file_blake3: digest.to_hex().to_string(),
        rate_bits_per_s: args.rate,
        loss_pct: args.loss,
        wire_gso: args.wire_gso,
        t_min_seconds: t_min,
        slowest_seconds: slowest,
        slowest_to_t_min: slowest.zip(t_min).map(|(s, t)| s / t),
        wire_drops,
        coop,
        client_options: coop_args.clone(),
        client_options_unsupported: coop_unsupported.clone(),
        server_shards,
        server_max_rate_bits_per_s: server_max_rate,
        server_bytes_sent: totals.map(|t| t.0),
        server_packets_sent: totals.map(|t| t.1),
        server_copies: totals.map(|t| t.0 as f64 / file_bytes.max(1) as f64),
        server_egress_mbit_per_s: totals.zip(slowest).map(|(t, s)| t.0 as f64 * 8.0 / s / 1e6),
        server_veth_tx_bytes: veth_start.zip(veth_end).map(|(a, b)| b.0 - a.0),
        server_veth_tx_packets: veth_start.zip(veth_end).map(|(a, b)| b.1 - a.1),
        server_veth_copies: veth_start
            .zip(veth_end)
            .map(|(a, b)| (b.0 - a.0) as f64 / file_bytes.max(1) as f64),
        server_veth_steady_mbit_per_s: steady_rate_bps(&veth_samples).map(|r| r / 1e6),
        server_warm_up_seconds: warm_seconds,
        link_use: link_use(&links, &rows, slowest, args.rate),
        link_series: link_series(&links, LINK_SERIES_STEP, slowest),
        timeout_seconds: args.timeout.as_secs_f64(),
        still_running_at_timeout: still_running,
        per_client: rows,
    };

    if let Some(path) = &args.plot {
        plot::draw(
            path,
            &report.per_client,
            file_bytes,
            t_min,
            &plot_title(&report),
        )
        .with_context(|| format!("drawing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    drop(net); // tears the lab down (if any)
    drop(work); // removes the random file and the outputs
    if !failures.is_empty() {
        bail!("swarm run failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn plot_title(report: &Report) -> String {
    let mut title = format!(
        "ccfd swarm: {} clients, {:.1} MiB",
        report.clients,
        report.file_bytes as f64 / f64::from(1u32 << 20)
    );
    if let Some(rate) = report.rate_bits_per_s {
        title.push_str(&format!(", {:.0} Mbit/s per host", rate as f64 / 1e6));
    }
    if let Some(loss) = report.loss_pct {
        title.push_str(&format!(", {loss}% loss"));
    }
    title
}

fn print_table(report: &Report) {
    let mib = |b: Option<u64>| {
        b.map_or("-".to_owned(), |b| {
            format!("{:.1}", b as f64 / f64::from(1u32 << 20))
        })
    };
    let net = match (report.rate_bits_per_s, report.loss_pct) {
        (None, None) if report.mode == "loopback" => "loopback".to_owned(),
        (None, None) => "namespace lab, no shaping, no loss".to_owned(),
        (rate, loss) => format!(
            "namespace lab, {} per host up and down, {}% loss{}",
            rate.map_or("no rate limit".to_owned(), |r| format!(
                "{:.0} Mbit/s",
                r as f64 / 1e6
            )),
            loss.unwrap_or(0.0),
            if report.wire_gso {
                ", GSO on the wire"
            } else {
                ""
            }
        ),
    };
    println!(
        "ccfd swarm: {} clients, {:.1} MiB file (blake3 {}...), {net}, {}",
        report.clients,
        report.file_bytes as f64 / f64::from(1u32 << 20),
        &report.file_blake3[..16],
        if report.coop {
            "cooperating"
        } else {
            "no cooperation"
        }
    );
    let with_ratio = report.t_min_seconds.is_some();
    print!(
        "{:>6} {:>16} {:>9} {:>12} {:>12} {:>11} {:>11} {:>9} {:>9} {:>8} {:>6}",
        "client",
        "address",
        "time s",
        "goodput Mb/s",
        "server MiB",
        "peers MiB",
        "to peers",
        "dropped",
        "overhead",
        "digest",
        ""
    );
    if with_ratio {
        print!(" {:>8}", "/T_min");
    }
    println!();
    for row in &report.per_client {
        print!(
            "{:>6} {:>16} {:>9} {:>12} {:>12} {:>11} {:>11} {:>9} {:>9} {:>8} {:>6}",
            row.client,
            row.address,
            row.seconds.map_or("-".into(), |s| format!("{s:.2}")),
            row.goodput_mbit_per_s
                .map_or("-".into(), |g| format!("{g:.1}")),
            mib(row.bytes_from_server),
            mib(row.bytes_from_peers),
            mib(row.bytes_to_peers),
            row.packets_dropped.map_or("-".into(), |d| d.to_string()),
            row.decode_overhead
                .map_or("-".into(), |o| format!("{:.2}%", o * 100.0)),
            match row.digest_ok {
                Some(true) => "ok",
                Some(false) => "MISMATCH",
                None => "-",
            },
            if row.ok { "" } else { "FAILED" },
        );
        if let Some(t_min) = report.t_min_seconds {
            print!(
                " {:>8}",
                row.seconds
                    .map_or("-".into(), |s| format!("{:.3}", s / t_min))
            );
        }
        println!();
    }
    if let Some(t_min) = report.t_min_seconds {
        println!(
            "T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i)) = {t_min:.2} s; slowest client {}",
            report
                .slowest_seconds
                .map_or("did not finish".into(), |s| format!(
                    "{s:.2} s = {:.3} x T_min",
                    s / t_min
                ))
        );
    } else if report.loss_pct.is_some() {
        println!("T_min: not defined without --rate (no rate limit)");
    }
    if let Some(drops) = report.wire_drops {
        println!("datagrams dropped on the wire by the lab's loss rules: {drops}");
    }
    if let (Some(bytes), Some(copies)) = (report.server_bytes_sent, report.server_copies) {
        print!(
            "server sent {:.1} MiB = {copies:.3} x the file",
            bytes as f64 / f64::from(1u32 << 20)
        );
        if let Some(rate) = report.server_egress_mbit_per_s {
            print!(", {rate:.1} Mbit/s over the slowest client's time");
        }
        if let Some(cap) = report.server_max_rate_bits_per_s {
            print!(" (--max-rate {:.0} Mbit/s)", cap as f64 / 1e6);
        }
        println!();
    }
    if let (Some(bytes), Some(copies)) = (report.server_veth_tx_bytes, report.server_veth_copies) {
        print!(
            "server veth sent {:.1} MiB = {copies:.3} x the file",
            bytes as f64 / f64::from(1u32 << 20)
        );
        if let Some(rate) = report.server_veth_steady_mbit_per_s {
            print!(", steady {rate:.1} Mbit/s (10-90 %)");
        }
        println!();
    }
    match report.server_warm_up_seconds {
        Some(seconds) => println!(
            "server warmed up before the clients started: file meta (hashing) in {seconds:.2} s, \
             not counted (--cold counts it)"
        ),
        None => println!("cold server: the clients' times include its hashing of the file"),
    }
    if let Some(shards) = report.server_shards {
        println!(
            "server shards: {shards} (a core left to the clients' decoders; --server-shards to change)"
        );
    }
    if let Some(links) = &report.link_use {
        let pct = |u: Option<f64>| u.map_or("-".to_owned(), |u| format!("{:.0} %", u * 100.0));
        println!(
            "link use (eth0 frames over each host's own time): server up {}, client down {} mean \
             ({} least), client up {} mean",
            pct(links.server_up_utilisation),
            pct(links.client_down_utilisation_mean),
            pct(links.client_down_utilisation_min),
            pct(links.client_up_utilisation_mean)
        );
    }
    if !report.client_options_unsupported.is_empty() {
        println!(
            "not supported by this ccfd-client (not passed): {}",
            report.client_options_unsupported.join(" ")
        );
    }
    if !report.ok {
        println!("FAILED: {}", report.failures.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("8 furlongs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn t_min_matches_the_issue_figure() {
        // 256 MiB, every host at 200 Mbit/s: F/u_s = 10.74 s dominates for any N.
        let t = t_min_seconds(256 << 20, 4, 200_000_000);
        assert!((t - 10.737).abs() < 0.01, "{t}");
        assert!((t_min_seconds(256 << 20, 8, 200_000_000) - t).abs() < 1e-9);
    }

    #[test]
    fn steady_rate_ignores_ramp_and_tail() {
        // 0.5 s idle, then 100 bytes per 0.1 s (8 kbit/s) for 2 s, then idle.
        let mut samples = vec![(0.0, 0), (0.5, 0)];
        for i in 1..=20 {
            samples.push((0.5 + f64::from(i) * 0.1, 100 * i as u64));
        }
        samples.push((4.0, 2000));
        let rate = steady_rate_bps(&samples).unwrap();
        assert!((rate - 8000.0).abs() < 1.0, "{rate}");
        assert_eq!(steady_rate_bps(&[(0.0, 5), (1.0, 5)]), None);
    }

    #[test]
    fn server_totals_come_from_the_stopped_line() {
        let out =
            "listening 1.2.3.4:5\n{\"event\":\"stopped\",\"packets_sent\":7,\"bytes_sent\":9000}\n";
        assert_eq!(server_totals(out), Some((9000, 7)));
        assert_eq!(server_totals("listening 1.2.3.4:5\n"), None);
    }

    #[test]
    fn loss_parses_as_percent() {
        assert_eq!(parse_loss("2").unwrap(), 2.0);
        assert_eq!(parse_loss("0.5%").unwrap(), 0.5);
        assert!(parse_loss("101").is_err());
        assert!(parse_loss("lots").is_err());
    }
}
