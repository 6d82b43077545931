//! The Redis backend against a real redis-server: the same requests give the same outcomes as
//! the in-process store (random sequences that join and merge storms, repeat messages and mix
//! counters, and storm scenarios), every key has a TTL, and the script survives SCRIPT FLUSH.
//! Each test keeps to a key prefix of its own on the suite's redis-server, except the one that
//! flushes scripts, which starts its own.

use super::{HOUR, MIN, SEC, T0, limits, me_too_and_wave};
use crate::support::redis::RedisServer;
use rand::{Rng, SeedableRng, rngs::StdRng};
use stormbreaker::breaker::{Limits, Outcome, Phase, Rule};
use stormbreaker::config::StateConfig;
use stormbreaker::fingerprint::ThreadKey;
use stormbreaker::store::{Counter, MemoryStore, ObserveRequest, Observed, RedisStore, StateStore};

const CAP: u32 = 16;

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

/// The two stores side by side; every call goes to both and must agree.
struct Pair {
    memory: MemoryStore,
    redis: RedisStore,
}

impl Pair {
    async fn request(&self, req: &ObserveRequest<'_>) -> Vec<Observed> {
        let m = self.memory.observe(req).await.unwrap();
        let r = self.redis.observe(req).await.unwrap();
        assert_eq!(
            m, r,
            "outcomes differ at {} for {:?}",
            req.now_ms, req.counters
        );
        m
    }

    /// One counter over `keys`; its outcome.
    async fn observe(
        &self,
        keys: &[ThreadKey],
        sender: u32,
        rule: Rule,
        fast: bool,
        limits: Limits,
        now_ms: u64,
    ) -> Outcome {
        let counters = [Counter { keys, rule, limits }];
        let req = ObserveRequest {
            counters: &counters,
            sender,
            fast,
            sender_cap: CAP,
            message: None,
            now_ms,
        };
        self.request(&req).await[0].outcome
    }

    async fn open_breakers(&self, now_ms: u64) -> usize {
        let m = self.memory.open_breakers(now_ms).await.unwrap();
        let r = self.redis.open_breakers(now_ms).await.unwrap();
        assert_eq!(m, r, "open breakers differ at {now_ms}");
        m.len()
    }

    async fn trip(&self, key: &ThreadKey, limits: &Limits, now_ms: u64) -> String {
        let m = self.memory.trip(key, limits, now_ms).await.unwrap();
        let r = self.redis.trip(key, limits, now_ms).await.unwrap();
        assert_eq!(m, r, "trip of {key:?}");
        m
    }

    async fn reset(&self, key: &ThreadKey, now_ms: u64) -> Option<String> {
        let m = self.memory.reset(key, now_ms).await.unwrap();
        let r = self.redis.reset(key, now_ms).await.unwrap();
        assert_eq!(m, r, "reset of {key:?}");
        m
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
        let tidx = ThreadKey::new("tidx:5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");
        // Atos-shaped storm: 60 replies, 40 s apart, from distinct senders with two mail
        // clients' key sets, no fast trip: one storm.
        let mut opened_at = None;
        for i in 0..60u32 {
            let keys = if i % 2 == 0 {
                vec![root.clone(), subj.clone()]
            } else {
                vec![tidx.clone(), subj.clone()]
            };
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
            assert_eq!(out.storm, root.id, "one storm");
            if out.opened {
                opened_at = Some(i);
            }
        }
        assert_eq!(opened_at, Some(9), "the tenth person opens");
        assert_eq!(pair.open_breakers(T0 + 60 * 40 * SEC).await, 1);

        // After the block: half-open, a resumed storm re-opens with a doubled block.
        let after = T0 + 7 * HOUR;
        let mut reopened = 0;
        for i in 0..8u32 {
            let out = pair
                .observe(
                    std::slice::from_ref(&tidx),
                    500 + i,
                    Rule::Replies,
                    false,
                    limits(10),
                    after + u64::from(i) * MIN,
                )
                .await;
            assert_ne!(out.phase, Phase::Closed);
            reopened += usize::from(out.opened);
            if out.opened {
                assert_eq!(out.until - out.opened_at, 12 * 3600);
            }
        }
        assert_eq!(reopened, 1);
        assert_eq!(pair.open_breakers(after + 10 * MIN).await, 1);

        // Fast trip on distinct senders to a huge audience; one sender repeating does not.
        let fast = [ThreadKey::new("mid:fast@x")];
        let mut out = Vec::new();
        for i in 0..6u32 {
            let o = pair
                .observe(
                    &fast,
                    i,
                    Rule::Replies,
                    true,
                    limits(10),
                    T0 + u64::from(i) * 20 * SEC,
                )
                .await;
            out.push(o);
        }
        assert!(out[4].opened && out[4].rule == Rule::Fast && out[5].held);

        // Two storms merged by a message that carries keys of both: the open one keeps them.
        let (a, b, s) = (
            ThreadKey::new("mid:a@merge"),
            ThreadKey::new("mid:b@merge"),
            ThreadKey::new("subj:merge"),
        );
        for i in 0..3u32 {
            pair.observe(
                std::slice::from_ref(&a),
                i,
                Rule::Replies,
                false,
                limits(3),
                T0 + 8 * HOUR,
            )
            .await;
        }
        pair.observe(
            std::slice::from_ref(&b),
            7,
            Rule::Replies,
            false,
            limits(3),
            T0 + 8 * HOUR,
        )
        .await;
        let merged = pair
            .observe(
                &[b.clone(), a.clone(), s],
                8,
                Rule::Replies,
                false,
                limits(3),
                T0 + 8 * HOUR,
            )
            .await;
        assert!(merged.held && merged.storm == a.id && merged.count == 5);

        // Me-too and wave rules in one request (two counters), manual trip and reset.
        let me_too = ThreadKey::new("metoo:00ff:please remove me");
        let wave = ThreadKey::new("wave:all@atos.test");
        for i in 0..4u32 {
            let counters = me_too_and_wave(&me_too, &wave);
            let out = pair
                .request(&ObserveRequest {
                    counters: &counters,
                    sender: i,
                    fast: false,
                    sender_cap: CAP,
                    message: Some((0xabc0 + u64::from(i), 600)),
                    now_ms: T0 + 8 * HOUR + u64::from(i) * SEC,
                })
                .await;
            assert_eq!(out.len(), 2);
            assert_eq!(out[1].outcome.opened, i == 3);
        }
        let manual = ThreadKey::new("subj:manual");
        assert_eq!(
            pair.trip(&manual, &limits(10), T0 + 9 * HOUR).await,
            "subj:manual"
        );
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
        assert!(held.held && held.rule == Rule::Manual);
        assert!(pair.open_breakers(T0 + 9 * HOUR + 2 * SEC).await >= 4);
        assert_eq!(
            pair.reset(&manual, T0 + 9 * HOUR + 2 * SEC)
                .await
                .as_deref(),
            Some("subj:manual")
        );
        assert_eq!(
            pair.reset(&ThreadKey::new("subj:never seen"), T0).await,
            None
        );
        assert_eq!(
            pair.reset(&tidx, after + 10 * MIN).await.as_deref(),
            Some("mid:root@atos.test"),
            "a reset by any key resets the storm"
        );
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
        assert_eq!(fresh.count, 1);
        // Long after everything: nothing open, in either store.
        assert_eq!(pair.open_breakers(T0 + 100 * HOUR).await, 0);
    });
}

