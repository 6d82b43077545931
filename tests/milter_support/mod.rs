//! Real peers for the milter tests: a private Postfix instance with `smtpd_milters` (see
//! `postfix_support`), a recording smtp-sink behind it, the stormbreaker binary, and a Python
//! smtplib client.
//!
//! Everything binds to 127.0.0.1 on free ports and lives in a temporary folder under /var/tmp
//! (Postfix's `maillog_file` must be under /var); dropping a value stops what it started.
#![allow(dead_code)] // each test file uses a part of this

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../postfix_support/mod.rs"]
mod postfix_support;
use postfix_support::set_mode;
#[allow(unused_imports)] // not every test crate starts a Postfix
pub use postfix_support::{Postfix, free_port};

/// Liveness bound for polling; not a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns Some, or panics naming `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > PATIENCE {
            panic!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Skips a test (returns false) when Postfix or its tools are not installed.
pub fn have_postfix() -> bool {
    [
        "/usr/sbin/postfix",
        "/usr/sbin/smtp-sink",
        "/usr/sbin/postqueue",
    ]
    .iter()
    .all(|p| Path::new(p).exists())
}

fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("a folder under /var/tmp");
    // Postfix and smtp-sink run as other users: they must traverse it.
    set_mode(dir.path(), 0o755);
    dir
}

/// `smtp-sink` writing each message it accepts to its own file.
pub struct Sink {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Sink {
    pub fn start() -> Sink {
        let dir = scratch_dir("sb-sink.");
        let msgs = dir.path().join("msgs");
        std::fs::create_dir(&msgs).unwrap();
        set_mode(&msgs, 0o777);
        let port = free_port();
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "nobody", "-d"])
            .arg(format!("{}/msg.", msgs.display()))
            .arg(format!("127.0.0.1:{port}"))
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink");
        wait_for("smtp-sink to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Sink { child, port, dir }
    }

    /// Every message received so far (smtp-sink's dump: envelope lines, then the message).
    /// smtp-sink creates a dump file at MAIL and writes it until the end of data, and a
    /// finished dump ends with an empty line (its documented format): files without one are
    /// still being written and are left out.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.path().join("msgs")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            if bytes.ends_with(b"\n\n") {
                out.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        out
    }

    /// Waits until `n` messages have arrived and returns them.
    pub fn wait_for_messages(&self, n: usize) -> Vec<String> {
        wait_for(&format!("{n} messages at the sink"), || {
            let m = self.messages();
            (m.len() >= n).then_some(m)
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// main.cf lines that put stormbreaker (`inet:127.0.0.1:PORT` or `unix:/path`) in front of
/// Postfix's queue as its milter; a milter failure tempfails the message rather than passing it.
pub fn milter_main_cf(milter: &str) -> String {
    format!(
        "smtpd_milters = {milter}\nmilter_protocol = 6\nmilter_default_action = tempfail\n\
         milter_connect_timeout = 10s\nmilter_command_timeout = 30s\n"
    )
}

/// The real stormbreaker binary, run with a config file; logs as JSON lines to a file.
pub struct Stormbreaker {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    unix: bool,
}

impl Stormbreaker {
    /// `extra`: more TOML after the `[milter]` section (policy, lists...).
    /// With `trace_header = true`, so every delivered message shows the decision.
    pub fn start(extra: &str) -> Stormbreaker {
        Self::start_on(false, true, extra)
    }

    /// With the default `trace_header = false`: messages that cannot be held are accepted at
    /// DATA, as in production.
    pub fn start_without_trace_header(extra: &str) -> Stormbreaker {
        Self::start_on(false, false, extra)
    }

    /// Listening on a unix socket in its own folder instead of TCP.
    pub fn start_unix(extra: &str) -> Stormbreaker {
        Self::start_on(true, true, extra)
    }

    fn start_on(unix: bool, trace_header: bool, extra: &str) -> Stormbreaker {
        let dir = scratch_dir("sb-milter.");
        let port = free_port();
        let listen = if unix {
            dir.path().join("milter.sock").display().to_string()
        } else {
            format!("127.0.0.1:{port}")
        };
        let config = format!(
            "[milter]\nlisten = \"{listen}\"\ntrace_header = {trace_header}\n\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
             [quarantine]\ndir = \"{q}\"\n\n{extra}\n",
            q = dir.path().join("quarantine").display()
        );
        let config_path = dir.path().join("stormbreaker.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stormbreaker"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the stormbreaker binary");
        let mut sb = Stormbreaker {
            child: Some(child),
            port,
            dir,
            unix,
        };
        wait_for("stormbreaker to listen", || {
            if let Some(status) = sb.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("stormbreaker exited with {status}: {}", sb.log());
            }
            if unix {
                std::os::unix::net::UnixStream::connect(sb.socket_path())
                    .ok()
                    .map(|_| ())
            } else {
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
            }
        });
        sb
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("milter.sock")
    }

    /// The address as Postfix's `smtpd_milters` wants it.
    pub fn milter_address(&self) -> String {
        if self.unix {
            format!("unix:{}", self.socket_path().display())
        } else {
            format!("inet:127.0.0.1:{}", self.port)
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The JSON log lines whose message contains `text`.
    pub fn log_lines(&self, text: &str) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(text)))
            .collect()
    }

    /// SIGTERM, then wait for the process to end; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Stormbreaker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message for [`send`].
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message with headers, lines separated by `\r\n`.
    pub data: String,
    /// Send MAIL and RCPT, then RSET instead of DATA (the MTA tells the milter ABORT).
    pub rset: bool,
}

/// What the server said to one message: the stage it ended at (`connect`, `mail`, `rcpt`,
/// `data`) and the reply code and text there.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stage: String,
    pub code: u16,
    pub text: String,
}

const CLIENT: &str = r#"
import json, smtplib, sys
port = int(sys.argv[1])
mails = json.load(sys.stdin)
out = []
try:
    s = smtplib.SMTP("127.0.0.1", port, timeout=120)
    s.ehlo("client.corp.test")
except smtplib.SMTPConnectError as e:
    print(json.dumps([{"stage": "connect", "code": e.smtp_code, "text": str(e.smtp_error)}] * len(mails)))
    sys.exit(0)
for m in mails:
    code, text = s.mail(m["from"])
    if code != 250:
        out.append({"stage": "mail", "code": code, "text": text.decode(errors="replace")})
        s.rset()
        continue
    bad = None
    for r in m["to"]:
        c, t = s.rcpt(r)
        if c not in (250, 251) and bad is None:
            bad = (c, t)
    if bad:
        out.append({"stage": "rcpt", "code": bad[0], "text": bad[1].decode(errors="replace")})
        s.rset()
        continue
    if m["rset"]:
        code, text = s.rset()
        out.append({"stage": "rset", "code": code, "text": text.decode(errors="replace")})
        continue
    try:
        code, text = s.data(m["data"].encode())
    except smtplib.SMTPDataError as e:
        code, text = e.smtp_code, e.smtp_error
    out.append({"stage": "data", "code": code, "text": text.decode(errors="replace")})
s.quit()
print(json.dumps(out))
"#;

/// Sends `mails` in ONE SMTP session to 127.0.0.1:`port` with Python's smtplib.
pub fn send(port: u16, mails: &[Mail]) -> Vec<Outcome> {
    let input = serde_json::Value::Array(
        mails
            .iter()
            .map(
                |m| serde_json::json!({"from": m.from, "to": m.to, "data": m.data, "rset": m.rset}),
            )
            .collect(),
    );
    let mut child = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string()])
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

/// A plain message with a unique subject.
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
