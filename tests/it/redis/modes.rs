//! The store on the other ways sites run Redis, as real servers: a 3-primary Redis Cluster, a
//! Sentinel set whose primary is killed mid-storm, and a TLS-only server with client
//! certificates. Storms go through real `stormbreaker run` proxies into a recording sink:
//! nothing acknowledged is lost, and once a storm's breaker is open no proxy delivers another
//! of its replies.

use super::{HOUR, MIN, SEC, T0, limits, me_too_and_wave, reply, rt, send};
use crate::support::redis_modes::{RedisCluster, SentinelSet, TlsRedis};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Sink, free_port};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Duration;
use stormbreaker::breaker::Rule;
use stormbreaker::config::{RedisMode, StateConfig};
use stormbreaker::fingerprint::ThreadKey;
use stormbreaker::store::{Counter, MemoryStore, ObserveRequest, RedisStore, StateStore};

fn cluster_store(cluster: &RedisCluster, prefix: &str) -> RedisStore {
    RedisStore::new(&StateConfig {
        mode: RedisMode::Cluster,
        nodes: cluster.seeds(),
        prefix: prefix.into(),
        timeout: Duration::from_secs(2),
        ..StateConfig::default()
    })
    .unwrap()
}

fn storm_reply(i: usize, subject: &str) -> String {
    format!(
        "{}From: user{i}@atos.test\r\n\r\nReply all.\r\n",
        reply(i, subject)
    )
}

/// Replies of `subject` the sink got for the list (not alerts or notices about them).
fn replies_delivered(sink: &Sink, subject: &str) -> usize {
    sink.mentioning(subject)
        .iter()
        .filter(|d| d.rcpts.iter().any(|r| r.contains("all@atos.test")))
        .count()
}

fn proxy_extra(state: &str, action: &str) -> String {
    format!(
        "[policy]\nfast_audience = 0\naction = \"{action}\"\n{state}\n\
         [[lists]]\naddress = \"all@atos.test\"\nmembers = 91053\n"
    )
}

