//! Retention: the server removes held and released messages older than `quarantine.retention`,
//! once at start and then every `every`, each removal logged and audited as "expire".

use crate::quarantine::Quarantine;
use crate::service::Shutdown;
use std::time::Duration;

/// How often `run` looks for expired messages unless told otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);

/// Runs until shutdown. Errors are logged; the next round tries again.
pub async fn run(q: Quarantine, retention: Duration, every: Duration, mut stop: Shutdown) {
    loop {
        let store = q.clone();
        let round =
            tokio::task::spawn_blocking(move || store.purge_expired(retention, crate::now_ms()))
                .await;
        match round {
            Ok(Ok(expired)) if !expired.is_empty() => {
                tracing::info!(
                    count = expired.len(),
                    "quarantine retention: messages expired"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "quarantine retention failed"),
            Err(e) => tracing::error!(error = %e, "quarantine retention task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}
