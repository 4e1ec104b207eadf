//! Server settings: the command line, the TOML config file, and the validated [`Settings`].
//!
//! Order of use (what `main` does): set up logging, parse the [`Cli`], then [`Settings::load`] reads the
//! file named by `--config` (if any), applies the command-line values over it (the command line wins), and
//! validates everything into typed settings. Every error names the offending key: unknown keys and type
//! errors come from `toml`/`serde` (`deny_unknown_fields`), range errors from [`ConfigError::Invalid`].
//!
//! The config file (kebab-case keys, all optional except `root` when not given on the command line):
//! ```toml
//! root = "/srv/ccfd"
//! listen = "0.0.0.0:7653"
//! udp-base = 7655
//! shards = 2
//! max-rate = "500mbit"
//!
//! [limits]
//! max-sessions = 256
//! max-clients = 1024
//! max-sessions-per-client = 4
//! session-idle-timeout = "30s"
//! client-heartbeat-timeout = "10s"
//!
//! [coding]
//! segment-size = "32MiB"
//! symbol-size = 1280
//! kind = "band"          # or "random"
//! field = "gf2"          # or "gf256"
//! subgen-size = 64
//! stride = 16
//! systematic = true    # source symbols first, each to one receiver of the session (the pool)
//! # checks = 300         # default: the codec's rule (about 1% of the source packets)
//!
//! [pacing]
//! initial-receiver-rate = "1gbit"
//! min-receiver-rate = "10mbit"
//! loss-backoff-threshold = 0.02
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::units::{BitRate, ByteSize, HumanDuration};

/// Default TCP control port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7653";
/// Default first UDP data port (`udp_base + session_id`).
pub const DEFAULT_UDP_BASE: u16 = 7655;
/// Default segment size.
pub const DEFAULT_SEGMENT_SIZE: u64 = 32 << 20;
/// Default symbol (source packet) size: a data packet with its headers fits a 1500-byte MTU.
pub const DEFAULT_SYMBOL_SIZE: usize = 1280;

/// `ccfd-server` command line.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "ccfd-server",
    version,
    about = "ccfd coded file distribution server"
)]
pub struct Cli {
    /// Directory whose regular files are served.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// TCP control address [default: 0.0.0.0:7653].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// First UDP data port; session `id` sends from and to port `udp-base + id` [default: 7655].
    #[arg(long, value_name = "PORT")]
    pub udp_base: Option<u16>,
    /// Number of sending shards (pinned threads) [default: number of cores].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Total egress cap in bits per second of wire bytes (each datagram with its IP, UDP and
    /// Ethernet headers: the link's rate), e.g. 500mbit, 2gbit [default: none].
    #[arg(long, value_name = "RATE")]
    pub max_rate: Option<BitRate>,
    /// TOML config file; command-line values override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The config file as written (every key optional; unknown keys rejected).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// See [`Cli::root`].
    pub root: Option<PathBuf>,
    /// See [`Cli::listen`].
    pub listen: Option<SocketAddr>,
    /// See [`Cli::udp_base`].
    pub udp_base: Option<u16>,
    /// See [`Cli::shards`].
    pub shards: Option<usize>,
    /// See [`Cli::max_rate`].
    pub max_rate: Option<BitRate>,
    /// `[limits]` table.
    #[serde(default)]
    pub limits: LimitsFile,
    /// `[coding]` table.
    #[serde(default)]
    pub coding: CodingFile,
    /// `[pacing]` table.
    #[serde(default)]
    pub pacing: PacingFile,
}

/// `[limits]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsFile {
    /// Most sessions alive at once.
    pub max_sessions: Option<u32>,
    /// Most control connections (clients) at once.
    pub max_clients: Option<u32>,
    /// Most sessions one client receives at once.
    pub max_sessions_per_client: Option<u32>,
    /// A session with no receiver for this long is expired.
    pub session_idle_timeout: Option<HumanDuration>,
    /// A client that sends no heartbeat for this long is dropped.
    pub client_heartbeat_timeout: Option<HumanDuration>,
}

