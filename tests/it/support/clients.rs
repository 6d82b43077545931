//! Real SMTP clients: swaks, Python's smtplib (`scripts/smtplib_session.py`), and a raw socket
//! for bytes no well-behaved client sends (pipelining violations, smuggling, trickling).

use super::require_tool;
use super::wait::PATIENCE;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A helper script in `tests/it/support/scripts/`.
pub fn script(name: &str) -> PathBuf {
    [env!("CARGO_MANIFEST_DIR"), "tests/it/support/scripts", name]
        .iter()
        .collect()
}

/// stdout and stderr of a finished command, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs swaks against 127.0.0.1:`port` with extra arguments.
pub fn swaks(port: u16, args: &[&str]) -> Output {
    require_tool("swaks");
    Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--timeout")
        .arg("60")
        .args(args)
        .output()
        .expect("run swaks")
}

/// A raw SMTP client for crafted bytes.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    /// Connects and reads the greeting, which must be 220.
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut raw = Raw::over(s);
        let greeting = raw.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        raw
    }

    /// Wraps a connected stream whose greeting has not been read.
    pub fn over(stream: TcpStream) -> Raw {
        // A liveness bound so a silent server fails the test instead of hanging it.
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Raw {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write");
    }

    /// One complete reply (all lines), or "" on EOF.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Sends a command and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// One message in its own session: EHLO, MAIL, each RCPT and DATA must be taken; then
/// `message` (headers and body, CRLF lines, ending with CRLF) and the final dot, and QUIT.
/// Returns the answer to the final dot.
pub fn send_message(port: u16, from: &str, rcpts: &[&str], message: &str) -> String {
    let mut c = Raw::connect(port);
    let r = c.cmd("EHLO client.test");
    assert!(r.starts_with("250"), "EHLO: {r}");
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
    }
    let r = c.cmd("DATA");
    assert!(r.starts_with("354"), "DATA: {r}");
    c.send(format!("{message}.\r\n").as_bytes());
    let answer = c.reply();
    let r = c.cmd("QUIT");
    assert!(r.starts_with("221"), "QUIT: {r}");
    answer
}

/// One message for [`smtplib`].
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message with headers, lines separated by `\r\n`.
    pub data: String,
    /// Send MAIL and RCPT, then RSET instead of DATA (the MTA tells its milter ABORT).
    pub rset: bool,
}

/// A plain message with `subject`, and a Message-ID made from it.
pub fn mail(from: &str, to: &[&str], subject: &str) -> Mail {
    Mail {
        from: from.into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        data: format!(
            "From: <{from}>\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{}@corp.test>\r\n\r\nHello.\r\n",
            to.join(", "),
            subject.replace(' ', "-")
        ),
        rset: false,
    }
}

/// What the server said to one message: the stage it ended at (`connect`, `mail`, `rcpt`,
/// `rset`, `data`) and the reply code and text there.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stage: String,
    pub code: u16,
    pub text: String,
}

/// Sends `mails` in ONE SMTP session to 127.0.0.1:`port` with Python's smtplib.
pub fn smtplib(port: u16, mails: &[Mail]) -> Vec<Outcome> {
    let input = serde_json::Value::Array(
        mails
            .iter()
            .map(
                |m| serde_json::json!({"from": m.from, "to": m.to, "data": m.data, "rset": m.rset}),
            )
            .collect(),
    );
    let mut child = Command::new("python3")
        .arg(script("smtplib_session.py"))
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "smtplib client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("client JSON");
    v.into_iter()
        .map(|o| Outcome {
            stage: o["stage"].as_str().unwrap_or_default().to_string(),
            code: o["code"].as_u64().unwrap_or(0) as u16,
            text: o["text"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// The Postfix queue id in "250 2.0.0 Ok: queued as 4Xyz".
pub fn queued_as(text: &str) -> String {
    text.rsplit(' ')
        .next()
        .expect("a queue id in the 250 reply")
        .to_string()
}
