//! Operations on `[admin] listen`: the web console, its JSON API, Prometheus metrics, health
//! and readiness. Served with axum; the page, script and style are compiled into the binary.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /` (`/console.js`, `/console.css`) | page asks | the console |
//! | `GET /health` | none | liveness: the process answers |
//! | `GET /ready` | none | readiness JSON, 503 when a check fails (`ready`) |
//! | `GET /metrics` | none | Prometheus text 0.0.4 |
//! | `GET /api/session`, `POST /api/login`, `POST /api/logout` | | who is logged in |
//! | `GET /api/storms[?nodes=all]` | yes | storms with their timelines (`console`) |
//! | `GET /api/held?storm=ID&q=WORDS[&nodes=all]` | yes | held and released messages |
//! | `GET /api/report.csv?storm=ID` | yes | the storm report |
//! | `POST /api/release`, `/api/delete` `{"ids":[…]}` | yes + CSRF | act on held mail |
//! | `POST /api/trip`, `/api/reset` `{"key":"…"}` | yes + CSRF | breakers by hand |
//! | `GET /breakers`, `POST /breakers/trip?key=`, `/breakers/reset?key=` | yes + CSRF | the CLI's |
//!
//! Authentication and cross-origin rules: see `auth`. Every action is in the quarantine's
//! audit log with the caller's name, and in the log with the client's address.
//!
//! Several nodes (`[admin] peers`, see `peers`): `nodes=all` adds every peer's held mail, each
//! row with its `node`; release and delete take `NODE:ID` and forward other nodes' ids there.

pub mod auth;
pub mod client;
pub mod console;
pub mod metric;
pub mod peers;
pub mod ready;

use crate::config::Config;
use crate::engine::Engine;
use crate::proxy::session::Shared;
use crate::quarantine::{Quarantine, QuarantineError, ReleaseError, ReleaseOptions};
use crate::service::Shutdown;
use auth::{Auth, Caller, Refusal, Tokens};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The page, its script and its style: plain files, no build step.
const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");
/// Most messages one release or delete request may name.
const MAX_IDS: usize = 5000;
/// Most rows `GET /api/held` returns.
const MAX_ROWS: usize = 5000;
/// The Content-Type Prometheus expects of the text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Installs the global metrics recorder once; later calls return the same handle. Counters
/// and gauges are zeroed with `config`'s label values (see `metric::zero`).
pub fn metrics_handle(config: &Config) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match metric::builder().install_recorder() {
            Ok(handle) => {
                metric::describe();
                metric::zero(config);
                handle
            }
            // Another recorder is installed (tests): render an empty, private one.
            Err(_) => metric::builder().build_recorder().handle(),
        })
        .clone()
}

/// What the admin routes work with. The configuration, engine and upstream are the running
/// ones of `shared`, so a SIGHUP reload reaches the console too.
pub struct Admin {
    shared: Arc<Shared>,
    quarantine: Quarantine,
    metrics: PrometheusHandle,
    pub auth: Auth,
    ready: ready::Readiness,
}

impl Admin {
    /// Loads `[admin] token_file` (errors name the file and line).
    pub fn new(
        shared: Arc<Shared>,
        quarantine: Quarantine,
        metrics: PrometheusHandle,
    ) -> anyhow::Result<Admin> {
        let config = shared.config.load_full();
        let tokens = match &config.admin.token_file {
            Some(path) => {
                Some(Tokens::load(path).map_err(|e| anyhow::anyhow!("admin.token_file: {e}"))?)
            }
            None => None,
        };
        if tokens.is_none() {
            tracing::warn!(
                "[admin] token_file is not set: the console and admin API answer any local user \
                 as \"anonymous\""
            );
        }
        Ok(Admin {
            ready: ready::Readiness::default(),
            auth: Auth::new(tokens),
            shared,
            quarantine,
            metrics,
        })
    }

    fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }

    fn engine(&self) -> Arc<Engine> {
        self.shared.engine.load_full()
    }

    /// SIGHUP: reads `config`'s token file again; a file that does not load keeps the old
    /// tokens. (Going from no token file to one, or back, needs a restart.)
    pub fn reload_tokens(&self, config: &Config) {
        let Some(path) = &config.admin.token_file else {
            return;
        };
        match Tokens::load(path) {
            Ok(tokens) => {
                self.auth.reload(tokens);
                tracing::info!("SIGHUP: admin tokens reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: admin tokens not reloaded; keeping the old ones")
            }
        }
    }
}

/// The console's listener (`run` binds every listener before it drops privileges).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {listen}: {e}"))
}

/// Serves the console and API on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?;
    tracing::info!(%listen, "console and admin API listening");
    let app = router(admin).into_make_service_with_connect_info::<SocketAddr>();
    let mut stop = shutdown;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        })
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {listen}: {e}"))
}

fn router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/console.js",
            get(|| asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        )
        .route(
            "/console.css",
            get(|| asset("text/css; charset=utf-8", CONSOLE_CSS)),
        )
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/storms", get(storms))
        .route("/api/held", get(held))
        .route("/api/report.csv", get(report))
        .route("/api/release", post(release))
        .route("/api/delete", post(delete))
        .route("/api/trip", post(trip))
        .route("/api/reset", post(reset))
        .route("/breakers", get(breakers))
        .route("/breakers/trip", post(legacy_trip))
        .route("/breakers/reset", post(legacy_reset))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn(refuse_cross_origin))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(admin)
}

/// Any request but GET and HEAD from another origin is refused before anything reads it
/// (`auth::same_origin`), whatever its route, body or credentials.
async fn refuse_cross_origin(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method();
    if method != axum::http::Method::GET
        && method != axum::http::Method::HEAD
        && let Err(refusal) = auth::same_origin(request.headers())
    {
        tracing::warn!(path = %request.uri().path(), reason = %refusal.message, "admin API: cross-origin request refused");
        return ApiError::from(refusal).into_response();
    }
    next.run(request).await
}

/// Headers on every answer: nothing may frame, sniff or cache it.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// An error answer: `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
            r.message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type Result<T> = std::result::Result<T, ApiError>;
type Peer = ConnectInfo<SocketAddr>;

fn caller(a: &Admin, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller> {
    let mut c = a.auth.authenticate(headers, peer)?;
    // Another node acting for someone (`peers`): the audit log names that person and the
    // node, and the token that vouched for them when it is not theirs.
    if let Some((who, via)) = forwarded_for(headers)
        && !matches!(c.via, auth::Via::Session { .. })
    {
        c.name = if who == c.name {
            format!("{who} via {via}")
        } else {
            format!("{who} via {via} (token {})", c.name)
        };
    }
    Ok(c)
}

/// The person and node of a request another node forwarded (names as token files spell them).
fn forwarded_for(headers: &HeaderMap) -> Option<(String, String)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                !v.is_empty()
                    && v.len() <= 64
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
            })
            .map(str::to_string)
    };
    Some((
        header(client::ON_BEHALF_HEADER)?,
        header(client::VIA_NODE_HEADER)?,
    ))
}

/// A caller allowed to change state: authenticated, same origin, CSRF token when needed.
fn actor(a: &Admin, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller> {
    let c = caller(a, headers, peer)?;
    a.auth.check_state_change(&c, headers)?;
    Ok(c)
}

async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX_HTML).await;
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    r
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn ready(State(a): State<Arc<Admin>>) -> Response {
    let report = a.ready.report(a.config(), a.engine()).await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

async fn metrics(State(a): State<Arc<Admin>>) -> Response {
    refresh_gauges(&a).await;
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        a.metrics.render(),
    )
        .into_response()
}

/// Gauges read at scrape time: open breakers by rule, quarantine contents.
async fn refresh_gauges(a: &Admin) {
    if let Ok(open) = a.engine().try_open_breakers(crate::now_ms()).await {
        for rule in metric::BREAKER_RULES {
            let n = open.iter().filter(|b| b.breaker == rule).count();
            metrics::gauge!(metric::BREAKERS_OPEN, "breaker" => rule).set(n as f64);
        }
    }
    let q = a.quarantine.clone();
    if let Ok(Ok((held, released))) = tokio::task::spawn_blocking(move || q.count()).await {
        metrics::gauge!(metric::QUARANTINE_MESSAGES, "state" => "held").set(held as f64);
        metrics::gauge!(metric::QUARANTINE_MESSAGES, "state" => "released").set(released as f64);
    }
}

