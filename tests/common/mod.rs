//! Shared harness for integration tests: free ports, a private Postfix instance, the proxy as a
//! real process, a recording sink, and real clients (swaks, raw sockets for crafted bytes).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stormbreaker::sink::RecordingSink;

#[path = "../postfix_support/mod.rs"]
mod postfix_support;
#[allow(unused_imports)] // not every test crate starts a Postfix
pub use postfix_support::{Postfix, free_port};

pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// A new recording sink on a free loopback port.
pub fn sink() -> RecordingSink {
    runtime()
        .block_on(RecordingSink::start("127.0.0.1:0"))
        .expect("start recording sink")
}

/// Polls `cond` until it holds or `limit` passes (a wait for asynchronous delivery, not a
/// timing assertion). Returns whether it held.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run the README's test command (.ci/run), which installs it"
    );
}

pub fn wait_port(port: u16, limit: Duration) -> bool {
    wait_for(limit, || TcpStream::connect(("127.0.0.1", port)).is_ok())
}

/// The stormbreaker binary running `run --config` on a generated policy file.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Proxy {
    /// Starts the proxy in front of `upstream_port`; `extra` is appended to the policy file
    /// (extra `[proxy]` keys go in `proxy_extra`).
    pub fn start(upstream_port: u16, proxy_extra: &str, extra: &str) -> Proxy {
        Self::start_with(upstream_port, proxy_extra, "", extra)
    }

    /// As `start`, with extra `[upstream]` keys too.
    pub fn start_with(
        upstream_port: u16,
        proxy_extra: &str,
        upstream_extra: &str,
        extra: &str,
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("policy.toml");
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"sb.test\"\n{proxy_extra}\n\
[upstream]\naddress = \"127.0.0.1:{upstream_port}\"\n{upstream_extra}\n\
[quarantine]\ndir = \"{q}\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n{extra}\n",
            q = dir.path().join("quarantine").display()
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stormbreaker"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stormbreaker");
        let proxy = Proxy {
            child,
            port,
            dir,
            config,
        };
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "proxy did not listen: {}",
            proxy.log()
        );
        proxy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for the process to exit; returns its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A raw SMTP client for crafted bytes (pipelining and smuggling tests).
pub struct Raw {
    pub reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut raw = Raw {
            reader: BufReader::new(s),
        };
        let greeting = raw.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        raw
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

/// Location of the shared test corpora (shared/ beside the checkout).
pub fn corpora() -> PathBuf {
    if let Ok(p) = std::env::var("STORMBREAKER_CORPORA") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora")
}

/// Postfix's smtp-sink as an upstream with failure flags (`-q .`, `-r .`, `-f .`, `-8`, `-p`).
pub struct SmtpSink {
    child: Child,
    pub port: u16,
}

impl SmtpSink {
    pub fn start(flags: &[&str]) -> SmtpSink {
        require_tool("smtp-sink");
        let port = free_port();
        let child = Command::new("smtp-sink")
            .arg("-u")
            .arg("nobody")
            .args(flags)
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn smtp-sink");
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "smtp-sink did not listen"
        );
        SmtpSink { child, port }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cleanups for peers kept in statics (never dropped): run when the test process exits.
static CLEANUP: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn run_cleanup() {
    let tasks: Vec<_> = CLEANUP
        .lock()
        .map(|mut v| v.drain(..).collect())
        .unwrap_or_default();
    for task in tasks {
        task();
    }
}

pub fn at_exit(task: impl FnOnce() + Send + 'static) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: atexit only stores the function pointer; run_cleanup is a plain extern "C" fn.
    REGISTER.call_once(|| unsafe {
        atexit(run_cleanup);
    });
    if let Ok(mut v) = CLEANUP.lock() {
        v.push(Box::new(task));
    }
}

impl Postfix {
    /// For a Postfix kept in a static: stop it when the test process exits.
    pub fn stop_at_exit(&self) {
        let dir = self.dir.clone();
        at_exit(move || postfix_support::stop(&dir));
    }
}

impl Proxy {
    /// For a proxy kept in a static: kill it when the test process exits.
    pub fn kill_at_exit(&self) {
        let pid = self.child.id().to_string();
        at_exit(move || {
            let _ = Command::new("kill").arg("-KILL").arg(pid).output();
        });
    }
}
