//! `GET /ready`: can this process do its job now? The upstream MTA greets (proxy mode), the
//! state store answers, the quarantine folder takes a file. The answer is cached for a few
//! seconds so a probe every second does not open an SMTP session every second.

use crate::config::Config;
use crate::engine::Engine;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How long an answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// The longest any one check may take.
const CHECK_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    fn from(result: Result<(), String>) -> Check {
        match result {
            Ok(()) => Check {
                ok: true,
                error: None,
            },
            Err(e) => Check {
                ok: false,
                error: Some(e),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ready: bool,
    /// Checks by name: `upstream` (proxy mode only), `state`, `quarantine`.
    pub checks: std::collections::BTreeMap<&'static str, Check>,
    /// Names of the checks that failed.
    pub failed: Vec<&'static str>,
}

/// The cached answer of the checks.
#[derive(Default)]
pub struct Readiness {
    cached: tokio::sync::Mutex<Option<(Instant, Report)>>,
}

impl Readiness {
    /// The last answer if fresh, else a new one for the running `config` and `engine`
    /// (callers meanwhile wait for it).
    pub async fn report(&self, config: Arc<Config>, engine: Arc<Engine>) -> Report {
        let mut cached = self.cached.lock().await;
        if let Some((at, report)) = cached.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return report.clone();
        }
        let report = run(&config, &engine).await;
        *cached = Some((Instant::now(), report.clone()));
        report
    }
}

async fn run(config: &Config, engine: &Engine) -> Report {
    let mut checks = std::collections::BTreeMap::new();
    if config.proxy.listen.is_some() {
        let limit = config.upstream.connect_timeout.min(CHECK_LIMIT);
        checks.insert(
            "upstream",
            Check::from(upstream_greets(&config.upstream.address, limit).await),
        );
    }
    let state = match tokio::time::timeout(CHECK_LIMIT, engine.ping_store()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_LIMIT:?}")),
    };
    checks.insert("state", Check::from(state));
    let dir = config.quarantine.dir.clone();
    let quarantine = tokio::task::spawn_blocking(move || writable(&dir))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    checks.insert("quarantine", Check::from(quarantine));
    let failed: Vec<&'static str> = checks
        .iter()
        .filter(|(_, c)| !c.ok)
        .map(|(name, _)| *name)
        .collect();
    Report {
        ready: failed.is_empty(),
        checks,
        failed,
    }
}

/// Connects and reads a 220 greeting (all lines), then says QUIT so the MTA logs a clean
/// disconnect rather than a lost connection.
pub async fn upstream_greets(address: &str, limit: Duration) -> Result<(), String> {
    let talk = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let mut reader = tokio::io::BufReader::new(stream);
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| format!("{address}: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "{address} closed the connection without a greeting"
                ));
            }
            if !line.starts_with("220") {
                return Err(format!("{address} greets with {:?}", line.trim_end()));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        let _ = reader.get_mut().write_all(b"QUIT\r\n").await;
        let mut bye = String::new();
        let _ = reader.read_line(&mut bye).await;
        Ok(())
    };
    tokio::time::timeout(limit, talk)
        .await
        .unwrap_or_else(|_| Err(format!("{address}: no greeting within {limit:?}")))
}

/// Creates, writes, syncs and removes a probe file in `dir`.
fn writable(dir: &Path) -> Result<(), String> {
    use std::io::Write;
    let probe = dir.join(format!(
        ".ready-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"ready\n")?;
            f.sync_all()
        });
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| format!("{}: cannot write there: {e}", dir.display()))
}
