//! Decisions per second and latency per decision, in-process state beside Redis state, in one
//! run: `cargo bench --bench redis`. Starts its own redis-server on a free loopback port.
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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

/// The Atos list, on Redis at `url` (or in process for `None`).
fn config(url: Option<&str>) -> Config {
    let state = url
        .map(|url| {
            format!(
                "[state]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"bench:\"\ntimeout = \"200ms\"\n"
            )
        })
        .unwrap_or_default();
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

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: then only a smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = if quick { 200 } else { 40_000 };
    println!(
        "{:<8} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "backend", "sessions", "decisions/s", "p50 us", "p99 us", "max us"
    );
    rt.block_on(async {
        let memory = Arc::new(Engine::new(&config(None)).unwrap());
        let cfg = config(Some(&server.url()));
        let redis = Arc::new(Engine::from_config(&cfg).await.unwrap());
        for sessions in [1usize, 16, 64] {
            for (name, engine) in [("memory", &memory), ("redis", &redis)] {
                let tag = format!("{name}{sessions}");
                run(engine.clone(), &format!("warm{tag}"), sessions, 50).await;
                let (rate, lat) = run(engine.clone(), &tag, sessions, total / sessions).await;
                println!(
                    "{name:<8} {sessions:>8} {rate:>12.0} {:>10.1} {:>10.1} {:>10.1}",
                    pct(&lat, 0.5),
                    pct(&lat, 0.99),
                    pct(&lat, 1.0)
                );
            }
        }
    });
    let keys = server.cli(&["DBSIZE"]);
    println!("redis keys after the run: {}", keys.trim());
    let stats = server.cli(&["INFO", "commandstats"]);
    for line in stats
        .lines()
        .filter(|l| l.contains("evalsha") || l.contains("cmdstat_eval"))
    {
        println!("redis {}", line.trim());
    }
}
