//! ccfd-client binary. (Work in progress: see issue 4.)
fn main() -> anyhow::Result<()> {
    anyhow::bail!("ccfd-client is not implemented yet")
}