async fn session(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> Result<Response> {
    let c = caller(&a, &headers, peer)?;
    Ok(Json(serde_json::json!({
        "name": c.name,
        "csrf": a.auth.csrf_of(&c),
        "auth": if a.auth.required() { "token" } else { "none" },
    }))
    .into_response())
}

#[derive(Deserialize)]
struct LoginRequest {
    token: String,
}

async fn login(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Response> {
    let (cookie, c) = a.auth.login(&req.token, &headers, peer)?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "name": c.name, "csrf": a.auth.csrf_of(&c), "auth": "token" })),
    )
        .into_response())
}

async fn logout(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    tracing::info!(who = %c.name, client = %peer, "console: logged out");
    Ok((
        [(header::SET_COOKIE, a.auth.logout(&headers))],
        Json(serde_json::json!({})),
    )
        .into_response())
}

/// Held and released messages, read off the disk in a blocking task.
async fn scan(
    a: &Admin,
) -> Result<(
    Vec<crate::quarantine::HeldMeta>,
    Vec<crate::quarantine::HeldMeta>,
)> {
    let q = a.quarantine.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        Ok((q.scan()?.held, q.scan_released()?.held))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("quarantine: {e}"),
        )
    })
}

async fn storms(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Query(query): Query<NodesQuery>,
) -> Result<Response> {
    let c = caller(&a, &headers, peer)?;
    let now = crate::now_ms();
    let (breakers, breakers_error) = match a.engine().try_open_breakers(now).await {
        Ok(b) => (b, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let (mut held, mut released) = scan(&a).await?;
    let mut nodes = Vec::new();
    if query.wants_all_nodes(&headers) {
        let config = a.config();
        nodes.push(NodeView::ok(&config.admin.node_name(), None, held.len()));
        for answer in peers::held_rows(&config, &c.name, "").await {
            match &answer.rows {
                Ok(rows) => {
                    for row in rows {
                        let list = if row.state == "held" {
                            &mut held
                        } else {
                            &mut released
                        };
                        list.push(row.to_meta());
                    }
                    let n = rows.iter().filter(|r| r.state == "held").count();
                    nodes.push(NodeView::ok(&answer.node, Some(&answer.url), n));
                }
                Err(e) => nodes.push(NodeView::failed(&answer, e)),
            }
        }
    }
    let storms = console::storms(&breakers, &held, &released);
    Ok(Json(serde_json::json!({
        "now_ms": now,
        "storms": storms,
        "breakers_error": breakers_error,
        "nodes": nodes,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
struct NodesQuery {
    /// `all`: every node of `[admin] peers` too.
    nodes: Option<String>,
}

impl NodesQuery {
    /// Whether to ask the peers: asked for, and not itself a request from another node (so a
    /// view never goes round the nodes twice).
    fn wants_all_nodes(&self, headers: &HeaderMap) -> bool {
        self.nodes.as_deref() == Some("all") && !headers.contains_key(client::VIA_NODE_HEADER)
    }
}

/// How one node answered a view of all nodes.
#[derive(serde::Serialize)]
struct NodeView {
    name: String,
    url: Option<String>,
    ok: bool,
    /// Its held messages (in the view's filter).
    held: usize,
    error: Option<String>,
}

impl NodeView {
    fn ok(name: &str, url: Option<&str>, held: usize) -> NodeView {
        NodeView {
            name: name.into(),
            url: url.map(str::to_string),
            ok: true,
            held,
            error: None,
        }
    }

    fn failed(answer: &peers::NodeRows, error: &str) -> NodeView {
        tracing::warn!(node = %answer.node, url = %answer.url, %error, "admin API: a peer's held mail is not in the view");
        NodeView {
            name: answer.node.clone(),
            url: Some(answer.url.clone()),
            ok: false,
            held: 0,
            error: Some(error.into()),
        }
    }
}

#[derive(Deserialize)]
struct HeldQuery {
    storm: Option<String>,
    q: Option<String>,
    /// `held`, `released`, or both when absent.
    state: Option<String>,
    #[serde(flatten)]
    nodes: NodesQuery,
}

impl HeldQuery {
    /// The query a peer is asked (its own rows only).
    fn for_peer(&self) -> String {
        let mut q = url_query();
        for (key, value) in [
            ("storm", &self.storm),
            ("q", &self.q),
            ("state", &self.state),
        ] {
            if let Some(v) = value {
                q.append_pair(key, v);
            }
        }
        q.finish()
    }
}

fn url_query() -> QueryBuilder {
    QueryBuilder(Vec::new())
}

/// `key=value&…`, percent-encoded.
struct QueryBuilder(Vec<String>);

impl QueryBuilder {
    fn append_pair(&mut self, key: &str, value: &str) {
        self.0.push(format!("{key}={}", client::encode(value)));
    }

    fn finish(self) -> String {
        self.0.join("&")
    }
}

async fn rows(a: &Admin, query: &HeldQuery) -> Result<Vec<console::HeldRow>> {
    let (held, released) = scan(a).await?;
    let node = a.config().admin.node_name();
    let wanted = |state: &str| query.state.as_deref().is_none_or(|s| s == state);
    let mut rows: Vec<console::HeldRow> = Vec::new();
    for (list, state) in [(&held, "held"), (&released, "released")] {
        if !wanted(state) {
            continue;
        }
        rows.extend(
            list.iter()
                .filter(|m| {
                    query
                        .storm
                        .as_deref()
                        .is_none_or(|s| console::storm_of_held(m) == s)
                })
                .map(|m| console::HeldRow::new(&node, m, state))
                .filter(|r| query.q.as_deref().is_none_or(|q| r.matches(q))),
        );
    }
    rows.sort_by(|x, y| (x.received_at_ms, &x.id).cmp(&(y.received_at_ms, &y.id)));
    Ok(rows)
}

async fn held(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Query(query): Query<HeldQuery>,
) -> Result<Response> {
    let c = caller(&a, &headers, peer)?;
    let mut rows = rows(&a, &query).await?;
    let mut nodes = Vec::new();
    if query.nodes.wants_all_nodes(&headers) {
        let config = a.config();
        let held = |rows: &[console::HeldRow]| rows.iter().filter(|r| r.state == "held").count();
        nodes.push(NodeView::ok(&config.admin.node_name(), None, held(&rows)));
        for answer in peers::held_rows(&config, &c.name, &query.for_peer()).await {
            match answer.rows {
                Ok(remote) => {
                    nodes.push(NodeView::ok(&answer.node, Some(&answer.url), held(&remote)));
                    rows.extend(remote);
                }
                Err(ref e) => nodes.push(NodeView::failed(&answer, e)),
            }
        }
        rows.sort_by(|x, y| {
            (x.received_at_ms, &x.node, &x.id).cmp(&(y.received_at_ms, &y.node, &y.id))
        });
    }
    let total = rows.len();
    rows.truncate(MAX_ROWS);
    Ok(
        Json(serde_json::json!({ "total": total, "messages": rows, "nodes": nodes }))
            .into_response(),
    )
}

async fn report(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Query(query): Query<HeldQuery>,
) -> Result<Response> {
    let c = caller(&a, &headers, peer)?;
    let Some(storm) = query.storm.clone() else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "missing ?storm=ID"));
    };
    let rows = rows(&a, &query).await?;
    let csv = console::report_csv(&storm, &rows)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(who = %c.name, client = %peer, storm = %storm, rows = rows.len(), "console: storm report exported");
    let name: String = storm
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' {
                ch
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let disposition = format!("attachment; filename=\"storm-{name}.csv\"");
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        csv,
    )
        .into_response())
}

#[derive(Deserialize)]
struct Ids {
    /// This node's ids, bare or as `NODE:ID`; other nodes' as `NODE:ID`.
    ids: Vec<String>,
    /// Release: send again to recipients already released or in doubt (`quarantine release
    /// --force` of another node's message; the console never sends it).
    #[serde(default)]
    force: bool,
}

/// The ids of a release or delete, split by node.
#[derive(Default)]
struct ByNode {
    /// (as the caller named it, this node's id)
    local: Vec<(String, String)>,
    /// node -> its ids
    remote: std::collections::BTreeMap<String, Vec<String>>,
    /// Ids that cannot be acted on, with why.
    refused: Vec<peers::Outcome>,
}

fn by_node(a: &Admin, headers: &HeaderMap, ids: &[String]) -> ByNode {
    let me = a.config().admin.node_name();
    let forwarded = headers.contains_key(client::VIA_NODE_HEADER);
    let mut out = ByNode::default();
    for reference in ids {
        match peers::split_reference(reference, &me) {
            (None, id) => out.local.push((reference.clone(), id.to_string())),
            // A node forwards only its own peers' ids, and only once: no request goes round.
            (Some(node), _) if forwarded => out.refused.push(peers::Outcome {
                id: reference.clone(),
                ok: false,
                detail: format!(
                    "this node is {me:?}: a request from another node is not forwarded to \
                     {node:?} again"
                ),
            }),
            (Some(node), id) => out
                .remote
                .entry(node.to_string())
                .or_default()
                .push(id.to_string()),
        }
    }
    out
}

/// Forwards `action` of each other node's ids there; every outcome, refused ones included.
async fn forward(
    a: &Admin,
    c: &Caller,
    action: &str,
    split: ByNode,
    force: bool,
) -> Vec<serde_json::Value> {
    let config = a.config();
    let mut results: Vec<peers::Outcome> = split.refused;
    for (node, ids) in &split.remote {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut extra = serde_json::Map::new();
        if force {
            extra.insert("force".into(), true.into());
        }
        let outcomes = peers::act(&config, &c.name, action, node, &ids, extra).await;
        for o in &outcomes {
            tracing::info!(who = %c.name, client = %c.peer, id = %o.id, ok = o.ok, detail = %o.detail, node = %node, "console: {action} on another node");
        }
        results.extend(outcomes);
    }
    results
        .into_iter()
        .map(|o| serde_json::json!({ "id": o.id, "ok": o.ok, "detail": o.detail }))
        .collect()
}

fn check_ids(ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no ids given"));
    }
    if ids.len() > MAX_IDS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_IDS} ids per request"),
        ));
    }
    Ok(())
}