/// `[coding]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CodingFile {
    /// Largest segment.
    pub segment_size: Option<ByteSize>,
    /// Source packet size in bytes.
    pub symbol_size: Option<u32>,
    /// `band` or `random`.
    pub kind: Option<CodeKindSetting>,
    /// `gf2` or `gf256`.
    pub field: Option<FieldSetting>,
    /// Source packets per subgeneration.
    pub subgen_size: Option<u32>,
    /// Offset between consecutive subgenerations.
    pub stride: Option<u32>,
    /// Precode check packets per segment (default: the codec's rule).
    pub checks: Option<u32>,
    /// Hand out the segment's source symbols uncoded first, each once per session (the shared pool),
    /// then coded packets.
    pub systematic: Option<bool>,
}

/// Code family as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodeKindSetting {
    /// Band code.
    Band,
    /// Random grouping.
    Random,
}

/// Coefficient field as written in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldSetting {
    /// GF(2).
    Gf2,
    /// GF(2^8).
    Gf256,
}

/// `[pacing]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PacingFile {
    /// Rate a new receiver starts at.
    pub initial_receiver_rate: Option<BitRate>,
    /// Floor of a receiver's rate after back-offs.
    pub min_receiver_rate: Option<BitRate>,
    /// Ceiling of a receiver's rate.
    pub max_receiver_rate: Option<BitRate>,
    /// Reported loss fraction above which a receiver's rate is cut.
    pub loss_backoff_threshold: Option<f64>,
    /// Reported loss fraction below which a receiver's rate grows.
    pub loss_increase_threshold: Option<f64>,
}

/// Why the configuration was refused. Every variant names the file or the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or wrong types (the message names the key).
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error, naming the key and its line.
        source: Box<toml::de::Error>,
    },
    /// A required key was given neither on the command line nor in the file.
    #[error("`{key}` is required (on the command line or in the config file)")]
    Missing {
        /// The missing key.
        key: &'static str,
    },
    /// A value is out of its allowed range.
    #[error("`{key}`: {reason}")]
    Invalid {
        /// The key, with its table (`limits.max-sessions`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Server limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most sessions alive at once (session ids are `0..max_sessions`).
    pub max_sessions: u32,
    /// Most control connections at once.
    pub max_clients: u32,
    /// Most sessions one client receives at once.
    pub max_sessions_per_client: u32,
    /// Idle session expiry.
    pub session_idle_timeout: Duration,
    /// Client heartbeat expiry.
    pub client_heartbeat_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 256,
            max_clients: 1024,
            max_sessions_per_client: 4,
            session_idle_timeout: Duration::from_secs(30),
            client_heartbeat_timeout: Duration::from_secs(10),
        }
    }
}

/// How files are cut into segments and symbols.
#[derive(Debug, Clone, PartialEq)]
pub struct CodingSettings {
    /// Largest segment in bytes (segments are near-equal slices no larger than this).
    pub segment_size: u64,
    /// Source packet size in bytes.
    pub symbol_size: u32,
    /// Code family.
    pub kind: CodeKindSetting,
    /// Coefficient field.
    pub field: FieldSetting,
    /// Source packets per subgeneration.
    pub subgen_size: u32,
    /// Offset between consecutive subgenerations.
    pub stride: u32,
    /// Precode checks per segment (`None`: the codec's default rule).
    pub checks: Option<u32>,
    /// Source symbols first, uncoded, each to one receiver of the session (the shard's shared pool);
    /// `false`: coded from the first packet.
    pub systematic: bool,
}

impl Default for CodingSettings {
    fn default() -> Self {
        Self {
            segment_size: DEFAULT_SEGMENT_SIZE,
            symbol_size: DEFAULT_SYMBOL_SIZE as u32,
            kind: CodeKindSetting::Band,
            field: FieldSetting::Gf2,
            subgen_size: snc::params::DEFAULT_SUBGEN_SIZE,
            stride: snc::params::DEFAULT_STRIDE,
            checks: None,
            // Source symbols first, through the session's shared pool (server/src/shard/pool.rs):
            // each source symbol goes to one receiver of the session, so receivers present together
            // hold disjoint symbols and cooperating peers have something to give each other, while a
            // lone receiver gets all of them and decodes from copies (no XOR work; coded decoding
            // costs about 400 MB/s per core). Before the pool, every receiver got the same source
            // symbols first (4 clients in the 200 Mbit/s lab: 4.50 x T_min, 3.83 server copies) and
            // `false` (coded from the first packet) was the default (2.75 x T_min, 2.30 copies).
            systematic: true,
        }
    }
}

