//! A client of a stormbreaker admin API: `stormbreaker breaker …` talks to the running
//! process's, with the token of `[admin] token_file` when there is one; `quarantine list
//! --all-nodes`, remote releases and the console's view of other nodes talk to each of
//! `[admin] peers` (`peers`).

use crate::config::{Config, PeerConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::time::Duration;

/// Headers a node adds when it acts for someone on another node's API, so the owning node's
/// audit log says who did it and through which node.
pub const ON_BEHALF_HEADER: &str = "x-stormbreaker-on-behalf-of";
pub const VIA_NODE_HEADER: &str = "x-stormbreaker-via-node";

/// A node that does not accept the connection within this is reported unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole exchange: a release waits for the upstream MTA's reply to the message.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the API is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `host:port`.
    pub authority: String,
    /// What the address is, for errors: "[admin] listen", or the peer's name and URL.
    what: String,
    /// `Authorization: Bearer` token; None when the process has no token file.
    token: Option<String>,
    /// Extra headers on every request (`ON_BEHALF_HEADER`, `VIA_NODE_HEADER`).
    headers: Vec<(&'static str, String)>,
}

impl AdminClient {
    /// From the policy file: `[admin] listen`, and the token of the entry named like the user
    /// running the command (`$SUDO_USER`, `$USER`), else the file's first entry.
    pub fn from_config(config: &Config) -> anyhow::Result<AdminClient> {
        let Some(addr) = config.admin.listen else {
            anyhow::bail!(
                "[admin] listen is not set in the policy file: the breaker commands talk to it"
            );
        };
        let user = crate::quarantine::audit::who();
        Ok(AdminClient {
            authority: addr.to_string(),
            what: "[admin] listen".into(),
            token: token_of(config.admin.token_file.as_deref(), &user)?,
            headers: Vec::new(),
        })
    }

    /// The admin API of `peer`, acting for `who` (the token of the entry named `who` in the
    /// peer's token file, else its first) from this node, `node`.
    pub fn peer(
        config: &Config,
        peer: &PeerConfig,
        who: &str,
        node: &str,
    ) -> anyhow::Result<AdminClient> {
        let authority = peer_authority(&peer.url)
            .map_err(|e| anyhow::anyhow!("[admin] peers: {}: {e}", peer.name))?;
        let token = token_of(config.admin.peer_token_file(peer).map(|p| p.as_path()), who)
            .map_err(|e| anyhow::anyhow!("[admin] peers: {}: {e}", peer.name))?;
        Ok(AdminClient {
            authority,
            what: format!("node {} ({})", peer.name, peer.url),
            token,
            headers: vec![
                (ON_BEHALF_HEADER, who.into()),
                (VIA_NODE_HEADER, node.into()),
            ],
        })
    }

    /// Sends one request; returns the status code and the body. A POST without a token first
    /// asks `/api/session` for the CSRF token the API wants of anonymous callers.
    pub async fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        self.request_with(method, path, None).await
    }

    /// `request` with a JSON body.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let exchange = async {
            let mut csrf = None;
            if method != "GET" && self.token.is_none() {
                let (status, body) = self.send("GET", "/api/session", None, None).await?;
                if status != 200 {
                    return Ok((status, body));
                }
                let session: serde_json::Value = serde_json::from_str(&body)?;
                csrf = session["csrf"].as_str().map(str::to_string);
            }
            self.send(method, path, csrf.as_deref(), json).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: no answer within {}s",
                    self.what,
                    REQUEST_TIMEOUT.as_secs()
                )
            })?
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        csrf: Option<&str>,
        json: Option<&serde_json::Value>,
    ) -> anyhow::Result<(u16, String)> {
        let authority = &self.authority;
        let what = &self.what;
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(authority.as_str()),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot reach the admin API on {authority} ({what}): no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| anyhow::anyhow!("cannot reach the admin API on {authority} ({what}): {e}"))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority.as_str());
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(csrf) = csrf {
            req = req.header(super::auth::CSRF_HEADER, csrf);
        }
        for (name, value) in &self.headers {
            req = req.header(*name, value.as_str());
        }
        let body = match json {
            Some(value) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value)?)
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(req.body(Full::new(body))?)
            .await
            .map_err(|e| anyhow::anyhow!("admin API on {authority} ({what}): {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The token to present: the entry named `user` of `file`, else its first; None without a file.
fn token_of(file: Option<&std::path::Path>, user: &str) -> anyhow::Result<Option<String>> {
    let Some(path) = file else {
        return Ok(None);
    };
    let tokens =
        super::auth::Tokens::load(path).map_err(|e| anyhow::anyhow!("admin.token_file: {e}"))?;
    Ok(Some(tokens.for_cli(Some(user)).1.to_string()))
}

/// `host:port` of a peer's `http://HOST:PORT` (a trailing `/` allowed). The admin API speaks
/// plain HTTP: a peer on another host is reached over a network you trust, or a tunnel.
pub fn peer_authority(url: &str) -> Result<String, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!(
            "{url:?} is not http://HOST:PORT (the admin API speaks plain HTTP)"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port != 0);
    if port.is_none() || authority.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!(
            "{url:?} is not http://HOST:PORT, e.g. \"http://10.0.0.2:9925\""
        ));
    }
    Ok(authority.to_string())
}

/// Percent-encodes a thread key for a query string.
pub fn encode(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_a_query() {
        assert_eq!(encode("subj:a b&c"), "subj%3Aa%20b%26c");
    }

    #[test]
    fn peer_urls_are_http_host_and_port() {
        assert_eq!(
            peer_authority("http://10.0.0.2:9925").unwrap(),
            "10.0.0.2:9925"
        );
        assert_eq!(
            peer_authority("http://mx2.corp.test:9925/").unwrap(),
            "mx2.corp.test:9925"
        );
        assert_eq!(peer_authority("http://[::1]:9925").unwrap(), "[::1]:9925");
        for bad in [
            "https://mx2:9925",
            "mx2:9925",
            "http://mx2",
            "http://mx2:0",
            "http://:9925",
            "http://mx2:9925/api",
            "http://u@mx2:9925",
        ] {
            assert!(peer_authority(bad).is_err(), "{bad}");
        }
    }
}
