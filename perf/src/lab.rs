//! A small network of Linux network namespaces for realistic, repeatable transfers.
//!
//! Topology: one server namespace `<name>-srv` and client namespaces `<name>-c1..N`, each with an
//! `eth0` veth whose peer (`p-srv`, `p-c1`, ...) is a port of bridge `br0` in its own namespace
//! `<name>-br`. The root namespace's interfaces are never touched; addresses (`A.B.C.1` for the
//! server, `A.B.C.(10+k)` for client k) exist only inside the lab.
//!
//! * Rate: `tbf` on every host's `eth0` (up-link) and on every bridge port (down-link).
//! * Loss: one nftables `bridge` table in the bridge namespace, one `numgen random` drop rule per
//!   source port, applied per datagram after shaping and segmentation (UDP only).
//! * Static neighbour and bridge FDB entries: no ARP, and no flooding of unknown unicast.
//! * Offloads as on a NIC without USO: `tx-udp-segmentation off` on `eth0` (the bridge and the loss
//!   rule see real datagrams), GRO on at the receiver with `tso off` on the bridge ports.
//!
//! Order of calls: [`Lab::check`] (optional: root and tools), [`Lab::up`] (which first runs
//! [`Lab::down`] to clear leftovers of a crashed run), then [`Lab::command`] / [`Lab::exec`] to run
//! processes in a host and [`Lab::in_host`] to run a closure on a thread inside a host's namespace
//! (sockets it creates belong to that namespace). Dropping the [`Lab`] tears it down;
//! [`install_signal_teardown`] makes SIGINT/SIGTERM do the same. Every command is run with
//! [`std::process::Command`]; a failure is reported with the command line and its stderr.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ccfd_proto::units::BitRate;

/// The default lab subnet (the first three octets); it exists only inside the lab's namespaces.
pub const DEFAULT_SUBNET: [u8; 3] = [10, 201, 0];

/// Largest number of clients a lab may have (addresses `.11` to `.210`).
pub const MAX_CLIENTS: usize = 200;

/// tbf queue length, as latency.
const TBF_LATENCY_MS: u32 = 50;

/// The nftables table holding the loss rules (in the bridge namespace).
const NFT_TABLE: &str = "ccfdlab";

/// How long the signal thread waits for the program to clean up before tearing labs down itself.
const SIGNAL_GRACE: Duration = Duration::from_secs(5);

/// What a lab looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct LabConfig {
    /// Lab name: 1-12 characters `[A-Za-z0-9_]`, starting with a letter; prefixes every namespace.
    pub name: String,
    /// Number of client hosts (1..=[`MAX_CLIENTS`]).
    pub clients: usize,
    /// Per-host rate limit in bits per second, applied both up and down; `None` for no shaping.
    pub rate_bps: Option<u64>,
    /// Random loss of UDP datagrams on the wire, in percent (resolution 0.01 %).
    pub loss_pct: f64,
    /// First three octets of the lab's /24.
    pub subnet: [u8; 3],
    /// Let UDP GSO super-packets cross the wire whole, as from a NIC with UDP segmentation
    /// offload (USO) to a switch that forwards at line rate: the bridge, tbf and the receiver's
    /// GRO handle one packet per batch instead of one per datagram. Off by default (the sender's
    /// `eth0` segments, as a NIC without USO). TCP gets the same treatment from TSO either way.
    /// Not with loss: the loss rule would drop whole batches.
    pub wire_gso: bool,
}

impl LabConfig {
    /// A lab with `clients` clients, no shaping, no loss and the default subnet.
    pub fn new(name: &str, clients: usize) -> Self {
        Self {
            name: name.to_owned(),
            clients,
            rate_bps: None,
            loss_pct: 0.0,
            subnet: DEFAULT_SUBNET,
            wire_gso: false,
        }
    }

