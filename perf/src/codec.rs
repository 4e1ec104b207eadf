//! `ccfd-perf codec`: encode/decode/recode throughput, overhead and decoder memory.

/// Options of `ccfd-perf codec`.
#[derive(Debug, clap::Args)]
pub struct CodecArgs {}

/// Runs the codec benchmark.
pub fn run(_args: &CodecArgs) -> anyhow::Result<()> {
    anyhow::bail!("ccfd-perf codec is not implemented yet")
}
