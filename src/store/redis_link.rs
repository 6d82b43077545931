//! How the Redis store reaches its server(s), from `[state]`: one server (`url`), a Cluster
//! (seed `nodes`) or the primary a set of `sentinels` names, each with or without TLS. The
//! `redis` crate does the protocols (cluster slot maps and redirections, sentinel queries,
//! rustls); this module chooses, re-resolves and names configuration errors by key.
//!
//! Re-resolution happens when an error says the server we talk to is no longer the primary,
//! never on a timer:
//! - `READONLY` (a demoted primary, or a standalone `url` that now names a replica): the
//!   connection is dropped and made again at once (sentinel: the sentinels are asked again;
//!   standalone: the name in `url` is resolved again), and the call is retried once there. A
//!   script refused with READONLY wrote nothing (its first write failed), so the retry cannot
//!   count twice.
//! - A lost connection (sentinel): the sentinels are asked at once; when they name another
//!   server, the call is retried there. A script the dead primary ran but did not answer may
//!   then count twice: the breaker can trip one reply early, never late.
//! - `MOVED`/`ASK` and lost nodes on a Cluster: the cluster client refreshes its slot map and
//!   retries on its own.

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline,
    RedisError, RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{RedisMode, StateConfig};

/// A `[state]` value the backend cannot use: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn bad(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// Where the connections go, checked (the files read, the URLs parsed) but not connected.
pub enum Target {
    Standalone(Box<redis::Client>),
    Cluster(Box<redis::cluster::ClusterClient>),
    Sentinel(Box<SentinelClient>),
}

impl Target {
    /// Checks `[state]` for the redis backend: what `check-config` runs and `run` connects with.
    pub fn from_config(state: &StateConfig, timeout: Duration) -> Result<Target, ConfigError> {
        if state.prefix.contains(['{', '}']) {
            return Err(bad(
                "state.prefix",
                format!(
                    "{:?}: braces are not allowed (the store makes its own hash tags from it)",
                    state.prefix
                ),
            ));
        }
        let certs = certificates(state)?;
        let connect_timeout = timeout.max(Duration::from_millis(500));
        match state.mode {
            RedisMode::Standalone => {
                for key in ["nodes", "sentinels"] {
                    let set = if key == "nodes" {
                        !state.nodes.is_empty()
                    } else {
                        !state.sentinels.is_empty()
                    };
                    if set {
                        return Err(bad(
                            format!("state.{key}"),
                            "is for mode = \"cluster\" / \"sentinel\"; standalone uses url",
                        ));
                    }
                }
                let url = state
                    .url
                    .as_deref()
                    .ok_or_else(|| bad("state.url", "the redis backend needs a url"))?;
                let tls = check_url("state.url", url, true)?;
                let client = match (&certs, tls) {
                    (Some(certs), true) => redis::Client::build_with_tls(url, certs.clone()),
                    _ => redis::Client::open(url),
                }
                .map_err(|e| bad("state.url", format!("{url:?}: {e}")))?;
                no_tls_files_without_tls(state, tls, "state.url")?;
                Ok(Target::Standalone(Box::new(client)))
            }
            RedisMode::Cluster => {
                if state.nodes.is_empty() {
                    return Err(bad(
                        "state.nodes",
                        "mode = \"cluster\" needs seed nodes, e.g. [\"redis://10.0.0.1:6379\"]",
                    ));
                }
                let tls = same_scheme("state.nodes", &state.nodes)?;
                no_tls_files_without_tls(state, tls, "state.nodes")?;
                let mut builder = ClusterClientBuilder::new(state.nodes.iter().map(String::as_str))
                    // One attempt per call: the outage logic paces retries, and a decision
                    // never waits for more than `state.timeout`.
                    .retries(1)
                    .connection_timeout(connect_timeout)
                    .response_timeout(timeout.max(Duration::from_millis(500)));
                if tls {
                    builder = builder.tls(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder.certs(certs);
                    }
                }
                if let Some(user) = &state.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &state.password {
                    builder = builder.password(password);
                }
                let client = builder
                    .build()
                    .map_err(|e| bad("state.nodes", e.to_string()))?;
                Ok(Target::Cluster(Box::new(client)))
            }
            RedisMode::Sentinel => {
                if state.sentinels.is_empty() {
                    return Err(bad(
                        "state.sentinels",
                        "mode = \"sentinel\" needs the sentinels, e.g. [\"redis://10.0.0.1:26379\"]",
                    ));
                }
                let master = state
                    .master_name
                    .as_deref()
                    .filter(|m| !m.trim().is_empty())
                    .ok_or_else(|| {
                        bad(
                            "state.master_name",
                            "mode = \"sentinel\" needs the name the sentinels monitor the \
                             primary under (sentinel monitor NAME ...)",
                        )
                    })?;
                let tls = same_scheme("state.sentinels", &state.sentinels)?;
                no_tls_files_without_tls(state, tls, "state.sentinels")?;
                let mut addrs = Vec::new();
                let mut sentinel_auth = None;
                for (i, url) in state.sentinels.iter().enumerate() {
                    let info = url
                        .as_str()
                        .into_connection_info()
                        .map_err(|e| bad(format!("state.sentinels[{i}]"), e.to_string()))?;
                    let settings = info.redis_settings();
                    if sentinel_auth.is_none() && settings.password().is_some() {
                        sentinel_auth = Some((
                            settings.username().map(str::to_string),
                            settings.password().map(str::to_string),
                        ));
                    }
                    // TLS (rediss://) stays on the address: the builder adds the certificates.
                    let addr = match info.addr() {
                        ConnectionAddr::Unix(_) => {
                            return Err(bad(
                                format!("state.sentinels[{i}]"),
                                "sentinels are reached over TCP (redis:// or rediss://)",
                            ));
                        }
                        addr => addr.clone(),
                    };
                    addrs.push(addr);
                }
                let mut builder =
                    SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                        .map_err(|e| bad("state.sentinels", e.to_string()))?;
                if tls {
                    builder = builder
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                        .set_client_to_redis_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_sentinel_certificates(certs.clone())
                            .set_client_to_redis_certificates(certs);
                    }
                }
                if let Some((user, password)) = sentinel_auth {
                    if let Some(user) = user {
                        builder = builder.set_client_to_sentinel_username(user);
                    }
                    if let Some(password) = password {
                        builder = builder.set_client_to_sentinel_password(password);
                    }
                }
                if let Some(user) = &state.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(password) = &state.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                let client = builder
                    .build()
                    .map_err(|e| bad("state.sentinels", e.to_string()))?;
                Ok(Target::Sentinel(Box::new(client)))
            }
        }
    }
}