    /// Checks the name, the client count, the rate and the loss.
    pub fn validate(&self) -> Result<(), LabError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 12
            && self.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(LabError::Config(format!(
                "lab name {:?} must be 1-12 characters [A-Za-z0-9_] starting with a letter",
                self.name
            )));
        }
        if !(1..=MAX_CLIENTS).contains(&self.clients) {
            return Err(LabError::Config(format!(
                "clients must be 1..={MAX_CLIENTS}, got {}",
                self.clients
            )));
        }
        if let Some(rate) = self.rate_bps {
            if rate < 8_000 {
                return Err(LabError::Config(format!(
                    "rate {rate} bit/s is below the 8 kbit/s minimum"
                )));
            }
        }
        if !(0.0..=100.0).contains(&self.loss_pct) {
            return Err(LabError::Config(format!(
                "loss must be 0..=100 percent, got {}",
                self.loss_pct
            )));
        }
        if self.wire_gso && self.loss_pct > 0.0 {
            return Err(LabError::Config(
                "wire GSO and loss do not mix: the loss rule would drop whole GSO batches".into(),
            ));
        }
        if self.subnet[0] == 127 {
            return Err(LabError::Config(
                "the lab subnet may not be in 127.0.0.0/8".into(),
            ));
        }
        Ok(())
    }
}

/// A host of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// The server (`A.B.C.1`).
    Server,
    /// Client `k`, counted from 1 (`A.B.C.(10+k)`).
    Client(usize),
}

impl Host {
    fn octet(self) -> u8 {
        match self {
            Host::Server => 1,
            Host::Client(k) => u8::try_from(10 + k).unwrap_or(u8::MAX),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Server => f.write_str("srv"),
            Host::Client(k) => write!(f, "c{k}"),
        }
    }
}

/// An open handle on one host's network namespace ([`Lab::open_netns`]).
#[derive(Debug)]
pub struct NetnsHandle {
    name: String,
    file: File,
}

impl NetnsHandle {
    /// Moves the calling thread into the namespace: sockets it creates and the `/proc/thread-self/net`
    /// it reads are the host's from then on.
    pub fn enter(&self) -> Result<(), LabError> {
        rustix::thread::move_into_link_name_space(
            self.file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|errno| LabError::Enter {
            netns: self.name.clone(),
            source: errno.into(),
        })
    }
}

