//! The real stormbreaker binary: `run --config` on a generated policy file as proxy, milter or
//! both, logging JSON lines to a file; and its administrator's commands.

use super::wait::wait_for;
use super::{at_exit, free_port, scratch_dir};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The fields every held entry of `quarantine list --json` carries (README, Quarantine).
pub const HELD_ENTRY_FIELDS: [&str; 11] = [
    "id",
    "mail_from",
    "rcpt_to",
    "message_id",
    "subject",
    "reason",
    "received_at",
    "size",
    "thread",
    "list",
    "breaker",
];

/// Asserts that a held entry of `quarantine list --json` has every documented field, filled.
pub fn assert_held_entry_fields(entry: &serde_json::Value) {
    for field in HELD_ENTRY_FIELDS {
        assert!(!entry[field].is_null(), "{field} missing in {entry}");
    }
}

/// The binary with nothing from the test's environment that would change its logging, run as
/// administrator `alice` (the audit log's `who`).
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stormbreaker"));
    cmd.env_remove("RUST_LOG")
        .env("USER", "alice")
        .env_remove("SUDO_USER");
    cmd
}

/// A running `stormbreaker run`; killed when dropped.
pub struct Stormbreaker {
    child: Option<Child>,
    /// The listener: the proxy's SMTP port, or the milter's TCP port.
    pub port: u16,
    /// Holds the policy file, the log and the quarantine.
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    milter_socket: Option<PathBuf>,
}

impl Stormbreaker {
    /// The proxy in front of 127.0.0.1:`upstream`; `proxy_keys` go in `[proxy]`, `extra` after
    /// everything (policy, lists, a milter beside the proxy...).
    pub fn proxy(upstream: u16, proxy_keys: &str, extra: &str) -> Stormbreaker {
        Self::proxy_with(upstream, proxy_keys, "", extra)
    }

    /// As `proxy`, with `[upstream]` keys too.
    pub fn proxy_with(
        upstream: u16,
        proxy_keys: &str,
        upstream_keys: &str,
        extra: &str,
    ) -> Stormbreaker {
        Self::proxy_full(
            upstream,
            proxy_keys,
            upstream_keys,
            "",
            "format = \"json\"\nlevel = \"info\"",
            extra,
        )
    }

    /// As `proxy`, with `quarantine_keys` in `[quarantine]` (beside its dir).
    pub fn proxy_with_quarantine(
        upstream: u16,
        quarantine_keys: &str,
        extra: &str,
    ) -> Stormbreaker {
        Self::proxy_full(
            upstream,
            "",
            "",
            quarantine_keys,
            "format = \"json\"\nlevel = \"info\"",
            extra,
        )
    }

    /// As `proxy`, with `log_keys` as the `[log]` section (standard error goes to the file
    /// `log` in its folder).
    pub fn proxy_logging(upstream: u16, log_keys: &str, extra: &str) -> Stormbreaker {
        Self::proxy_full(upstream, "", "", "", log_keys, extra)
    }

