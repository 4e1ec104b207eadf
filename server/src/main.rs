//! ccfd-server binary: logging first, then the config (so config errors are logged), then the server;
//! `READY=1` once it runs, `STOPPING=1` on SIGTERM/SIGINT, then a clean exit.
use anyhow::Context as _;
use ccfd_server::config::{Cli, Settings};
use ccfd_server::{notify, Server};
use clap::Parser as _;
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings = match Settings::load(&cli) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "invalid configuration");
            return Err(error).context("invalid configuration");
        }
    };
    // Register the handlers before READY so a SIGTERM right after start is not lost.
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    let server = match Server::start_under_systemd(&settings) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return Err(error).context("cannot start the server");
        }
    };
    notify::status(&format!(
        "serving {} on {}",
        settings.root.display(),
        server.control_addr()
    ));
    notify::ready();
    // Printed on stdout so scripts and tests can learn the bound address (useful with port 0).
    println!("listening {}", server.control_addr());
    let signal = signals.forever().next();
    tracing::info!(?signal, "stopping");
    notify::stopping();
    let stats = server.stats();
    server.shutdown();
    tracing::info!(
        packets = stats.packets,
        bytes = stats.bytes,
        sessions = stats.sessions_started,
        "stopped"
    );
    // One JSON line on stdout with the lifetime totals, for scripts and tests (swarm, coop tests).
    println!(
        "{{\"event\":\"stopped\",\"packets_sent\":{},\"bytes_sent\":{},\"sessions_started\":{},\"send_errors\":{}}}",
        stats.packets, stats.bytes, stats.sessions_started, stats.send_errors
    );
    Ok(())
}
