//! The other ways sites run Redis, as real servers on loopback ports: a 3-primary Redis Cluster
//! (`redis-server --cluster-enabled yes` x3, joined by `redis-cli --cluster create`), a
//! Sentinel set (a primary, a replica and three sentinels, `redis-server --sentinel`), and a
//! TLS-only server with a test CA that also asks for client certificates. The Cluster and the
//! TLS server are started once per suite and shut down at exit (tests keep to a key prefix of
//! their own); a Sentinel set is per test, since its test kills the primary.

use super::peers::TestCa;
use super::{at_exit, free_port, scratch_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One redis-server (or sentinel) process started daemonized from a config file.
pub struct Daemon {
    pub port: u16,
    pidfile: PathBuf,
    /// Arguments that make redis-cli reach it (TLS flags included).
    cli_args: Vec<String>,
}

impl Daemon {
    /// Writes `config` (plus port, pidfile, log, dir) to DIR/NAME.conf and starts it.
    fn start(dir: &Path, name: &str, port: u16, config: &str, sentinel: bool) -> Daemon {
        let pidfile = dir.join(format!("{name}.pid"));
        let path = dir.join(format!("{name}.conf"));
        let tls = config.contains("tls-port");
        let port_line = if tls {
            "port 0".to_string()
        } else {
            format!("port {port}")
        };
        std::fs::write(
            &path,
            format!(
                "{port_line}\nbind 127.0.0.1\ndaemonize yes\npidfile {}\nlogfile {}\ndir {}\n\
                 save \"\"\nappendonly no\n{config}\n",
                pidfile.display(),
                dir.join(format!("{name}.log")).display(),
                dir.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("redis-server");
        cmd.arg(&path);
        if sentinel {
            cmd.arg("--sentinel");
        }
        let status = cmd
            .stdout(Stdio::null())
            .status()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        assert!(status.success(), "redis-server {name} failed to start");
        Daemon {
            port,
            pidfile,
            cli_args: vec![
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
        }
    }

    fn with_cli_args(mut self, extra: &[String]) -> Daemon {
        self.cli_args.extend_from_slice(extra);
        self
    }

    fn wait_ping(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} on port {} does not answer", self.port);
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// SIGKILL: a primary that dies without a word.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            signal_and_wait(pid, "-KILL");
        }
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli_args)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM, and waits until it has exited: it writes its files on the way out, and only
    /// then can its folder be removed.
    fn shutdown(&self) {
        if let Some(pid) = self.pid() {
            signal_and_wait(pid, "-TERM");
        }
    }
}

/// Sends `signal` to `pid` and waits (up to 5 s) until the process is gone.
fn signal_and_wait(pid: u32, signal: &str) {
    // Quietly: a daemon a test killed already has left its pidfile behind.
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    for _ in 0..500 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A 3-primary Redis Cluster, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<Daemon>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// The suite's cluster, made at first use and shut down when the process exits.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = RedisCluster::start();
            let pids: Vec<u32> = cluster.nodes.iter().filter_map(Daemon::pid).collect();
            // A static is never dropped: its folder goes here, once the nodes have exited.
            let dir = cluster._dir.path().to_path_buf();
            at_exit(move || {
                for pid in pids {
                    signal_and_wait(pid, "-TERM");
                }
                let _ = std::fs::remove_dir_all(dir);
            });
            cluster
        })
    }

    fn start() -> RedisCluster {
        let dir = scratch_dir("sb-cluster.");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = free_port();
            // The bus port set explicitly: port + 10000 may be past 65535 or taken.
            let bus = free_port();
            let node = Daemon::start(
                dir.path(),
                &format!("node{i}"),
                port,
                &format!(
                    "cluster-enabled yes\ncluster-config-file nodes-{i}.conf\n\
                     cluster-node-timeout 2000\ncluster-port {bus}\n"
                ),
                false,
            );
            node.wait_ping("cluster node");
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes, _dir: dir }
    }

    /// `nodes = [...]` for `[state]`: every node, as a site lists its seeds.
    pub fn seeds_toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Keys matching `pattern` on each primary (one count per node).
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| {
                n.cli(&["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .count()
            })
            .collect()
    }
}