/// Whether `url` is a Redis URL that asks for TLS; an error naming `key` when it is none.
fn check_url(key: &str, url: &str, unix_ok: bool) -> Result<bool, ConfigError> {
    let tls = url.starts_with("rediss://");
    let ok = url.starts_with("redis://")
        || tls
        || (unix_ok && (url.starts_with("unix://") || url.starts_with("redis+unix://")));
    if !ok {
        return Err(bad(
            key,
            format!("{url:?} is not a Redis URL (redis://host:port/db, rediss:// for TLS)"),
        ));
    }
    url.into_connection_info()
        .map_err(|e| bad(key, format!("{url:?}: {e}")))?;
    Ok(tls)
}

/// All of `urls` with TLS or all without (one setting covers them).
fn same_scheme(key: &str, urls: &[String]) -> Result<bool, ConfigError> {
    let mut tls = None;
    for (i, url) in urls.iter().enumerate() {
        let this = check_url(&format!("{key}[{i}]"), url, false)?;
        if tls.is_some_and(|t| t != this) {
            return Err(bad(
                format!("{key}[{i}]"),
                "mixes redis:// and rediss://: use one scheme for all",
            ));
        }
        tls = Some(this);
    }
    Ok(tls.unwrap_or(false))
}

fn no_tls_files_without_tls(
    state: &StateConfig,
    tls: bool,
    which: &str,
) -> Result<(), ConfigError> {
    if tls {
        return Ok(());
    }
    for (key, set) in [
        ("state.tls_ca_file", state.tls_ca_file.is_some()),
        ("state.tls_cert_file", state.tls_cert_file.is_some()),
        ("state.tls_key_file", state.tls_key_file.is_some()),
    ] {
        if set {
            return Err(bad(
                key,
                format!("is set but {which} is not rediss://: TLS would not be used"),
            ));
        }
    }
    Ok(())
}