/// Why the lab could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN.
    #[error("the namespace lab must run as root (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN to create network namespaces)")]
    NotRoot,
    /// A tool the lab shells out to is not installed.
    #[error("the namespace lab needs `{tool}`, which was not found in PATH, /usr/sbin or /sbin (install it: apt-get install -y {package})")]
    MissingTool {
        /// The executable.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// The configuration is not usable.
    #[error("invalid lab configuration: {0}")]
    Config(String),
    /// A command could not be started at all.
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A thread could not enter a host's namespace.
    #[error("entering network namespace {netns}: {source}")]
    Enter {
        /// The namespace.
        netns: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A closure run inside a namespace panicked.
    #[error("the thread running inside network namespace {netns} panicked")]
    Panicked {
        /// The namespace.
        netns: String,
    },
}

/// Absolute paths of the tools the lab runs.
#[derive(Debug, Clone)]
struct Tools {
    ip: PathBuf,
    tc: PathBuf,
    bridge: PathBuf,
    ethtool: PathBuf,
    nft: Option<PathBuf>,
}

impl Tools {
    /// Finds the tools; `nft` is required only when `need_nft`.
    fn find(need_nft: bool) -> Result<Self, LabError> {
        let need = |tool: &'static str, package: &'static str| {
            find_tool(tool).ok_or(LabError::MissingTool { tool, package })
        };
        let ip = need("ip", "iproute2")?;
        let tc = need("tc", "iproute2")?;
        let bridge = need("bridge", "iproute2")?;
        let ethtool = need("ethtool", "ethtool")?;
        let nft = if need_nft {
            Some(need("nft", "nftables")?)
        } else {
            find_tool("nft")
        };
        Ok(Self {
            ip,
            tc,
            bridge,
            ethtool,
            nft,
        })
    }
}

/// Looks a tool up in PATH, then in the sbin directories (often missing from a user's PATH).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

/// Whether the effective user is root (read from `/proc/self/status`, no unsafe).
pub fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// Parses a rate in bits per second like the server's `--max-rate` ([`BitRate`]): a plain number or
/// one with a `bit`, `kbit`, `mbit`, `gbit`, `tbit` suffix (case-insensitive). Byte units are
/// refused to avoid `tc`'s `bps` = bytes ambiguity.
pub fn parse_rate(text: &str) -> Result<u64, LabError> {
    text.parse::<BitRate>()
        .map(BitRate::bits_per_sec)
        .map_err(|e| LabError::Config(format!("bad rate: {e}")))
}

/// Formats a command line for error messages.
fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion, feeding it `stdin`; returns its output or a [`LabError`] naming it.
fn run_command(mut command: Command, stdin: Option<&str>) -> Result<Output, LabError> {
    use std::io::Write;
    let line = command_line(&command);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        command: line.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| LabError::Spawn {
                command: line.clone(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| LabError::Spawn {
        command: line.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(LabError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn cmd(program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// Names of the labs that are up in this process, for the signal handler.
fn active_labs() -> &'static Mutex<Vec<String>> {
    static ACTIVE: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    ACTIVE.get_or_init(|| Mutex::new(Vec::new()))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once SIGINT or SIGTERM arrived (after [`install_signal_teardown`]): long loops poll it,
/// stop their processes and drop their [`Lab`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Installs (once per process) a SIGINT/SIGTERM handler thread. On the first signal it sets
/// [`interrupted`] and gives the program [`SIGNAL_GRACE`] to clean up; labs still up after that
/// (or at once on a second signal) are torn down by the handler, which then exits with status 130.
pub fn install_signal_teardown() -> std::io::Result<()> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let _ = INSTALLED.set(());
    std::thread::Builder::new()
        .name("lab-signals".into())
        .spawn(move || {
            for (count, _) in signals.forever().enumerate() {
                INTERRUPTED.store(true, Ordering::SeqCst);
                if count > 0 {
                    // A second signal: the user wants out now.
                    teardown_active_labs_and_exit();
                }
                // The program polls `interrupted()` and cleans up; if labs are still up after
                // the grace period, tear them down here.
                let _ = std::thread::Builder::new()
                    .name("lab-grace".into())
                    .spawn(|| {
                        let deadline = Instant::now() + SIGNAL_GRACE;
                        while Instant::now() < deadline {
                            let idle = active_labs().lock().map(|l| l.is_empty()).unwrap_or(true);
                            if idle {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        teardown_active_labs_and_exit();
                    });
            }
        })?;
    Ok(())
}

/// Tears down every lab this process has up, then exits with status 130.
fn teardown_active_labs_and_exit() -> ! {
    let names: Vec<String> = active_labs().lock().map(|l| l.clone()).unwrap_or_default();
    for name in names {
        if let Err(error) = Lab::down(&name) {
            eprintln!("lab {name}: teardown after signal failed: {error}");
        }
    }
    std::process::exit(130);
}

/// A lab that is up; dropping it tears it down.
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    tools: Tools,
    torn_down: bool,
}

impl Lab {
    /// Checks what [`Lab::up`] needs for `config`: root, `ip`/`tc`/`bridge` (iproute2), `ethtool`,
    /// and `nft` (nftables) when loss is asked for.
    pub fn check(config: &LabConfig) -> Result<(), LabError> {
        config.validate()?;
        Self::check_environment(config.loss_pct > 0.0).map(|_| ())
    }

    fn check_environment(need_nft: bool) -> Result<Tools, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        Tools::find(need_nft)
    }

    /// Builds the lab (after removing leftovers of the same name). On failure everything built so
    /// far is torn down again and the error names the failing command.
    pub fn up(config: LabConfig) -> Result<Lab, LabError> {
        config.validate()?;
        let tools = Self::check_environment(config.loss_pct > 0.0)?;
        Self::down_with(&tools, &config.name)?;
        if let Ok(mut active) = active_labs().lock() {
            active.push(config.name.clone());
        }
        let lab = Lab {
            config,
            tools,
            torn_down: false,
        };
        // On error `lab` is dropped here, which tears down the partial lab.
        lab.build()?;
        Ok(lab)
    }

    /// Removes every namespace of lab `name` (ending processes still inside them first).
    /// Idempotent; returns how many namespaces were removed.
    pub fn down(name: &str) -> Result<usize, LabError> {
        let tools = Self::check_environment(false)?;
        Self::down_with(&tools, name)
    }

    fn down_with(tools: &Tools, name: &str) -> Result<usize, LabError> {
        let namespaces = Self::namespaces_of(tools, name)?;
        for netns in &namespaces {
            // Processes still inside would keep the namespace (and its veths) alive.
            if let Ok(output) = run_command(cmd(&tools.ip, &["netns", "pids", netns]), None) {
                let pids = String::from_utf8_lossy(&output.stdout).into_owned();
                let pids: Vec<&str> = pids.split_whitespace().collect();
                if !pids.is_empty() {
                    let mut kill = Command::new("kill");
                    kill.arg("-KILL").args(&pids);
                    let _ = run_command(kill, None);
                }
            }
            run_command(cmd(&tools.ip, &["netns", "del", netns]), None)?;
        }
        if let Ok(mut active) = active_labs().lock() {
            active.retain(|n| n != name);
        }
        Ok(namespaces.len())
    }

    /// Namespaces that currently exist for lab `name`.
    fn namespaces_of(tools: &Tools, name: &str) -> Result<Vec<String>, LabError> {
        let output = run_command(cmd(&tools.ip, &["netns", "list"]), None)?;
        let listing = String::from_utf8_lossy(&output.stdout);
        Ok(listing
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter(|netns| {
                netns
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|role| {
                        role == "br"
                            || role == "srv"
                            || role.strip_prefix('c').is_some_and(|k| {
                                !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit())
                            })
                    })
            })
            .map(str::to_owned)
            .collect())
    }

    /// Names of the namespaces of lab `name` that exist right now (for tests and diagnostics).
    pub fn existing_namespaces(name: &str) -> Result<Vec<String>, LabError> {
        let tools = Self::check_environment(false)?;
        Self::namespaces_of(&tools, name)
    }

    /// Tears the lab down now (also done by `Drop`).
    pub fn shutdown(mut self) -> Result<usize, LabError> {
        self.torn_down = true;
        Self::down_with(&self.tools, &self.config.name)
    }

    /// The configuration the lab was built with.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// Every host: the server, then clients 1..=N.
    pub fn hosts(&self) -> Vec<Host> {
        std::iter::once(Host::Server)
            .chain((1..=self.config.clients).map(Host::Client))
            .collect()
    }

    /// The namespace of `host`.
    pub fn netns(&self, host: Host) -> String {
        format!("{}-{host}", self.config.name)
    }

    fn bridge_netns(&self) -> String {
        format!("{}-br", self.config.name)
    }

    /// The address of `host` (exists only inside the lab).
    pub fn addr(&self, host: Host) -> Ipv4Addr {
        let [a, b, c] = self.config.subnet;
        Ipv4Addr::new(a, b, c, host.octet())
    }

    fn mac(&self, host: Host) -> String {
        let hash = self
            .config
            .name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        format!("02:c7:{:02x}:00:00:{:02x}", hash % 256, host.octet())
    }

    fn port(host: Host) -> String {
        format!("p-{host}")
    }

    /// A command that runs `program` inside `host`'s namespace (`ip netns exec`); the caller adds
    /// arguments, redirections and spawns it.
    pub fn command(&self, host: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(&self.tools.ip);
        command
            .args(["netns", "exec"])
            .arg(self.netns(host))
            .arg(program);
        command
    }

    /// Runs `program args` inside `host`'s namespace to completion; fails with the command line and
    /// stderr when it exits non-zero.
    pub fn exec(&self, host: Host, program: &str, args: &[&str]) -> Result<Output, LabError> {
        let mut command = self.command(host, program);
        command.args(args);
        run_command(command, None)
    }

    /// Runs `f` on a new thread that has entered `host`'s network namespace and returns its result.
    /// Sockets created by `f` live in that namespace.
    pub fn in_host<T, F>(&self, host: Host, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let netns = self.open_netns(host)?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    netns.enter()?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(LabError::Panicked {
                        netns: self.netns(host),
                    })
                })
        })
    }

    /// Opens `host`'s network namespace, for a thread to [`NetnsHandle::enter`] later.
    pub fn open_netns(&self, host: Host) -> Result<NetnsHandle, LabError> {
        let name = self.netns(host);
        let path = Path::new("/run/netns").join(&name);
        match File::open(&path) {
            Ok(file) => Ok(NetnsHandle { name, file }),
            Err(source) => Err(LabError::Enter {
                netns: name,
                source,
            }),
        }
    }

    /// Datagrams dropped so far by each host's loss rule (nftables counters); empty without loss.
    pub fn loss_counters(&self) -> Result<BTreeMap<Host, u64>, LabError> {
        let mut counters = BTreeMap::new();
        let Some(nft) = &self.tools.nft else {
            return Ok(counters);
        };
        if self.config.loss_pct <= 0.0 {
            return Ok(counters);
        }
        let mut command = self.command_in(&self.bridge_netns(), nft);
        command.args(["list", "table", "bridge", NFT_TABLE]);
        let output = run_command(command, None)?;
        let text = String::from_utf8_lossy(&output.stdout);
        for host in self.hosts() {
            let tag = format!("comment \"{host}\"");
            let packets = text
                .lines()
                .find(|line| line.contains(&tag))
                .and_then(|line| {
                    let mut words = line.split_whitespace();
                    words.find(|w| *w == "packets")?;
                    words.next()?.parse::<u64>().ok()
                });
            if let Some(packets) = packets {
                counters.insert(host, packets);
            }
        }
        Ok(counters)
    }

    /// What `host`'s `eth0` has transmitted so far: (bytes, packets), Ethernet frames as the veth
    /// counts them (after GSO segmentation, so one per datagram; 42 header bytes each for UDP/IPv4).
    pub fn tx_counters(&self, host: Host) -> Result<(u64, u64), LabError> {
        let netns = self.netns(host);
        let output = self.ip(&["-n", &netns, "-s", "-j", "link", "show", "dev", "eth0"])?;
        let parsed: serde_json::Value =
            serde_json::from_slice(&output.stdout).map_err(|e| LabError::Command {
                command: format!("ip -n {netns} -s -j link show dev eth0"),
                status: "unparsable output".into(),
                stderr: e.to_string(),
            })?;
        let tx = &parsed[0]["stats64"]["tx"];
        match (tx["bytes"].as_u64(), tx["packets"].as_u64()) {
            (Some(bytes), Some(packets)) => Ok((bytes, packets)),
            _ => Err(LabError::Command {
                command: format!("ip -n {netns} -s -j link show dev eth0"),
                status: "no stats64.tx in the output".into(),
                stderr: String::from_utf8_lossy(&output.stdout).into_owned(),
            }),
        }
    }

    fn command_in(&self, netns: &str, program: &Path) -> Command {
        let mut command = Command::new(&self.tools.ip);
        command.args(["netns", "exec", netns]).arg(program);
        command
    }

    fn run_in(&self, netns: &str, program: &Path, args: &[&str]) -> Result<Output, LabError> {
        let mut command = self.command_in(netns, program);
        command.args(args);
        run_command(command, None)
    }

    fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        run_command(cmd(&self.tools.ip, args), None)
    }

    /// Creates namespaces, bridge, veths, addresses, offloads, shaping, FDB, neighbours and loss.
    fn build(&self) -> Result<(), LabError> {
        let br = self.bridge_netns();
        self.ip(&["netns", "add", &br])?;
        self.best_effort_sysctl(
            &br,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        );
        self.ip(&["-n", &br, "link", "set", "lo", "up"])?;
        self.ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        self.ip(&["-n", &br, "link", "set", "br0", "up"])?;
        self.disable_bridge_netfilter(&br);

        let mtu = "1500";
        for host in self.hosts() {
            let netns = self.netns(host);
            let port = Self::port(host);
            let mac = self.mac(host);
            let cidr = format!("{}/24", self.addr(host));
            self.ip(&["netns", "add", &netns])?;
            // No IPv6 link-local chatter (DAD, router solicitations) on the shaped links.
            self.best_effort_sysctl(
                &netns,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            );
            self.ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            self.ip(&[
                "-n", &netns, "link", "add", "eth0", "address", &mac, "mtu", mtu, "type", "veth",
                "peer", "name", &port, "netns", &br, "mtu", mtu,
            ])?;
            self.ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            self.ip(&["-n", &br, "link", "set", &port, "up"])?;
            self.ip(&["-n", &netns, "addr", "add", &cidr, "dev", "eth0"])?;
            self.ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            // Segment UDP GSO super-packets at the sender's eth0 (after the qdisc), as a NIC
            // without USO does, so the bridge and the loss rule see real datagrams; NAPI GRO at the
            // receiver, which veth only feeds from a peer without TSO (hence tso off on the port).
            // With wire GSO the super-packets stay whole up to the receiving socket.
            let segmentation = if self.config.wire_gso { "on" } else { "off" };
            self.run_in(
                &netns,
                &self.tools.ethtool,
                &[
                    "-K",
                    "eth0",
                    "tx-udp-segmentation",
                    segmentation,
                    "gro",
                    "on",
                ],
            )?;
            self.run_in(&br, &self.tools.ethtool, &["-K", &port, "tso", "off"])?;
            if let Some(rate) = self.config.rate_bps {
                self.tbf(&netns, "eth0", rate)?;
                self.tbf(&br, &port, rate)?;
            }
        }
        // Static FDB: the bridge never has to learn, so one-way UDP is never flooded.
        for host in self.hosts() {
            self.run_in(
                &br,
                &self.tools.bridge,
                &[
                    "fdb",
                    "replace",
                    &self.mac(host),
                    "dev",
                    &Self::port(host),
                    "master",
                    "static",
                ],
            )?;
        }
        // Static neighbours: no ARP, no first-packet drops.
        for from in self.hosts() {
            for to in self.hosts() {
                if from == to {
                    continue;
                }
                self.ip(&[
                    "-n",
                    &self.netns(from),
                    "neigh",
                    "replace",
                    &self.addr(to).to_string(),
                    "lladdr",
                    &self.mac(to),
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ])?;
            }
        }
        if self.config.loss_pct > 0.0 {
            self.install_loss(&br)?;
        }
        Ok(())
    }

    /// Bridged frames must not traverse the bridge namespace's ip/arp tables (br_netfilter).
    fn disable_bridge_netfilter(&self, br: &str) {
        self.best_effort_sysctl(
            br,
            &[
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        );
    }

    /// Sets sysctls inside `netns` when `sysctl` exists and the keys do (br_netfilter may not be
    /// loaded, IPv6 may be off): neither matters for the lab's IPv4 traffic, so failures are ignored.
    fn best_effort_sysctl(&self, netns: &str, keys: &[&str]) {
        let Some(sysctl) = find_tool("sysctl") else {
            return;
        };
        for key in keys {
            let _ = self.run_in(netns, &sysctl, &["-qw", key]);
        }
    }

    /// tbf on `dev`: `rate` bit/s, a burst of 4 ms of traffic (at least 32 KiB), 50 ms of queue.
    fn tbf(&self, netns: &str, dev: &str, rate_bps: u64) -> Result<(), LabError> {
        let burst = tbf_burst_bytes(rate_bps);
        self.run_in(
            netns,
            &self.tools.tc,
            &[
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                &format!("{rate_bps}bit"),
                "burst",
                &burst.to_string(),
                "latency",
                &format!("{TBF_LATENCY_MS}ms"),
            ],
        )?;
        Ok(())
    }

    /// One bridge-family table, one `numgen random` rule per source port (UDP only).
    fn install_loss(&self, br: &str) -> Result<(), LabError> {
        let nft = self.tools.nft.as_ref().ok_or(LabError::MissingTool {
            tool: "nft",
            package: "nftables",
        })?;
        let threshold = loss_threshold(self.config.loss_pct);
        let mut rules = format!(
            "table bridge {NFT_TABLE} {{\n  chain wire {{\n    type filter hook forward priority 0; policy accept;\n"
        );
        for host in self.hosts() {
            rules.push_str(&format!(
                "    iifname \"{}\" ip protocol udp numgen random mod 10000 < {threshold} counter drop comment \"{host}\"\n",
                Self::port(host)
            ));
        }
        rules.push_str("  }\n}\n");
        let mut command = self.command_in(br, nft);
        command.args(["-f", "-"]);
        run_command(command, Some(&rules))?;
        Ok(())
    }
}

