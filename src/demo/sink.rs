//! A recording SMTP sink: the final hop of `stormbreaker demo` and of the integration tests.
//!
//! It accepts every message and keeps its envelope and exact content in memory, so the demo can
//! report what was delivered and tests can compare bytes. It uses the proxy's own command parser
//! and strict DATA framing. [`Faults`] make it defer recipients or hang up after the final dot,
//! so tests can see what a sender (a quarantine release) does then.

use crate::smtp::command::{self, Command, Line};
use crate::smtp::data::BareNewline;
use crate::smtp::data::DataDecoder;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub helo: String,
    /// The MAIL FROM line as received, without CRLF.
    pub mail_from: String,
    /// The RCPT TO lines as received, without CRLF.
    pub rcpt_to: Vec<String>,
    /// Content after dot-unstuffing, CRLF line ends.
    pub content: Vec<u8>,
}

/// How the sink misbehaves; changeable while it runs (read at each command).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// RCPT TO for these addresses (compared case-insensitively) gets `451 4.2.0`.
    pub defer_rcpts: Vec<String>,
    /// After the final dot the message is recorded, then the connection is closed with no
    /// reply: the sender cannot know whether it was accepted.
    pub drop_after_dot: bool,
}

/// A running sink; cloning shares the record.
#[derive(Clone)]
pub struct RecordingSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    faults: Arc<Mutex<Faults>>,
}

impl RecordingSink {
    /// Binds `addr` (port 0 for any) and serves in the background on the current runtime.
    pub async fn start(addr: &str) -> std::io::Result<RecordingSink> {
        let listener = TcpListener::bind(addr).await?;
        let sink = RecordingSink {
            addr: listener.local_addr()?,
            received: Arc::new(Mutex::new(Vec::new())),
            faults: Arc::new(Mutex::new(Faults::default())),
        };
        let shared = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, shared).await;
                });
            }
        });
        Ok(sink)
    }

    /// Replaces the faults; sessions already open see the change at their next command.
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }

    fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Everything accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

async fn serve(mut stream: TcpStream, sink: RecordingSink) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    stream
        .write_all(b"220 sink.local ESMTP recording sink\r\n")
        .await?;
    let mut buf = Vec::with_capacity(8192);
    let mut out = Vec::new();
    let mut current = Received {
        helo: String::new(),
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        content: Vec::new(),
    };
    loop {
        let n = match command::next_line(&buf, 4096) {
            Line::Complete(n) => n,
            Line::TooLong => {
                stream.write_all(b"500 5.5.2 Line too long\r\n").await?;
                return Ok(());
            }
            Line::Incomplete => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
                continue;
            }
        };
        let line: Vec<u8> = buf.drain(..n).collect();
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        match command::parse(&line) {
            Ok(Command::Ehlo { host }) => {
                current.helo = host;
                out.extend_from_slice(
                    b"250-sink.local\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n\
250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n",
                );
            }
            Ok(Command::Helo { host }) => {
                current.helo = host;
                out.extend_from_slice(b"250 sink.local\r\n");
            }
            Ok(Command::Mail { .. }) => {
                current.mail_from = text;
                current.rcpt_to.clear();
                out.extend_from_slice(b"250 2.1.0 Ok\r\n");
            }
            Ok(Command::Rcpt { to }) => {
                let deferred = sink
                    .faults()
                    .defer_rcpts
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&to.address));
                if deferred {
                    out.extend_from_slice(
                        format!("451 4.2.0 <{}> deferred by test\r\n", to.address).as_bytes(),
                    );
                } else {
                    current.rcpt_to.push(text);
                    out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                }
            }
            Ok(Command::Data) if current.rcpt_to.is_empty() => {
                out.extend_from_slice(b"503 5.5.1 No valid recipients\r\n");
            }
            Ok(Command::Data) => {
                stream.write_all(&out).await?;
                out.clear();
                stream
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut decoder = DataDecoder::new(BareNewline::Reject, usize::MAX, usize::MAX);
                let mut content = Vec::new();
                loop {
                    if let Some(used) = decoder.decode(&buf, &mut content) {
                        buf.drain(..used);
                        break;
                    }
                    buf.clear();
                    if stream.read_buf(&mut buf).await? == 0 {
                        return Ok(());
                    }
                }
                current.content = content;
                if let Ok(mut r) = sink.received.lock() {
                    r.push(current.clone());
                }
                current.rcpt_to.clear();
                if sink.faults().drop_after_dot {
                    return Ok(());
                }
                out.extend_from_slice(b"250 2.0.0 Ok: recorded\r\n");
            }
            Ok(Command::Quit) => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                stream.write_all(&out).await?;
                return Ok(());
            }
            Ok(Command::Rset) => {
                current.mail_from.clear();
                current.rcpt_to.clear();
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            Ok(_) => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            Err(_) => out.extend_from_slice(b"500 5.5.2 Syntax error\r\n"),
        }
    }
}
