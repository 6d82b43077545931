//! Decisions per second and latency per decision, in-process state beside Redis state (one
//! standalone server, and a 3-primary Redis Cluster), with 1 and 3 nodes, in one run:
//! `cargo bench --bench redis`. Starts its own redis-servers on free loopback ports. The nodes
//! are engines in this one process (on this machine's 2 cores), each with its own Redis
//! connection, as separate hosts would have; the in-process baseline gives each node its own
//! store (what nodes without Redis have).
//!
//! Every decision is a wide reply through `Engine::decide` (header parsing included, the same for
//! both backends); threads change every 20 replies, so most decisions count and some trip.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stormbreaker::config::Config;
use stormbreaker::engine::Engine;
use stormbreaker::envelope::Envelope;

/// A redis-server child process on a free loopback port, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let server = RedisServer { child, port };
        for _ in 0..500 {
            if server.cli(&["PING"]).trim() == "PONG" {
                return server;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {port} does not answer");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3-primary Redis Cluster of child processes, killed on drop.
struct Cluster {
    nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                let bus = free_port();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf.display().to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                ])
            })
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli");
        assert!(status.success(), "redis-cli --cluster create failed");
        for _ in 0..200 {
            if nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return Cluster { nodes, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster never became ok");
    }

    fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where a benchmark's state lives.
enum Backend<'a> {
    Memory,
    Standalone(&'a RedisServer),
    Cluster(&'a Cluster),
}

/// The Atos list, with state as `backend` says.
fn config(backend: &Backend<'_>) -> Config {
    let state = match backend {
        Backend::Memory => String::new(),
        Backend::Standalone(server) => format!(
            "[state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"bench:\"\ntimeout = \"200ms\"\n",
            server.url()
        ),
        Backend::Cluster(cluster) => format!(
            "[state]\nbackend = \"redis\"\nmode = \"cluster\"\nnodes = {}\nprefix = \"bench:\"\n\
             timeout = \"200ms\"\n",
            cluster.seeds()
        ),
    };
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n{state}\n\
         [[lists]]\naddress = \"all@atos.test\"\nmembers = 91053\n"
    );
    Config::parse(&text, Path::new("bench-redis.toml")).expect("bench config")
}

/// Reply `n` on `subject` in one of four mail clients' header shapes (Outlook Thread-Topic,
/// Thunderbird In-Reply-To, Gmail reply-to-a-reply, a phone's subject prefix).
fn reply(n: usize, subject: &str) -> String {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `tasks` concurrent sessions each making `per_task` decisions; returns (decisions/s, latencies).
async fn run(
    engine: Arc<Engine>,
    tag: &str,
    tasks: usize,
    per_task: usize,
) -> (f64, Vec<Duration>) {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let engine = engine.clone();
        let tag = tag.to_string();
        set.spawn(async move {
            let env = Envelope::to(&format!("user{t}@atos.test"), &["all@atos.test"]);
            let mut lat = Vec::with_capacity(per_task);
            for i in 0..per_task {
                let headers = reply(i, &format!("{tag} thread {t}-{}", i / 20));
                let began = Instant::now();
                std::hint::black_box(engine.decide(&env, headers.as_bytes(), now_ms()).await);
                lat.push(began.elapsed());
            }
            lat
        });
    }
    let mut all: Vec<Duration> = set.join_all().await.into_iter().flatten().collect();
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_unstable();
    (rate, all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e6
}

/// `nodes` engines on one backend, `sessions` per node at once: per-node decisions/s (the
/// mean over nodes) and every decision's latency.
async fn run_nodes(
    engines: &[Arc<Engine>],
    tag: &str,
    sessions: usize,
    per_session: usize,
) -> (f64, Vec<Duration>) {
    let mut set = tokio::task::JoinSet::new();
    for (n, engine) in engines.iter().enumerate() {
        let engine = engine.clone();
        let tag = format!("{tag}-node{n}");
        set.spawn(async move { run(engine, &tag, sessions, per_session).await });
    }
    let results = set.join_all().await;
    let rate = results.iter().map(|(r, _)| r).sum::<f64>() / results.len() as f64;
    let mut all: Vec<Duration> = results.into_iter().flat_map(|(_, l)| l).collect();
    all.sort_unstable();
    (rate, all)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then only a smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let server = RedisServer::start();
    let cluster = Cluster::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_node = if quick { 200 } else { 20_000 };
    println!(
        "{:<10} {:>5} {:>9} {:>14} {:>9} {:>9} {:>9} {:>13}",
        "backend",
        "nodes",
        "sessions",
        "decisions/s/n",
        "x memory",
        "p50 us",
        "p99 us",
        "p99 added us"
    );
    rt.block_on(async {
        for nodes in [1usize, 3] {
            for sessions in [1usize, 16] {
                let mut baseline: Option<(f64, f64)> = None;
                for (name, backend) in [
                    ("memory", Backend::Memory),
                    ("standalone", Backend::Standalone(&server)),
                    ("cluster", Backend::Cluster(&cluster)),
                ] {
                    let mut engines = Vec::new();
                    for _ in 0..nodes {
                        let engine = match backend {
                            Backend::Memory => Engine::new(&config(&backend)).unwrap(),
                            _ => Engine::from_config(&config(&backend)).await.unwrap(),
                        };
                        engines.push(Arc::new(engine));
                    }
                    let tag = format!("{name}{nodes}x{sessions}");
                    run_nodes(&engines, &format!("warm{tag}"), sessions, 50).await;
                    let (rate, lat) =
                        run_nodes(&engines, &tag, sessions, per_node / sessions).await;
                    let p99 = pct(&lat, 0.99);
                    let (base_rate, base_p99) = *baseline.get_or_insert((rate, p99));
                    println!(
                        "{name:<10} {nodes:>5} {sessions:>9} {rate:>14.0} {:>9.3} {:>9.1} {p99:>9.1} {:>13.1}",
                        rate / base_rate,
                        pct(&lat, 0.5),
                        p99 - base_p99
                    );
                }
            }
        }
    });
    for (name, node) in std::iter::once(("standalone", &server))
        .chain(cluster.nodes.iter().map(|n| ("cluster node", n)))
    {
        let keys = node.cli(&["DBSIZE"]);
        println!("{name} {}: {} keys", node.port, keys.trim());
    }
}
