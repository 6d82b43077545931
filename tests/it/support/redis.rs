//! redis-server on a free loopback port, stopped on drop (also when a test panics). Tests that
//! only read and write their own keys (a prefix of their own) share [`RedisServer::shared`];
//! tests that stop, freeze or flush the server start their own.

use super::{at_exit, free_port};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A redis-server process; `stop` ends it, `start` brings a new one up on the same port.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    running: bool,
}

impl RedisServer {
    pub fn start_new() -> RedisServer {
        let mut server = RedisServer::not_started();
        server.start();
        server
    }

    /// The suite's shared server, started at first use and shut down when the process exits.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let server = RedisServer::start_new();
            let port = server.port.to_string();
            let dir = server.dir.path().to_path_buf();
            at_exit(move || {
                let _ = Command::new("redis-cli")
                    .args(["-h", "127.0.0.1", "-p", &port, "SHUTDOWN", "NOSAVE"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(dir);
            });
            server
        })
    }

    /// A free port with no server on it yet (`start` brings one up).
    pub fn not_started() -> RedisServer {
        RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            running: false,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("redis.pid")
    }

    /// Starts redis-server on `self.port` and waits until it answers PING.
    pub fn start(&mut self) {
        let status = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .arg("--pidfile")
            .arg(self.pidfile())
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .status()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        assert!(status.success(), "redis-server failed to start");
        self.running = true;
        for _ in 0..500 {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {} does not answer", self.port);
    }

    /// Shuts the server down without saving and waits until its process is gone.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let pid = self.pid();
        self.cli(&["SHUTDOWN", "NOSAVE"]);
        if let Some(pid) = pid {
            for _ in 0..500 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.running = false;
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pidfile())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: a Redis that accepts but never answers.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis pid");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Runs `redis-cli -p PORT ARGS...`, returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.running {
            // A frozen server cannot shut down: thaw it first.
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            self.stop();
        }
    }
}
