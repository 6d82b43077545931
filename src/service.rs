//! `stormbreaker run`: start the configured front ends on one engine and stop them on SIGTERM.

use crate::config::Config;
use crate::engine::Engine;
use crate::notify::Notifier;
use crate::proxy::session::Shared;
use crate::quarantine::Quarantine;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// Tells long-running tasks that shutdown has begun: `*rx.borrow()` turns true.
pub type Shutdown = watch::Receiver<bool>;

/// Runs the proxy and/or the milter until SIGTERM or SIGINT. `config_path` is named in alerts
/// (the release command admins are told to run).
pub async fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    // First of all: until a handler is installed, SIGHUP (a reload) would end the process.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let config = Arc::new(config);
    let engine = Arc::new(Engine::from_config(&config).await?);
    let quarantine = Quarantine::open(&config.quarantine.dir)
        .map_err(|e| anyhow::anyhow!("quarantine.dir {}: {e}", config.quarantine.dir.display()))?;
    let target = crate::proxy::session::upstream_target(&config)
        .map_err(|e| anyhow::anyhow!("upstream.tls: {e}"))?;
    let notifier = Arc::new(Notifier::new(&config, config_path, target));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::spawn(crate::quarantine::expiry::run(
        quarantine.clone(),
        config.quarantine.retention,
        crate::quarantine::expiry::DEFAULT_EVERY,
        stop_rx.clone(),
    ));
    let shared = Arc::new(Shared::new(
        config.clone(),
        engine.clone(),
        Some(quarantine),
        Some(notifier.clone()),
    )?);
    if let Some(acceptor) = load_tls(&config) {
        let acceptor = acceptor.map_err(|e| anyhow::anyhow!("proxy.tls_cert: {e}"))?;
        shared.tls.store(Some(Arc::new(acceptor)));
    }

    if let Some(listen) = config.proxy.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("proxy.listen {listen}: {e}"))?;
        tracing::info!(%listen, upstream = %config.upstream.address, "SMTP proxy listening");
        tasks.spawn(crate::proxy::server::serve(
            shared.clone(),
            listener,
            stop_rx.clone(),
        ));
    }
    let metrics = crate::admin::metrics_handle();
    if let Some(listen) = config.admin.listen {
        tasks.spawn(crate::admin::serve(
            listen,
            engine.clone(),
            metrics,
            stop_rx.clone(),
        ));
    }
    if let Some(listen) = config.milter.listen.clone() {
        tasks.spawn(crate::milter::serve(
            config.clone(),
            engine.clone(),
            listen,
            stop_rx.clone(),
        ));
    }

    loop {
        tokio::select! {
            _ = sighup.recv() => reload_tls(&config, &shared),
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: no new sessions, finishing those in flight");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: no new sessions, finishing those in flight");
                break;
            }
            Some(done) = tasks.join_next() => {
                // A front end ended on its own: that is an error (a bind or accept failure).
                done??;
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    // Alerts already decided go out before the process ends.
    let (sent, failed) = notifier.flush().await;
    if sent + failed > 0 {
        tracing::info!(sent, failed, "alert mail flushed at shutdown");
    }
    Ok(())
}

/// The STARTTLS acceptor from `[proxy] tls_cert` and `tls_key`, if both are set.
fn load_tls(config: &Config) -> Option<Result<tokio_rustls::TlsAcceptor, String>> {
    let (cert, key) = (
        config.proxy.tls_cert.as_ref()?,
        config.proxy.tls_key.as_ref()?,
    );
    Some(crate::tls::acceptor(cert, key))
}

/// SIGHUP: reads the certificate and key again (a renewed certificate needs no restart). New
/// STARTTLS handshakes use it; a file that does not load leaves the old one in place.
fn reload_tls(config: &Config, shared: &Shared) {
    match load_tls(config) {
        None => tracing::info!("SIGHUP: no TLS certificate configured; nothing to reload"),
        Some(Ok(acceptor)) => {
            shared.tls.store(Some(Arc::new(acceptor)));
            tracing::info!("SIGHUP: TLS certificate reloaded (other settings need a restart)");
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the old one")
        }
    }
}
