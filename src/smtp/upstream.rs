//! The upstream side: an SMTP client session to the MTA. A session serves one client session at
//! a time; without XCLIENT it may serve several in turn (see `pool`).

use crate::smtp::extensions::Extensions;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A reply is at most this long; a longer one is a broken upstream.
const MAX_REPLY: usize = 64 * 1024;

/// One complete upstream reply, kept verbatim so it can be relayed as is.
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
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream closed the connection")]
    Closed,
    #[error("upstream I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream sent a malformed reply: {0}")]
    BadReply(String),
    #[error("upstream refused the session: {0}")]
    Refused(String),
}

/// Timeouts of an upstream session.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub reply: Duration,
}

/// An SMTP client session to the upstream MTA.
pub struct Upstream {
    stream: TcpStream,
    buf: Vec<u8>,
    timeouts: Timeouts,
    pub extensions: Extensions,
    /// When the connection was opened (for `reuse_time_limit`).
    pub opened: Instant,
    /// MAIL commands sent on this connection (for `reuse_count_limit`).
    pub transactions: u32,
}

/// The real client, passed on with XCLIENT or XFORWARD.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub addr: SocketAddr,
    pub helo: String,
    pub esmtp: bool,
}

impl Upstream {
    /// Connects, reads the 220 greeting and introduces itself with EHLO (HELO if refused).
    pub async fn connect(
        addr: &str,
        our_hostname: &str,
        timeouts: Timeouts,
    ) -> Result<Upstream, UpstreamError> {
        let stream = match timeout(timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            Err(_) => return Err(UpstreamError::Timeout(timeouts.connect)),
        };
        let _ = stream.set_nodelay(true);
        let mut up = Upstream {
            stream,
            buf: Vec::with_capacity(4096),
            timeouts,
            extensions: Extensions::default(),
            opened: Instant::now(),
            transactions: 0,
        };
        let greeting = up.read_reply().await?;
        if greeting.code != 220 {
            return Err(UpstreamError::Refused(greeting.summary()));
        }
        up.hello(our_hostname).await?;
        Ok(up)
    }

    /// EHLO (or HELO when EHLO is refused); records the extensions offered.
    async fn hello(&mut self, name: &str) -> Result<(), UpstreamError> {
        let reply = self.command(format!("EHLO {name}\r\n").as_bytes()).await?;
        if reply.is_success() {
            self.extensions = Extensions::from_ehlo_reply(&reply.raw);
            return Ok(());
        }
        let reply = self.command(format!("HELO {name}\r\n").as_bytes()).await?;
        if !reply.is_success() {
            return Err(UpstreamError::Refused(reply.summary()));
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// Tells the upstream who the real client is: XCLIENT (a new session, so EHLO again with
    /// the client's name) when offered, else nothing here (XFORWARD goes before each MAIL).
    pub async fn pass_client_xclient(
        &mut self,
        client: &ClientIdentity,
    ) -> Result<bool, UpstreamError> {
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

    /// Starts a transaction: MAIL, preceded by XFORWARD for `client` when the upstream offers
    /// it. Both go in one write when the upstream pipelines (as Postfix's own client does).
    pub async fn mail(
        &mut self,
        client: Option<&ClientIdentity>,
        line: &[u8],
    ) -> Result<Reply, UpstreamError> {
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

    /// Whether an idle connection still looks usable: nothing unread (a 421 before closing)
    /// and no end of stream seen. Only what the runtime already knows; no waiting.
    pub fn looks_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends one command line and waits for its reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, UpstreamError> {
        self.write(line).await?;
        self.read_reply().await
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), UpstreamError> {
        match timeout(self.timeouts.reply, self.stream.write_all(bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(UpstreamError::Timeout(self.timeouts.reply)),
        }
    }

    /// Reads one complete (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply, UpstreamError> {
        loop {
            if let Some((len, code)) = parse_reply(&self.buf)? {
                let raw: Vec<u8> = self.buf.drain(..len).collect();
                return Ok(Reply { code, raw });
            }
            if self.buf.len() > MAX_REPLY {
                return Err(UpstreamError::BadReply("reply longer than 64 KiB".into()));
            }
            // Straight into the buffer: a stack array here would live in every future that
            // awaits a reply, and each session's future is copied when it is spawned.
            self.buf.reserve(4096);
            let n = match timeout(self.timeouts.reply, self.stream.read_buf(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(UpstreamError::Timeout(self.timeouts.reply)),
            };
            if n == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// Says goodbye without waiting long: the upstream's answer changes nothing.
    pub async fn quit(mut self) {
        let _ = timeout(Duration::from_secs(2), async {
            if self.stream.write_all(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply().await;
            }
        })
        .await;
    }
}

/// Builds `XCLIENT ...` / `XFORWARD ...` with the attributes the upstream offers.
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
pub fn parse_reply(buf: &[u8]) -> Result<Option<(usize, u16)>, UpstreamError> {
    let mut start = 0;
    let mut code = None;
    while let Some(pos) = memchr::memchr(b'\n', &buf[start..]) {
        let line = &buf[start..start + pos + 1];
        let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let Some(digits) = digits else {
            let shown = String::from_utf8_lossy(line).trim_end().to_string();
            return Err(UpstreamError::BadReply(shown));
        };
        let this: u16 = std::str::from_utf8(digits)
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        if !(200..600).contains(&this) || code.is_some_and(|c| c != this) {
            let shown = String::from_utf8_lossy(line).trim_end().to_string();
            return Err(UpstreamError::BadReply(shown));
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
