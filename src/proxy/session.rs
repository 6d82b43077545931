//! One proxied client session: a single loop over a [`State`] (commands, a message's DATA, an
//! AUTH exchange). The loop alone reads the client and enforces the deadlines; handlers queue
//! replies and talk to the upstream through the [`UpstreamLink`], which alone can send a final
//! dot. Generic over the client's byte stream, so unit tests drive it in memory.
//!
//! Invariant (nothing lost): the client hears 2xx for a message only after the upstream's 2xx
//! for it, or after the quarantine committed it durably. Every other path abandons the upstream
//! transaction before its final dot.

use crate::config::{Config, ProxyTls};
use crate::engine::Engine;
use crate::envelope::{Envelope, Recipient};
use crate::proxy::data::{Context, DataPhase, Fed};
use crate::proxy::tls::ClientStream;
use crate::proxy::upstream::UpstreamLink;
use crate::reply;
use crate::smtp::client::{ClientError, ClientIdentity, Target};
use crate::smtp::command::{self, Command, Line};
use crate::smtp::extensions::Extensions;
use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// RFC 4954 4: a line of an AUTH exchange may be this long (base64 of a large ticket).
const MAX_AUTH_LINE: usize = 12288;

pub use crate::frontend::{Shared, reinject_target, upstream_target};

/// Signals from the server: `draining` (no new transactions), then `stop` (421 now).
#[derive(Clone)]
pub struct Signals {
    pub draining: watch::Receiver<bool>,
    pub stop: watch::Receiver<bool>,
}

/// An open mail transaction: MAIL accepted by the upstream.
pub struct Transaction {
    pub envelope: Envelope,
    pub rcpt_attempts: usize,
    pub started: Instant,
}

/// What the session is reading.
enum State {
    /// Command lines.
    Command,
    /// A message's content, after DATA's 354.
    Data(Box<DataPhase>),
    /// The client's next AUTH response line (after a 334).
    Auth(AuthExchange),
}

/// An AUTH exchange relayed to the upstream: the mechanism and every line the client sent.
struct AuthExchange {
    mechanism: String,
    lines: Vec<Vec<u8>>,
}

/// What the loop does next.
enum Step {
    /// Something was handled; look at the buffer again.
    Next,
    /// The buffer holds no complete unit: read more from the client.
    NeedInput,
    /// STARTTLS was accepted: hand the stream to the handshake.
    StartTls,
    Close,
}

/// Outcome of waiting for client bytes.
enum Read {
    Data,
    Closed,
    TimedOut,
    Stopped,
}

/// A complete line from the buffer, or why there is none.
enum Taken {
    Line(Vec<u8>),
    /// An overlong line ended; its reply is queued.
    Dropped,
    Need,
}

pub struct Session<S> {
    shared: Arc<Shared>,
    /// The configuration, engine and upstream this session started with.
    config: Arc<Config>,
    engine: Arc<Engine>,
    target: Arc<Target>,
    id: String,
    peer: SocketAddr,
    client: ClientStream<S>,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    upstream: UpstreamLink,
    /// What we offer the client (from the upstream's EHLO and our limits).
    offered: Extensions,
    helo: Option<String>,
    esmtp: bool,
    /// The name the client authenticated as.
    auth: Option<String>,
    tx: Option<Transaction>,
    state: State,
    /// The rest of an overlong command line is being skipped.
    discarding: bool,
    /// When the command being read must be complete.
    deadline: Instant,
    errors: usize,
    signals: Signals,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(
        shared: Arc<Shared>,
        client: S,
        peer: SocketAddr,
        id: String,
        signals: Signals,
    ) -> Self {
        let config = shared.config.load_full();
        let engine = shared.engine.load_full();
        let target = shared.target.load_full();
        let deadline = Instant::now() + config.proxy.command_timeout;
        Session {
            shared,
            config,
            engine,
            target,
            id,
            peer,
            client: ClientStream::Plain(client),
            inbuf: Vec::with_capacity(8192),
            outbuf: Vec::with_capacity(1024),
            upstream: UpstreamLink::new(),
            offered: Extensions::default(),
            helo: None,
            esmtp: false,
            auth: None,
            tx: None,
            state: State::Command,
            discarding: false,
            deadline,
            errors: 0,
            signals,
        }
    }

    fn config(&self) -> &Config {
        &self.config
    }

    /// Runs the session to its end; errors are logged, never propagated.
    pub async fn run(mut self) {
        if self.config().proxy.tls == ProxyTls::Implicit && !self.handshake().await {
            return;
        }
        let greeting = format!(
            "220 {} ESMTP stormbreaker\r\n",
            self.config().proxy.hostname
        );
        self.reply(greeting.as_bytes());
        loop {
            let step = match self.state {
                State::Command => self.command_step().await,
                State::Data(_) => self.data_step().await,
                State::Auth(_) => self.auth_step().await,
            };
            match step {
                Step::Next => {}
                Step::NeedInput => {
                    if !self.wait_for_input().await {
                        break;
                    }
                }
                Step::StartTls => {
                    if !self.start_tls().await {
                        break;
                    }
                }
                Step::Close => break,
            }
        }
        let _ = self.flush().await;
        let draining = *self.signals.draining.borrow();
        let upstream = std::mem::take(&mut self.upstream);
        upstream
            .close(&self.shared.pool, self.tx.is_some(), draining)
            .await;
    }

