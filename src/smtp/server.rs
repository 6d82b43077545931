//! The proxy listener (being written).

use crate::config::Config;
use crate::engine::Engine;
use crate::service::Shutdown;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(
    _config: Arc<Config>,
    _engine: Arc<Engine>,
    _listener: TcpListener,
    _shutdown: Shutdown,
) -> anyhow::Result<()> {
    anyhow::bail!("the proxy is not written yet")
}