/// The CA and client certificate files, read and checked as PEM.
fn certificates(state: &StateConfig) -> Result<Option<TlsCertificates>, ConfigError> {
    let read = |key: &str, path: &std::path::Path| -> Result<Vec<u8>, ConfigError> {
        let bytes =
            std::fs::read(path).map_err(|e| bad(key, format!("{}: {e}", path.display())))?;
        if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
            return Err(bad(key, format!("{}: not a PEM file", path.display())));
        }
        Ok(bytes)
    };
    let root_cert = match &state.tls_ca_file {
        Some(path) => {
            let pem = read("state.tls_ca_file", path)?;
            use rustls_pki_types::pem::PemObject;
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("state.tls_ca_file", format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(
                    "state.tls_ca_file",
                    format!("{}: no certificate in it", path.display()),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&state.tls_cert_file, &state.tls_key_file) {
        (Some(cert), Some(key)) => {
            let client_cert = read("state.tls_cert_file", cert)?;
            let client_key = read("state.tls_key_file", key)?;
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::PrivateKeyDer::from_pem_slice(&client_key)
                .map_err(|e| bad("state.tls_key_file", format!("{}: {e}", key.display())))?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        (Some(_), None) => {
            return Err(bad(
                "state.tls_key_file",
                "state.tls_cert_file is set: the client certificate needs its key",
            ));
        }
        (None, Some(_)) => {
            return Err(bad(
                "state.tls_cert_file",
                "state.tls_key_file is set: the client key needs its certificate",
            ));
        }
        (None, None) => None,
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// One connection of any mode, for commands and scripts.
#[derive(Clone)]
pub enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
    Plain(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
        }
    }
}

/// The live side of a `Target`: hands out connections and makes them again when told the
/// server stopped being the primary.
pub struct Link {
    kind: LinkKind,
    /// Connections made since start (the first included): how tests see re-resolution.
    pub resolutions: std::sync::atomic::AtomicU64,
}

enum LinkKind {
    Standalone {
        client: redis::Client,
        config: ConnectionManagerConfig,
        conn: Mutex<ConnectionManager>,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    },
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        config: AsyncConnectionConfig,
        /// The primary's connection and address, until an error says otherwise.
        conn: Mutex<Option<(MultiplexedConnection, String)>>,
    },
}

/// What a failed call says about the connection.
pub enum Failure {
    /// Not about the connection (a script error, a timeout): nothing to do.
    Keep,
    /// READONLY: the server is a replica now.
    Demoted,
    /// The connection broke or could not be made.
    Lost,
}

pub fn classify(e: &RedisError) -> Failure {
    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || e.to_string().contains("READONLY")
    {
        Failure::Demoted
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        Failure::Lost
    } else {
        Failure::Keep
    }
}

impl Link {
    /// Connects lazily: nothing is dialled until the first call.
    pub fn new(target: Target, timeout: Duration) -> RedisResult<Link> {
        let connect_timeout = timeout.max(Duration::from_millis(500));
        let kind = match target {
            Target::Standalone(client) => {
                let client = *client;
                // One connection attempt per call (our own retry pacing is in the store's
                // outage logic), bounded but never absurdly short for a remote Redis.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(connect_timeout));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
                LinkKind::Standalone {
                    client,
                    config,
                    conn: Mutex::new(conn),
                }
            }
            Target::Cluster(client) => LinkKind::Cluster {
                client: *client,
                conn: tokio::sync::Mutex::new(None),
            },
            Target::Sentinel(client) => LinkKind::Sentinel {
                client: tokio::sync::Mutex::new(*client),
                config: AsyncConnectionConfig::new().set_connection_timeout(Some(connect_timeout)),
                conn: Mutex::new(None),
            },
        };
        Ok(Link {
            kind,
            resolutions: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, LinkKind::Cluster { .. })
    }

    /// A connection to the primary (made now when there is none).
    pub async fn get(&self) -> RedisResult<Conn> {
        use std::sync::atomic::Ordering;
        match &self.kind {
            LinkKind::Standalone { conn, .. } => Ok(Conn::Manager(
                conn.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            )),
            LinkKind::Cluster { client, conn } => {
                let mut slot = conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(Conn::Cluster(c.clone()));
                }
                let c = client.get_async_connection().await?;
                self.resolutions.fetch_add(1, Ordering::Relaxed);
                *slot = Some(c.clone());
                Ok(Conn::Cluster(c))
            }
            LinkKind::Sentinel { conn, .. } => {
                if let Some((c, _)) = conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    return Ok(Conn::Plain(c.clone()));
                }
                self.resolve(None).await.map(|(c, _)| c)
            }
        }
    }

    /// Asks the sentinels for the primary and connects to it; `Some(new address)` when it
    /// differs from `failed` (the address a call just failed on).
    async fn resolve(&self, failed: Option<&str>) -> RedisResult<(Conn, bool)> {
        use std::sync::atomic::Ordering;
        let LinkKind::Sentinel {
            client,
            config,
            conn,
        } = &self.kind
        else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "only a sentinel link resolves its primary",
            )));
        };
        let mut sentinel = client.lock().await;
        // Another call may have resolved while this one waited for the lock.
        if let Some((c, addr)) = conn.lock().unwrap_or_else(|e| e.into_inner()).as_ref()
            && failed != Some(addr.as_str())
        {
            return Ok((Conn::Plain(c.clone()), true));
        }
        let primary = sentinel.async_get_client().await?;
        let addr = primary.get_connection_info().addr().to_string();
        let c = primary
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        self.resolutions.fetch_add(1, Ordering::Relaxed);
        let moved = failed.is_some_and(|f| f != addr);
        if failed.is_some() {
            tracing::warn!(primary = %addr, moved, "redis sentinel: primary resolved again");
        }
        *conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((c.clone(), addr));
        Ok((Conn::Plain(c), moved))
    }

    fn current_addr(&self) -> Option<String> {
        match &self.kind {
            LinkKind::Sentinel { conn, .. } => conn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(_, a)| a.clone()),
            _ => None,
        }
    }

    /// After a failed call: makes the connection again when the error says so, and returns a
    /// connection to retry the call on, when retrying is safe and can help.
    pub async fn recover(&self, failure: Failure) -> Option<Conn> {
        use std::sync::atomic::Ordering;
        match (&self.kind, failure) {
            (_, Failure::Keep) => None,
            (
                LinkKind::Standalone {
                    client,
                    config,
                    conn,
                },
                Failure::Demoted,
            ) => {
                // The url's name may point at the new primary now (a managed endpoint).
                let fresh =
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).ok()?;
                self.resolutions.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("redis answered READONLY; connecting to state.url again");
                *conn.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                Some(Conn::Manager(fresh))
            }
            // The connection manager reconnects a lost connection itself.
            (LinkKind::Standalone { .. }, Failure::Lost) => None,
            // The cluster client follows MOVED, ASK and lost nodes itself; READONLY (a primary
            // demoted under us) is refreshed and retried by it too.
            (LinkKind::Cluster { .. }, _) => None,
            (LinkKind::Sentinel { .. }, failure) => {
                let failed = self.current_addr();
                let demoted = matches!(failure, Failure::Demoted);
                match self.resolve(failed.as_deref().or(Some(""))).await {
                    // READONLY: nothing was written, retry wherever the primary is now.
                    Ok((c, moved)) if demoted || moved => Some(c),
                    Ok(_) => None,
                    Err(e) => {
                        if let LinkKind::Sentinel { conn, .. } = &self.kind {
                            *conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        }
                        tracing::debug!(error = %e, "redis sentinel: no primary now");
                        None
                    }
                }
            }
        }
    }

    /// The primaries of a Cluster (host, port), from CLUSTER SLOTS; empty for other modes.
    pub async fn primaries(&self) -> RedisResult<Vec<(String, u16)>> {
        if !self.is_cluster() {
            return Ok(Vec::new());
        }
        let mut conn = self.get().await?;
        let slots: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        let mut out: Vec<(String, u16)> = Vec::new();
        for range in slots {
            let Value::Array(items) = range else { continue };
            if let Some(Value::Array(node)) = items.get(2) {
                let host = match node.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => continue,
                };
                let port = match node.get(1) {
                    Some(Value::Int(p)) => *p as u16,
                    _ => continue,
                };
                if !out.contains(&(host.clone(), port)) {
                    out.push((host, port));
                }
            }
        }
        Ok(out)
    }
}