#[test]
fn copies_of_a_message_match_the_memory_store() {
    let server = RedisServer::shared();
    rt().block_on(async {
        let pair = Pair {
            memory: MemoryStore::new(10_000),
            redis: redis_store(server, "copies:"),
        };
        let keys = [
            ThreadKey::new("mid:root@copies"),
            ThreadKey::new("subj:copies"),
        ];
        let counters = [Counter {
            keys: &keys,
            rule: Rule::Replies,
            limits: limits(3),
        }];
        for i in 0..6u32 {
            for copy in 0..3u64 {
                let out = pair
                    .request(&ObserveRequest {
                        counters: &counters,
                        sender: i,
                        fast: false,
                        sender_cap: CAP,
                        message: Some((1000 + u64::from(i), 600)),
                        now_ms: T0 + u64::from(i) * MIN + copy * SEC,
                    })
                    .await;
                assert_eq!(out[0].outcome.copy, copy > 0);
                assert_eq!(out[0].outcome.count, i + 1, "counted once per message");
            }
        }
    });
}

#[test]
fn random_sequences_match_the_memory_store() {
    let server = RedisServer::shared();
    let rt = rt();
    rt.block_on(async {
        let (mut seen, mut opened, mut reopened, mut copies, mut merged) =
            ([0usize; 3], 0, 0, 0, 0);
        for seed in 0..8u64 {
            let pair = Pair {
                memory: MemoryStore::new(100_000),
                redis: redis_store(server, &format!("rnd{seed}:")),
            };
            let mut rng = StdRng::seed_from_u64(seed);
            // Few keys, so random subsets join and merge storms.
            let pool: Vec<ThreadKey> = (0..7)
                .map(|i| ThreadKey::new(&format!("mid:t{i}@x")))
                .collect();
            let singles: Vec<ThreadKey> = (0..3)
                .map(|i| ThreadKey::new(&format!("wave:w{i}@x")))
                .collect();
            // One window per sequence and a fast window within it: with those, a state past
            // its expiry behaves as a fresh one, so the memory store's lazy sweep cannot matter.
            let window_s = [60, 600, 3600][seed as usize % 3];
            let cap = [4, CAP][seed as usize % 2];
            let mut now = T0;
            let mut recent: Vec<u64> = Vec::new();
            for step in 0..700u64 {
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
                    0 => {
                        pair.trip(&pool[rng.random_range(0..pool.len())], &limits, now)
                            .await;
                    }
                    1 => {
                        pair.reset(&pool[rng.random_range(0..pool.len())], now)
                            .await;
                    }
                    2..5 => {
                        pair.open_breakers(now).await;
                    }
                    _ => {
                        let n = rng.random_range(1..4);
                        let first = rng.random_range(0..pool.len());
                        let keys: Vec<ThreadKey> = (0..n)
                            .map(|i| {
                                pool[(first + i * rng.random_range(1..3)) % pool.len()].clone()
                            })
                            .collect();
                        let mut keys_dedup: Vec<ThreadKey> = Vec::new();
                        for k in keys {
                            if !keys_dedup.contains(&k) {
                                keys_dedup.push(k);
                            }
                        }
                        let wave = [singles[rng.random_range(0..singles.len())].clone()];
                        let counters: Vec<Counter<'_>> = if rng.random_range(0..5) == 0 {
                            vec![
                                Counter {
                                    keys: &keys_dedup[..1],
                                    rule: Rule::MeToo,
                                    limits,
                                },
                                Counter {
                                    keys: &wave,
                                    rule: Rule::Wave,
                                    limits,
                                },
                            ]
                        } else {
                            vec![Counter {
                                keys: &keys_dedup,
                                rule: Rule::Replies,
                                limits,
                            }]
                        };
                        // Now and then another copy of a recent message.
                        let message = match rng.random_range(0..4) {
                            0 if !recent.is_empty() => {
                                Some((recent[rng.random_range(0..recent.len())], 300))
                            }
                            0 | 1 => None,
                            _ => {
                                let id = seed << 32 | step;
                                recent.push(id);
                                if recent.len() > 5 {
                                    recent.remove(0);
                                }
                                Some((id, 300))
                            }
                        };
                        let req = ObserveRequest {
                            counters: &counters,
                            sender: rng.random_range(0..12),
                            fast: rng.random_range(0..2) == 0,
                            sender_cap: cap,
                            message,
                            now_ms: now,
                        };
                        let before: Vec<u64> = counters
                            .iter()
                            .flat_map(|c| c.keys.iter().map(|k| k.id))
                            .collect();
                        for o in pair.request(&req).await {
                            let o = o.outcome;
                            seen[o.phase as usize] += 1;
                            opened += usize::from(o.opened);
                            reopened += usize::from(o.opened && o.phase == Phase::HalfOpen);
                            copies += usize::from(o.copy);
                            merged += usize::from(!o.copy && !before.contains(&o.storm));
                        }
                    }
                }
            }
        }
        // The sequences reach every phase, open breakers, re-open some, repeat messages and
        // join keys to storms started by other keys.
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert!(
            opened > 30 && reopened > 3 && copies > 50 && merged > 0,
            "{opened} opened, {reopened} re-opened, {copies} copies, {merged} joined elsewhere"
        );
    });
}

