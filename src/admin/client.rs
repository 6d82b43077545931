//! `stormbreaker breaker …`: talks to a running process's admin API, with the token of
//! `[admin] token_file` when there is one.

use crate::config::Config;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::net::SocketAddr;

/// Where the API is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    /// `Authorization: Bearer` token; None when the process has no token file.
    token: Option<String>,
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
        let token = match &config.admin.token_file {
            Some(path) => {
                let tokens = super::auth::Tokens::load(path)
                    .map_err(|e| anyhow::anyhow!("admin.token_file: {e}"))?;
                let user = crate::quarantine::audit::who();
                Some(tokens.for_cli(Some(&user)).1.to_string())
            }
            None => None,
        };
        Ok(AdminClient { addr, token })
    }

    /// Sends one request; returns the status code and the body. A POST without a token first
    /// asks `/api/session` for the CSRF token the API wants of anonymous callers.
    pub async fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let mut csrf = None;
        if method != "GET" && self.token.is_none() {
            let (status, body) = self.send("GET", "/api/session", None).await?;
            if status != 200 {
                return Ok((status, body));
            }
            let session: serde_json::Value = serde_json::from_str(&body)?;
            csrf = session["csrf"].as_str().map(str::to_string);
        }
        self.send(method, path, csrf.as_deref()).await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        csrf: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let addr = self.addr;
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot reach the admin API on {addr} ([admin] listen): {e}")
        })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(csrf) = csrf {
            req = req.header(super::auth::CSRF_HEADER, csrf);
        }
        let response = sender
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Percent-encodes a thread key for a query string.
pub fn encode(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_encoded_for_a_query() {
        assert_eq!(super::encode("subj:a b&c"), "subj%3Aa%20b%26c");
    }
}
