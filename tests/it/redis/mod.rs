//! Breaker state in a real redis-server: the Redis store against the in-process one, several
//! engines ("nodes") on one Redis, Redis outages, and two proxies on one Redis. Storm helpers
//! shared by these tests are here.

mod e2e;
mod modes;
mod nodes;
mod outage;
mod store;

use std::path::Path;
use stormbreaker::breaker::{Limits, Rule};
use stormbreaker::config::Config;
use stormbreaker::fingerprint::ThreadKey;
use stormbreaker::store::Counter;

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

/// A runtime with two workers, as the proxies have.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Breaker limits with the shipped window and blocks, tripping at `trip`.
fn limits(trip: u32) -> Limits {
    Limits {
        trip,
        window_s: 3600,
        block_s: 6 * 3600,
        max_block_s: 48 * 3600,
        fast_senders: 5,
        fast_window_s: 300,
    }
}

/// A new wide message's two counters: its me-too key (trips at 3) and its wave key (at 4).
fn me_too_and_wave<'a>(me_too: &'a ThreadKey, wave: &'a ThreadKey) -> [Counter<'a>; 2] {
    [
        Counter {
            keys: std::slice::from_ref(me_too),
            rule: Rule::MeToo,
            limits: limits(3),
        },
        Counter {
            keys: std::slice::from_ref(wave),
            rule: Rule::Wave,
            limits: limits(4),
        },
    ]
}

/// A config with the Atos list, on Redis at `url` with `prefix` (or in memory for `None`).
fn config(redis: Option<(&str, &str)>, extra: &str) -> Config {
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

/// Arrival times of an Atos-shaped storm: `n` replies over 30 minutes, accelerating.
fn storm_times(n: usize, seed: u64) -> Vec<u64> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t: Vec<u64> = (0..n)
        .map(|_| T0 + MIN + (rng.random_range(0.0f64..1.0).sqrt() * (30 * MIN) as f64) as u64)
        .collect();
    t.sort_unstable();
    t
}

/// One SMTP transaction of `content` from `from` to the big list; the answer to the dot.
fn send(port: u16, from: &str, content: &str) -> String {
    crate::support::clients::send_message(port, from, &["all@atos.test"], &format!("{content}\r\n"))
}