/// Receiver-rate adaptation settings, applied by the session table (`ccfd_proto::SessionTable`: on a
/// heartbeat whose loss is above the back-off threshold the receiver's rate is cut to 7/8 of what got
/// through; below the increase threshold it grows by 1/2 plus the minimum rate; a client's next segment
/// starts at the rate its previous one reached).
#[derive(Debug, Clone, PartialEq)]
pub struct PacingSettings {
    /// Rate a new receiver starts at, bits/s.
    pub initial_receiver_rate: BitRate,
    /// Floor after back-offs, bits/s.
    pub min_receiver_rate: BitRate,
    /// Ceiling, bits/s (None: only the server cap applies).
    pub max_receiver_rate: Option<BitRate>,
    /// Loss above this cuts the rate.
    pub loss_backoff_threshold: f64,
    /// Loss below this grows the rate.
    pub loss_increase_threshold: f64,
}

impl Default for PacingSettings {
    fn default() -> Self {
        Self {
            initial_receiver_rate: BitRate::from_bits_per_sec(1_000_000_000).expect("nonzero"),
            min_receiver_rate: BitRate::from_bits_per_sec(10_000_000).expect("nonzero"),
            max_receiver_rate: None,
            loss_backoff_threshold: 0.02,
            loss_increase_threshold: 0.005,
        }
    }
}

/// Validated server settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Root directory of the served files (as given; the catalog canonicalizes it).
    pub root: PathBuf,
    /// TCP control address.
    pub listen: SocketAddr,
    /// First UDP data port.
    pub udp_base: u16,
    /// Number of shards (>= 1).
    pub shards: usize,
    /// Total egress cap.
    pub max_rate: Option<BitRate>,
    /// Limits.
    pub limits: Limits,
    /// Segmenting and coding.
    pub coding: CodingSettings,
    /// Receiver-rate adaptation.
    pub pacing: PacingSettings,
}