/// Random storms where each thread's messages carry its subject (as every mail client's
/// replies do), with Message-ID and Thread-Index keys mixed in and merging: the Cluster
/// store, its keys spread over one hash tag per thread, decides as the in-process store.
#[test]
fn a_cluster_store_decides_as_the_memory_store_and_spreads_storms_over_shards() {
    let cluster = RedisCluster::shared();
    rt().block_on(async {
        let memory = MemoryStore::new(10_000);
        let redis = cluster_store(cluster, "shard:");
        assert!(redis.is_sharded());
        let mut rng = StdRng::seed_from_u64(16);
        let threads = 24usize;
        let mut now = T0;
        for step in 0..900u32 {
            let t = rng.random_range(0..threads);
            let subj = ThreadKey::new(&format!("subj:thread {t}"));
            let mut keys = Vec::new();
            if rng.random_bool(0.4) {
                keys.push(ThreadKey::new(&format!("tidx:{:032x}", t)));
            }
            if rng.random_bool(0.6) {
                // Two roots per thread: replies to either join the thread's storm.
                keys.push(ThreadKey::new(&format!(
                    "mid:root{}-{t}@x",
                    rng.random_range(0..2)
                )));
            }
            keys.push(subj);
            let counters = [Counter {
                keys: &keys,
                rule: Rule::Replies,
                limits: limits(6),
            }];
            now += rng.random_range(0..40) * SEC;
            let req = ObserveRequest {
                counters: &counters,
                sender: rng.random_range(0..40),
                fast: rng.random_bool(0.2),
                sender_cap: 16,
                message: rng.random_bool(0.3).then(|| (u64::from(step % 50), 120)),
                now_ms: now,
            };
            let m = memory.observe(&req).await.unwrap();
            let r = redis.observe(&req).await.unwrap();
            assert_eq!(m, r, "step {step} {keys:?}");
        }
        // New messages: me-too and wave counters (two shards, two script calls).
        let me_too = ThreadKey::new("metoo:00ff:please remove me");
        let wave = ThreadKey::new("wave:all@atos.test");
        for i in 0..5u32 {
            let counters = me_too_and_wave(&me_too, &wave);
            let req = ObserveRequest {
                counters: &counters,
                sender: i,
                fast: false,
                sender_cap: 16,
                message: Some((0xfeed + u64::from(i % 3), 600)),
                now_ms: now + u64::from(i) * SEC,
            };
            assert_eq!(
                memory.observe(&req).await.unwrap(),
                redis.observe(&req).await.unwrap(),
                "new message {i}"
            );
        }
        now += 10 * SEC;
        let open = memory.open_breakers(now).await.unwrap();
        assert!(open.len() >= 5, "{open:?}");
        assert_eq!(redis.open_breakers(now).await.unwrap(), open);

        // Reset by a key that is not the storm's id (found through the open breakers' index),
        // manual trips by subject, and keys of any kind.
        let victim = open
            .iter()
            .find(|b| b.key.starts_with("mid:") || b.key.starts_with("tidx:"))
            .or(open.first())
            .unwrap();
        let member = victim.keys.first().cloned().unwrap_or(victim.key.clone());
        let member = ThreadKey::new(&member);
        assert_eq!(
            memory.reset(&member, now).await.unwrap(),
            redis.reset(&member, now).await.unwrap()
        );
        let manual = ThreadKey::new("subj:manual on a cluster");
        assert_eq!(
            redis.trip(&manual, &limits(10), now).await.unwrap(),
            memory.trip(&manual, &limits(10), now).await.unwrap()
        );
        assert_eq!(
            redis.open_breakers(now + SEC).await.unwrap(),
            memory.open_breakers(now + SEC).await.unwrap()
        );
        assert!(redis.tracked().await.unwrap() > threads);

        // One hash tag per thread: the keys sit on every primary, not on one.
        let per_node = cluster.keys_per_node("{shard:*");
        assert!(
            per_node.iter().filter(|&&n| n > 0).count() >= 2,
            "keys per node: {per_node:?}"
        );
        // Long after everything: nothing open.
        assert!(
            redis
                .open_breakers(now + 100 * HOUR)
                .await
                .unwrap()
                .is_empty()
        );
        let _ = MIN;
    });
}

