//! The SMTP client: one connection to an MTA, used by the proxy's upstream link (and through it
//! by nothing else that may send a final dot). Greeting, EHLO (HELO if refused), STARTTLS to
//! the MTA when configured, commands in lockstep, verbatim multi-line replies, XCLIENT and
//! XFORWARD, deadlines on every read and write, typed errors.

use crate::smtp::extensions::Extensions;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// A reply is at most this long; a longer one is a broken upstream.
const MAX_REPLY: usize = 64 * 1024;

/// One complete reply, kept verbatim so it can be relayed as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Every line, each ending in CRLF.
    pub raw: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The last line without its line end, for logs.
    pub fn summary(&self) -> String {
        let text = String::from_utf8_lossy(&self.raw);
        text.trim_end()
            .rsplit("\r\n")
            .next()
            .unwrap_or("")
            .to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the server")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply: {0}")]
    BadReply(String),
    #[error("session refused: {0}")]
    Refused(String),
    #[error("TLS to the server failed: {0}")]
    Tls(String),
}

impl ClientError {
    /// A short word for metrics labels: why a connection could not be used.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect",
            ClientError::Timeout(_) => "timeout",
            ClientError::Closed => "closed",
            ClientError::Io(_) => "io",
            ClientError::BadReply(_) => "bad-reply",
            ClientError::Refused(_) => "refused",
            ClientError::Tls(_) => "tls",
        }
    }
}

/// Why a message could not be sent: the connection failed, or the server refused a step.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{step}: {reply}")]
    Refused { step: &'static str, reply: String },
}

fn expect_2xx(reply: Reply, step: &'static str) -> Result<String, SendError> {
    if reply.is_success() {
        Ok(reply.summary())
    } else {
        Err(SendError::Refused {
            step,
            reply: reply.summary(),
        })
    }
}

/// Deadlines of a client connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// For every reply and every write.
    pub reply: Duration,
}

/// STARTTLS to the server, its certificate verified against `connector`'s roots for `name`.
#[derive(Clone)]
pub struct ClientTls {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish()
    }
}

/// Where and how to connect: the MTA's address, our EHLO name, deadlines, TLS.
#[derive(Debug, Clone)]
pub struct Target {
    pub address: String,
    pub hostname: String,
    pub timeouts: Timeouts,
    /// When set, STARTTLS is required: a server that does not offer it, or whose certificate
    /// does not verify, is not used (nothing is sent to it in plain text after EHLO).
    pub tls: Option<Arc<ClientTls>>,
}

/// The real client, passed on with XCLIENT or XFORWARD.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub addr: SocketAddr,
    pub helo: String,
    pub esmtp: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while a handshake owns the socket (after a failed one, the connection is dropped).
    Gone,
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Gone => None,
        }
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "connection lost in a TLS handshake",
    )
}

/// An SMTP client connection.
pub struct SmtpClient {
    stream: Stream,
    buf: Vec<u8>,
    timeouts: Timeouts,
    /// What the server offered in its last EHLO reply.
    pub extensions: Extensions,
    /// When the connection was opened (for `reuse_time_limit`).
    pub opened: Instant,
    /// MAIL commands sent on this connection (for `reuse_count_limit`).
    pub transactions: u32,
    /// When the last bytes went out and what they were (greeting, command, or data: the
    /// final dot), for the upstream-reply histogram.
    sent: Option<(Instant, &'static str)>,
}

impl SmtpClient {
    /// Connects, reads the 220 greeting, introduces itself with EHLO (HELO if refused), and
    /// with `target.tls` runs STARTTLS and EHLO again.
    pub async fn connect(target: &Target) -> Result<SmtpClient, ClientError> {
        let mut client = Self::greeted(target).await?;
        client.hello(&target.hostname).await?;
        if let Some(tls) = &target.tls {
            client.start_tls(tls).await?;
            client.hello(&target.hostname).await?;
        }
        Ok(client)
    }

