//! The proxy listener (to be written).

use crate::config::Config;

pub async fn run(_config: Config) -> anyhow::Result<()> {
    anyhow::bail!("the proxy is not written yet")
}
