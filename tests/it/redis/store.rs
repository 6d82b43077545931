//! The Redis backend against a real redis-server: the same observations give the same outcomes
//! as the in-process store (random sequences and storm scenarios), every key has a TTL, and the
//! script survives SCRIPT FLUSH. Each test keeps to a key prefix of its own on the suite's
//! redis-server, except the one that flushes scripts, which starts its own.

use super::{HOUR, MIN, SEC, T0};
use crate::support::redis::RedisServer;
use rand::{Rng, SeedableRng, rngs::StdRng};
use stormbreaker::breaker::{Limits, Outcome, Phase, Rule};
use stormbreaker::config::StateConfig;
use stormbreaker::fingerprint::ThreadKey;
use stormbreaker::store::{MemoryStore, ObserveRequest, RedisStore, StateStore};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn redis_store(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::new(&StateConfig {
        url: Some(server.url()),
        prefix: prefix.into(),
        timeout: std::time::Duration::from_secs(2),
        ..StateConfig::default()
    })
    .unwrap()
}

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

/// The two stores side by side; every call goes to both and must agree.
struct Pair {
    memory: MemoryStore,
    redis: RedisStore,
}

impl Pair {
    async fn observe(
        &self,
        keys: &[ThreadKey],
        sender: u32,
        rule: Rule,
        fast: bool,
        limits: Limits,
        now_ms: u64,
    ) -> Vec<Outcome> {
        let req = ObserveRequest {
            keys,
            sender,
            rule,
            fast,
            limits,
            now_ms,
        };
        let m = self.memory.observe(&req).await.unwrap();
        let r = self.redis.observe(&req).await.unwrap();
        assert_eq!(m, r, "outcomes differ at {now_ms} for {keys:?}");
        m
    }

    async fn open_breakers(&self, now_ms: u64) -> usize {
        let m = self.memory.open_breakers(now_ms).await.unwrap();
        let r = self.redis.open_breakers(now_ms).await.unwrap();
        assert_eq!(m, r, "open breakers differ at {now_ms}");
        m.len()
    }

    async fn trip(&self, key: &ThreadKey, limits: &Limits, now_ms: u64) {
        self.memory.trip(key, limits, now_ms).await.unwrap();
        self.redis.trip(key, limits, now_ms).await.unwrap();
    }

    /// `compare`: whether both must agree that the key had state (the memory store forgets
    /// expired keys lazily, Redis when their TTL runs out in real time).
    async fn reset(&self, key: &ThreadKey, compare: bool) {
        let m = self.memory.reset(key).await.unwrap();
        let r = self.redis.reset(key).await.unwrap();
        if compare {
            assert_eq!(m, r, "reset of {key:?}");
        }
    }
}