async fn release(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(req): Json<Ids>,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    check_ids(&req.ids)?;
    let mut split = by_node(&a, &headers, &req.ids);
    // One attempt: the administrator sees the upstream's answer at once and may try again.
    let opts = ReleaseOptions {
        force: req.force,
        attempts: 1,
        retry_delay: Duration::from_secs(1),
        who: c.name.clone(),
        // Marked as released, so a stormbreaker milter on the upstream does not hold it again.
        mark: a.engine().mark_key().cloned(),
    };
    let target = a.shared.reinject.load_full();
    let mut results = Vec::with_capacity(req.ids.len());
    for (reference, id) in std::mem::take(&mut split.local) {
        let id = &id;
        let outcome = a.quarantine.release(id, &target, &opts).await;
        let (ok, detail) = match outcome {
            Ok(r) if r.is_complete() => (
                true,
                format!(
                    "released to {} ({})",
                    r.delivered_now.len() + r.delivered_before.len(),
                    r.last_reply.as_deref().unwrap_or("nothing left to send")
                ),
            ),
            Ok(r) => {
                let mut why: Vec<String> = r
                    .failed
                    .iter()
                    .map(|(rcpt, reply)| format!("{rcpt}: {reply}"))
                    .collect();
                why.extend(r.in_doubt.iter().map(|rcpt| format!("{rcpt}: in doubt")));
                (
                    false,
                    format!("not released to every recipient: {}", why.join("; ")),
                )
            }
            Err(ReleaseError::Quarantine(QuarantineError::UnknownId(_))) => {
                (false, "no such held message".to_string())
            }
            Err(e) => (false, e.to_string()),
        };
        let result = if ok { "released" } else { "failed" };
        metrics::counter!(metric::RELEASES, "result" => result).increment(1);
        tracing::info!(who = %c.name, client = %peer, id = %id, ok, detail = %detail, "console: release");
        results.push(serde_json::json!({ "id": reference, "ok": ok, "detail": detail }));
    }
    results.extend(forward(&a, &c, "release", split, req.force).await);
    Ok(Json(serde_json::json!({ "results": results })).into_response())
}

