//! `stormbreaker run`: bind every listener, become `[service] user` if started as root, start
//! the configured front ends on one engine, tell systemd when ready, and stop on SIGTERM.

pub mod privileges;
pub mod systemd;

use crate::config::Config;
use crate::engine::Engine;
use crate::notify::Notifier;
use crate::proxy::session::Shared;
use crate::quarantine::Quarantine;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// How long the start waits for the list sources' first read before it listens anyway.
const LIST_START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tells long-running tasks that shutdown has begun: `*rx.borrow()` turns true.
pub type Shutdown = watch::Receiver<bool>;

/// Every socket `run` serves, bound before privileges are dropped: port 25 needs root or
/// CAP_NET_BIND_SERVICE, and the milter's socket folder may be root's.
struct Listeners {
    proxy: Option<tokio::net::TcpListener>,
    admin: Option<tokio::net::TcpListener>,
    milter: Option<crate::milter::Listener>,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let proxy = match config.proxy.listen {
            Some(listen) => Some(
                tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("proxy.listen {listen}: {e}"))?,
            ),
            None => None,
        };
        let admin = match config.admin.listen {
            Some(listen) => Some(crate::admin::bind(listen).await?),
            None => None,
        };
        let milter = match &config.milter.listen {
            Some(listen) => Some(crate::milter::Listener::bind(listen).await?),
            None => None,
        };
        Ok(Listeners {
            proxy,
            admin,
            milter,
        })
    }

    /// "proxy 0.0.0.0:25, milter /run/stormbreaker/milter.sock": systemd's STATUS= line.
    fn describe(&self) -> String {
        let address = |l: &tokio::net::TcpListener| {
            l.local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string())
        };
        let mut parts = Vec::new();
        if let Some(l) = &self.proxy {
            parts.push(format!("proxy {}", address(l)));
        }
        if let Some(l) = &self.milter {
            parts.push(format!("milter {}", l.name()));
        }
        if let Some(l) = &self.admin {
            parts.push(format!("console {}", address(l)));
        }
        parts.join(", ")
    }
}

/// Becomes `[service] user` when started as root; refuses to start as anyone else but that
/// user. Returns the user switched to, for error messages.
fn drop_privileges(config: &Config) -> anyhow::Result<Option<String>> {
    let account = privileges::Account::resolve(&config.service)
        .map_err(|(key, e)| anyhow::anyhow!("{key}: {e}"))?;
    match account {
        Some(account) => match privileges::become_account(&account) {
            Ok(privileges::Switch::Dropped) => {
                tracing::info!(user = %account.user, group = %account.group,
                    "listeners bound; now running as the service user");
                Ok(Some(account.user))
            }
            Ok(privileges::Switch::Already) => Ok(Some(account.user)),
            Err(e) => Err(anyhow::anyhow!("service.user: {e}")),
        },
        None => {
            if nix::unistd::geteuid().is_root() {
                tracing::warn!(
                    "running as root: set [service] user (or systemd's User=) so that a fault \
                     in mail handling cannot act as root"
                );
            }
            Ok(None)
        }
    }
}

