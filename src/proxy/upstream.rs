//! The proxy's link to the upstream MTA for one client session: the only code that can send a
//! message's final dot, and the only code that abandons an upstream transaction.
//!
//! Invariant (nothing lost, nothing half-delivered): once DATA went upstream, the way out
//! without delivering is dropping the connection before the final dot; `finish` is the one
//! place the dot is written, and only for a message the caller decided to deliver.

use crate::proxy::pool::UpstreamPool;
use crate::smtp::client::{ClientError, ClientIdentity, Reply, SmtpClient, Target};
use crate::smtp::data;
use crate::smtp::extensions::Extensions;

/// Where the upstream transaction stands with respect to DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// No DATA sent: commands may go upstream.
    Commands,
    /// DATA sent before the verdict (most mail cannot be held); its 354 not read yet.
    DataSent,
    /// The upstream said 354: content goes upstream, dot-stuffed.
    Content,
}

pub struct UpstreamLink {
    conn: Option<SmtpClient>,
    /// The connection came from the pool (the upstream may have closed it while idle).
    from_pool: bool,
    /// The upstream session knows the real client (XCLIENT) or has authenticated it: it may
    /// not serve another client session.
    personal: bool,
    /// XCLIENT was sent on this connection (whatever the answer).
    xclient_tried: bool,
    /// ... and the upstream took it: it knows the real client.
    xclient_passed: bool,
    /// The HELO name and protocol (ESMTP or SMTP) XCLIENT told the upstream.
    xclient_helo: Option<(String, bool)>,
    /// The client's AUTH exchange, replayed on a new connection.
    auth_lines: Vec<Vec<u8>>,
    /// This connection is authenticated as the client.
    authenticated: bool,
    /// A new connection would not take the client's AUTH again (see `replay_auth`).
    auth_lost: bool,
    stage: Stage,
    /// Dot-stuffing state of the content sent so far.
    at_line_start: bool,
    ends_with_crlf: bool,
    wire: Vec<u8>,
}

