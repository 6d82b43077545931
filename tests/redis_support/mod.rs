//! A real redis-server on a free loopback port for the Redis state tests, stopped on drop
//! (also when a test panics), and a few storm helpers shared by those tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use stormbreaker::config::Config;

pub const T0: u64 = 1_700_000_000_000;
pub const SEC: u64 = 1000;
pub const MIN: u64 = 60 * SEC;
pub const HOUR: u64 = 60 * MIN;

/// A redis-server process; `stop` kills it, `start` brings a new one up on the same port.
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

    /// A free port with no server on it yet (`start` brings one up).
    pub fn not_started() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        RedisServer {
            port,
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
            .expect("redis-server is installed (apt-get install redis-server)");
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

/// A config with the Atos list, on Redis at `url` with `prefix` (or in memory for `None`).
pub fn config(redis: Option<(&str, &str)>, extra: &str) -> Config {
    let state = match redis {
        Some((url, prefix)) => format!(
            "[state]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout = \"200ms\"\n"
        ),
        None => String::new(),
    };
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n{state}{extra}\n\
         [[lists]]\naddress = \"all@atos.test\"\nmembers = 91053\n"
    );
    Config::parse(&text, Path::new("redis-test.toml")).expect("test config")
}

/// Reply `n` of a storm on `subject`, from one of four mail clients' header shapes (Outlook
/// Thread-Topic, Thunderbird In-Reply-To, Gmail reply-to-a-reply, a phone's subject prefix).
pub fn reply(n: usize, subject: &str) -> String {
    let id = format!("Message-ID: <r{n}@{subject}>\r\n");
    match n % 4 {
        0 => format!("{id}Subject: RE: {subject}\r\nThread-Topic: {subject}\r\n\r\n"),
        1 => format!(
            "{id}In-Reply-To: <root@{subject}>\r\nReferences: <root@{subject}>\r\n\
             Subject: Re: {subject}\r\n\r\n"
        ),
        2 => format!(
            "{id}In-Reply-To: <r{p}@{subject}>\r\nReferences: <root@{subject}> <r{p}@{subject}>\r\n\
             Subject: Re: {subject}\r\n\r\n",
            p = n / 2
        ),
        _ => format!("{id}Subject: AW: {subject}\r\n\r\n"),
    }
}

/// Arrival times of an Atos-shaped storm: `n` replies over 30 minutes, accelerating.
pub fn storm_times(n: usize, seed: u64) -> Vec<u64> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: Vec<u64> = (0..n)
        .map(|_| T0 + MIN + (rng.random_range(0.0f64..1.0).sqrt() * (30 * MIN) as f64) as u64)
        .collect();
    t.sort_unstable();
    t
}