/// Three proxies on one Redis Cluster, 30 parallel sessions spread over them, each a reply of
/// one thread from its own sender: exactly `trip_replies` reach the sink (the opener passes),
/// and every other is refused. Nothing after the trip, on any node.
#[test]
fn three_proxies_on_a_cluster_deliver_exactly_trip_replies_from_30_parallel_sessions() {
    let cluster = RedisCluster::shared();
    let sink = Sink::start();
    let state = format!(
        "[state]\nbackend = \"redis\"\nmode = \"cluster\"\nnodes = {}\nprefix = \"par:\"\n\
         timeout = \"2s\"\non_unavailable = \"tempfail\"\n",
        cluster.seeds_toml()
    );
    let proxies: Vec<Stormbreaker> = (0..3)
        .map(|_| {
            let admin = format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
            Stormbreaker::proxy(
                sink.port(),
                "",
                &proxy_extra(&format!("{state}{admin}"), "reject"),
            )
        })
        .collect();
    for round in 0..2 {
        let subject = format!("All hands {round} {}", rand::random::<u32>());
        let ports: Vec<u16> = proxies.iter().map(|p| p.port).collect();
        let answers: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..30usize)
                .map(|i| {
                    let port = ports[i % 3];
                    let subject = subject.clone();
                    s.spawn(move || {
                        send(
                            port,
                            &format!("user{i}@atos.test"),
                            &storm_reply(i, &subject),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let accepted = answers.iter().filter(|a| a.starts_with("250")).count();
        let refused = answers.iter().filter(|a| a.starts_with("550")).count();
        let logs = || {
            proxies
                .iter()
                .map(|p| p.log())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(accepted + refused, 30, "{answers:?}\n{}", logs());
        assert_eq!(accepted, 10, "{answers:?}");
        assert_eq!(replies_delivered(&sink, &subject), 10, "{}", logs());
    }
    // The breakers are listed from any node's Cluster connection.
    let listed = proxies[2].admin(&["breaker", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8_lossy(&listed.stdout).to_lowercase();
    assert!(listed.contains("all hands 0"), "{listed}");
    assert!(listed.contains("all hands 1"), "{listed}");
}

/// A Sentinel set whose primary is SIGKILLed mid-storm: the proxies defer (451) while no
/// primary answers, follow the sentinels to the promoted replica at once, and the storm trips
/// there at the same reply; every reply acknowledged with 250 reached the sink or the
/// quarantine.
#[test]
fn a_sentinel_failover_mid_storm_loses_nothing_and_writes_go_to_the_new_primary() {
    let set = SentinelSet::start();
    let sink = Sink::start();
    let state = format!(
        "[state]\nbackend = \"redis\"\nmode = \"sentinel\"\nsentinels = {}\n\
         master_name = \"{}\"\nprefix = \"fo:\"\ntimeout = \"500ms\"\non_unavailable = \"tempfail\"\n",
        set.sentinels_toml(),
        set.master_name
    );
    let extra = proxy_extra(&state, "quarantine");
    let proxies = [
        Stormbreaker::proxy(sink.port(), "", &extra),
        Stormbreaker::proxy(sink.port(), "", &extra),
    ];
    let subject = format!("Failover storm {}", rand::random::<u32>());
    // Sends reply i until it is answered with something other than 451 (an MTA retrying).
    let deliver = |i: usize| -> String {
        for _ in 0..200 {
            let answer = send(
                proxies[i % 2].port,
                &format!("user{i}@atos.test"),
                &storm_reply(i, &subject),
            );
            if !answer.starts_with("451") {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("reply {i} deferred for 20 s");
    };
    let mut accepted = 0;
    for i in 0..6 {
        assert!(deliver(i).starts_with("250"));
        accepted += 1;
    }
    // Written to the primary (and replicated) before it dies.
    set.wait_until("the replica to have the storm", || {
        set.replica.cli(&["DBSIZE"]).trim() != "0"
    });
    let old_port = set.primary.port;
    set.primary.kill();
    // While the sentinels decide, the proxies defer; nothing is accepted and lost.
    let during = send(
        proxies[0].port,
        "user6@atos.test",
        &storm_reply(6, &subject),
    );
    assert!(during.starts_with("451"), "{during}");
    set.wait_until("the sentinels to promote the replica", || {
        set.primary_port_now() == Some(set.replica.port)
    });
    assert_ne!(set.replica.port, old_port);
    let mut answers = Vec::new();
    for i in 6..20 {
        let answer = deliver(i);
        assert!(answer.starts_with("250"), "{answer}");
        accepted += 1;
        answers.push(answer);
    }
    // The storm went on counting where it stopped: the tenth person opened it on the new
    // primary, the rest were held.
    let delivered = replies_delivered(&sink, &subject);
    let held: usize = proxies.iter().map(|p| p.quarantine_list().len()).sum();
    let logs = format!("{}\n{}", proxies[0].log(), proxies[1].log());
    assert_eq!(delivered, 10, "{logs}");
    assert_eq!(
        delivered + held,
        accepted,
        "every 250 reached the sink or the quarantine\n{logs}"
    );
    assert!(
        set.replica.cli(&["KEYS", "{fo:}*"]).contains("{fo:}open"),
        "the breaker opened on the promoted replica"
    );
}

/// A TLS-only Redis that asks for client certificates: two proxies with the test CA and a
/// client certificate share the storm; a store without the client certificate is refused.
#[test]
fn two_proxies_on_a_tls_redis_with_client_certificates_deliver_trip_replies() {
    let tls = TlsRedis::shared();
    let sink = Sink::start();
    let extra = proxy_extra(&tls.state_toml("tls:"), "reject");
    let proxies = [
        Stormbreaker::proxy(sink.port(), "", &extra),
        Stormbreaker::proxy(sink.port(), "", &extra),
    ];
    let subject = format!("TLS storm {}", rand::random::<u32>());
    for i in 0..30usize {
        let answer = send(
            proxies[i % 2].port,
            &format!("user{i}@atos.test"),
            &storm_reply(i, &subject),
        );
        assert!(
            answer.starts_with("250") || answer.starts_with("550"),
            "{answer}\n{}",
            proxies[i % 2].log()
        );
    }
    assert_eq!(replies_delivered(&sink, &subject), 10);
    assert!(tls.server.cli(&["--scan"]).contains("{tls:}open"));

    rt().block_on(async {
        let mut state = StateConfig {
            url: Some(format!("rediss://127.0.0.1:{}/", tls.server.port)),
            tls_ca_file: Some(tls.ca.ca()),
            ..StateConfig::default()
        };
        let without_cert = RedisStore::new(&state).unwrap();
        assert!(without_cert.ping().await.is_err(), "no client certificate");
        state.tls_cert_file = Some(tls.client_cert.clone());
        state.tls_key_file = Some(tls.client_key.clone());
        RedisStore::new(&state).unwrap().ping().await.unwrap();
        // Without the test CA, the server's certificate is not trusted.
        state.tls_ca_file = None;
        assert!(RedisStore::new(&state).unwrap().ping().await.is_err());
    });
}

/// A graceful failover (`SENTINEL FAILOVER`) turns the primary the store talks to into a
/// replica (the sentinels also drop its clients): the next call fails there (READONLY or a
/// closed connection), asks the sentinels at once and is retried on the new primary, so it
/// succeeds and no outage is counted.
#[test]
fn a_demoted_primary_is_re_resolved_at_once_without_an_outage() {
    let set = SentinelSet::start();
    rt().block_on(async {
        let store = RedisStore::new(&StateConfig {
            mode: RedisMode::Sentinel,
            sentinels: set
                .sentinels
                .iter()
                .map(|s| format!("redis://127.0.0.1:{}", s.port))
                .collect(),
            master_name: Some(set.master_name.clone()),
            prefix: "ro:".into(),
            timeout: Duration::from_secs(2),
            ..StateConfig::default()
        })
        .unwrap();
        let keys = [ThreadKey::new("subj:demoted")];
        let counters = [Counter {
            keys: &keys,
            rule: Rule::Replies,
            limits: limits(10),
        }];
        let observe = |sender: u32| ObserveRequest {
            counters: &counters,
            sender,
            fast: false,
            sender_cap: 16,
            message: None,
            now_ms: T0,
        };
        store.observe(&observe(1)).await.unwrap();
        assert_eq!(store.resolutions(), 1);
        // Replication is asynchronous and a forced failover does not wait for it: let the
        // replica have the first count before it is promoted (on a loaded machine it lags).
        let dbsize = |node: &crate::support::redis_modes::Daemon| {
            node.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap_or(0)
        };
        set.wait_until("the replica to have the first count", || {
            dbsize(&set.replica) > 0 && dbsize(&set.replica) == dbsize(&set.primary)
        });
        set.sentinels[0].cli(&["SENTINEL", "FAILOVER", &set.master_name]);
        set.wait_until("the old primary to be a replica", || {
            set.primary_port_now() == Some(set.replica.port)
                && set.primary.cli(&["ROLE"]).starts_with("slave")
                && set
                    .replica
                    .cli(&["INFO", "replication"])
                    .contains("role:master")
        });
        let out = store.observe(&observe(2)).await.unwrap();
        assert_eq!(
            out[0].outcome.count, 2,
            "the count went on on the new primary"
        );
        assert_eq!(
            store.resolutions(),
            2,
            "resolved once more, at the failed call"
        );
        assert_eq!(store.outages(), 0, "no call failed");
        assert!(set.replica.cli(&["KEYS", "{ro:}*"]).contains("{ro:}t:"));
    });
}