impl Default for UpstreamLink {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamLink {
    pub fn new() -> Self {
        UpstreamLink {
            conn: None,
            from_pool: false,
            personal: false,
            xclient_tried: false,
            xclient_passed: false,
            xclient_helo: None,
            auth_lines: Vec::new(),
            authenticated: false,
            auth_lost: false,
            stage: Stage::Commands,
            at_line_start: true,
            ends_with_crlf: true,
            wire: Vec::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// What the upstream offers (after XCLIENT, as the real client sees it).
    pub fn extensions(&self) -> Option<&Extensions> {
        self.conn.as_ref().map(|c| &c.extensions)
    }

    /// The upstream already knows the real client (XCLIENT): XFORWARD is not needed.
    pub fn knows_client(&self) -> bool {
        self.xclient_passed
    }

    pub fn is_tls(&self) -> bool {
        self.conn.as_ref().is_some_and(SmtpClient::is_tls)
    }

    /// Makes sure there is a connection, from the pool or new, and with `xclient` set, that
    /// it knows the real client (XCLIENT, then EHLO as the client).
    pub async fn open(
        &mut self,
        target: &Target,
        pool: &UpstreamPool,
        xclient: Option<&ClientIdentity>,
    ) -> Result<(), ClientError> {
        if let Some(identity) = xclient
            && self.xclient_passed
            && self.xclient_helo.as_ref() != Some(&(identity.helo.clone(), identity.esmtp))
            && let Some(stale) = self.conn.take()
        {
            // The client said EHLO again under another name, typically inside TLS, where the
            // name given before STARTTLS is to be forgotten (RFC 3207 4.2). The upstream must
            // record and judge the new one, and Postfix takes XCLIENT only once from the
            // proxy: a new connection, told the new name. No transaction is open (HELO ended
            // it), and an authenticated client is authenticated again on it.
            tracing::debug!("client changed its HELO name; new upstream connection for XCLIENT");
            self.stage = Stage::Commands;
            stale.quit().await;
        }
        if self.conn.is_none() {
            match xclient.zip(known_xclient(target, pool)) {
                Some((identity, attrs)) => {
                    self.connect_xclient(target, pool, &attrs, identity).await?
                }
                None => self.connect(target, pool).await?,
            }
        }
        if let (Some(identity), false) = (xclient, self.xclient_tried)
            && let Some(conn) = self.conn.as_mut()
        {
            // Tried once per connection: an upstream that refuses it is not asked again.
            self.xclient_tried = true;
            match conn.pass_client_xclient(identity).await {
                Ok(passed) => self.record_xclient(identity, passed),
                Err(e) => {
                    self.drop_connection();
                    return Err(e);
                }
            }
        }
        if !self.auth_lines.is_empty() && !self.authenticated {
            self.replay_auth().await?;
        }
        Ok(())
    }

    /// A new connection that said XCLIENT right after the greeting (`known_xclient`).
    async fn connect_xclient(
        &mut self,
        target: &Target,
        pool: &UpstreamPool,
        attrs: &[String],
        identity: &ClientIdentity,
    ) -> Result<(), ClientError> {
        metrics::counter!(crate::admin::metric::UPSTREAM_CONNECTS).increment(1);
        let (conn, passed) = SmtpClient::connect_with_xclient(target, attrs, identity).await?;
        self.adopt(conn, false);
        self.xclient_tried = true;
        self.record_xclient(identity, passed);
        if !passed {
            pool.learn_xclient(&target.address, &[]);
        }
        Ok(())
    }

    async fn connect(&mut self, target: &Target, pool: &UpstreamPool) -> Result<(), ClientError> {
        let (conn, from_pool) = match pool.take() {
            Some(conn) => {
                metrics::counter!(crate::admin::metric::UPSTREAM_REUSED).increment(1);
                (conn, true)
            }
            None => {
                metrics::counter!(crate::admin::metric::UPSTREAM_CONNECTS).increment(1);
                let conn = SmtpClient::connect(target).await?;
                if target.tls.is_none() {
                    pool.learn_xclient(&target.address, &conn.extensions.xclient);
                }
                (conn, false)
            }
        };
        self.adopt(conn, from_pool);
        Ok(())
    }

    /// Takes `conn` as this session's connection, knowing nothing of it yet.
    fn adopt(&mut self, conn: SmtpClient, from_pool: bool) {
        self.conn = Some(conn);
        self.from_pool = from_pool;
        self.xclient_tried = false;
        self.xclient_passed = false;
        self.xclient_helo = None;
        self.authenticated = false;
        self.personal = false;
        self.stage = Stage::Commands;
    }

    /// What XCLIENT came to on this connection: when taken, the connection is the client's.
    fn record_xclient(&mut self, identity: &ClientIdentity, passed: bool) {
        self.xclient_passed = passed;
        self.personal |= passed;
        if passed {
            self.xclient_helo = Some((identity.helo.clone(), identity.esmtp));
        }
    }

    /// MAIL (with XFORWARD for `xforward` when offered). A connection that waited idle (in
    /// the pool, or after an earlier transaction) may have been closed by the upstream
    /// meanwhile: then, as nothing was accepted yet, MAIL goes once more on a fresh one.
    pub async fn mail(
        &mut self,
        target: &Target,
        pool: &UpstreamPool,
        xclient: Option<&ClientIdentity>,
        xforward: Option<&ClientIdentity>,
        line: &[u8],
    ) -> Result<Reply, ClientError> {
        let mut retried = false;
        loop {
            self.open(target, pool, xclient).await?;
            let conn = self.conn.as_mut().ok_or(ClientError::Closed)?;
            let waited = conn.transactions > 0 || self.from_pool;
            let result = conn.mail(xforward, line).await;
            let stale = match &result {
                Ok(r) => r.code == 421,
                Err(e) => !matches!(e, ClientError::Timeout(_)),
            };
            if !(stale && waited) || retried {
                if stale {
                    self.conn = None;
                }
                return result;
            }
            tracing::debug!("idle upstream connection was closed; reconnecting");
            retried = true;
            self.conn = None;
        }
    }

    /// One command in lockstep (RCPT, RSET, AUTH and its responses). A connection that fails
    /// is dropped.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, ClientError> {
        if self.stage != Stage::Commands {
            // A command now would be message content: never.
            self.conn = None;
            self.stage = Stage::Commands;
            return Err(ClientError::Closed);
        }
        let conn = self.conn.as_mut().ok_or(ClientError::Closed)?;
        let result = conn.command(line).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// The client authenticates through this connection: it is never reused.
    pub fn mark_personal(&mut self) {
        self.personal = true;
    }

    /// The client authenticated with these lines (AUTH and its responses): a connection opened
    /// later in the session (after one was dropped to abandon a message) authenticates the same
    /// way, so the client's next transaction is not refused for want of it.
    pub fn authenticated_with(&mut self, lines: Vec<Vec<u8>>) {
        self.auth_lines = lines;
        self.authenticated = true;
        self.personal = true;
    }

    /// Whether the client's authentication could not be carried to a new connection: the
    /// client must reconnect and authenticate again.
    pub fn auth_lost(&self) -> bool {
        self.auth_lost
    }

    /// Authenticates a new connection with the client's own AUTH lines. A mechanism whose
    /// answer depends on a fresh challenge (CRAM-MD5, SCRAM) cannot be replayed: then the
    /// connection is dropped and `auth_lost` set, since on an unauthenticated connection the
    /// upstream would refuse the client's next message for good (554 relay denied), where
    /// the client only needs to authenticate again.
    async fn replay_auth(&mut self) -> Result<(), ClientError> {
        self.personal = true;
        let lines = std::mem::take(&mut self.auth_lines);
        let mut result = Ok(());
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            match self.command(line).await {
                Ok(r) if (last && r.code == 235) || (!last && r.code == 334) => {}
                Ok(r) => {
                    tracing::warn!(reply = %r.summary(), "upstream refused the replayed AUTH");
                    self.drop_connection();
                    self.auth_lost = true;
                    result = Err(ClientError::Refused(format!(
                        "replayed AUTH: {}",
                        r.summary()
                    )));
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.authenticated = result.is_ok();
        self.auth_lines = lines;
        result
    }

    /// Sends DATA without waiting for its 354 (read by `start_content`): for a message that
    /// cannot be held, the 354 then comes back while the client sends content.
    pub async fn send_data_early(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match conn.write(b"DATA\r\n").await {
            Ok(()) => self.stage = Stage::DataSent,
            Err(e) => {
                tracing::warn!(error = %e, "upstream lost at DATA");
                self.conn = None;
            }
        }
    }

    /// DATA (or the 354 of an early DATA): Ok(None) when content may follow, Ok(Some(reply))
    /// when the upstream refused DATA.
    pub async fn start_content(&mut self) -> Result<Option<Reply>, ClientError> {
        let conn = self.conn.as_mut().ok_or(ClientError::Closed)?;
        let result = match self.stage {
            Stage::DataSent => conn.read_reply().await,
            Stage::Commands => conn.command(b"DATA\r\n").await,
            Stage::Content => return Ok(None),
        };
        match result {
            Ok(r) if r.code == 354 => {
                self.stage = Stage::Content;
                self.at_line_start = true;
                self.ends_with_crlf = true;
                Ok(None)
            }
            Ok(r) => {
                self.stage = Stage::Commands;
                Ok(Some(r))
            }
            Err(e) => {
                self.drop_connection();
                Err(e)
            }
        }
    }

    /// Message content (unstuffed), relayed dot-stuffed.
    pub async fn send_content(&mut self, content: &[u8]) -> Result<(), ClientError> {
        if content.is_empty() {
            return Ok(());
        }
        self.stuff(content);
        self.write_wire().await
    }

    /// The last content and the final dot in one write, then the upstream's reply. A reply
    /// that is not final (1xx, 3xx) drops the connection and is returned for the caller to
    /// refuse.
    pub async fn finish(&mut self, last: &[u8]) -> Result<Reply, ClientError> {
        if self.stage != Stage::Content {
            self.drop_connection();
            return Err(ClientError::Closed);
        }
        self.stuff(last);
        self.wire
            .extend_from_slice(data::end_of_data(self.ends_with_crlf));
        self.write_wire().await?;
        self.stage = Stage::Commands;
        let conn = self.conn.as_mut().ok_or(ClientError::Closed)?;
        match conn.read_reply().await {
            Ok(r) if r.code < 200 || (300..400).contains(&r.code) => {
                self.conn = None;
                Ok(r)
            }
            Ok(r) => Ok(r),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn stuff(&mut self, content: &[u8]) {
        if !content.is_empty() {
            self.ends_with_crlf = content.ends_with(b"\r\n");
        }
        data::stuff(content, &mut self.at_line_start, &mut self.wire);
    }

    async fn write_wire(&mut self) -> Result<(), ClientError> {
        let result = match self.conn.as_mut() {
            Some(conn) => conn.write(&self.wire).await,
            None => Err(ClientError::Closed),
        };
        self.wire.clear();
        if result.is_err() {
            self.drop_connection();
        }
        result
    }

    /// Abandons DATA: an upstream that may be reading content is dropped, so it can never see
    /// a final dot. Before DATA this does nothing (`reset` ends the transaction).
    pub fn abandon_data(&mut self) {
        if self.stage != Stage::Commands {
            self.drop_connection();
        }
    }

    /// Ends the upstream's transaction, keeping the session: RSET, or dropping the connection
    /// when inside DATA or when RSET fails.
    pub async fn reset(&mut self) {
        self.abandon_data();
        if let Some(conn) = self.conn.as_mut() {
            match conn.command(b"RSET\r\n").await {
                Ok(r) if r.is_success() => {}
                _ => self.conn = None,
            }
        }
    }

    /// The upstream failed: forget the connection (dropping it abandons any transaction).
    pub fn drop_connection(&mut self) {
        self.conn = None;
        self.stage = Stage::Commands;
        self.wire.clear();
    }

    /// At the end of the client session: the connection goes back to the pool when it
    /// carries no client identity and no transaction, else QUIT.
    pub async fn close(mut self, pool: &UpstreamPool, in_transaction: bool, draining: bool) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let reusable = !self.personal && !in_transaction && !draining;
        let unkept = if reusable { pool.put(conn) } else { Some(conn) };
        if let Some(conn) = unkept {
            conn.quit().await;
        }
    }
}

/// XCLIENT may go first on a new connection when the upstream at this address offered it
/// last time, no idle connection (already past EHLO) is waiting, and no STARTTLS must come
/// first.
fn known_xclient(target: &Target, pool: &UpstreamPool) -> Option<Vec<String>> {
    if target.tls.is_some() || pool.has_idle() {
        return None;
    }
    pool.known_xclient(&target.address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pool::PoolLimits;
    use crate::smtp::client::Timeouts;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// An upstream offering AUTH PLAIN and CRAM-MD5 with a fresh challenge per connection:
    /// a PLAIN line is good on every connection, a CRAM-MD5 answer only for the challenge of
    /// the connection it was made for.
    async fn challenging_upstream() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 up\r\n").await;
                    let mut in_cram = false;
                    let mut authenticated = false;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = if in_cram {
                            in_cram = false;
                            authenticated = line == format!("answer-to-{n}");
                            if authenticated {
                                "235 ok\r\n"
                            } else {
                                "535 no\r\n"
                            }
                        } else if line.starts_with("EHLO") {
                            "250-up\r\n250 AUTH PLAIN CRAM-MD5\r\n"
                        } else if line == "AUTH CRAM-MD5" {
                            in_cram = true;
                            "334 challenge\r\n"
                        } else if line.starts_with("AUTH PLAIN ") {
                            authenticated = true;
                            "235 ok\r\n"
                        } else if line.starts_with("MAIL") && !authenticated {
                            "530 authentication required\r\n"
                        } else {
                            "250 ok\r\n"
                        };
                        let _ = w.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        addr
    }

    fn target(address: String) -> Target {
        Target {
            address,
            hostname: "sb.test".into(),
            timeouts: Timeouts {
                connect: Duration::from_secs(5),
                reply: Duration::from_secs(5),
            },
            tls: None,
        }
    }

    fn pool() -> UpstreamPool {
        UpstreamPool::new(PoolLimits {
            size: 0,
            idle_time: Duration::from_secs(1),
            count_limit: 1,
            time_limit: Duration::from_secs(1),
        })
    }

    /// Authenticates `link` with `lines` as a client would through the proxy.
    async fn authenticate(link: &mut UpstreamLink, lines: &[&[u8]]) {
        for line in lines {
            let r = link.command(line).await.unwrap();
            assert!(r.code == 334 || r.code == 235, "{}", r.summary());
        }
        link.authenticated_with(lines.iter().map(|l| l.to_vec()).collect());
    }

    #[tokio::test]
    async fn a_replayable_login_follows_the_client_to_a_new_connection() {
        let target = target(challenging_upstream().await);
        let pool = pool();
        let mut link = UpstreamLink::new();
        link.open(&target, &pool, None).await.unwrap();
        authenticate(&mut link, &[b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"]).await;
        // A message abandoned mid-DATA drops the connection.
        link.drop_connection();
        let r = link
            .mail(&target, &pool, None, None, b"MAIL FROM:<a@corp.test>\r\n")
            .await
            .unwrap();
        assert_eq!(r.code, 250, "{}", r.summary());
        assert!(!link.auth_lost());
    }

    #[tokio::test]
    async fn a_challenge_answer_that_cannot_be_replayed_is_reported_not_hidden() {
        let target = target(challenging_upstream().await);
        let pool = pool();
        let mut link = UpstreamLink::new();
        link.open(&target, &pool, None).await.unwrap();
        authenticate(&mut link, &[b"AUTH CRAM-MD5\r\n", b"answer-to-0\r\n"]).await;
        link.drop_connection();
        // On the new connection the old answer fails: no MAIL goes out unauthenticated.
        let result = link
            .mail(&target, &pool, None, None, b"MAIL FROM:<a@corp.test>\r\n")
            .await;
        assert!(result.is_err(), "{:?}", result.map(|r| r.summary()));
        assert!(link.auth_lost());
        assert!(!link.is_open());
    }
}
