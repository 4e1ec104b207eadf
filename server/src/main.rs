//! ccfd-server binary. (Work in progress: see issue 4.)
fn main() -> anyhow::Result<()> {
    anyhow::bail!("ccfd-server is not implemented yet")
}
