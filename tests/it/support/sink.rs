//! Where mail ends: [`Sink`], the one recording final hop (the library's `RecordingSink`, which
//! `stormbreaker demo` uses too), and upstreams that fail on purpose: Postfix's own smtp-sink
//! with its failure flags, and a script that drops reused connections.

use super::clients::script;
use super::wait::{wait_for, wait_port};
use super::{KillOnDrop, free_port, require_tool, runtime};
use std::borrow::Cow;
use std::process::{Command, Stdio};
use stormbreaker::demo::sink::RecordingSink;

pub use stormbreaker::demo::sink::Faults;

/// One transaction the sink accepted.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The MAIL FROM argument, e.g. `<a@b> SMTPUTF8`.
    pub mail_from: String,
    /// The RCPT TO arguments, e.g. `<a@b> NOTIFY=FAILURE ORCPT=rfc822;a@b`.
    pub rcpts: Vec<String>,
    /// The message as received, after dot-unstuffing.
    pub content: Vec<u8>,
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

    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.content)
    }

    /// Whether the content or a recipient mentions `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.text().contains(needle) || self.rcpts.iter().any(|r| r.contains(needle))
    }
}

/// A recording SMTP sink on a free loopback port, served by the harness's runtime; it keeps
/// every transaction in memory. Cloning shares it.
#[derive(Clone)]
pub struct Sink(RecordingSink);

impl Sink {
    pub fn start() -> Sink {
        // From a helper thread, so that tests running their own runtime can start one too.
        let sink = std::thread::spawn(|| runtime().block_on(RecordingSink::start("127.0.0.1:0")))
            .join()
            .expect("sink start-up thread")
            .expect("start recording sink");
        Sink(sink)
    }

    pub fn port(&self) -> u16 {
        self.0.addr.port()
    }

    pub fn address(&self) -> String {
        self.0.addr.to_string()
    }

    /// Every transaction accepted so far, in order.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.0
            .received()
            .into_iter()
            .map(|r| Delivered {
                mail_from: argument(&r.mail_from, "MAIL FROM:"),
                rcpts: r.rcpt_to.iter().map(|l| argument(l, "RCPT TO:")).collect(),
                content: r.content,
            })
            .collect()
    }

    /// Waits until at least `n` transactions have arrived; returns them all.
    pub fn wait_delivered(&self, n: usize) -> Vec<Delivered> {
        wait_for(|| {
            let d = self.delivered();
            (d.len() >= n).then_some(d)
        })
        .unwrap_or_else(|| panic!("gave up waiting for {n} message(s) at the sink"))
    }

    /// The transactions that mention `needle` (a test's token) in their content or recipients.
    pub fn mentioning(&self, needle: &str) -> Vec<Delivered> {
        self.delivered()
            .into_iter()
            .filter(|m| m.mentions(needle))
            .collect()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.0.set_faults(faults);
    }
}

/// `MAIL FROM:<a@b> X` -> `<a@b> X`.
fn argument(line: &str, verb: &str) -> String {
    let rest = match line.get(..verb.len()) {
        Some(head) if head.eq_ignore_ascii_case(verb) => &line[verb.len()..],
        _ => line,
    };
    rest.trim().to_string()
}

/// Postfix's smtp-sink as an upstream that fails on purpose: `flags` such as `-q .`
/// (disconnect after the dot), `-r .` (4xx there), `-f .` (5xx there), `-8`, `-p`, `-E`
/// (no 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES). It records nothing.
pub struct SmtpSink {
    _process: KillOnDrop,
    pub port: u16,
}

impl SmtpSink {
    pub fn start(flags: &[&str]) -> SmtpSink {
        require_tool("smtp-sink");
        let port = free_port();
        let child = Command::new("smtp-sink")
            .args(["-u", "nobody"])
            .args(flags)
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn smtp-sink");
        let process = KillOnDrop(child);
        assert!(wait_port(port), "smtp-sink did not listen");
        SmtpSink {
            _process: process,
            port,
        }
    }
}

/// An upstream that ends each connection at its second MAIL, as an MTA does with a session
/// that sat idle too long (`scripts/drops_second_mail.py`): `mode` "close" drops it silently,
/// "421" answers 421 first. It logs "session", "queued" and "dropped" events.
pub struct DropsSecondMail {
    _process: KillOnDrop,
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl DropsSecondMail {
    pub fn start(mode: &str) -> Self {
        let port = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("python3")
            .arg(script("drops_second_mail.py"))
            .arg(port.to_string())
            .arg(mode)
            .arg(log.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3");
        let process = KillOnDrop(child);
        assert!(wait_port(port), "drops_second_mail.py did not listen");
        DropsSecondMail {
            _process: process,
            port,
            log,
        }
    }

    /// How many times `event` happened.
    pub fn events(&self, event: &str) -> usize {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == event)
            .count()
    }
}
