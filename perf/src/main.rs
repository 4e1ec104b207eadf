//! `ccfd-perf`: the benchmark harness (codec, UDP data plane) and, later, the local swarm demo.
//!
//! Every subcommand prints machine-readable JSON on stdout (one line per configuration) and
//! human-oriented progress on stderr.

mod codec;
mod swarm;
mod udp;

use clap::{Parser, Subcommand};

/// Command line of `ccfd-perf`.
#[derive(Debug, Parser)]
#[command(
    name = "ccfd-perf",
    version,
    about = "ccfd benchmark harness and local demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The benchmarks and demos `ccfd-perf` can run.
#[derive(Debug, Subcommand)]
enum Command {
    /// Codec throughput, overhead and decoder memory, one JSON line per configuration.
    Codec(codec::CodecArgs),
    /// UDP data-plane ceiling: plain loop vs the io_uring and syscall backends of `ccfd-ring`.
    Udp(udp::UdpArgs),
    /// The local swarm demo: a real server and N real clients on loopback (or in a namespace lab
    /// with --rate/--loss), digests checked, a table of times, goodput, sources and overhead.
    Swarm(swarm::SwarmArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Codec(args) => codec::run(&args),
        Command::Udp(args) => udp::run(&args),
        Command::Swarm(args) => swarm::run(&args),
    }
}
