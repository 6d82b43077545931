//! The SMTP client side shared by release and alerts: connect, EHLO, exact DATA framing.
//! mail-send drives the conversation; the DATA stream is framed here so that the bytes arrive
//! exactly as held (mail-send's own `data()` always appends a CRLF).

use crate::config::Config;
use mail_send::SmtpClient;
use smtp_proto::Response;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where and how to re-inject held messages and send alerts.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`.
    pub address: String,
    /// Our name in EHLO.
    pub helo: String,
    pub connect_timeout: Duration,
    pub reply_timeout: Duration,
}

impl Upstream {
    pub fn from_config(config: &Config) -> Upstream {
        Upstream {
            address: config.upstream.address.clone(),
            helo: config.proxy.hostname.clone(),
            connect_timeout: config.upstream.connect_timeout,
            reply_timeout: config.upstream.reply_timeout,
        }
    }
}

pub(crate) async fn connect(upstream: &Upstream) -> Result<SmtpClient<TcpStream>, String> {
    let addr: SocketAddr = upstream
        .address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("upstream.address {:?} does not resolve", upstream.address))?;
    let fail = |what: &str, e: String| format!("{what} {addr}: {e}");
    let mut client = SmtpClient::connect(addr, upstream.connect_timeout)
        .await
        .map_err(|e| fail("connect to", e.to_string()))?;
    client.timeout = upstream.reply_timeout;
    let greeting = tokio::time::timeout(upstream.reply_timeout, client.read())
        .await
        .map_err(|_| fail("greeting from", "timeout".into()))?
        .map_err(|e| fail("greeting from", e.to_string()))?;
    if greeting.code != 220 {
        return Err(format_reply(&greeting));
    }
    client
        .ehlo(&upstream.helo)
        .await
        .map_err(|e| fail("EHLO to", e.to_string()))?;
    Ok(client)
}

/// Writes the content dot-stuffed with its end-of-data mark and waits for the reply.
pub(crate) async fn send_content(
    client: &mut SmtpClient<TcpStream>,
    content: &[u8],
    timeout: Duration,
) -> Result<Response<String>, String> {
    let framed = frame(content);
    let io = async {
        client
            .stream
            .write_all(&framed)
            .await
            .map_err(|e| e.to_string())?;
        client.stream.flush().await.map_err(|e| e.to_string())?;
        client.read().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| "no reply to the end of data before the timeout".to_string())?
}

pub(crate) async fn quit(mut client: SmtpClient<TcpStream>) {
    let _ = client.cmd(b"QUIT\r\n").await;
}

/// `250 2.0.0 Ok: queued as X`, as the upstream said it.
pub fn format_reply(r: &Response<String>) -> String {
    let message = r.message.replace(['\r', '\n'], " ");
    if r.esc[0] == 0 {
        format!("{} {message}", r.code)
    } else {
        format!(
            "{} {}.{}.{} {message}",
            r.code, r.esc[0], r.esc[1], r.esc[2]
        )
    }
}

pub(crate) fn with_space(params: &str) -> String {
    let p = params.trim();
    if p.is_empty() {
        String::new()
    } else {
        format!(" {p}")
    }
}

/// The DATA stream for exact content: a dot doubled at the start of every line, a CRLF added if
/// the content does not end with one, then `.` CRLF.
pub fn frame(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 64 + 8);
    let mut line_start = true;
    for &b in content {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Sends one message to `rcpts` in one transaction; Ok with the upstream's reply to the final dot
/// when it was 2xx and every recipient was accepted, else Err naming the first refusal.
pub async fn submit(
    upstream: &Upstream,
    mail_from: &str,
    rcpts: &[String],
    content: &[u8],
) -> Result<String, String> {
    let mut client = connect(upstream).await?;
    let result = async {
        let mail = format!("MAIL FROM:<{mail_from}>\r\n");
        expect(&mut client, mail.as_bytes(), 2).await?;
        for r in rcpts {
            expect(&mut client, format!("RCPT TO:<{r}>\r\n").as_bytes(), 2).await?;
        }
        expect(&mut client, b"DATA\r\n", 3).await?;
        let reply = send_content(&mut client, content, upstream.reply_timeout).await?;
        if reply.code / 100 == 2 {
            Ok(format_reply(&reply))
        } else {
            Err(format_reply(&reply))
        }
    }
    .await;
    quit(client).await;
    result
}

async fn expect(client: &mut SmtpClient<TcpStream>, cmd: &[u8], class: u16) -> Result<(), String> {
    let what = String::from_utf8_lossy(cmd).trim_end().to_string();
    match client.cmd(cmd).await {
        Ok(r) if r.code / 100 == class => Ok(()),
        Ok(r) => Err(format!("{what}: {}", format_reply(&r))),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a receiver does with a DATA stream: lines up to `.` CRLF, one leading dot removed.
    fn unstuff(wire: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = wire;
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")? + 2;
            let line = &rest[..end];
            rest = &rest[end..];
            if line == b".\r\n" {
                return rest.is_empty().then_some(out);
            }
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
    }

    proptest! {
        #[test]
        fn framing_round_trips_any_crlf_content(
            lines in proptest::collection::vec("[.a-z ]{0,6}", 0..12)
        ) {
            let content: Vec<u8> = lines.iter().flat_map(|l| [l.as_bytes(), b"\r\n"].concat()).collect();
            prop_assert_eq!(unstuff(&frame(&content)), Some(content));
        }
    }

    #[test]
    fn frame_stuffs_dots_at_line_starts_only() {
        assert_eq!(frame(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(
            frame(b".\r\n..\r\n.x\r\nx.\r\n"),
            b"..\r\n...\r\n..x\r\nx.\r\n.\r\n"
        );
        assert_eq!(frame(b".start"), b"..start\r\n.\r\n");
        assert_eq!(frame(b""), b".\r\n");
        assert_eq!(frame(b"no end"), b"no end\r\n.\r\n");
    }
}