/// A primary, its replica and three sentinels (quorum 2) watching it as `master_name`.
pub struct SentinelSet {
    pub primary: Daemon,
    pub replica: Daemon,
    pub sentinels: Vec<Daemon>,
    pub master_name: String,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let dir = scratch_dir("sb-sentinel.");
        let primary_port = free_port();
        let primary = Daemon::start(dir.path(), "primary", primary_port, "", false);
        primary.wait_ping("primary");
        let replica_port = free_port();
        let replica = Daemon::start(
            dir.path(),
            "replica",
            replica_port,
            &format!("replicaof 127.0.0.1 {primary_port}\n"),
            false,
        );
        replica.wait_ping("replica");
        let master_name = "sbprimary".to_string();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let s = Daemon::start(
                dir.path(),
                &format!("sentinel{i}"),
                port,
                &format!(
                    "sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {master_name} 1000\n\
                     sentinel failover-timeout {master_name} 5000\n\
                     sentinel parallel-syncs {master_name} 1\n"
                ),
                true,
            );
            s.wait_ping("sentinel");
            sentinels.push(s);
        }
        let set = SentinelSet {
            primary,
            replica,
            sentinels,
            master_name,
            _dir: dir,
        };
        // The replica in sync, and every sentinel knowing it, before a test kills the primary.
        set.wait_until("the replica to sync and the sentinels to see it", || {
            set.replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
                && set.sentinels.iter().all(|s| {
                    s.cli(&["SENTINEL", "REPLICAS", &set.master_name])
                        .contains(&set.replica.port.to_string())
                })
        });
        set
    }

    pub fn wait_until(&self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The primary's port as the first sentinel names it now.
    pub fn primary_port_now(&self) -> Option<u16> {
        let out =
            self.sentinels[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name]);
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }

    pub fn sentinels_toml(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for s in &self.sentinels {
            s.shutdown();
        }
        self.primary.shutdown();
        self.replica.shutdown();
    }
}

/// A redis-server reachable only over TLS, with a test CA, that asks for client certificates.
pub struct TlsRedis {
    pub server: Daemon,
    pub ca: TestCa,
    /// A client certificate and key the CA signed (extendedKeyUsage clientAuth).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsRedis {
    pub fn shared() -> &'static TlsRedis {
        static SHARED: OnceLock<TlsRedis> = OnceLock::new();
        SHARED.get_or_init(|| {
            let tls = TlsRedis::start();
            tls.ca.remove_at_exit();
            let pid = tls.server.pid();
            at_exit(move || {
                if let Some(pid) = pid {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
            });
            tls
        })
    }

    fn start() -> TlsRedis {
        let ca = TestCa::new(&[]);
        let dir = ca.ca().parent().unwrap().to_path_buf();
        let client_cert = dir.join("client.crt");
        let client_key = dir.join("client.key");
        let ext = dir.join("client.ext");
        std::fs::write(
            &ext,
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
             extendedKeyUsage = clientAuth\n",
        )
        .unwrap();
        let csr = dir.join("client.csr");
        let ok = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let p = |p: &Path| p.display().to_string();
        ok(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &p(&client_key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=stormbreaker node",
        ]);
        ok(&[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca.ca()),
            "-CAkey",
            &p(&dir.join("ca.key")),
            "-set_serial",
            "7",
            "-days",
            "30",
            "-extfile",
            &p(&ext),
            "-out",
            &p(&client_cert),
        ]);
        let port = free_port();
        let server = Daemon::start(
            &dir,
            "tls-redis",
            port,
            &format!(
                "tls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients yes\n",
                p(&dir.join("server.crt")),
                p(&ca.key()),
                p(&ca.ca())
            ),
            false,
        )
        .with_cli_args(&[
            "--tls".into(),
            "--cacert".into(),
            p(&ca.ca()),
            "--cert".into(),
            p(&client_cert),
            "--key".into(),
            p(&client_key),
        ]);
        server.wait_ping("TLS redis-server");
        TlsRedis {
            server,
            ca,
            client_cert,
            client_key,
        }
    }

    /// `[state]` keys for this server (url, CA, client certificate) with `prefix`.
    pub fn state_toml(&self, prefix: &str) -> String {
        format!(
            "[state]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:{}/\"\nprefix = \"{prefix}\"\n\
             tls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            self.server.port,
            self.ca.ca().display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}