async fn delete(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(req): Json<Ids>,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    check_ids(&req.ids)?;
    let mut split = by_node(&a, &headers, &req.ids);
    let q = a.quarantine.clone();
    let who = c.name.clone();
    let ids = std::mem::take(&mut split.local);
    let outcomes = tokio::task::spawn_blocking(move || {
        ids.iter()
            .map(|(reference, id)| {
                (
                    reference.clone(),
                    q.delete(id, &who).map(|_| ()).map_err(|e| e.to_string()),
                )
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let results: Vec<serde_json::Value> = outcomes
        .into_iter()
        .map(|(id, r)| {
            let ok = r.is_ok();
            if ok {
                metrics::counter!(metric::DELETES).increment(1);
            }
            let detail = r.err().unwrap_or_else(|| "deleted".into());
            tracing::info!(who = %c.name, client = %peer, id = %id, ok, detail = %detail, "console: delete");
            serde_json::json!({ "id": id, "ok": ok, "detail": detail })
        })
        .collect();
    let mut results = results;
    results.extend(forward(&a, &c, "delete", split, false).await);
    Ok(Json(serde_json::json!({ "results": results })).into_response())
}

#[derive(Deserialize)]
struct KeyRequest {
    key: String,
}

/// A trip or reset the engine refused: a malformed key is the caller's (400), a failed state
/// store is not (503).
fn admin_error(e: crate::engine::AdminError) -> ApiError {
    match e {
        crate::engine::AdminError::BadKey(msg) => ApiError::new(StatusCode::BAD_REQUEST, msg),
        crate::engine::AdminError::Store(e) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

async fn trip_key(a: &Admin, c: &Caller, key: &str) -> Result<Response> {
    let storm = a
        .engine()
        .try_trip(key, crate::now_ms())
        .await
        .map_err(admin_error)?;
    let label = crate::fingerprint::normalize_key(key);
    crate::quarantine::audit::record_breaker(a.quarantine.dir(), &c.name, "trip", &storm, &label);
    tracing::warn!(who = %c.name, client = %c.peer, thread = %storm, key = %label, "breaker tripped by hand");
    Ok(Json(serde_json::json!({ "tripped": label, "id": storm })).into_response())
}

async fn reset_key(a: &Admin, c: &Caller, key: &str) -> Result<Response> {
    let label = crate::fingerprint::normalize_key(key);
    let Some(storm) = a
        .engine()
        .try_reset(key, crate::now_ms())
        .await
        .map_err(admin_error)?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no storm has the key {label:?} (`breaker list` shows the open ones); nothing \
                 was reset"
            ),
        ));
    };
    crate::quarantine::audit::record_breaker(a.quarantine.dir(), &c.name, "reset", &storm, &label);
    tracing::warn!(who = %c.name, client = %c.peer, thread = %storm, key = %label, "breaker reset by hand");
    Ok(Json(serde_json::json!({ "reset": label, "id": storm })).into_response())
}

async fn trip(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(req): Json<KeyRequest>,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    trip_key(&a, &c, &req.key).await
}

async fn reset(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Json(req): Json<KeyRequest>,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    reset_key(&a, &c, &req.key).await
}

fn key_param(query: &HashMap<String, String>) -> Result<&str> {
    query
        .get("key")
        .map(String::as_str)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing ?key=KEY"))
}

async fn legacy_trip(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    trip_key(&a, &c, key_param(&query)?).await
}

async fn legacy_reset(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response> {
    let c = actor(&a, &headers, peer)?;
    reset_key(&a, &c, key_param(&query)?).await
}

/// Open breakers as `stormbreaker breaker list` prints them.
async fn breakers(
    State(a): State<Arc<Admin>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> Result<Response> {
    caller(&a, &headers, peer)?;
    let list = a
        .engine()
        .try_open_breakers(crate::now_ms())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let rows: Vec<console::BreakerView> = list.iter().map(console::BreakerView::from).collect();
    Ok(Json(rows).into_response())
}
