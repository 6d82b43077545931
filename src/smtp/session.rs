//! One proxied client session: reads client commands, relays them in lockstep to the upstream,
//! and at DATA asks the engine for a verdict once the headers are known.
//!
//! Invariant (nothing lost): the client hears 2xx for a message only after the upstream's 2xx
//! for it, or after the quarantine committed it durably. Every other path abandons the upstream
//! transaction before its final dot.

use crate::config::Config;
use crate::engine::Engine;
use crate::envelope::{Envelope, Recipient};
use crate::notify::Notifier;
use crate::quarantine::Quarantine;
use crate::reply;
use crate::smtp::command::{self, Command, Line};
use crate::smtp::extensions::Extensions;
use crate::smtp::pool::{PoolLimits, UpstreamPool};
use crate::smtp::tls::ClientStream;
use crate::smtp::transfer;
use crate::smtp::upstream::{ClientIdentity, Reply, Timeouts, Upstream, UpstreamError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What every session shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub engine: Arc<Engine>,
    /// Where held messages go (`[quarantine] dir`).
    pub quarantine: Option<Quarantine>,
    /// Alerts to admins and notices to held senders.
    pub notifier: Option<Arc<Notifier>>,
    /// Idle upstream connections for the next client session.
    pub pool: UpstreamPool,
    /// STARTTLS is offered when set (`[proxy] tls_cert` and `tls_key`); SIGHUP swaps it.
    pub tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    pub fn new(
        config: Arc<Config>,
        engine: Arc<Engine>,
        quarantine: Option<Quarantine>,
        notifier: Option<Arc<Notifier>>,
    ) -> Self {
        let pool = UpstreamPool::new(PoolLimits::from_config(&config.upstream));
        Shared {
            config,
            engine,
            quarantine,
            notifier,
            pool,
            tls: arc_swap::ArcSwapOption::empty(),
        }
    }
}

/// Signals from the server: `draining` (no new transactions), then `stop` (421 now).
#[derive(Clone)]
pub struct Signals {
    pub draining: watch::Receiver<bool>,
    pub stop: watch::Receiver<bool>,
}

/// Whether the session goes on after a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// An open mail transaction: MAIL accepted by the upstream.
pub(crate) struct Transaction {
    pub envelope: Envelope,
    pub rcpt_attempts: usize,
    pub started: Instant,
}

