//! One quarantine view over several nodes (`[admin] peers`).
//!
//! Each node keeps its held mail on its own disk, and only that node can release it (the
//! message and its release journal are there). So the view asks each peer's admin API rather
//! than keeping an index in the shared Redis: the answer is always what the owning disk holds
//! (an index could disagree with it after a crash between the hold and the index write), and a
//! node that is down shows as down instead of as stale rows no one can release.
//!
//! Held mail is named `NODE:ID` across nodes (ids are unique per node only). A release or
//! delete of another node's message is forwarded to that node's API with the caller's name
//! and this node's name (`client::ON_BEHALF_HEADER`, `client::VIA_NODE_HEADER`), so the
//! owning node's audit log says who did it and through which node.

use super::client::AdminClient;
use super::console::HeldRow;
use crate::config::{Config, PeerConfig};

/// What one node answered.
#[derive(Debug)]
pub struct NodeRows {
    pub node: String,
    pub url: String,
    /// Its rows, or why there are none (unreachable, refused, not JSON).
    pub rows: Result<Vec<HeldRow>, String>,
}

/// An id as an administrator gives it: `NODE:ID`, or a bare id (this node's).
pub fn split_reference<'a>(reference: &'a str, me: &str) -> (Option<&'a str>, &'a str) {
    match reference.split_once(':') {
        Some((node, id)) if node != me => (Some(node), id),
        Some((_, id)) => (None, id),
        None => (None, reference),
    }
}

/// `GET /api/held?QUERY` on every peer at once, as `who` from this node; each row's `node` is
/// the peer's name in `[admin] peers` (the name its ids are forwarded by).
pub async fn held_rows(config: &Config, who: &str, query: &str) -> Vec<NodeRows> {
    let me = config.admin.node_name();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, peer) in config.admin.peers.iter().enumerate() {
        let client = AdminClient::peer(config, peer, who, &me);
        let path = format!("/api/held?{query}");
        let name = peer.name.clone();
        tasks.spawn(async move {
            let rows = match client {
                Ok(client) => fetch_rows(&client, &path, &name).await,
                Err(e) => Err(e.to_string()),
            };
            (i, rows)
        });
    }
    let mut answers: Vec<(usize, Result<Vec<HeldRow>, String>)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(answer) => answers.push(answer),
            Err(e) => tracing::error!(error = %e, "a peer request task failed"),
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    answers
        .into_iter()
        .map(|(i, rows)| {
            let peer = &config.admin.peers[i];
            NodeRows {
                node: peer.name.clone(),
                url: peer.url.clone(),
                rows,
            }
        })
        .collect()
}

async fn fetch_rows(client: &AdminClient, path: &str, node: &str) -> Result<Vec<HeldRow>, String> {
    let (status, body) = client
        .request("GET", path)
        .await
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("answered {status}: {}", error_text(&body)));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        messages: Vec<HeldRow>,
    }
    let answer: Answer = serde_json::from_str(&body)
        .map_err(|e| format!("not the held list of a stormbreaker admin API: {e}"))?;
    Ok(answer
        .messages
        .into_iter()
        .map(|mut row| {
            row.node = node.to_string();
            row
        })
        .collect())
}

/// The peer named `node`, or a sentence saying there is none.
pub fn find<'a>(config: &'a Config, node: &str) -> Result<&'a PeerConfig, String> {
    config
        .admin
        .peers
        .iter()
        .find(|p| p.name == node)
        .ok_or_else(|| {
            format!(
                "no node named {node:?}: this node is {:?}, [admin] peers names {}",
                config.admin.node_name(),
                if config.admin.peers.is_empty() {
                    "none".to_string()
                } else {
                    config
                        .admin
                        .peers
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )
        })
}

/// One result of a forwarded release or delete: the id as the caller named it (`NODE:ID`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub id: String,
    pub ok: bool,
    pub detail: String,
}

/// `POST /api/ACTION {"ids": [...], ...extra}` on `node` as `who`; one outcome per id, each
/// failed with the reason when the node cannot be asked.
pub async fn act(
    config: &Config,
    who: &str,
    action: &str,
    node: &str,
    ids: &[&str],
    extra: serde_json::Map<String, serde_json::Value>,
) -> Vec<Outcome> {
    let all_failed = |detail: String| {
        ids.iter()
            .map(|id| Outcome {
                id: format!("{node}:{id}"),
                ok: false,
                detail: detail.clone(),
            })
            .collect()
    };
    let peer = match find(config, node) {
        Ok(p) => p,
        Err(e) => return all_failed(e),
    };
    let client = match AdminClient::peer(config, peer, who, &config.admin.node_name()) {
        Ok(c) => c,
        Err(e) => return all_failed(e.to_string()),
    };
    let mut body = extra;
    body.insert("ids".into(), serde_json::json!(ids));
    let answer = client
        .request_with(
            "POST",
            &format!("/api/{action}"),
            Some(&serde_json::Value::Object(body)),
        )
        .await;
    let (status, text) = match answer {
        Ok(a) => a,
        Err(e) => return all_failed(format!("node {node}: {e}")),
    };
    if status != 200 {
        return all_failed(format!(
            "node {node} answered {status}: {}",
            error_text(&text)
        ));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        results: Vec<Outcome>,
    }
    match serde_json::from_str::<Answer>(&text) {
        Ok(a) => a
            .results
            .into_iter()
            .map(|mut r| {
                r.id = format!("{node}:{}", r.id);
                r
            })
            .collect(),
        Err(e) => all_failed(format!("node {node}: not an answer of its admin API: {e}")),
    }
}

/// The `error` of an admin API's JSON answer, or the answer itself.
fn error_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_node_or_this_one() {
        assert_eq!(
            split_reference("mx2:2026-ab", "mx1"),
            (Some("mx2"), "2026-ab")
        );
        assert_eq!(split_reference("mx1:2026-ab", "mx1"), (None, "2026-ab"));
        assert_eq!(split_reference("2026-ab", "mx1"), (None, "2026-ab"));
    }
}
