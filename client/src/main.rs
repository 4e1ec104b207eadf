//! ccfd-client binary: parses the command line, sets up logging (`RUST_LOG`, default `warn`, on
//! stderr), runs the command and maps its error to an exit code (see `ccfd_client::exit`).
use std::io::Write;

use anyhow::Context;
use clap::Parser;

use ccfd_client::cli::{Cli, Command, GetArgs, ListArgs};
use ccfd_client::get::{get, random_node_id, GetOptions};
use ccfd_client::{ClientError, ExitCode};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Get(args) => run_get(args),
        Command::List(args) => run_list(args),
    };
    match result {
        Ok(()) => ExitCode::Success.into(),
        Err(err) => {
            eprintln!("ccfd-client: {}", error_text(&err));
            match err.downcast_ref::<ClientError>() {
                Some(client_error) => client_error.exit_code().into(),
                None => ExitCode::Other.into(),
            }
        }
    }
}

/// `err` and its causes joined with ": ", leaving out a cause whose text the message before it
/// already shows (typed errors print their `source` in their own message).
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.is_empty() {
            text = cause;
        } else if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run_get(args: GetArgs) -> anyhow::Result<()> {
    let mut options = GetOptions::new(args.name, args.server.server, args.output);
    options.bind = args.server.bind;
    options.retry_for = args.server.retry_for;
    options.progress = !args.no_progress;
    options.progress_json = args.progress_json;
    options.decoder_core = args.decoder_core;
    options.cooperate = !args.coop.no_coop;
    options.upload_rate_bps = args.coop.upload_rate;
    options.download_rate_bps = args.coop.download_rate;
    options.linger = args.coop.linger;
    options.coop_listen = args.coop.coop_listen;
    let summary = get(&options)?;
    if args.json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &summary).context("write the JSON summary")?;
        writeln!(stdout).context("write the JSON summary")?;
    }
    Ok(())
}

fn run_list(args: ListArgs) -> anyhow::Result<()> {
    let (entries, truncated) = ccfd_client::control::list_files(
        &args.server.server,
        args.server.bind.map(|b| b.ip()),
        args.server.retry_for,
        random_node_id(),
    )?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let files: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| serde_json::json!({ "name": e.name, "size": e.size }))
            .collect();
        serde_json::to_writer(
            &mut stdout,
            &serde_json::json!({ "files": files, "truncated": truncated }),
        )?;
        writeln!(stdout)?;
    } else {
        for entry in &entries {
            writeln!(stdout, "{:>15}  {}", entry.size, entry.name)?;
        }
        if truncated {
            writeln!(stdout, "(list truncated by the server)")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[test]
    fn error_text_shows_each_cause_once() {
        let disk_full = std::io::Error::from_raw_os_error(28);
        let typed =
            ccfd_client::ClientError::output("write", std::path::Path::new("/x/y.part"), disk_full);
        let text = error_text(&anyhow::Error::new(typed));
        assert_eq!(text.matches("os error 28").count(), 1, "{text}");
        assert!(text.contains("/x/y.part"), "{text}");
        let wrapped =
            anyhow::Error::new(std::io::Error::other("socket closed")).context("list files");
        assert_eq!(error_text(&wrapped), "list files: socket closed");
    }
}