    /// Connects for a session that tells the server the real client, when the server is
    /// known to offer XCLIENT with `attrs` (its last EHLO to us said so) and no TLS is
    /// wanted: XCLIENT straight after the greeting, then EHLO as the client. This saves the
    /// EHLO whose answer XCLIENT's new session would replace (one round trip, a tenth of the
    /// upstream leg's segments). A server that refuses XCLIENT before EHLO gets the usual
    /// EHLO, XCLIENT, EHLO. Returns the client and whether the server took XCLIENT.
    pub async fn connect_with_xclient(
        target: &Target,
        attrs: &[String],
        client: &ClientIdentity,
    ) -> Result<(SmtpClient, bool), ClientError> {
        let mut conn = Self::greeted(target).await?;
        let reply = conn
            .command(identity_command("XCLIENT", attrs, client).as_bytes())
            .await?;
        if (200..300).contains(&reply.code) {
            conn.hello(&client.helo).await?;
            return Ok((conn, true));
        }
        if reply.code == 421 {
            return Err(ClientError::Refused(reply.summary()));
        }
        tracing::debug!(reply = %reply.summary(), "XCLIENT before EHLO refused; EHLO first");
        conn.hello(&target.hostname).await?;
        let passed = conn.pass_client_xclient(client).await?;
        Ok((conn, passed))
    }