    fn proxy_full(
        upstream: u16,
        proxy_keys: &str,
        upstream_keys: &str,
        quarantine_keys: &str,
        log_keys: &str,
        extra: &str,
    ) -> Stormbreaker {
        let dir = scratch_dir("sb-proxy.");
        let port = free_port();
        let config = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"sb.test\"\n{proxy_keys}\n\n\
             [upstream]\naddress = \"127.0.0.1:{upstream}\"\n{upstream_keys}\n\n\
             [quarantine]\ndir = \"{q}\"\n{quarantine_keys}\n\n[log]\n{log_keys}\n\n{extra}\n",
            q = dir.path().join("quarantine").display()
        );
        Self::run(dir, &config, port, None)
    }

    /// The milter on TCP; `extra` is more TOML after `[milter]` (policy, lists...). With
    /// `trace_header = true`, so every delivered message shows the decision.
    pub fn milter(extra: &str) -> Stormbreaker {
        Self::start_milter(false, true, extra)
    }

    /// Listening on a unix socket in its own folder instead of TCP.
    pub fn milter_on_unix_socket(extra: &str) -> Stormbreaker {
        Self::start_milter(true, true, extra)
    }

    /// The milter on TCP without the trace header: what a site runs, so the decision shows only
    /// in the log, the quarantine and the signed mark.
    pub fn milter_without_trace_header(extra: &str) -> Stormbreaker {
        Self::start_milter(false, false, extra)
    }

    /// The milter on a unix socket (or TCP) with or without the trace header.
    pub fn start_milter(unix: bool, trace_header: bool, extra: &str) -> Stormbreaker {
        let dir = scratch_dir("sb-milter.");
        let port = free_port();
        let socket = unix.then(|| dir.path().join("milter.sock"));
        let listen = match &socket {
            Some(path) => path.display().to_string(),
            None => format!("127.0.0.1:{port}"),
        };
        let config = format!(
            "[milter]\nlisten = \"{listen}\"\ntrace_header = {trace_header}\n\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\n\
             [quarantine]\ndir = \"{q}\"\n\n{extra}\n",
            q = dir.path().join("quarantine").display()
        );
        Self::run(dir, &config, port, socket)
    }

    /// Writes the policy, starts the binary and waits until its listener answers.
    fn run(
        dir: tempfile::TempDir,
        config_text: &str,
        port: u16,
        milter_socket: Option<PathBuf>,
    ) -> Stormbreaker {
        let config = dir.path().join("policy.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut sb = Stormbreaker {
            child: None,
            port,
            dir,
            config,
            milter_socket,
        };
        sb.spawn();
        sb
    }

    /// Starts the process again on the same policy, quarantine and log (after `kill` or
    /// `stop`; a process still running is killed first), and waits until it listens.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        // The log is kept across restarts: a restart is ready at its own line.
        let started_before = listening_lines(&self.log());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = command()
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stormbreaker");
        self.child = Some(child);
        let sb = self;
        let port = sb.port;
        let listening = wait_for(|| {
            if let Some(status) = sb.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("stormbreaker exited with {status}: {}", sb.log());
            }
            // The listeners are bound before the engine and its lists are ready (so a port
            // below 1024 can be bound before privileges drop): a connection is taken into the
            // backlog early, so ready is when the front end says it listens (or, logging
            // elsewhere than the file, when the proxy greets).
            match &sb.milter_socket {
                Some(path) => {
                    listening_lines(&sb.log()) > started_before
                        && std::os::unix::net::UnixStream::connect(path).is_ok()
                }
                None => {
                    let log = sb.log();
                    if log.trim().is_empty() {
                        greets(port)
                    } else {
                        listening_lines(&log) > started_before
                            && TcpStream::connect(("127.0.0.1", port)).is_ok()
                    }
                }
            }
        });
        assert!(
            listening.is_some(),
            "stormbreaker did not listen: {}",
            sb.log()
        );
    }

    /// The address as Postfix's `smtpd_milters` wants it.
    pub fn milter_address(&self) -> String {
        match &self.milter_socket {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("inet:127.0.0.1:{}", self.port),
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

    /// `stormbreaker quarantine list --json` on this process's quarantine.
    pub fn quarantine_list(&self) -> Vec<serde_json::Value> {
        let out = command()
            .args(["quarantine", "list", "--json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("quarantine list --json is a JSON list")
    }

    /// Runs `stormbreaker SUBCOMMAND ARGS... --config` with this process's policy file.
    pub fn admin(&self, args: &[&str]) -> Output {
        command()
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            child.kill().unwrap();
        }
    }

    /// Waits for the process to exit; returns its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then wait for the process to end; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        self.sigterm();
        let mut child = self.child.take().expect("running");
        child.wait().is_ok_and(|s| s.success())
    }

    /// For a process kept in a static: kill it and remove its folder when the test process
    /// exits.
    pub fn kill_at_exit(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let dir = self.dir.path().to_path_buf();
        at_exit(move || {
            let _ = Command::new("kill").arg("-KILL").arg(pid).output();
            let _ = std::fs::remove_dir_all(dir);
        });
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

/// How many times the log says a front end listens.
fn listening_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("SMTP proxy listening") || l.contains("milter listening"))
        .count()
}

/// Whether an SMTP server on `port` sends its 220 greeting.
fn greets(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).is_ok() && &buf[..3] == b"220"
}
