//! `ccfd-perf udp`: the UDP data-plane ceiling on loopback.

/// Options of `ccfd-perf udp`.
#[derive(Debug, clap::Args)]
pub struct UdpArgs {}

/// Runs the UDP benchmark.
pub fn run(_args: &UdpArgs) -> anyhow::Result<()> {
    anyhow::bail!("ccfd-perf udp is not implemented yet")
}
