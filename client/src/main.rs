//! ccfd-client binary: parses the command line, sets up logging, runs the command and maps its error to
//! an exit code (see `ccfd_client::exit`).
use clap::Parser;

use ccfd_client::cli::{Cli, Command};
use ccfd_client::ExitCode;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: anyhow::Result<()> = match cli.command {
        Command::Get(_) | Command::List(_) => Err(anyhow::anyhow!("not wired yet")),
    };
    match result {
        Ok(()) => ExitCode::Success.into(),
        Err(err) => {
            eprintln!("ccfd-client: {err:#}");
            ExitCode::Other.into()
        }
    }
}