#[test]
fn every_key_expires_and_the_script_survives_a_flush() {
    // Its own server: SCRIPT FLUSH and a scan of every key concern the whole server.
    let server = RedisServer::start_new();
    rt().block_on(async {
        let store = redis_store(&server, "ttl:");
        let k = [ThreadKey::new("mid:root@ttl"), ThreadKey::new("subj:ttl")];
        let counters = [Counter {
            keys: &k,
            rule: Rule::Replies,
            limits: limits(10),
        }];
        let mut last = None;
        for i in 0..12u32 {
            let req = ObserveRequest {
                counters: &counters,
                sender: i,
                fast: false,
                sender_cap: CAP,
                message: Some((u64::from(i) + 1, 600)),
                now_ms: T0 + u64::from(i) * MIN,
            };
            last = Some(store.observe(&req).await.unwrap());
        }
        assert!(last.unwrap()[0].outcome.held);
        store
            .trip(&ThreadKey::new("subj:manual"), &limits(10), T0)
            .await
            .unwrap();
        let keys = server.cli(&["--scan"]);
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        // The index, the storm, its link, the manual storm and 12 message records.
        assert_eq!(keys.len(), 16, "{keys:?}");
        assert!(keys.contains(&store.index_key().as_str()));
        assert!(keys.contains(&store.thread_key(&k[0]).as_str()));
        assert!(keys.contains(&store.message_key(1).as_str()));
        // A block of 6 h, half-open for 1 h, a window after that, a minute of grace; links
        // for the longest block and two windows.
        let most = (48 + 2) * 3600 + 11 * 60 + 60;
        for key in &keys {
            let ttl: i64 = server.cli(&["TTL", key]).trim().parse().unwrap();
            assert!(ttl > 0 && ttl <= most, "{key}: TTL {ttl}");
        }
        assert!(
            server
                .cli(&["HGET", &store.thread_key(&k[0]), "l"])
                .contains("mid:root@ttl")
        );
        assert!(
            server
                .cli(&["HGET", &store.thread_key(&k[1]), "p"])
                .contains(&format!("{:016x}", k[0].id))
        );

        assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
        let req = ObserveRequest {
            counters: &counters,
            sender: 99,
            fast: false,
            sender_cap: CAP,
            message: None,
            now_ms: T0 + 13 * MIN,
        };
        let out = store.observe(&req).await.unwrap();
        assert_eq!(out[0].outcome.count, 13);
        assert!(out[0].outcome.held);
        assert_eq!(out[0].storm_label.as_deref(), Some("mid:root@ttl"));
        assert_eq!(store.outages(), 0);
        assert_eq!(store.tracked().await.unwrap(), 15);
    });
}