    /// Connects and reads the 220 greeting.
    async fn greeted(target: &Target) -> Result<SmtpClient, ClientError> {
        let addr = &target.address;
        let stream = match timeout(target.timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr: addr.clone(),
                    source,
                });
            }
            Err(_) => return Err(ClientError::Timeout(target.timeouts.connect)),
        };
        let _ = stream.set_nodelay(true);
        let mut client = SmtpClient {
            stream: Stream::Plain(stream),
            buf: Vec::with_capacity(4096),
            timeouts: target.timeouts,
            extensions: Extensions::default(),
            opened: Instant::now(),
            transactions: 0,
            sent: None,
        };
        client.sent = Some((Instant::now(), "greeting"));
        let greeting = client.read_reply().await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused(greeting.summary()));
        }
        Ok(client)
    }

    /// EHLO (or HELO when EHLO is refused); records the extensions offered.
    pub async fn hello(&mut self, name: &str) -> Result<(), ClientError> {
        let reply = self.command(format!("EHLO {name}\r\n").as_bytes()).await?;
        if reply.is_success() {
            self.extensions = Extensions::from_ehlo_reply(&reply.raw);
            return Ok(());
        }
        let reply = self.command(format!("HELO {name}\r\n").as_bytes()).await?;
        if !reply.is_success() {
            return Err(ClientError::Refused(reply.summary()));
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// STARTTLS (RFC 3207) and the handshake; the caller says EHLO again.
    async fn start_tls(&mut self, tls: &ClientTls) -> Result<(), ClientError> {
        if !self.extensions.starttls {
            return Err(ClientError::Tls(
                "the server does not offer STARTTLS".into(),
            ));
        }
        let reply = self.command(b"STARTTLS\r\n").await?;
        if reply.code != 220 {
            return Err(ClientError::Tls(format!(
                "STARTTLS refused: {}",
                reply.summary()
            )));
        }
        if !self.buf.is_empty() {
            // Bytes after the 220 before the handshake would be taken as sent inside TLS
            // (CVE-2011-0411, the client side).
            return Err(ClientError::Tls(
                "the server sent data after its 220 to STARTTLS".into(),
            ));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(ClientError::Tls("TLS is already active".into()));
        };
        let handshake = tls.connector.connect(tls.name.clone(), tcp);
        match timeout(self.timeouts.reply, handshake).await {
            Ok(Ok(s)) => {
                self.stream = Stream::Tls(Box::new(s));
                Ok(())
            }
            Ok(Err(e)) => Err(ClientError::Tls(e.to_string())),
            Err(_) => Err(ClientError::Timeout(self.timeouts.reply)),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Tells the server who the real client is with XCLIENT (a new session, so EHLO again
    /// with the client's name) when offered. Returns whether the server took it.
    pub async fn pass_client_xclient(
        &mut self,
        client: &ClientIdentity,
    ) -> Result<bool, ClientError> {
        let offered = &self.extensions.xclient;
        if offered.is_empty() {
            return Ok(false);
        }
        let line = identity_command("XCLIENT", offered, client);
        let reply = self.command(line.as_bytes()).await?;
        // Postfix answers 220 (a new session); smtp-sink answers 250.
        if !(200..300).contains(&reply.code) {
            tracing::warn!(reply = %reply.summary(), "upstream refused XCLIENT; passing on without it");
            return Ok(false);
        }
        self.hello(&client.helo).await?;
        Ok(true)
    }

    /// Starts a transaction: MAIL, preceded by XFORWARD for `client` when the server offers
    /// it. Both go in one write when the server pipelines (as Postfix's own client does).
    pub async fn mail(
        &mut self,
        client: Option<&ClientIdentity>,
        line: &[u8],
    ) -> Result<Reply, ClientError> {
        self.transactions += 1;
        let offered = &self.extensions.xforward;
        let Some(client) = client.filter(|_| !offered.is_empty()) else {
            return self.command(line).await;
        };
        let xforward = identity_command("XFORWARD", offered, client);
        let forwarded = if self.extensions.pipelining {
            let mut batch = Vec::with_capacity(xforward.len() + line.len());
            batch.extend_from_slice(xforward.as_bytes());
            batch.extend_from_slice(line);
            self.write(&batch).await?;
            self.read_reply().await?
        } else {
            self.command(xforward.as_bytes()).await?
        };
        if !forwarded.is_success() {
            tracing::warn!(reply = %forwarded.summary(), "upstream refused XFORWARD; the message goes on without it");
        }
        if self.extensions.pipelining {
            self.read_reply().await
        } else {
            self.command(line).await
        }
    }

    /// DATA, then `content` (unstuffed, CRLF line ends) dot-stuffed with its final dot, and
    /// the server's reply to it; or the server's refusal of DATA.
    pub async fn data(&mut self, content: &[u8]) -> Result<Reply, ClientError> {
        let go = self.command(b"DATA\r\n").await?;
        if go.code != 354 {
            return Ok(go);
        }
        self.content(content).await
    }

    /// After a 354: `content` (unstuffed) dot-stuffed with its final dot, exactly as given (a
    /// CRLF is added only when it does not end with one), and the server's reply.
    pub async fn content(&mut self, content: &[u8]) -> Result<Reply, ClientError> {
        let mut wire = Vec::with_capacity(content.len() + content.len() / 64 + 8);
        crate::smtp::data::stuff(content, &mut true, &mut wire);
        let ends_with_crlf = content.is_empty() || content.ends_with(b"\r\n");
        wire.extend_from_slice(crate::smtp::data::end_of_data(ends_with_crlf));
        self.write(&wire).await?;
        self.read_reply().await
    }

    /// Opens a connection, sends one message to every recipient in one transaction, and says
    /// QUIT: for alerts and notices. Ok with the reply to the final dot when it was 2xx and
    /// every recipient was accepted; Err naming the first refusal otherwise.
    pub async fn send(
        target: &Target,
        mail_from: &str,
        rcpts: &[String],
        content: &[u8],
    ) -> Result<String, SendError> {
        let mut client = SmtpClient::connect(target).await?;
        let result = async {
            let mail = crate::smtp::command::mail_command(mail_from, "");
            expect_2xx(client.command(mail.as_bytes()).await?, "MAIL FROM")?;
            for r in rcpts {
                let rcpt = crate::smtp::command::rcpt_command(r, "");
                expect_2xx(client.command(rcpt.as_bytes()).await?, "RCPT TO")?;
            }
            let end = client.data(content).await?;
            expect_2xx(end, "end of data")
        }
        .await;
        client.quit().await;
        result
    }

    /// Whether an idle connection still looks usable: nothing unread (a 421 before closing)
    /// and no end of stream seen. Only what the runtime already knows; no waiting.
    pub fn looks_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        // A peek: under TLS a consumed byte would break the record layer. Anything readable
        // (a 421, a TLS alert, the end of the stream) means the connection is not to be used.
        let Some(tcp) = self.stream.tcp() else {
            return false;
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(tcp).peek(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends one command line and waits for its reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, ClientError> {
        self.write(line).await?;
        self.read_reply().await
    }

    /// Writes bytes as they are (the caller frames them); under TLS they are flushed too.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let limit = self.timeouts.reply;
        let tls = self.is_tls();
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(bytes).await?;
            if tls {
                stream.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let result = match timeout(limit, io).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClientError::Timeout(limit)),
        };
        // Stuffed content never holds CRLF.CRLF before its end, and no command is a lone
        // dot: this write ends DATA.
        let step = if bytes.ends_with(b"\r\n.\r\n") || bytes == b".\r\n" {
            "data"
        } else {
            "command"
        };
        self.sent = Some((Instant::now(), step));
        result
    }

    /// Reads one complete (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        loop {
            if let Some((len, code)) = parse_reply(&self.buf)? {
                let raw: Vec<u8> = self.buf.drain(..len).collect();
                if let Some((at, step)) = self.sent {
                    reply_time(step, at);
                }
                return Ok(Reply { code, raw });
            }
            if self.buf.len() > MAX_REPLY {
                return Err(ClientError::BadReply("reply longer than 64 KiB".into()));
            }
            // Straight into the buffer: a stack array here would live in every future that
            // awaits a reply, and each session's future is copied when it is spawned.
            self.buf.reserve(4096);
            let n = match timeout(self.timeouts.reply, self.stream.read_buf(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(ClientError::Timeout(self.timeouts.reply)),
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Says goodbye without waiting long: the server's answer changes nothing.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            if self.write(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply().await;
            }
        })
        .await;
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// Builds `XCLIENT ...` / `XFORWARD ...` with the attributes the server offers.
/// The upstream-reply histogram, by step (see `admin::metric::UPSTREAM_STEPS`): from the
/// last write (or the connection, for the greeting) to a complete reply.
fn reply_time(step: &'static str, since: Instant) {
    metrics::histogram!(crate::admin::metric::UPSTREAM_REPLY_SECONDS, "step" => step)
        .record(since.elapsed().as_secs_f64());
}

fn identity_command(verb: &str, offered: &[String], client: &ClientIdentity) -> String {
    let addr = match client.addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("IPV6:{ip}"),
    };
    let helo = if client.helo.is_empty() {
        "[UNAVAILABLE]".to_string()
    } else {
        crate::smtp::command::xtext(&client.helo)
    };
    let proto = if client.esmtp { "ESMTP" } else { "SMTP" };
    let mut line = verb.to_string();
    for (name, value) in [
        ("NAME", "[UNAVAILABLE]".to_string()),
        ("ADDR", addr),
        ("PORT", client.addr.port().to_string()),
        ("PROTO", proto.to_string()),
        ("HELO", helo),
    ] {
        if offered.iter().any(|o| o == name) {
            line.push_str(&format!(" {name}={value}"));
        }
    }
    line.push_str("\r\n");
    line
}

/// Finds a complete reply at the start of `buf`: its length and code.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(usize, u16)>, ClientError> {
    let mut start = 0;
    let mut code = None;
    while let Some(pos) = memchr::memchr(b'\n', &buf[start..]) {
        let line = &buf[start..start + pos + 1];
        let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let Some(digits) = digits else {
            let shown = String::from_utf8_lossy(line).trim_end().to_string();
            return Err(ClientError::BadReply(shown));
        };
        let this: u16 = std::str::from_utf8(digits)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if !(200..600).contains(&this) || code.is_some_and(|c| c != this) {
            let shown = String::from_utf8_lossy(line).trim_end().to_string();
            return Err(ClientError::BadReply(shown));
        }
        code = Some(this);
        start += pos + 1;
        if line.get(3) != Some(&b'-') {
            return Ok(Some((start, this)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_multi_line_replies() {
        assert_eq!(parse_reply(b"250 ok\r\n").unwrap(), Some((8, 250)));
        assert_eq!(
            parse_reply(b"250-a\r\n250 b\r\nrest").unwrap(),
            Some((14, 250))
        );
        assert_eq!(parse_reply(b"250-a\r\n250").unwrap(), None);
        assert_eq!(parse_reply(b"354\r\n").unwrap(), Some((5, 354)));
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250-a\r\n550 b\r\n").is_err());
        assert!(parse_reply(b"999 x\r\n").is_err());
    }

    #[test]
    fn identity_uses_only_offered_attributes() {
        let client = ClientIdentity {
            addr: "192.0.2.7:4711".parse().unwrap(),
            helo: "client.test".into(),
            esmtp: true,
        };
        let offered: Vec<String> = ["ADDR", "HELO"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            identity_command("XCLIENT", &offered, &client),
            "XCLIENT ADDR=192.0.2.7 HELO=client.test\r\n"
        );
    }

    #[test]
    fn reply_summary_is_last_line() {
        let r = Reply {
            code: 250,
            raw: b"250-first\r\n250 2.0.0 Ok: queued as ABC\r\n".to_vec(),
        };
        assert_eq!(r.summary(), "250 2.0.0 Ok: queued as ABC");
    }
}
