//! The command line of `ccfd-client` (clap derive) and the parsing of `--server` / `--bind`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ccfd_proto::units::BitRate;
use clap::{Parser, Subcommand};

/// Default TCP control port of a ccfd server.
pub const DEFAULT_SERVER_PORT: u16 = 7653;

/// The exit-code table printed under `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes: 0 success, 1 other error, 2 bad command line, \
3 unknown file (or name refused by the server), 4 server unreachable, 5 output not writable, \
6 disk full, 7 integrity failure.";

/// ccfd-client: fetch a file from a ccfd server as coded UDP packets.
///
/// Exit codes: 0 success, 1 other error, 2 bad command line, 3 unknown file (or name refused by the
/// server), 4 server unreachable, 5 output not writable, 6 disk full, 7 integrity failure.
#[derive(Debug, Parser)]
#[command(
    name = "ccfd-client",
    version,
    about = "Fetch a file from a ccfd server as coded UDP packets",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download one file into PATH (resuming from PATH.part if an earlier run was interrupted).
    #[command(after_help = EXIT_CODES_HELP)]
    Get(GetArgs),
    /// List the files the server offers.
    #[command(after_help = EXIT_CODES_HELP)]
    List(ListArgs),
}

/// Options shared by every subcommand that talks to a server.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The server's control address, `HOST[:PORT]` (port 7653 by default).
    #[arg(long, value_name = "HOST[:PORT]", value_parser = parse_server)]
    pub server: ServerAddr,
    /// Local address to use: IP (control connection and data socket bind to it) or IP:PORT (the data
    /// socket also binds that UDP port). Default: the address the kernel picks for the server.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub bind: Option<SocketAddr>,
    /// How long to keep retrying (with backoff) when the server cannot be reached or goes away;
    /// e.g. `30s`, `2m`; `0s` gives up at the first failure.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
}

/// `ccfd-client get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// File name on the server (relative to its root).
    pub name: String,
    /// The server to talk to.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Output path. Partial data goes to PATH.part with a resume record PATH.part.ccfd.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: PathBuf,
    /// Print a JSON summary on stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// Do not draw the progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// Print one JSON progress line per second on stderr (for programs watching the download, e.g.
    /// `ccfd-perf swarm`): {"event":"progress","seconds","bytes","file_size","bytes_from_server",...}.
    #[arg(long)]
    pub progress_json: bool,
    /// Pin the decoder thread to this core (default: the last core).
    #[arg(long, value_name = "CORE")]
    pub decoder_core: Option<usize>,
    /// Cooperation settings.
    #[command(flatten)]
    pub coop: CoopArgs,
}

/// Cooperation options of `get` (clients relay coded packets to each other).
#[derive(Debug, clap::Args)]
pub struct CoopArgs {
    /// Fetch from the server only: no cooperation listener, no serving peers, no asking them.
    #[arg(long)]
    pub no_coop: bool,
    /// Upload cap over everything sent to peers, e.g. `200mbit`, `1gbit`, `750kbit` (bits per
    /// second of wire bytes, each datagram with its IP, UDP and Ethernet headers: the link's rate,
    /// like the server's --max-rate). Default: unlimited.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_rate: Option<u64>,
    /// Download budget, same syntax and counting (wire bytes): what each peer source is told we take is capped at its share of
    /// what the budget leaves after the server's rate. Default: none.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub download_rate: Option<u64>,
    /// After the download completes keep serving peers this long, e.g. `3s`, `1m`; `0s` leaves at
    /// once.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Where to accept peers' cooperation connections, IP:PORT (port 0: any). Default: the --bind IP
    /// (else the local IP that routes to the server), any port.
    #[arg(long, value_name = "ADDR:PORT")]
    pub coop_listen: Option<SocketAddr>,
}

/// `ccfd-client list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The server to talk to.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A server address as given on the command line: host and port, resolved when connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP control port.
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `HOST`, `HOST:PORT`, `IPV6`, `[IPV6]` or `[IPV6]:PORT`.
pub fn parse_server(text: &str) -> Result<ServerAddr, String> {
    if text.is_empty() {
        return Err("empty server address".into());
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(ServerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ServerAddr {
            host: ip.to_string(),
            port: DEFAULT_SERVER_PORT,
        });
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        let ip: IpAddr = inner
            .parse()
            .map_err(|_| format!("bad IPv6 address {inner:?}"))?;
        return Ok(ServerAddr {
            host: ip.to_string(),
            port: DEFAULT_SERVER_PORT,
        });
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("bad port {port:?} in {text:?}"))?;
            if host.is_empty() || host.contains(':') {
                return Err(format!("bad host in {text:?}"));
            }
            Ok(ServerAddr {
                host: host.to_owned(),
                port,
            })
        }
        None => Ok(ServerAddr {
            host: text.to_owned(),
            port: DEFAULT_SERVER_PORT,
        }),
    }
}