pub struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: String,
    pub(crate) peer: SocketAddr,
    pub(crate) client: ClientStream,
    pub(crate) inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    pub(crate) upstream: Option<Upstream>,
    /// What we offer the client (from the upstream's EHLO and our limits).
    pub(crate) offered: Extensions,
    helo: Option<String>,
    esmtp: bool,
    /// The upstream session already knows the real client (XCLIENT accepted).
    identity_passed: bool,
    /// The upstream session came from the pool (it may have been closed while idle).
    upstream_from_pool: bool,
    pub(crate) tx: Option<Transaction>,
    errors: usize,
    signals: Signals,
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        client: TcpStream,
        peer: SocketAddr,
        id: String,
        signals: Signals,
    ) -> Self {
        Session {
            shared,
            id,
            peer,
            client: ClientStream::Plain(client),
            inbuf: Vec::with_capacity(8192),
            outbuf: Vec::with_capacity(1024),
            upstream: None,
            offered: Extensions::default(),
            helo: None,
            esmtp: false,
            identity_passed: false,
            upstream_from_pool: false,
            tx: None,
            errors: 0,
            signals,
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Runs the session to its end; errors are logged, never propagated.
    pub async fn run(mut self) {
        if let ClientStream::Plain(tcp) = &self.client {
            let _ = tcp.set_nodelay(true);
        }
        match self.connect_upstream().await {
            Ok(()) => {
                let greeting = format!(
                    "220 {} ESMTP stormbreaker\r\n",
                    self.config().proxy.hostname
                );
                self.reply(greeting.as_bytes());
            }
            Err(e) => {
                tracing::warn!(session = %self.id, client = %self.peer, error = %e, "upstream unavailable; session refused");
                self.reply(reply::UPSTREAM_UNAVAILABLE.as_bytes());
                let _ = self.flush().await;
                return;
            }
        }
        loop {
            let line = match self.read_command().await {
                Some(line) => line,
                None => break,
            };
            // smtp-proto wraps a SIZE too large for a usize around to a small number: a
            // declared size over our limit is refused here, before parsing (RFC 1870 6.1).
            if command::declared_size(&line).is_some_and(|n| n > self.offered.size_limit as u128) {
                self.reply(reply::SIZE_EXCEEDED_MAIL.as_bytes());
                continue;
            }
            let flow = match command::parse(&line) {
                Ok(cmd) => self.handle(cmd).await,
                Err(e) => {
                    self.reply(syntax_reply(&e).as_bytes());
                    Flow::Continue
                }
            };
            if flow == Flow::Close || self.too_many_errors() {
                break;
            }
        }
        let _ = self.flush().await;
        if let Some(up) = self.upstream.take() {
            // Reusable only if it never learnt this client (XCLIENT) and has no transaction.
            let reusable =
                !self.identity_passed && self.tx.is_none() && !*self.signals.draining.borrow();
            let unkept = if reusable {
                self.shared.pool.put(up)
            } else {
                Some(up)
            };
            if let Some(up) = unkept {
                up.quit().await;
            }
        }
    }

    fn too_many_errors(&mut self) -> bool {
        if self.errors < self.config().proxy.max_errors {
            return false;
        }
        tracing::info!(session = %self.id, client = %self.peer, errors = self.errors, "too many errors; closing");
        self.outbuf
            .extend_from_slice(reply::TOO_MANY_ERRORS.as_bytes());
        true
    }

    async fn handle(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Ehlo { host } => self.hello(host, true).await,
            Command::Helo { host } => self.hello(host, false).await,
            Command::Mail { from } => self.mail(from).await,
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => transfer::data(self).await,
            Command::Rset => {
                self.reset_transaction().await;
                self.reply(reply::RESET.as_bytes());
                Flow::Continue
            }
            Command::Noop { .. } => {
                self.reply(reply::OK.as_bytes());
                Flow::Continue
            }
            Command::Quit => {
                self.reset_transaction().await;
                self.reply(reply::BYE.as_bytes());
                Flow::Close
            }
            Command::Vrfy { .. } => {
                self.reply(reply::VRFY_DISABLED.as_bytes());
                Flow::Continue
            }
            Command::Expn { .. } => self.refuse(reply::EXPN_DISABLED),
            Command::Help { .. } => {
                self.reply(b"214 2.0.0 See RFC 5321\r\n");
                Flow::Continue
            }
            Command::Bdat { .. } => self.refuse(reply::BDAT_UNSUPPORTED),
            Command::StartTls => self.start_tls().await,
            Command::Auth { .. } => self.refuse(reply::AUTH_UNSUPPORTED),
            _ => self.refuse(reply::NOT_IMPLEMENTED),
        }
    }

    fn refuse(&mut self, text: &str) -> Flow {
        self.reply(text.as_bytes());
        Flow::Continue
    }

    async fn hello(&mut self, host: String, esmtp: bool) -> Flow {
        // Never echo control bytes (NUL, ESC, CR) back, nor pass them on in XCLIENT.
        if host.is_empty() || host.chars().any(|c| c.is_control()) {
            return self.refuse(reply::BAD_HELO);
        }
        let host = sanitize(&host);
        self.reset_transaction().await;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        if let Err(e) = self.ensure_upstream().await {
            tracing::warn!(session = %self.id, error = %e, "upstream unavailable at HELO");
            self.reply(reply::UPSTREAM_UNAVAILABLE.as_bytes());
            return Flow::Close;
        }
        self.offered.starttls = self.shared.tls.load().is_some() && !self.client.is_tls();
        let text = if esmtp {
            self.offered
                .ehlo_reply(&self.config().proxy.hostname, &host)
        } else {
            format!("250 {} Hello {host}\r\n", self.config().proxy.hostname)
        };
        self.reply(text.as_bytes());
        Flow::Continue
    }

    /// STARTTLS (RFC 3207): 220, the handshake, then a fresh start that needs EHLO again.
    async fn start_tls(&mut self) -> Flow {
        let Some(acceptor) = self.shared.tls.load_full() else {
            return self.refuse(reply::STARTTLS_UNSUPPORTED);
        };
        if self.client.is_tls() {
            return self.refuse(reply::TLS_ALREADY_ACTIVE);
        }
        if self.tx.is_some() {
            return self.refuse(reply::TLS_IN_TRANSACTION);
        }
        if !self.inbuf.is_empty() {
            // Plain-text commands pipelined after STARTTLS would be taken as sent inside TLS
            // (CVE-2011-0411): they are dropped, as Postfix does.
            tracing::warn!(session = %self.id, client = %self.peer, bytes = self.inbuf.len(), "commands pipelined after STARTTLS; discarded");
            self.inbuf.clear();
        }
        self.reply(reply::TLS_READY.as_bytes());
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        let limit = self.config().proxy.command_timeout;
        match tokio::time::timeout(limit, self.client.start_tls(&acceptor)).await {
            Ok(Ok(())) => {
                tracing::debug!(session = %self.id, version = self.client.tls_version(), "TLS started");
                // RFC 3207 4.2: forget what the client said before, its HELO first.
                self.helo = None;
                self.esmtp = false;
                Flow::Continue
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no handshake within {limit:?}"),
                };
                tracing::info!(session = %self.id, client = %self.peer, %error, "TLS handshake failed; closing");
                Flow::Close
            }
        }
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Flow {
        if self.helo.is_none() {
            return self.refuse(reply::NEED_HELO);
        }
        if self.tx.is_some() {
            return self.refuse(reply::NESTED_MAIL);
        }
        if *self.signals.draining.borrow() {
            return self.refuse(reply::SERVICE_UNAVAILABLE);
        }
        let (line, params) = match command::mail_line(&from, &self.offered, self.offered.size_limit)
        {
            Ok(v) => v,
            Err(e) => return self.refuse(&e.reply()),
        };
        if let Err(e) = self.ensure_upstream().await {
            tracing::warn!(session = %self.id, error = %e, "upstream unavailable at MAIL");
            return self.refuse("451 4.4.1 Upstream mail server unavailable, try again later\r\n");
        }
        match self.start_upstream_transaction(line.as_bytes()).await {
            Ok(r) => {
                if r.is_success() {
                    self.tx = Some(Transaction {
                        envelope: Envelope {
                            client_addr: Some(self.peer),
                            helo: self.helo.clone().unwrap_or_default(),
                            mail_from: from.address,
                            mail_params: params,
                            rcpts: Vec::new(),
                        },
                        rcpt_attempts: 0,
                        started: Instant::now(),
                    });
                }
                self.reply(&r.raw);
                Flow::Continue
            }
            Err(e) => self.upstream_lost(e),
        }
    }

    /// Sends MAIL (with XFORWARD when due). A connection that has waited idle (in the pool,
    /// or after an earlier transaction) may have been closed by the upstream meanwhile: then,
    /// as nothing was accepted yet, MAIL is tried once more on a fresh connection.
    async fn start_upstream_transaction(&mut self, line: &[u8]) -> Result<Reply, UpstreamError> {
        let mut retried = false;
        loop {
            let identity = (!self.identity_passed && self.config().upstream.pass_client.xforward())
                .then(|| self.identity());
            let Some(up) = self.upstream.as_mut() else {
                return Err(UpstreamError::Closed);
            };
            let waited = up.transactions > 0 || self.upstream_from_pool;
            let result = up.mail(identity.as_ref(), line).await;
            let stale = match &result {
                Ok(r) => r.code == 421,
                Err(e) => !matches!(e, UpstreamError::Timeout(_)),
            };
            if !(stale && waited) || retried {
                return result;
            }
            tracing::debug!(session = %self.id, "idle upstream connection was closed; reconnecting");
            retried = true;
            self.upstream = None;
            self.ensure_upstream().await?;
        }
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Flow {
        let max = self.config().proxy.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return self.refuse(reply::NEED_MAIL);
        };
        tx.rcpt_attempts += 1;
        if tx.envelope.rcpts.len() >= max {
            // RFC 5321 4.5.3.1.10: the client sends the rest in another transaction. Like
            // Postfix's smtpd_recipient_overshoot_limit, these 452s count as errors only past
            // the overshoot, so a big reply-all keeps the recipients already accepted.
            let overshoot = tx.rcpt_attempts - 1 - tx.envelope.rcpts.len();
            if overshoot < self.config().proxy.recipient_overshoot_limit {
                self.outbuf
                    .extend_from_slice(reply::TOO_MANY_RCPTS.as_bytes());
                return Flow::Continue;
            }
            return self.refuse(reply::TOO_MANY_RCPTS);
        }
        let (line, params) = match command::rcpt_line(&to, &self.offered) {
            Ok(v) => v,
            Err(e) => return self.refuse(&e.reply()),
        };
        let Some(up) = self.upstream.as_mut() else {
            return self.refuse(reply::UPSTREAM_FAILED);
        };
        match up.command(line.as_bytes()).await {
            Ok(r) => {
                if r.is_success()
                    && let Some(tx) = self.tx.as_mut()
                {
                    tx.envelope.rcpts.push(Recipient {
                        address: to.address,
                        params,
                    });
                }
                self.reply(&r.raw);
                Flow::Continue
            }
            Err(e) => self.upstream_lost(e),
        }
    }

    /// Ends any open transaction, upstream too (RSET), keeping the session.
    pub(crate) async fn reset_transaction(&mut self) {
        if self.tx.take().is_some() {
            self.reset_upstream().await;
        }
    }

    /// Abandons the upstream's open transaction with RSET (dropping the session if that fails).
    pub(crate) async fn reset_upstream(&mut self) {
        if let Some(up) = self.upstream.as_mut() {
            match up.command(b"RSET\r\n").await {
                Ok(r) if r.is_success() => {}
                _ => self.upstream = None,
            }
        }
    }

    /// The upstream failed mid-transaction: drop it (it abandons the transaction), 451 4.4.2.
    pub(crate) fn upstream_lost(&mut self, e: UpstreamError) -> Flow {
        metrics::counter!(crate::admin::metric::UPSTREAM_FAILURES).increment(1);
        tracing::warn!(session = %self.id, client = %self.peer, error = %e, "upstream lost; transaction abandoned");
        self.upstream = None;
        self.tx = None;
        self.refuse(reply::UPSTREAM_FAILED)
    }

    fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            addr: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
        }
    }

    async fn connect_upstream(&mut self) -> Result<(), UpstreamError> {
        let cfg = &self.shared.config;
        let timeouts = Timeouts {
            connect: cfg.upstream.connect_timeout,
            reply: cfg.upstream.reply_timeout,
        };
        let (up, from_pool) = match self.shared.pool.take() {
            Some(up) => {
                metrics::counter!(crate::admin::metric::UPSTREAM_REUSED).increment(1);
                (up, true)
            }
            None => {
                metrics::counter!(crate::admin::metric::UPSTREAM_CONNECTS).increment(1);
                let up =
                    Upstream::connect(&cfg.upstream.address, &cfg.proxy.hostname, timeouts).await?;
                (up, false)
            }
        };
        self.upstream_from_pool = from_pool;
        self.offered = Extensions::offered_to_clients(&up.extensions, cfg.proxy.max_message_size);
        self.upstream = Some(up);
        self.identity_passed = false;
        Ok(())
    }

    /// Makes sure there is an upstream session that knows the real client (after an abort the
    /// old one was dropped).
    async fn ensure_upstream(&mut self) -> Result<(), UpstreamError> {
        if self.upstream.is_none() {
            self.connect_upstream().await?;
        }
        if self.helo.is_some()
            && !self.identity_passed
            && self.shared.config.upstream.pass_client.xclient()
        {
            let identity = self.identity();
            if let Some(up) = self.upstream.as_mut() {
                self.identity_passed = up.pass_client_xclient(&identity).await?;
                if self.identity_passed {
                    let max = self.shared.config.proxy.max_message_size;
                    self.offered = Extensions::offered_to_clients(&up.extensions, max);
                }
            }
        }
        Ok(())
    }

    /// Queues a reply for the client; counts errors.
    pub(crate) fn reply(&mut self, text: &[u8]) {
        if matches!(text.first(), Some(b'4' | b'5')) {
            self.errors += 1;
        }
        self.outbuf.extend_from_slice(text);
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        if self.outbuf.is_empty() {
            return Ok(());
        }
        let mut result = self.client.write_all(&self.outbuf).await;
        if result.is_ok() && self.client.is_tls() {
            // TLS records may wait in the TLS layer until flushed.
            result = self.client.flush().await;
        }
        self.outbuf.clear();
        result
    }

    /// The next command line, or None when the session should end (replies already queued).
    async fn read_command(&mut self) -> Option<Vec<u8>> {
        let max = self.config().proxy.max_command_length;
        let deadline = Instant::now() + self.config().proxy.command_timeout;
        let mut discarding = false;
        loop {
            match command::next_line(&self.inbuf, max) {
                Line::Complete(n) => {
                    let line: Vec<u8> = self.inbuf.drain(..n).collect();
                    if discarding {
                        discarding = false;
                        self.reply(reply::LINE_TOO_LONG.as_bytes());
                        if self.too_many_errors() {
                            return None;
                        }
                        continue;
                    }
                    return Some(line);
                }
                Line::TooLong => {
                    // Drop the overlong part; the reply goes out once its line end arrives.
                    match memchr::memchr(b'\n', &self.inbuf) {
                        Some(pos) => {
                            // The overlong line ends here: what follows is the next command.
                            discarding = false;
                            self.inbuf.drain(..=pos);
                            self.reply(reply::LINE_TOO_LONG.as_bytes());
                            if self.too_many_errors() {
                                return None;
                            }
                            continue;
                        }
                        None => {
                            self.inbuf.clear();
                            discarding = true;
                        }
                    }
                }
                Line::Incomplete => {}
            }
            if self.tx.is_none() && *self.signals.draining.borrow() {
                self.reply(reply::SERVICE_UNAVAILABLE.as_bytes());
                return None;
            }
            self.flush().await.ok()?;
            match self.read_more(deadline).await {
                Read::Data => {}
                Read::Closed => return None,
                Read::TimedOut => {
                    self.reply(reply::TIMEOUT.as_bytes());
                    return None;
                }
                Read::Stopped => {
                    self.reply(reply::SERVICE_UNAVAILABLE.as_bytes());
                    return None;
                }
            }
        }
    }

    /// Reads more client bytes into `inbuf`, until `deadline` at the latest, or shutdown.
    pub(crate) async fn read_more(&mut self, deadline: Instant) -> Read {
        if self.inbuf.capacity() - self.inbuf.len() < 4096 {
            self.inbuf.reserve(16 * 1024);
        }
        let mut draining = self.signals.draining.clone();
        let mut stop = self.signals.stop.clone();
        let idle = self.tx.is_none();
        loop {
            tokio::select! {
                r = tokio::time::timeout_at(deadline.into(), self.client.read_buf(&mut self.inbuf)) => {
                    return match r {
                        Ok(Ok(0)) | Ok(Err(_)) => Read::Closed,
                        Ok(Ok(_)) => Read::Data,
                        Err(_) => Read::TimedOut,
                    };
                }
                changed = draining.changed(), if idle && !*draining.borrow() => {
                    if changed.is_err() || *draining.borrow() {
                        return Read::Stopped;
                    }
                }
                changed = stop.changed(), if !*stop.borrow() => {
                    if changed.is_err() || *stop.borrow() {
                        return Read::Stopped;
                    }
                }
            }
        }
    }
}

/// Outcome of waiting for client bytes.
pub(crate) enum Read {
    Data,
    Closed,
    TimedOut,
    Stopped,
}

fn syntax_reply(e: &smtp_proto::Error) -> String {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => reply::SYNTAX_ERROR.to_string(),
        E::InvalidSenderAddress => "501 5.1.7 Bad sender address syntax\r\n".into(),
        E::InvalidRecipientAddress => "501 5.1.3 Bad recipient address syntax\r\n".into(),
        E::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}\r\n"),
        E::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}\r\n"),
        E::UnsupportedParameter { param } => {
            format!("555 5.5.4 Unsupported parameter {}\r\n", sanitize(param))
        }
        E::ResponseTooLong => reply::LINE_TOO_LONG.to_string(),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => reply::SYNTAX_ERROR.to_string(),
    }
}

/// Client text echoed in a reply: printable ASCII only, bounded.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}