/// Runs the proxy and/or the milter until SIGTERM or SIGINT. `config_path` is named in alerts
/// (the release command admins are told to run).
pub async fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    // First of all: until a handler is installed, SIGHUP (a reload) would end the process.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    // Then the sockets, while the process may still be root; nothing else is read or written
    // before privileges are dropped, so everything in the spool belongs to the service user.
    let listeners = Listeners::bind(&config).await?;
    let listening = listeners.describe();
    let user = drop_privileges(&config)?;
    let config = Arc::new(config);
    // Before anything counts: every metric is then present (at 0) from the first scrape.
    let metrics = crate::admin::metrics_handle(&config);
    let engine = Arc::new(Engine::from_config(&config).await?);
    // The list sources' first read, before any mail is decided, but mail must flow: a source
    // that fails is logged and its lists stay unknown until it answers, and one that is slow
    // is waited for at most LIST_START_WAIT, then read on in the background.
    if !config.list_sources.is_empty() {
        let lists = engine.lists().clone();
        let first = tokio::spawn(async move { lists.refresh_all().await });
        match tokio::time::timeout(LIST_START_WAIT, first).await {
            Ok(Ok(failed)) => tracing::info!(
                sources = config.list_sources.len(),
                failed,
                lists = engine.lists().table().len(),
                "list sources read"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "list sources not read"),
            Err(_) => tracing::warn!(
                waited_s = LIST_START_WAIT.as_secs(),
                "list sources still being read; listening meanwhile"
            ),
        }
    }
    let quarantine = Quarantine::open(&config.quarantine.dir).map_err(|e| {
        let who = user
            .as_ref()
            .map_or(String::new(), |u| format!(" (as user {u})"));
        anyhow::anyhow!(
            "quarantine.dir {}{who}: {e}",
            config.quarantine.dir.display()
        )
    })?;
    let target =
        crate::frontend::reinject_target(&config).map_err(|e| anyhow::anyhow!("reinject: {e}"))?;
    let notifier = Arc::new(Notifier::new(&config, config_path, target));
    let (stop_tx, stop_rx) = watch::channel(false);
    // The in-process store forgets open breakers with the process: take them back from the
    // snapshot and the held mail, and keep the snapshot current.
    let snapshot_path = crate::store::snapshot::path(&config.quarantine.dir);
    let keeps_snapshot = engine.snapshot(crate::now_ms()).is_some();
    let mut snapshot_task = None;
    if keeps_snapshot {
        let held = quarantine.scan().map(|s| s.held).unwrap_or_default();
        let now = crate::now_ms();
        let (from_file, from_held) =
            crate::store::snapshot::restore(&engine, &held, &snapshot_path, now);
        if from_file + from_held > 0 {
            tracing::warn!(
                from_snapshot = from_file,
                from_held_mail = from_held,
                "open breakers restored"
            );
        }
        for breaker in engine.open_breakers(now).await {
            notifier.restored(&breaker.key, breaker.opened_at_ms);
        }
        snapshot_task = Some(tokio::spawn(crate::store::snapshot::run(
            engine.clone(),
            snapshot_path.clone(),
            stop_rx.clone(),
        )));
    }
    let mut tasks = tokio::task::JoinSet::new();
    tokio::spawn(engine.lists().clone().run(stop_rx.clone()));
    tokio::spawn(crate::quarantine::expiry::run(
        quarantine.clone(),
        config.quarantine.retention,
        crate::quarantine::expiry::DEFAULT_EVERY,
        stop_rx.clone(),
    ));
    // Reminders to the admins while held mail waits, and before retention deletes it.
    tokio::spawn(Notifier::clone(&notifier).remind(quarantine.clone(), stop_rx.clone()));
    let shared = Arc::new(Shared::new(
        config.clone(),
        engine.clone(),
        Some(quarantine.clone()),
        Some(notifier.clone()),
    )?);
    if let Some(acceptor) = load_tls(&config) {
        let acceptor = acceptor.map_err(|e| anyhow::anyhow!("proxy.tls_cert: {e}"))?;
        shared.tls.store(Some(Arc::new(acceptor)));
    }

    if let Some(listener) = listeners.proxy {
        let listen = listener.local_addr()?;
        tracing::info!(%listen, upstream = %config.upstream.address, "SMTP proxy listening");
        tasks.spawn(crate::proxy::server::serve(
            shared.clone(),
            listener,
            stop_rx.clone(),
        ));
    }
    let admin = match listeners.admin {
        Some(listener) => {
            let admin = Arc::new(crate::admin::Admin::new(
                shared.clone(),
                quarantine.clone(),
                metrics,
            )?);
            tasks.spawn(crate::admin::serve(
                listener,
                admin.clone(),
                stop_rx.clone(),
            ));
            Some(admin)
        }
        None => None,
    };
    if let Some(listener) = listeners.milter {
        tasks.spawn(crate::milter::serve(
            shared.clone(),
            listener,
            stop_rx.clone(),
        ));
    }
    systemd::ready(&format!("listening: {listening}"));

    loop {
        tokio::select! {
            _ = sighup.recv() => {
                systemd::reloading();
                let status = match reload(config_path, &shared, &notifier, admin.as_deref()).await {
                    true => format!("listening: {listening}; policy reloaded"),
                    false => format!("listening: {listening}; the last reload was refused (see the log)"),
                };
                systemd::ready(&status);
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: no new sessions, finishing those in flight");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: no new sessions, finishing those in flight");
                break;
            }
            Some(done) = tasks.join_next() => {
                // A front end ended on its own: that is an error (an accept failure).
                systemd::stopping("a listener failed");
                done??;
                break;
            }
        }
    }
    systemd::stopping("finishing sessions in flight");
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    if let Some(task) = snapshot_task {
        let _ = task.await;
        let mut last = Vec::new();
        match crate::store::snapshot::save(&engine, &snapshot_path, &mut last) {
            Ok(()) => tracing::info!(path = %snapshot_path.display(), "breaker snapshot written"),
            Err(e) => tracing::error!(error = %e, "breaker snapshot not written at shutdown"),
        }
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

/// SIGHUP (`systemctl reload`): reads the policy file again and, when it is valid, puts the
/// new policy, lists, exemptions, alert settings, upstream and TLS certificate in place at once
/// for new sessions; sessions in flight finish with what they started with. A file that does
/// not validate is logged and the running configuration stays. Settings that only a restart
/// can change are named.
async fn reload(
    path: &Path,
    shared: &Shared,
    notifier: &Notifier,
    admin: Option<&crate::admin::Admin>,
) -> bool {
    let loaded = Config::load(path)
        .and_then(|c| c.check_files(path).map(|()| c))
        .map_err(|e| e.to_string());
    let config = match loaded {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the policy file does not validate; the running configuration stays");
            return false;
        }
    };
    let engine = match shared.engine.load().rebuilt(&config) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "SIGHUP: the policy does not load; the running configuration stays");
            return false;
        }
    };
    let tls = match load_tls(&config) {
        None => None,
        Some(Ok(acceptor)) => Some(Arc::new(acceptor)),
        Some(Err(e)) => {
            tracing::error!(error = %e, "SIGHUP: the TLS certificate does not load; the running configuration stays");
            return false;
        }
    };
    let old = shared.config.load_full();
    if let Err(e) = shared.reload(config.clone(), engine).await {
        tracing::error!(error = %e, "SIGHUP: the upstream settings do not load; the running configuration stays");
        return false;
    }
    shared.tls.store(tls);
    // The list table is shared by every engine (the milter's too): the new lists and sources
    // go in now, and everything is read again in the background.
    let lists = shared.engine.load().lists().clone();
    lists.reconfigure(&config);
    lists.reload();
    if let Ok(target) = crate::frontend::reinject_target(&config) {
        notifier.reload(&config, target);
    }
    // The console follows `shared`; only its token file is read again here.
    if let Some(admin) = admin {
        admin.reload_tokens(&config);
    }
    let restart = needs_restart(&old, &config);
    if restart.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded");
    } else {
        tracing::warn!(
            restart_needed = %restart.join(", "),
            "SIGHUP: configuration reloaded; these settings changed but take effect only after a restart"
        );
    }
    true
}