    /// Reads more client bytes for the current state, within its deadline. False when the
    /// session must end (the reply, if any, is queued).
    async fn wait_for_input(&mut self) -> bool {
        if self.flush().await.is_err() {
            self.abandon_message("client connection failed");
            return false;
        }
        let deadline = match &self.state {
            State::Data(phase) => {
                // A deadline that grows with what arrived: a client must keep up min_data_rate.
                let proxy = &self.config().proxy;
                let earned = std::time::Duration::from_secs_f64(
                    phase.wire_bytes() as f64 / proxy.min_data_rate as f64,
                );
                phase.started + proxy.data_timeout + earned
            }
            State::Command | State::Auth(_) => self.deadline,
        };
        match self.read_more(deadline).await {
            Read::Data => true,
            Read::Closed => {
                self.abandon_message("client closed the connection mid-DATA");
                false
            }
            Read::TimedOut => {
                self.abandon_message("client too slow mid-DATA");
                self.reply(reply::TIMEOUT.as_bytes());
                false
            }
            Read::Stopped => {
                self.abandon_message("service stopping mid-DATA");
                self.reply(reply::SERVICE_UNAVAILABLE.as_bytes());
                false
            }
        }
    }

    /// Ends a message being received without delivering anything of it.
    fn abandon_message(&mut self, why: &str) {
        if matches!(self.state, State::Data(_)) && self.tx.is_some() {
            // Dropping the upstream connection is the abort that cannot deliver.
            self.upstream.drop_connection();
            tracing::info!(session = %self.id, client = %self.peer, "{why}; upstream transaction abandoned");
        }
        self.tx = None;
        self.state = State::Command;
    }

