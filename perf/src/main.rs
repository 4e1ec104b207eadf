//! ccfd-perf: benchmark harness and local demo. (Work in progress: see issues 2, 3, 6.)
fn main() -> anyhow::Result<()> {
    anyhow::bail!("ccfd-perf is not implemented yet")
}
