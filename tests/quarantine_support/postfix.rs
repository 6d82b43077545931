//! Real peers: a recording SMTP sink (sink.py) and a private Postfix instance relaying to it
//! (see `postfix_support`). Both bind to 127.0.0.1 on free ports and are stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../postfix_support/mod.rs"]
mod postfix_support;
#[allow(unused_imports)] // not every test crate starts a Postfix
pub use postfix_support::{Postfix, free_port};

/// Polls until `f` returns Some, or panics naming `what` after a generous limit (a hang guard,
/// not a timing assertion).
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One transaction the sink accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub mail_from: String,
    /// Full RCPT TO arguments, e.g. `<a@b> NOTIFY=FAILURE ORCPT=rfc822;a@b`.
    pub rcpts: Vec<String>,
    pub bytes: Vec<u8>,
}

impl Delivered {
    /// The recipient addresses without brackets or parameters.
    pub fn addresses(&self) -> Vec<String> {
        self.rcpts
            .iter()
            .map(|r| {
                let start = r.find('<').map_or(0, |i| i + 1);
                let end = r.find('>').unwrap_or(r.len());
                r[start..end].to_string()
            })
            .collect()
    }
}

pub struct Sink {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Sink {
    pub fn start(dir: &Path) -> Sink {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/quarantine_support/sink.py"
        );
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 for the recording sink");
        wait_for("the sink to listen", || {
            dir.join("ready").exists().then_some(())
        });
        Sink {
            port,
            dir: dir.to_path_buf(),
            child,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every transaction recorded so far, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|eml| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(eml.with_extension("json")).unwrap())
                        .unwrap();
                Delivered {
                    mail_from: meta["mail_from"].as_str().unwrap().to_string(),
                    rcpts: meta["rcpts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    bytes: std::fs::read(&eml).unwrap(),
                }
            })
            .collect()
    }

    /// Waits until at least `n` transactions are recorded.
    pub fn wait_delivered(&self, n: usize) -> Vec<Delivered> {
        wait_for(&format!("{n} message(s) at the sink"), || {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
    }

    pub fn set_flag(&self, name: &str, content: &str) {
        std::fs::write(self.dir.join(name), content).unwrap();
    }

    pub fn clear_flag(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message without the trace headers an MTA put on top (Received and its continuation
/// lines, Return-Path, X-Original-To, Delivered-To).
pub fn strip_trace(bytes: &[u8]) -> &[u8] {
    let mut rest = bytes;
    let mut in_trace = false;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
        let Some(end) = line_end else { return rest };
        let line = &rest[..end];
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        let lower = line.to_ascii_lowercase();
        let trace = [
            &b"received:"[..],
            b"return-path:",
            b"x-original-to:",
            b"delivered-to:",
        ]
        .iter()
        .any(|h| lower.starts_with(h));
        if trace || (continuation && in_trace) {
            in_trace = true;
            rest = &rest[end..];
        } else {
            return rest;
        }
    }
}
