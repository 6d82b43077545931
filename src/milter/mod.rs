//! Milter front end (to be written).

pub mod codec;

use crate::config::Config;
use crate::engine::Engine;
use crate::service::Shutdown;
use std::sync::Arc;

/// Serves the milter protocol on `listen` (`host:port` or a unix socket path) until shutdown.
pub async fn serve(
    _config: Arc<Config>,
    _engine: Arc<Engine>,
    _listen: String,
    _shutdown: Shutdown,
) -> anyhow::Result<()> {
    anyhow::bail!("the milter is not written yet")
}