impl Settings {
    /// Settings with every default and the given root (for tests and embedding).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            udp_base: DEFAULT_UDP_BASE,
            shards: default_shards(),
            max_rate: None,
            limits: Limits::default(),
            coding: CodingSettings::default(),
            pacing: PacingSettings::default(),
        }
    }

    /// Reads `cli.config` (if any), applies the command line over it and validates.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    /// Parses a config file's text (`path` is only used in errors).
    pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies `cli` over `file` and validates the result.
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let defaults = Settings::with_root(PathBuf::new());
        let root = cli
            .root
            .clone()
            .or(file.root)
            .ok_or(ConfigError::Missing { key: "root" })?;
        let limits_default = Limits::default();
        let pacing_default = PacingSettings::default();
        let settings = Settings {
            root,
            listen: cli.listen.or(file.listen).unwrap_or(defaults.listen),
            udp_base: cli.udp_base.or(file.udp_base).unwrap_or(defaults.udp_base),
            shards: cli.shards.or(file.shards).unwrap_or(defaults.shards),
            max_rate: cli.max_rate.or(file.max_rate),
            limits: Limits {
                max_sessions: file
                    .limits
                    .max_sessions
                    .unwrap_or(limits_default.max_sessions),
                max_clients: file
                    .limits
                    .max_clients
                    .unwrap_or(limits_default.max_clients),
                max_sessions_per_client: file
                    .limits
                    .max_sessions_per_client
                    .unwrap_or(limits_default.max_sessions_per_client),
                session_idle_timeout: file
                    .limits
                    .session_idle_timeout
                    .map_or(limits_default.session_idle_timeout, |d| d.0),
                client_heartbeat_timeout: file
                    .limits
                    .client_heartbeat_timeout
                    .map_or(limits_default.client_heartbeat_timeout, |d| d.0),
            },
            coding: {
                let d = CodingSettings::default();
                let f = &file.coding;
                CodingSettings {
                    segment_size: f.segment_size.map_or(d.segment_size, ByteSize::bytes),
                    symbol_size: f.symbol_size.unwrap_or(d.symbol_size),
                    kind: f.kind.unwrap_or(d.kind),
                    field: f.field.unwrap_or(d.field),
                    subgen_size: f.subgen_size.unwrap_or(d.subgen_size),
                    stride: f.stride.unwrap_or(d.stride),
                    checks: f.checks.or(d.checks),
                    systematic: f.systematic.unwrap_or(d.systematic),
                }
            },
            pacing: PacingSettings {
                initial_receiver_rate: file
                    .pacing
                    .initial_receiver_rate
                    .unwrap_or(pacing_default.initial_receiver_rate),
                min_receiver_rate: file
                    .pacing
                    .min_receiver_rate
                    .unwrap_or(pacing_default.min_receiver_rate),
                max_receiver_rate: file.pacing.max_receiver_rate,
                loss_backoff_threshold: file
                    .pacing
                    .loss_backoff_threshold
                    .unwrap_or(pacing_default.loss_backoff_threshold),
                loss_increase_threshold: file
                    .pacing
                    .loss_increase_threshold
                    .unwrap_or(pacing_default.loss_increase_threshold),
            },
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and cross-key constraints.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, reason: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        }
        if self.shards == 0 || self.shards > 1024 {
            return invalid("shards", "must be between 1 and 1024");
        }
        if self.udp_base == 0 {
            return invalid("udp-base", "must be a nonzero port");
        }
        let l = &self.limits;
        if l.max_sessions == 0 {
            return invalid("limits.max-sessions", "must be at least 1");
        }
        if u32::from(self.udp_base) + l.max_sessions - 1 > u32::from(u16::MAX) {
            return invalid(
                "limits.max-sessions",
                format!(
                    "udp-base {} + max-sessions {} exceeds the last UDP port 65535",
                    self.udp_base, l.max_sessions
                ),
            );
        }
        if l.max_clients == 0 {
            return invalid("limits.max-clients", "must be at least 1");
        }
        if l.max_sessions_per_client == 0 {
            return invalid("limits.max-sessions-per-client", "must be at least 1");
        }
        if l.session_idle_timeout.is_zero() {
            return invalid("limits.session-idle-timeout", "must be positive");
        }
        if l.client_heartbeat_timeout.is_zero() {
            return invalid("limits.client-heartbeat-timeout", "must be positive");
        }
        let c = &self.coding;
        if !(64..=8972).contains(&c.symbol_size) {
            return invalid("coding.symbol-size", "must be between 64 and 8972 bytes");
        }
        if c.segment_size < u64::from(c.symbol_size) {
            return invalid("coding.segment-size", "must be at least one symbol");
        }
        if c.segment_size > 1 << 32 {
            return invalid("coding.segment-size", "must be at most 4GiB");
        }
        if !(1..=snc::params::MAX_SUBGEN_SIZE).contains(&c.subgen_size) {
            return invalid(
                "coding.subgen-size",
                format!("must be between 1 and {}", snc::params::MAX_SUBGEN_SIZE),
            );
        }
        if !(1..=c.subgen_size).contains(&c.stride) {
            return invalid("coding.stride", "must be between 1 and coding.subgen-size");
        }
        let p = &self.pacing;
        if p.min_receiver_rate > p.initial_receiver_rate {
            return invalid(
                "pacing.min-receiver-rate",
                "must not exceed pacing.initial-receiver-rate",
            );
        }
        if let Some(max) = p.max_receiver_rate {
            if max < p.min_receiver_rate {
                return invalid(
                    "pacing.max-receiver-rate",
                    "must not be below pacing.min-receiver-rate",
                );
            }
        }
        if !(p.loss_backoff_threshold > 0.0 && p.loss_backoff_threshold < 1.0) {
            return invalid("pacing.loss-backoff-threshold", "must be in (0, 1)");
        }
        if !(p.loss_increase_threshold >= 0.0
            && p.loss_increase_threshold <= p.loss_backoff_threshold)
        {
            return invalid(
                "pacing.loss-increase-threshold",
                "must be in [0, pacing.loss-backoff-threshold]",
            );
        }
        Ok(())
    }
}

/// Reads and parses a config file.
fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Settings::parse_file(path, &text)
}

/// One shard per available core.
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
