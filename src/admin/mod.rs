//! Operations: Prometheus metrics and a small HTTP API on `[admin] listen` to see, trip and reset
//! breakers in a running process (the in-process state lives nowhere else).
//!
//! Routes: `GET /metrics`, `GET /health`, `GET /breakers`, `POST /breakers/trip?key=KEY`,
//! `POST /breakers/reset?key=KEY`. Bind it to loopback: it has no authentication.

pub mod client;
pub mod metric;

use crate::engine::Engine;
use crate::service::Shutdown;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Installs the global metrics recorder once; later calls return the same handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                metric::describe();
                handle
            }
            // Another recorder is installed (tests): render an empty, private one.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        })
        .clone()
}

/// Serves the admin API until shutdown.
pub async fn serve(
    listen: SocketAddr,
    engine: Arc<Engine>,
    metrics: PrometheusHandle,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {listen}: {e}"))?;
    tracing::info!(%listen, "admin API listening");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let engine = engine.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let engine = engine.clone();
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &engine, &metrics).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn route(
    req: Request<Incoming>,
    engine: &Engine,
    metrics: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    let now = crate::now_ms();
    let key = query_param(req.uri().query().unwrap_or(""), "key");
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics.render()),
        (&Method::GET, "/breakers") => match engine.try_open_breakers(now).await {
            Ok(list) => {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "key": b.key,
                            "breaker": b.breaker,
                            "phase": format!("{:?}", b.phase).to_lowercase(),
                            "opened_at_ms": b.opened_at_ms,
                            "until_ms": b.until_ms,
                            "replies": b.replies,
                            "senders": b.senders,
                        })
                    })
                    .collect();
                json(StatusCode::OK, serde_json::Value::Array(rows))
            }
            Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        },
        (&Method::POST, "/breakers/trip") => match key {
            None => json_error(StatusCode::BAD_REQUEST, "missing ?key=THREAD_KEY"),
            Some(key) => match engine.try_trip(&key, now).await {
                Ok(()) => {
                    tracing::warn!(thread = %key, "breaker tripped by hand");
                    json(StatusCode::OK, serde_json::json!({ "tripped": key }))
                }
                Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
        },
        (&Method::POST, "/breakers/reset") => match key {
            None => json_error(StatusCode::BAD_REQUEST, "missing ?key=THREAD_KEY"),
            Some(key) => match engine.try_reset(&key).await {
                Ok(existed) => {
                    tracing::warn!(thread = %key, existed, "breaker reset by hand");
                    json(
                        StatusCode::OK,
                        serde_json::json!({ "reset": key, "existed": existed }),
                    )
                }
                Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            },
        },
        _ => json_error(StatusCode::NOT_FOUND, "no such route"),
    }
}

/// The value of `name` in a query string, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = text(status, format!("{value}\n"));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param("key=subj%3Aquarterly+results&x=1", "key").as_deref(),
            Some("subj:quarterly results")
        );
        assert_eq!(query_param("x=1", "key"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
