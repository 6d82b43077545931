//! A recording SMTP sink: the final hop of `stormbreaker demo` and of the integration tests.
//!
//! It accepts every message and keeps its envelope and exact content in memory, so the demo can
//! report what was delivered and tests can compare bytes. It uses the proxy's own command parser
//! and strict DATA framing.

use crate::config::BareNewline;
use crate::smtp::command::{self, Command, Line};
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

/// A running sink; cloning shares the record.
#[derive(Clone)]
pub struct RecordingSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RecordingSink {
    /// Binds `addr` (port 0 for any) and serves in the background on the current runtime.
    pub async fn start(addr: &str) -> std::io::Result<RecordingSink> {
        let listener = TcpListener::bind(addr).await?;
        let sink = RecordingSink {
            addr: listener.local_addr()?,
            received: Arc::new(Mutex::new(Vec::new())),
        };
        let record = sink.received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, record).await;
                });
            }
        });
        Ok(sink)
    }

    /// Everything accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

async fn serve(mut stream: TcpStream, record: Arc<Mutex<Vec<Received>>>) -> std::io::Result<()> {
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
            Ok(Command::Rcpt { .. }) => {
                current.rcpt_to.push(text);
                out.extend_from_slice(b"250 2.1.5 Ok\r\n");
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
                if let Ok(mut r) = record.lock() {
                    r.push(current.clone());
                }
                out.extend_from_slice(b"250 2.0.0 Ok: recorded\r\n");
            }
            Ok(Command::Quit) => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                stream.write_all(&out).await?;
                return Ok(());
            }
            Ok(_) => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            Err(_) => out.extend_from_slice(b"500 5.5.2 Syntax error\r\n"),
        }
    }
}