/// Settings read once at start: listeners, limits sized at start, where state and held mail
/// live, logging, and whom the process runs as.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("proxy.listen", old.proxy.listen != new.proxy.listen);
    check(
        "proxy.max_connections",
        old.proxy.max_connections != new.proxy.max_connections,
    );
    check(
        "proxy.max_connections_per_client",
        old.proxy.max_connections_per_client != new.proxy.max_connections_per_client,
    );
    check(
        "proxy.shutdown_grace",
        old.proxy.shutdown_grace != new.proxy.shutdown_grace,
    );
    check("milter", old.milter.listen != new.milter.listen);
    check("admin.listen", old.admin.listen != new.admin.listen);
    check("service", old.service != new.service);
    check("quarantine.dir", old.quarantine.dir != new.quarantine.dir);
    check(
        "quarantine.retention",
        old.quarantine.retention != new.quarantine.retention,
    );
    check(
        "state",
        old.state.backend != new.state.backend
            || old.state.url != new.state.url
            || old.state.prefix != new.state.prefix,
    );
    check(
        "log",
        old.log.format != new.log.format
            || old.log.level != new.log.level
            || old.log.output != new.log.output
            || old.log.socket != new.log.socket
            || old.log.facility != new.log.facility,
    );
    check(
        "upstream.pool_size",
        old.upstream.pool_size != new.upstream.pool_size,
    );
    check("mark.key_file", old.mark.key_file != new.mark.key_file);
    check(
        "policy.max_threads",
        old.policy.max_threads != new.policy.max_threads,
    );
    changed
}
