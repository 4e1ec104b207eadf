//! ccfd-server binary: logging first, then the config (so config errors are logged), then the server.
use anyhow::Context as _;
use ccfd_server::config::{Cli, Settings};
use clap::Parser as _;

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
    tracing::info!(root = %settings.root.display(), listen = %settings.listen, "configured");
    anyhow::bail!("ccfd-server is not implemented yet")
}