/// Parses a rate in bits per second written like the server's `--max-rate` (and `tc`): a number with an
/// optional unit `bit`, `kbit`, `mbit`, `gbit`, `tbit` (decimal; `/s` allowed), e.g. `200mbit`,
/// `1.5gbit`, `750000`. Zero is refused.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    text.parse::<BitRate>()
        .map(BitRate::bits_per_sec)
        .map_err(|e| e.to_string())
}

/// Parses `--bind`: an IP (port 0) or an IP:PORT.
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 0))
        .map_err(|_| format!("bad bind address {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_forms() {
        let p = |s| parse_server(s).unwrap();
        assert_eq!(
            p("127.0.0.5"),
            ServerAddr {
                host: "127.0.0.5".into(),
                port: 7653
            }
        );
        assert_eq!(
            p("127.0.0.5:9000"),
            ServerAddr {
                host: "127.0.0.5".into(),
                port: 9000
            }
        );
        assert_eq!(
            p("example.org"),
            ServerAddr {
                host: "example.org".into(),
                port: 7653
            }
        );
        assert_eq!(
            p("example.org:1"),
            ServerAddr {
                host: "example.org".into(),
                port: 1
            }
        );
        assert_eq!(
            p("::1"),
            ServerAddr {
                host: "::1".into(),
                port: 7653
            }
        );
        assert_eq!(
            p("[::1]"),
            ServerAddr {
                host: "::1".into(),
                port: 7653
            }
        );
        assert_eq!(
            p("[::1]:80"),
            ServerAddr {
                host: "::1".into(),
                port: 80
            }
        );
        assert_eq!(p("[::1]:80").to_string(), "[::1]:80");
        assert!(parse_server("").is_err());
        assert!(parse_server("host:notaport").is_err());
        assert!(parse_server("host:70000").is_err());
    }

    #[test]
    fn bind_forms() {
        assert_eq!(
            parse_bind("127.0.0.9").unwrap(),
            "127.0.0.9:0".parse().unwrap()
        );
        assert_eq!(
            parse_bind("127.0.0.9:7000").unwrap(),
            "127.0.0.9:7000".parse().unwrap()
        );
        assert!(parse_bind("nope").is_err());
    }

    #[test]
    fn rate_forms() {
        assert_eq!(parse_rate("200mbit").unwrap(), 200_000_000);
        assert_eq!(parse_rate("1.5Gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("750kbit/s").unwrap(), 750_000);
        assert_eq!(parse_rate("1_000").unwrap(), 1000);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("10mb").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn coop_options_parse_with_defaults() {
        let cli = Cli::try_parse_from([
            "ccfd-client",
            "get",
            "f",
            "--server",
            "127.0.0.1",
            "-o",
            "/tmp/x",
        ])
        .unwrap();
        let Command::Get(get) = cli.command else {
            panic!("parsed as list")
        };
        assert!(!get.coop.no_coop);
        assert_eq!(get.coop.linger, Duration::from_secs(3));
        assert_eq!(get.coop.upload_rate, None);
        let cli = Cli::try_parse_from([
            "ccfd-client",
            "get",
            "f",
            "--server",
            "127.0.0.1",
            "-o",
            "/tmp/x",
            "--no-coop",
            "--upload-rate",
            "100mbit",
            "--download-rate",
            "1gbit",
            "--linger",
            "0s",
            "--coop-listen",
            "127.0.0.9:7000",
        ])
        .unwrap();
        let Command::Get(get) = cli.command else {
            panic!("parsed as list")
        };
        assert!(get.coop.no_coop);
        assert_eq!(get.coop.upload_rate, Some(100_000_000));
        assert_eq!(get.coop.download_rate, Some(1_000_000_000));
        assert_eq!(get.coop.linger, Duration::ZERO);
        assert_eq!(
            get.coop.coop_listen,
            Some("127.0.0.9:7000".parse().unwrap())
        );
    }

    #[test]
    fn command_line_parses() {
        let cli = Cli::try_parse_from([
            "ccfd-client",
            "get",
            "a/b.iso",
            "--server",
            "127.0.0.1",
            "-o",
            "/tmp/x",
            "--json",
            "--retry-for",
            "5s",
        ])
        .unwrap();
        match cli.command {
            Command::Get(get) => {
                assert_eq!(get.name, "a/b.iso");
                assert_eq!(get.server.server.port, 7653);
                assert_eq!(get.server.retry_for, Duration::from_secs(5));
                assert!(get.json && !get.no_progress);
            }
            Command::List(_) => panic!("parsed as list"),
        }
        assert!(
            Cli::try_parse_from(["ccfd-client", "get", "x", "-o", "y"]).is_err(),
            "--server is required"
        );
    }
}
