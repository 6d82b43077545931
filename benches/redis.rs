//! Decisions per second and latency per decision, in-process state beside Redis state, in one
//! run: `cargo bench --bench redis`. Starts its own redis-server on a free loopback port.
//!
//! Every decision is a wide reply through `Engine::decide` (header parsing included, the same for
//! both backends); threads change every 20 replies, so most decisions count and some trip.

#[path = "../tests/redis_support/mod.rs"]
mod redis_support;

use redis_support::{RedisServer, config, reply};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stormbreaker::engine::Engine;
use stormbreaker::envelope::Envelope;

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
    let server = RedisServer::start_new();
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
        let memory = Arc::new(Engine::new(&config(None, "")).unwrap());
        let cfg = config(Some((&server.url(), "bench:")), "");
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