#[test]
fn scripted_scenarios_match_the_memory_store() {
    let server = RedisServer::shared();
    let rt = rt();
    rt.block_on(async {
        let pair = Pair {
            memory: MemoryStore::new(10_000),
            redis: redis_store(server, "eq:"),
        };
        let root = ThreadKey::new("mid:root@atos.test");
        let subj = ThreadKey::new("subj:atos origin - new office opening");
        let keys = [root.clone(), subj.clone()];
        // Atos-shaped storm: 60 replies, 40 s apart, from distinct senders, no fast trip.
        let mut opened_at = None;
        for i in 0..60u32 {
            let out = pair
                .observe(
                    &keys,
                    100 + i,
                    Rule::Replies,
                    false,
                    limits(10),
                    T0 + u64::from(i) * 40 * SEC,
                )
                .await;
            if out[0].opened {
                opened_at = Some(i);
            }
        }
        assert_eq!(opened_at, Some(9), "the tenth reply opens");
        assert_eq!(pair.open_breakers(T0 + 60 * 40 * SEC).await, 2);

        // After the block: half-open, a resumed storm re-opens with a doubled block.
        let after = T0 + 7 * HOUR;
        let mut reopened = 0;
        for i in 0..8u32 {
            let out = pair
                .observe(
                    &keys,
                    500 + i,
                    Rule::Replies,
                    false,
                    limits(10),
                    after + u64::from(i) * MIN,
                )
                .await;
            assert_ne!(out[0].phase, Phase::Closed);
            reopened += usize::from(out[0].opened);
            if out[0].opened {
                assert_eq!(out[0].until - out[0].opened_at, 12 * 3600);
            }
        }
        assert_eq!(reopened, 1);
        assert_eq!(pair.open_breakers(after + 10 * MIN).await, 2);

        // Fast trip on distinct senders to a huge audience.
        let fast = [ThreadKey::new("mid:fast@x")];
        let out: Vec<_> = {
            let mut v = Vec::new();
            for i in 0..6u32 {
                v.push(
                    pair.observe(
                        &fast,
                        i,
                        Rule::Replies,
                        true,
                        limits(10),
                        T0 + u64::from(i) * 20 * SEC,
                    )
                    .await[0],
                );
            }
            v
        };
        assert!(out[4].opened && out[4].rule == Rule::Fast && out[5].held);

        // Me-too rule, manual trip and reset, listing most recent first.
        let me_too = [ThreadKey::new("metoo:00ff:please remove me")];
        for i in 0..4u32 {
            pair.observe(
                &me_too,
                i,
                Rule::MeToo,
                false,
                limits(3),
                T0 + 8 * HOUR + u64::from(i) * SEC,
            )
            .await;
        }
        let manual = ThreadKey::new("subj:manual");
        pair.trip(&manual, &limits(10), T0 + 9 * HOUR).await;
        let held = pair
            .observe(
                std::slice::from_ref(&manual),
                1,
                Rule::Replies,
                false,
                limits(10),
                T0 + 9 * HOUR + SEC,
            )
            .await;
        assert!(held[0].held && held[0].rule == Rule::Manual);
        assert!(pair.open_breakers(T0 + 9 * HOUR + 2 * SEC).await >= 3);
        pair.reset(&manual, true).await;
        pair.reset(&ThreadKey::new("subj:never seen"), true).await;
        let fresh = pair
            .observe(
                std::slice::from_ref(&manual),
                1,
                Rule::Replies,
                false,
                limits(10),
                T0 + 9 * HOUR + 3 * SEC,
            )
            .await;
        assert_eq!(fresh[0].count, 1);
        // Long after everything: nothing open, in either store.
        assert_eq!(pair.open_breakers(T0 + 100 * HOUR).await, 0);
    });
}

#[test]
fn random_sequences_match_the_memory_store() {
    let server = RedisServer::shared();
    let rt = rt();
    rt.block_on(async {
        let (mut seen, mut opened, mut reopened) = ([0usize; 3], 0, 0);
        for seed in 0..6u64 {
            let pair = Pair {
                memory: MemoryStore::new(10_000),
                redis: redis_store(server, &format!("rnd{seed}:")),
            };
            let mut rng = StdRng::seed_from_u64(seed);
            let pool: Vec<ThreadKey> = (0..5)
                .map(|i| ThreadKey::new(&format!("mid:t{i}@x")))
                .collect();
            // One window per sequence and a fast window within it: with those, a state past
            // its expiry behaves as a fresh one, so the memory store's lazy sweep cannot matter.
            let window_s = [60, 600, 3600][seed as usize % 3];
            let mut now = T0;
            for step in 0..700 {
                now += match rng.random_range(0..100) {
                    0..60 => rng.random_range(0..30 * SEC),
                    60..95 => rng.random_range(0..10 * MIN),
                    _ => rng.random_range(0..8 * HOUR),
                };
                let limits = Limits {
                    trip: rng.random_range(2..8),
                    window_s,
                    block_s: [300, 1800, 3 * 3600][rng.random_range(0..3)],
                    max_block_s: [600, 48 * 3600][rng.random_range(0..2)],
                    fast_senders: [0, 3, 5][rng.random_range(0..3)],
                    fast_window_s: [30, 60, window_s][rng.random_range(0..3)],
                };
                match rng.random_range(0..50) {
                    0 => pair.trip(&pool[rng.random_range(0..5)], &limits, now).await,
                    1 => pair.reset(&pool[rng.random_range(0..5)], false).await,
                    2..5 => {
                        pair.open_breakers(now).await;
                    }
                    _ => {
                        let n = rng.random_range(1..4);
                        let first = rng.random_range(0..5);
                        let keys: Vec<ThreadKey> =
                            (0..n).map(|i| pool[(first + i) % 5].clone()).collect();
                        let rule = if rng.random_range(0..5) == 0 {
                            Rule::MeToo
                        } else {
                            Rule::Replies
                        };
                        let sender = rng.random_range(0..12);
                        let fast = rng.random_range(0..2) == 0;
                        for o in pair.observe(&keys, sender, rule, fast, limits, now).await {
                            seen[o.phase as usize] += 1;
                            opened += usize::from(o.opened);
                            reopened += usize::from(o.opened && o.phase == Phase::HalfOpen);
                        }
                    }
                }
                let _ = step;
            }
        }
        // The sequences reach every phase, open breakers and re-open some.
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert!(
            opened > 30 && reopened > 3,
            "{opened} opened, {reopened} re-opened"
        );
    });
}