    async fn command_step(&mut self) -> Step {
        if self.too_many_errors() {
            return Step::Close;
        }
        let max = self.config().proxy.max_command_length;
        let line = match self.take_line(max) {
            Taken::Line(line) => line,
            Taken::Dropped => return Step::Next,
            Taken::Need => {
                if self.tx.is_none() && *self.signals.draining.borrow() {
                    self.reply(reply::SERVICE_UNAVAILABLE.as_bytes());
                    return Step::Close;
                }
                return Step::NeedInput;
            }
        };
        self.deadline = Instant::now() + self.config().proxy.command_timeout;
        // smtp-proto wraps a SIZE too large for a usize around to a small number: a declared
        // size over our limit is refused here, before parsing (RFC 1870 6.1).
        if command::declared_size(&line).is_some_and(|n| n > self.offered.size_limit as u128) {
            self.reply(reply::SIZE_EXCEEDED_MAIL.as_bytes());
            return Step::Next;
        }
        if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"AUTH ") {
            return self.auth_start(&line).await;
        }
        match command::parse(&line) {
            Ok(cmd) => self.handle(cmd).await,
            Err(e) => {
                self.reply(syntax_reply(&e).as_bytes());
                Step::Next
            }
        }
    }

    /// The next line of at most `max` octets; an overlong one costs one 500 and is skipped to
    /// its end, however long it is and however the reads split it.
    fn take_line(&mut self, max: usize) -> Taken {
        match command::next_line(&self.inbuf, max) {
            Line::Complete(n) => {
                let line: Vec<u8> = self.inbuf.drain(..n).collect();
                if self.discarding {
                    // The tail of an overlong line.
                    self.discarding = false;
                    self.reply(reply::LINE_TOO_LONG.as_bytes());
                    return Taken::Dropped;
                }
                Taken::Line(line)
            }
            Line::TooLong => match memchr::memchr(b'\n', &self.inbuf) {
                Some(pos) => {
                    self.discarding = false;
                    self.inbuf.drain(..=pos);
                    self.reply(reply::LINE_TOO_LONG.as_bytes());
                    Taken::Dropped
                }
                None => {
                    self.inbuf.clear();
                    self.discarding = true;
                    Taken::Need
                }
            },
            Line::Incomplete => Taken::Need,
        }
    }

    async fn handle(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::Ehlo { host } => self.hello(host, true).await,
            Command::Helo { host } => self.hello(host, false).await,
            Command::Mail { from } => self.mail(from).await,
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => self.data().await,
            Command::Rset => {
                self.reset_transaction().await;
                self.refuse(reply::RESET)
            }
            Command::Noop { .. } => self.refuse(reply::OK),
            Command::Quit => {
                self.reset_transaction().await;
                self.reply(reply::BYE.as_bytes());
                Step::Close
            }
            Command::Vrfy { .. } => self.refuse(reply::VRFY_DISABLED),
            Command::Expn { .. } => self.refuse(reply::EXPN_DISABLED),
            Command::Help { .. } => self.refuse(reply::HELP),
            Command::Bdat { .. } => self.refuse(reply::BDAT_UNSUPPORTED),
            Command::StartTls => self.starttls_command(),
            _ => self.refuse(reply::NOT_IMPLEMENTED),
        }
    }

    /// Queues `text` and goes on.
    fn refuse(&mut self, text: &str) -> Step {
        self.reply(text.as_bytes());
        Step::Next
    }

    fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            addr: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
        }
    }

    /// The identity to pass with XCLIENT, when the policy says so.
    fn xclient_identity(&self) -> Option<ClientIdentity> {
        (self.helo.is_some() && self.config().upstream.pass_client.xclient())
            .then(|| self.identity())
    }

    async fn hello(&mut self, host: String, esmtp: bool) -> Step {
        // Never echo control bytes (NUL, ESC, CR) back, nor pass them on in XCLIENT.
        if host.is_empty() || host.chars().any(|c| c.is_control()) {
            return self.refuse(reply::BAD_HELO);
        }
        let host = sanitize(&host);
        self.reset_transaction().await;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        // The upstream connection is opened now, not at accept: a client that never says
        // EHLO does not tie up one of the MTA's smtpd processes.
        let xclient = self.xclient_identity();
        let (shared, target) = (self.shared.clone(), self.target.clone());
        if let Err(e) = self
            .upstream
            .open(&target, &shared.pool, xclient.as_ref())
            .await
        {
            if self.upstream.auth_lost() {
                return self.auth_lost(&e);
            }
            upstream_unavailable(&e);
            tracing::warn!(session = %self.id, client = %self.peer, error = %e, "upstream unavailable at HELO; session refused");
            self.reply(reply::UPSTREAM_UNAVAILABLE.as_bytes());
            return Step::Close;
        }
        self.offer();
        let text = if esmtp {
            self.offered
                .ehlo_reply(&self.config().proxy.hostname, &host)
        } else {
            format!("250 {} Hello {host}\r\n", self.config().proxy.hostname)
        };
        self.reply(text.as_bytes());
        Step::Next
    }

    /// What the EHLO reply offers now: the upstream's extensions we carry end to end,
    /// STARTTLS while in plain text (when we have a certificate), AUTH only inside TLS.
    fn offer(&mut self) {
        let max = self.config().proxy.max_message_size;
        self.offered = match self.upstream.extensions() {
            Some(ext) => Extensions::offered_to_clients(ext, max),
            None => Extensions::offered_to_clients(&Extensions::default(), max),
        };
        self.offered.starttls = self.shared.tls.load().is_some()
            && !self.client.is_tls()
            && self.config().proxy.tls == ProxyTls::Starttls;
        if !self.client.is_tls() || self.auth.is_some() {
            self.offered.auth.clear();
        }
    }

    /// STARTTLS (RFC 3207): checked here, run by the loop.
    fn starttls_command(&mut self) -> Step {
        if self.shared.tls.load().is_none() || self.config().proxy.tls != ProxyTls::Starttls {
            return self.refuse(reply::STARTTLS_UNSUPPORTED);
        }
        if self.client.is_tls() {
            return self.refuse(reply::TLS_ALREADY_ACTIVE);
        }
        if self.tx.is_some() {
            return self.refuse(reply::TLS_IN_TRANSACTION);
        }
        Step::StartTls
    }

    /// 220, the handshake, then a fresh start that needs EHLO again.
    async fn start_tls(&mut self) -> bool {
        if !self.inbuf.is_empty() {
            // Plain-text commands pipelined after STARTTLS would be taken as sent inside TLS
            // (CVE-2011-0411): they are dropped, as Postfix does.
            tracing::warn!(session = %self.id, client = %self.peer, bytes = self.inbuf.len(), "commands pipelined after STARTTLS; discarded");
            self.inbuf.clear();
        }
        self.reply(reply::TLS_READY.as_bytes());
        if self.flush().await.is_err() {
            return false;
        }
        if !self.handshake().await {
            return false;
        }
        // RFC 3207 4.2: forget what the client said before, its HELO first.
        self.helo = None;
        self.esmtp = false;
        self.deadline = Instant::now() + self.config().proxy.command_timeout;
        true
    }

    /// The TLS handshake with the client, within the command timeout.
    async fn handshake(&mut self) -> bool {
        let Some(acceptor) = self.shared.tls.load_full() else {
            tracing::warn!(session = %self.id, "TLS wanted but no certificate loaded; closing");
            return false;
        };
        let limit = self.config().proxy.command_timeout;
        match tokio::time::timeout(limit, self.client.start_tls(&acceptor)).await {
            Ok(Ok(())) => {
                tracing::debug!(session = %self.id, version = self.client.tls_version(), "TLS started");
                true
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no handshake within {limit:?}"),
                };
                tracing::info!(session = %self.id, client = %self.peer, %error, "TLS handshake failed; closing");
                false
            }
        }
    }

    /// AUTH (RFC 4954), relayed in lockstep: the upstream checks the credentials. Offered and
    /// taken only inside TLS, so no password ever crosses the client's network in clear.
    async fn auth_start(&mut self, line: &[u8]) -> Step {
        if !self.client.is_tls() {
            return self.refuse(reply::AUTH_NEEDS_TLS);
        }
        if self.helo.is_none() {
            return self.refuse(reply::NEED_HELO);
        }
        if self.offered.auth.is_empty() && self.auth.is_none() {
            return self.refuse(reply::AUTH_UNSUPPORTED);
        }
        if self.auth.is_some() {
            return self.refuse(reply::AUTH_ALREADY);
        }
        if self.tx.is_some() {
            return self.refuse(reply::AUTH_IN_TRANSACTION);
        }
        let text = String::from_utf8_lossy(line);
        let mechanism = text
            .split_ascii_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_ascii_uppercase();
        if !self.offered.auth.contains(&mechanism) {
            return self.refuse(reply::AUTH_MECHANISM_UNKNOWN);
        }
        self.upstream.mark_personal();
        let exchange = AuthExchange {
            mechanism,
            lines: vec![crlf_line(line)],
        };
        self.auth_relay(exchange).await
    }

    /// The client's next line of an AUTH exchange.
    async fn auth_step(&mut self) -> Step {
        let line = match self.take_line(MAX_AUTH_LINE) {
            Taken::Line(line) => line,
            Taken::Dropped => {
                // An overlong response ends the exchange; the upstream still waits for one.
                self.state = State::Command;
                self.upstream.drop_connection();
                return Step::Next;
            }
            Taken::Need => return Step::NeedInput,
        };
        self.deadline = Instant::now() + self.config().proxy.command_timeout;
        let State::Auth(mut exchange) = std::mem::replace(&mut self.state, State::Command) else {
            return Step::Next;
        };
        exchange.lines.push(crlf_line(&line));
        self.auth_relay(exchange).await
    }

    async fn auth_relay(&mut self, exchange: AuthExchange) -> Step {
        let Some(line) = exchange.lines.last() else {
            return Step::Next;
        };
        match self.upstream.command(line).await {
            Ok(r) if r.code == 334 => {
                self.reply(&r.raw);
                self.state = State::Auth(exchange);
            }
            Ok(r) if r.code == 235 => {
                let name = auth_name(&exchange);
                tracing::info!(session = %self.id, client = %self.peer, mechanism = %exchange.mechanism, auth = %name, "client authenticated");
                self.auth = Some(name);
                self.upstream.authenticated_with(exchange.lines);
                self.offer();
                self.reply(&r.raw);
            }
            Ok(r) => {
                tracing::info!(session = %self.id, client = %self.peer, mechanism = %exchange.mechanism, reply = %r.summary(), "authentication failed");
                self.reply(&r.raw);
            }
            Err(e) => return self.upstream_lost(e),
        }
        Step::Next
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Step {
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
        let xclient = self.xclient_identity();
        let xforward = (self.config().upstream.pass_client.xforward()
            && !self.upstream.knows_client())
        .then(|| self.identity());
        let (shared, target) = (self.shared.clone(), self.target.clone());
        let result = self
            .upstream
            .mail(
                &target,
                &shared.pool,
                xclient.as_ref(),
                xforward.as_ref(),
                line.as_bytes(),
            )
            .await;
        match result {
            Ok(r) => {
                if r.is_success() {
                    self.tx = Some(Transaction {
                        envelope: Envelope {
                            client_addr: Some(self.peer),
                            helo: self.helo.clone().unwrap_or_default(),
                            mail_from: from.address,
                            mail_params: params,
                            rcpts: Vec::new(),
                            auth: self.auth.clone(),
                        },
                        rcpt_attempts: 0,
                        started: Instant::now(),
                    });
                }
                self.reply(&r.raw);
                Step::Next
            }
            Err(e) if self.upstream.auth_lost() => self.auth_lost(&e),
            Err(
                e @ (ClientError::Connect { .. } | ClientError::Refused(_) | ClientError::Tls(_)),
            ) => {
                upstream_unavailable(&e);
                tracing::warn!(session = %self.id, client = %self.peer, error = %e, "upstream unavailable at MAIL");
                self.refuse(reply::UPSTREAM_UNAVAILABLE_MAIL)
            }
            Err(e) => self.upstream_lost(e),
        }
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Step {
        let max = self.config().proxy.max_recipients;
        let overshoot_limit = self.config().proxy.recipient_overshoot_limit;
        let Some(tx) = self.tx.as_mut() else {
            return self.refuse(reply::NEED_MAIL);
        };
        tx.rcpt_attempts += 1;
        if tx.envelope.rcpts.len() >= max {
            // RFC 5321 4.5.3.1.10: the client sends the rest in another transaction. Like
            // Postfix's smtpd_recipient_overshoot_limit, these 452s count as errors only past
            // the overshoot, so a big reply-all keeps the recipients already accepted.
            let overshoot = tx.rcpt_attempts - 1 - tx.envelope.rcpts.len();
            if overshoot < overshoot_limit {
                self.outbuf
                    .extend_from_slice(reply::TOO_MANY_RCPTS.as_bytes());
                return Step::Next;
            }
            return self.refuse(reply::TOO_MANY_RCPTS);
        }
        let (line, params) = match command::rcpt_line(&to, &self.offered) {
            Ok(v) => v,
            Err(e) => return self.refuse(&e.reply()),
        };
        match self.upstream.command(line.as_bytes()).await {
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
                Step::Next
            }
            Err(e) => self.upstream_lost(e),
        }
    }

    /// DATA: our own 354, then the loop reads the message (see `data_step`).
    async fn data(&mut self) -> Step {
        let Some(tx) = self.tx.as_ref() else {
            return self.refuse(reply::NEED_MAIL_BEFORE_DATA);
        };
        if tx.envelope.rcpts.is_empty() {
            let text = if tx.rcpt_attempts == 0 {
                reply::NEED_RCPT
            } else {
                reply::NO_VALID_RCPT
            };
            return self.refuse(text);
        }
        // Most mail can never be held (narrow audience): DATA goes upstream now, so its 354
        // comes back while the client sends content. Mail that could be held waits for the
        // verdict, so a hold can end the upstream transaction with RSET instead of dropping
        // the connection.
        let early = !self.engine.could_hold(&tx.envelope);
        self.reply(reply::START_DATA.as_bytes());
        if early {
            self.upstream.send_data_early().await;
        }
        let phase = DataPhase::new(&self.config, self.offered.size_limit);
        self.state = State::Data(Box::new(phase));
        Step::Next
    }

    /// Feeds what the client sent to the message being received; at its end, the reply.
    async fn data_step(&mut self) -> Step {
        let State::Data(mut phase) = std::mem::replace(&mut self.state, State::Command) else {
            return Step::Next;
        };
        let Some(tx) = self.tx.as_ref() else {
            return Step::Next;
        };
        let mut cx = Context {
            shared: &self.shared,
            decider: &*self.engine,
            upstream: &mut self.upstream,
            tx,
            session: &self.id,
        };
        match phase.feed(&mut cx, &self.inbuf).await {
            Fed::More => {
                self.inbuf.clear();
                self.state = State::Data(phase);
                Step::NeedInput
            }
            Fed::End(used) => {
                // What follows the end of data stays: the client's next commands.
                self.inbuf.drain(..used);
                let final_reply = phase.finish(&mut cx).await;
                self.log_transaction(&phase, &final_reply);
                self.reply(final_reply.as_bytes());
                self.tx = None;
                self.deadline = Instant::now() + self.config().proxy.command_timeout;
                Step::Next
            }
        }
    }

    /// Ends any open transaction, upstream too (RSET), keeping the session.
    async fn reset_transaction(&mut self) {
        if self.tx.take().is_some() {
            self.upstream.reset().await;
        }
    }

    /// A new upstream connection would not take the client's AUTH again (CRAM-MD5 and SCRAM
    /// answer one challenge only): 421, so that the client reconnects and authenticates
    /// rather than have its mail refused as unauthenticated.
    fn auth_lost(&mut self, e: &ClientError) -> Step {
        tracing::warn!(session = %self.id, client = %self.peer, auth = self.auth.as_deref().unwrap_or(""), error = %e, "authentication not carried over to a new upstream connection; client told to reconnect");
        self.tx = None;
        self.reply(reply::AUTH_LOST.as_bytes());
        Step::Close
    }

    /// The upstream failed mid-transaction: drop it (it abandons the transaction), 451 4.4.2.
    fn upstream_lost(&mut self, e: ClientError) -> Step {
        metrics::counter!(crate::admin::metric::UPSTREAM_FAILURES).increment(1);
        tracing::warn!(session = %self.id, client = %self.peer, error = %e, "upstream lost; transaction abandoned");
        self.upstream.drop_connection();
        self.tx = None;
        self.state = State::Command;
        self.refuse(reply::UPSTREAM_FAILED)
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

    /// Queues a reply for the client; counts errors.
    fn reply(&mut self, text: &[u8]) {
        if matches!(text.first(), Some(b'4' | b'5')) {
            self.errors += 1;
        }
        self.outbuf.extend_from_slice(text);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
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

    /// Reads more client bytes into `inbuf`, until `deadline` at the latest, or shutdown.
    async fn read_more(&mut self, deadline: Instant) -> Read {
        if self.inbuf.capacity() - self.inbuf.len() < 4096 {
            self.inbuf.reserve(16 * 1024);
        }
        let mut draining = self.signals.draining.clone();
        let mut stop = self.signals.stop.clone();
        let idle = self.tx.is_none() && matches!(self.state, State::Command);
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

    /// The one log line per message, and its metrics (the same as the milter's).
    fn log_transaction(&self, phase: &DataPhase, final_reply: &str) {
        let Some(tx) = self.tx.as_ref() else { return };
        let verdict = phase.verdict();
        let reply = final_reply.trim_end().rsplit("\r\n").next().unwrap_or("");
        let facts = crate::frontend::MessageFacts {
            mode: "proxy",
            session: &self.id,
            client: Some(self.peer),
            client_name: self.helo.as_deref(),
            envelope: &tx.envelope,
            headers: phase.headers(),
            size: Some(phase.size()),
            decided_at: phase.decided_at(),
            reply: Some(reply),
            queue_id: queue_id(reply),
            held_id: phase.held_id(),
            tls: Some(self.client.tls_version()),
            ms: Some(tx.started.elapsed().as_millis() as u64),
        };
        crate::frontend::finished(&facts, verdict, !final_reply.starts_with('2'));
    }
}

/// The upstream's queue id in its reply to the final dot (`250 2.0.0 Ok: queued as X`).
fn queue_id(reply: &str) -> Option<&str> {
    reply
        .split_once("queued as ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .filter(|id| !id.is_empty())
}

/// Counts an upstream that could not be used, by reason.
fn upstream_unavailable(e: &ClientError) {
    metrics::counter!(crate::admin::metric::UPSTREAM_CONNECT_FAILURES, "reason" => e.kind())
        .increment(1);
}

/// A line as relayed upstream: its own line end replaced by CRLF.
fn crlf_line(line: &[u8]) -> Vec<u8> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut out = Vec::with_capacity(line.len() + 2);
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
    out
}

/// The authentication identity of a successful exchange, for logs and `exempt_senders`:
/// PLAIN's authcid, LOGIN's user name, the first word of other mechanisms' first response.
fn auth_name(exchange: &AuthExchange) -> String {
    let decode = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap_or_default()
    };
    let first = exchange.lines.first().map(Vec::as_slice).unwrap_or(b"");
    let initial = String::from_utf8_lossy(first)
        .split_ascii_whitespace()
        .nth(2)
        .filter(|r| *r != "=")
        .map(|r| r.as_bytes().to_vec());
    let response = initial.or_else(|| exchange.lines.get(1).cloned());
    let Some(response) = response else {
        return String::new();
    };
    let raw = decode(&response);
    let name = match exchange.mechanism.as_str() {
        "PLAIN" => raw.split(|b| *b == 0).nth(1).unwrap_or(b"").to_vec(),
        "LOGIN" => raw,
        _ => raw.split(|b| *b == b' ').next().unwrap_or(b"").to_vec(),
    };
    sanitize(&String::from_utf8_lossy(&name))
}

fn syntax_reply(e: &smtp_proto::Error) -> String {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => reply::SYNTAX_ERROR.to_string(),
        E::InvalidSenderAddress => reply::BAD_SENDER.to_string(),
        E::InvalidRecipientAddress => reply::BAD_RECIPIENT.to_string(),
        E::SyntaxError { syntax } => format!("501 5.5.4 Syntax: {syntax}\r\n"),
        E::InvalidParameter { param } => format!("501 5.5.4 Invalid parameter {param}\r\n"),
        E::UnsupportedParameter { param } => {
            format!("555 5.5.4 Unsupported parameter {}\r\n", sanitize(param))
        }
        E::ResponseTooLong => reply::LINE_TOO_LONG.to_string(),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => reply::SYNTAX_ERROR.to_string(),
    }
}

/// Client text echoed in a reply or a log: printable ASCII only, bounded.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    //! The session driven in memory: the client over `tokio::io::duplex`, the upstream a
    //! recording sink (or a scripted peer) on loopback, the engine with in-process state.

    use super::*;
    use crate::demo::sink::RecordingSink;
    use crate::quarantine::Quarantine;
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    struct Client {
        io: BufReader<DuplexStream>,
    }

    impl Client {
        async fn send(&mut self, bytes: &[u8]) {
            self.io.get_mut().write_all(bytes).await.unwrap();
        }

        /// One complete reply (every line), or "" when the session closed.
        async fn reply(&mut self) -> String {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(10), self.io.read_line(&mut line))
                        .await
                        .expect("a reply within 10 s");
                if read.unwrap_or(0) == 0 {
                    return all;
                }
                all.push_str(&line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return all;
                }
            }
        }

        async fn cmd(&mut self, line: &str) -> String {
            self.send(format!("{line}\r\n").as_bytes()).await;
            self.reply().await
        }
    }

    struct Harness {
        shared: Arc<Shared>,
        _dir: tempfile::TempDir,
        _signals: (watch::Sender<bool>, watch::Sender<bool>),
        signals: Signals,
    }

    impl Harness {
        /// `proxy` goes into `[proxy]`, `extra` after every section.
        async fn new(upstream: &str, proxy: &str, extra: &str) -> Harness {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(
                "[proxy]\nlisten = \"127.0.0.1:1\"\nhostname = \"sb.test\"\n{proxy}\n\
                 [upstream]\naddress = \"{upstream}\"\nreply_timeout = \"5s\"\n\
                 [quarantine]\ndir = \"{}\"\n{extra}\n",
                dir.path().join("q").display()
            );
            let config = Arc::new(Config::parse(&text, std::path::Path::new("t.toml")).unwrap());
            let engine = Arc::new(Engine::new(&config).unwrap());
            let quarantine = Quarantine::open(&config.quarantine.dir).unwrap();
            let shared = Arc::new(Shared::new(config, engine, Some(quarantine), None).unwrap());
            let (draining_tx, draining) = watch::channel(false);
            let (stop_tx, stop) = watch::channel(false);
            Harness {
                shared,
                _dir: dir,
                _signals: (draining_tx, stop_tx),
                signals: Signals { draining, stop },
            }
        }

        /// A client session; its greeting already read.
        async fn connect(&self) -> Client {
            let (client, server) = tokio::io::duplex(256 * 1024);
            let session = Session::new(
                self.shared.clone(),
                server,
                "192.0.2.7:40000".parse().unwrap(),
                "test".into(),
                self.signals.clone(),
            );
            tokio::spawn(session.run());
            let mut c = Client {
                io: BufReader::new(client),
            };
            assert!(c.reply().await.starts_with("220 sb.test"));
            c
        }

        fn held(&self) -> usize {
            let q = self.shared.quarantine.as_ref().unwrap();
            let all = crate::quarantine::ListFilter::default();
            q.list(&all).map(|l| l.len()).unwrap_or(0)
        }
    }

    async fn sink() -> RecordingSink {
        RecordingSink::start("127.0.0.1:0").await.unwrap()
    }

    async fn wait_count(sink: &RecordingSink, n: usize) -> bool {
        for _ in 0..200 {
            if sink.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sink.count() >= n
    }

    async fn open_transaction(c: &mut Client, rcpts: usize) {
        assert!(c.cmd("EHLO client.test").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@corp.test>").await.starts_with("250"));
        for i in 0..rcpts {
            let r = c.cmd(&format!("RCPT TO:<r{i}@corp.test>")).await;
            assert!(r.starts_with("250"), "{r}");
        }
        assert!(c.cmd("DATA").await.starts_with("354"));
    }

    #[tokio::test]
    async fn commands_pipelined_after_the_final_dot_run_after_its_reply() {
        let sink = sink().await;
        let h = Harness::new(&sink.addr.to_string(), "", "").await;
        let mut c = h.connect().await;
        open_transaction(&mut c, 1).await;
        c.send(
            b"Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@corp.test>\r\nRCPT TO:<x@corp.test>\r\nDATA\r\n",
        )
        .await;
        assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
        assert!(c.reply().await.starts_with("250"), "MAIL after the dot");
        assert!(c.reply().await.starts_with("250"), "RCPT after the dot");
        assert!(c.reply().await.starts_with("354"), "DATA after the dot");
        c.send(b"Subject: two\r\n\r\n..dot\r\n.\r\nQUIT\r\n").await;
        assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
        assert!(c.reply().await.starts_with("221"));
        assert_eq!(c.reply().await, "", "closed after QUIT");
        assert!(wait_count(&sink, 2).await);
        let got = sink.received();
        assert_eq!(got[0].content, b"Subject: one\r\n\r\nbody\r\n");
        assert_eq!(got[1].content, b"Subject: two\r\n\r\n.dot\r\n");
        assert_eq!(got[1].mail_from, "MAIL FROM:<b@corp.test>");
    }

    #[tokio::test]
    async fn smuggled_transactions_never_reach_the_upstream() {
        let sink = sink().await;
        let h = Harness::new(&sink.addr.to_string(), "", "").await;
        for seq in crate::smtp::data::SMUGGLING_SEQUENCES {
            let mut c = h.connect().await;
            open_transaction(&mut c, 1).await;
            let mut data = b"Subject: s\r\n\r\nvisible".to_vec();
            data.extend_from_slice(seq);
            data.extend_from_slice(
                b"MAIL FROM:<evil@corp.test>\r\nRCPT TO:<hidden@corp.test>\r\nDATA\r\nhidden\r\n",
            );
            data.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            c.send(&data).await;
            let r = c.reply().await;
            assert!(
                r.starts_with("550 5.5.2") || r.starts_with("250"),
                "{seq:?}: {r}"
            );
            assert!(c.reply().await.starts_with("250"), "{seq:?}: NOOP after it");
        }
        assert!(c_settle(&h, &sink).await);
        for m in sink.received() {
            assert!(
                !m.rcpt_to.iter().any(|r| r.contains("hidden")),
                "a hidden transaction reached the upstream: {m:?}"
            );
        }
    }

    /// Sends one more message and waits for it: what came before has been relayed.
    async fn c_settle(h: &Harness, sink: &RecordingSink) -> bool {
        let before = sink.count();
        let mut c = h.connect().await;
        open_transaction(&mut c, 1).await;
        c.send(b"Subject: settle\r\n\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250"));
        wait_count(sink, before + 1).await
    }

    #[tokio::test]
    async fn an_overlong_command_line_costs_one_reply_however_it_is_split() {
        let sink = sink().await;
        let h = Harness::new(&sink.addr.to_string(), "", "").await;
        let mut c = h.connect().await;
        assert!(c.cmd("EHLO client.test").await.starts_with("250"));
        c.send(b"NOOP ").await;
        for _ in 0..20 {
            c.send(&[b'x'; 1000]).await;
            tokio::task::yield_now().await;
        }
        c.send(b"\r\nNOOP\r\nNOOP\r\n").await;
        assert!(c.reply().await.starts_with("500 5.5.2"));
        assert!(c.reply().await.starts_with("250"));
        assert!(c.reply().await.starts_with("250"));
    }

    #[tokio::test]
    async fn recipients_past_the_limit_get_452_and_the_transaction_goes_on() {
        let sink = sink().await;
        let h = Harness::new(
            &sink.addr.to_string(),
            "max_recipients = 100\nmax_errors = 5",
            "",
        )
        .await;
        let mut c = h.connect().await;
        assert!(c.cmd("EHLO client.test").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@corp.test>").await.starts_with("250"));
        let mut batch = String::new();
        for i in 0..150 {
            batch.push_str(&format!("RCPT TO:<r{i}@corp.test>\r\n"));
        }
        c.send(batch.as_bytes()).await;
        for i in 0..150 {
            let r = c.reply().await;
            let want = if i < 100 { "250" } else { "452 4.5.3" };
            assert!(r.starts_with(want), "rcpt {i}: {r}");
        }
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send(b"Subject: many\r\n\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250"));
        assert!(wait_count(&sink, 1).await);
        assert_eq!(sink.received()[0].rcpt_to.len(), 100);
    }

    #[tokio::test]
    async fn a_held_reply_is_committed_before_its_250_and_never_relayed() {
        let sink = sink().await;
        let h = Harness::new(
            &sink.addr.to_string(),
            "",
            "[policy]\nwide_audience = 2\ntrip_replies = 1\nfast_audience = 0",
        )
        .await;
        for (i, from) in ["a", "b"].iter().enumerate() {
            let mut c = h.connect().await;
            assert!(c.cmd("EHLO client.test").await.starts_with("250"));
            let mail = format!("MAIL FROM:<{from}@corp.test>");
            assert!(c.cmd(&mail).await.starts_with("250"));
            assert!(c.cmd("RCPT TO:<x@corp.test>").await.starts_with("250"));
            assert!(c.cmd("RCPT TO:<y@corp.test>").await.starts_with("250"));
            assert!(c.cmd("DATA").await.starts_with("354"));
            c.send(b"Subject: RE: plans\r\nIn-Reply-To: <root@corp.test>\r\n\r\nme too\r\n.\r\n")
                .await;
            let r = c.reply().await;
            if i == 0 {
                assert!(
                    r.starts_with("250 2.0.0 Ok"),
                    "the tripping reply passes: {r}"
                );
            } else {
                assert!(r.contains("held"), "{r}");
                assert_eq!(h.held(), 1, "committed before the 250");
            }
        }
        assert!(c_settle(&h, &sink).await);
        let relayed = sink
            .received()
            .iter()
            .filter(|m| m.content.starts_with(b"Subject: RE: plans"))
            .count();
        assert_eq!(relayed, 1);
    }

    #[tokio::test]
    async fn a_client_gone_mid_data_delivers_nothing() {
        let sink = sink().await;
        let h = Harness::new(&sink.addr.to_string(), "", "").await;
        let mut c = h.connect().await;
        open_transaction(&mut c, 1).await;
        c.send(b"Subject: cut\r\n\r\nhalf a mess").await;
        drop(c);
        assert!(c_settle(&h, &sink).await);
        assert!(
            sink.received()
                .iter()
                .all(|m| !m.content.starts_with(b"Subject: cut")),
            "nothing of the cut message was delivered"
        );
    }

    /// A scripted upstream: counts connections, answers EHLO with `ehlo`, 250 otherwise.
    async fn scripted(ehlo: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 up\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply = if line.starts_with("EHLO") {
                            ehlo
                        } else if line.starts_with("QUIT") {
                            "221 bye\r\n"
                        } else {
                            "250 ok\r\n"
                        };
                        let _ = w.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// A scripted upstream that offers XCLIENT and records every line, per connection.
    async fn recording_xclient_upstream() -> (String, Arc<std::sync::Mutex<Vec<Vec<String>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let n = {
                    let mut all = log.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 up\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        log.lock().unwrap()[n].push(line.clone());
                        let reply: &[u8] = if line.starts_with("EHLO") {
                            b"250-up\r\n250 XCLIENT NAME ADDR PROTO HELO\r\n"
                        } else if line.starts_with("XCLIENT") {
                            b"220 up again\r\n"
                        } else if line.starts_with("QUIT") {
                            b"221 bye\r\n"
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = w.write_all(reply).await;
                    }
                });
            }
        });
        (addr, seen)
    }

    /// RFC 3207 4.2: after STARTTLS the client's first EHLO is forgotten; an upstream told the
    /// old name with XCLIENT must hear the new one (Postfix takes XCLIENT once per connection
    /// from the proxy, so on a new connection). The same name again costs nothing.
    #[tokio::test]
    async fn a_new_helo_name_reaches_the_upstream_through_xclient() {
        let (addr, seen) = recording_xclient_upstream().await;
        let h = Harness::new(&addr, "", "").await;
        let mut c = h.connect().await;
        assert!(c.cmd("EHLO before.test").await.starts_with("250"));
        assert!(c.cmd("EHLO before.test").await.starts_with("250"));
        assert!(c.cmd("EHLO after.test").await.starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@corp.test>").await.starts_with("250"));
        let xclients = |conn: &[String]| -> Vec<String> {
            conn.iter()
                .filter(|l| l.starts_with("XCLIENT"))
                .cloned()
                .collect()
        };
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.len(),
            2,
            "one new connection for the new name: {seen:?}"
        );
        let first = xclients(&seen[0]);
        assert_eq!(first.len(), 1, "{seen:?}");
        assert!(first[0].contains("HELO=before.test"), "{first:?}");
        assert_eq!(seen[0].last().map(String::as_str), Some("QUIT"), "{seen:?}");
        let second = xclients(&seen[1]);
        assert_eq!(second.len(), 1, "{seen:?}");
        assert!(second[0].contains("HELO=after.test"), "{second:?}");
        assert!(
            seen[1]
                .iter()
                .any(|l| l.starts_with("MAIL FROM:<a@corp.test>"))
        );
    }

    #[tokio::test]
    async fn the_upstream_is_opened_at_ehlo_not_at_accept() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = scripted("250 up\r\n").await;
        let h = Harness::new(&addr, "", "").await;
        let mut idle = Vec::new();
        for _ in 0..5 {
            idle.push(h.connect().await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "greeted without upstream"
        );
        assert!(idle[0].cmd("EHLO client.test").await.starts_with("250"));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn auth_is_offered_and_taken_only_inside_tls() {
        let (addr, _) = scripted("250-up\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n").await;
        let h = Harness::new(&addr, "", "").await;
        let mut c = h.connect().await;
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(ehlo.starts_with("250") && !ehlo.contains("AUTH"), "{ehlo}");
        let r = c.cmd("AUTH PLAIN AGJvYgBzZWNyZXQ=").await;
        assert!(r.starts_with("538 5.7.11"), "{r}");
    }

    #[tokio::test]
    async fn wire_details_from_the_reliability_review() {
        let sink = sink().await;
        let h = Harness::new(&sink.addr.to_string(), "", "").await;
        let mut c = h.connect().await;
        assert!(c.cmd("EHLO a\u{0}b").await.starts_with("501"));
        assert!(c.cmd("EHLO client.test").await.starts_with("250"));
        let r = c.cmd("DATA").await;
        assert!(r.starts_with("503 5.5.1 Need MAIL before DATA"), "{r}");
        let r = c
            .cmd("MAIL FROM:<a@corp.test> SIZE=100000000000000000000000")
            .await;
        assert!(r.starts_with("552 5.3.4"), "{r}");
        assert!(c.cmd("NOOP").await.starts_with("250"));
    }

    #[test]
    fn auth_names_are_read_from_plain_and_login() {
        let plain = AuthExchange {
            mechanism: "PLAIN".into(),
            // "\0bob\0secret"
            lines: vec![b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n".to_vec()],
        };
        assert_eq!(auth_name(&plain), "bob");
        let plain_later = AuthExchange {
            mechanism: "PLAIN".into(),
            lines: vec![b"AUTH PLAIN\r\n".to_vec(), b"AGJvYgBzZWNyZXQ=\r\n".to_vec()],
        };
        assert_eq!(auth_name(&plain_later), "bob");
        let login = AuthExchange {
            mechanism: "LOGIN".into(),
            lines: vec![
                b"AUTH LOGIN\r\n".to_vec(),
                b"Ym9i\r\n".to_vec(),
                b"c2VjcmV0\r\n".to_vec(),
            ],
        };
        assert_eq!(auth_name(&login), "bob");
        assert_eq!(crlf_line(b"x\n"), b"x\r\n");
        assert_eq!(crlf_line(b"x\r\n"), b"x\r\n");
    }
}