/// tbf bucket: 4 ms worth of bytes at `rate_bps`, at least 32 KiB.
pub fn tbf_burst_bytes(rate_bps: u64) -> u64 {
    (rate_bps / 8 / 250).max(32 * 1024)
}

/// Loss percentage as a threshold out of 10 000 for `numgen random mod 10000 < threshold`.
fn loss_threshold(loss_pct: f64) -> u32 {
    (loss_pct * 100.0).round().clamp(0.0, 10_000.0) as u32
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Err(error) = Self::down_with(&self.tools, &self.config.name) {
            eprintln!("lab {}: teardown failed: {error}", self.config.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bits() {
        assert_eq!(parse_rate("200mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("1.5mbit").unwrap(), 1_500_000);
        assert_eq!(parse_rate("64000").unwrap(), 64_000);
        assert!(parse_rate("200mbps").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn configs_are_validated() {
        assert!(LabConfig::new("ok_1", 2).validate().is_ok());
        assert!(LabConfig::new("1bad", 2).validate().is_err());
        assert!(LabConfig::new("waytoolongname", 2).validate().is_err());
        assert!(LabConfig::new("a-b", 2).validate().is_err());
        assert!(LabConfig::new("ok", 0).validate().is_err());
        assert!(LabConfig::new("ok", MAX_CLIENTS + 1).validate().is_err());
        let mut lossy = LabConfig::new("ok", 1);
        lossy.loss_pct = 101.0;
        assert!(lossy.validate().is_err());
        let mut loopback = LabConfig::new("ok", 1);
        loopback.subnet = [127, 0, 0];
        assert!(loopback.validate().is_err());
    }

    #[test]
    fn loss_threshold_has_hundredth_percent_resolution() {
        assert_eq!(loss_threshold(5.0), 500);
        assert_eq!(loss_threshold(0.25), 25);
        assert_eq!(loss_threshold(100.0), 10_000);
    }

    #[test]
    fn burst_is_four_milliseconds_but_at_least_32k() {
        assert_eq!(tbf_burst_bytes(50_000_000), 32 * 1024);
        assert_eq!(tbf_burst_bytes(200_000_000), 100_000);
    }

    #[test]
    fn missing_command_is_reported_with_its_command_line() {
        let error = run_command(cmd(Path::new("/nonexistent/tool"), &["x"]), None).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/tool x"), "{error}");
        let error = run_command(
            cmd(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"]),
            None,
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("oops") && text.contains("/bin/sh -c"),
            "{text}"
        );
    }
}