#[test]
fn a_key_listed_twice_is_counted_once() {
    let server = RedisServer::shared();
    rt().block_on(async {
        let store = redis_store(server, "dup:");
        let k = ThreadKey::new("subj:dup");
        let keys = [
            k.clone(),
            k.clone(),
            ThreadKey::new("mid:other@x"),
            k.clone(),
        ];
        let req = |now_ms| ObserveRequest {
            keys: &keys,
            sender: 1,
            rule: Rule::Replies,
            fast: false,
            limits: limits(10),
            now_ms,
        };
        let out = store.observe(&req(T0)).await.unwrap();
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|o| o.count == 1));
        let out = store.observe(&req(T0 + SEC)).await.unwrap();
        assert_eq!(out[0].count, 2);
        assert_eq!(out[3].count, 2);
    });
}

#[test]
fn every_key_expires_and_the_script_survives_a_flush() {
    // Its own server: SCRIPT FLUSH and a scan of every key concern the whole server.
    let server = RedisServer::start_new();
    rt().block_on(async {
        let store = redis_store(&server, "ttl:");
        let k = [ThreadKey::new("mid:root@ttl"), ThreadKey::new("subj:ttl")];
        let mut last = None;
        for i in 0..12u32 {
            let req = ObserveRequest {
                keys: &k,
                sender: i,
                rule: Rule::Replies,
                fast: false,
                limits: limits(10),
                now_ms: T0 + u64::from(i) * MIN,
            };
            last = Some(store.observe(&req).await.unwrap());
        }
        assert!(last.unwrap()[0].held);
        store
            .trip(&ThreadKey::new("subj:manual"), &limits(10), T0)
            .await
            .unwrap();
        let keys = server.cli(&["--scan"]);
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(keys.contains(&store.index_key()));
        assert!(keys.contains(&store.thread_key(&k[0]).as_str()));
        // A block of 6 h, half-open for 1 h, a window after that, a minute of grace.
        let most = (6 + 2 + 1) * 3600 + 11 * 60 + 60;
        for key in &keys {
            let ttl: i64 = server.cli(&["TTL", key]).trim().parse().unwrap();
            assert!(ttl > 0 && ttl <= most, "{key}: TTL {ttl}");
        }
        assert!(
            server
                .cli(&["HGET", &store.thread_key(&k[1]), "l"])
                .contains("subj:ttl")
        );

        assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
        let req = ObserveRequest {
            keys: &k,
            sender: 99,
            rule: Rule::Replies,
            fast: false,
            limits: limits(10),
            now_ms: T0 + 13 * MIN,
        };
        let out = store.observe(&req).await.unwrap();
        assert_eq!(out[0].count, 13);
        assert!(out[0].held);
        assert_eq!(store.outages(), 0);
        assert_eq!(store.tracked().await.unwrap(), 3);
    });
}
