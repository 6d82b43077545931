//! Two engines ("nodes") on one real redis-server: a storm split across them trips at the same
//! reply as on one node, and the breaker opens (the alert goes out) exactly once, also when
//! both nodes see replies of one thread at the same instant. On the suite's redis-server, each
//! test with a key prefix of its own.

use super::{SEC, T0, config, reply, rt, storm_times};
use crate::support::redis::RedisServer;
use std::sync::Arc;
use stormbreaker::engine::Engine;
use stormbreaker::envelope::Envelope;
use stormbreaker::verdict::Verdict;

/// Replies `0..times.len()` of `subject` from distinct senders, reply i on `nodes[i % n]`.
async fn storm(nodes: &[&Engine], subject: &str, times: &[u64]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for (i, &now) in times.iter().enumerate() {
        let env = Envelope::to(&format!("user{i}@atos.test"), &["all@atos.test"]);
        let node = nodes[i % nodes.len()];
        out.push(node.decide(&env, reply(i, subject).as_bytes(), now).await);
    }
    out
}

fn first_opened(v: &[Verdict]) -> Option<usize> {
    v.iter().position(|v| v.opened.is_some())
}

#[test]
fn a_storm_split_across_two_nodes_trips_as_on_one() {
    let server = RedisServer::shared();
    let rt = rt();
    rt.block_on(async {
        let url = server.url();
        for (extra, seed) in [("", 2012u64), ("[policy]\nfast_audience = 0", 7)] {
            let times = storm_times(419, seed);
            let subject = format!("Atos Origin - office {seed}");
            let single = Engine::new(&config(None, extra)).unwrap();
            let alone = storm(&[&single], &subject, &times).await;

            let prefix = format!("nodes{seed}:");
            let a = Engine::from_config(&config(Some((&url, &prefix)), extra))
                .await
                .unwrap();
            let b = Engine::from_config(&config(Some((&url, &prefix)), extra))
                .await
                .unwrap();
            let split = storm(&[&a, &b], &subject, &times).await;

            let opened = |v: &[Verdict]| v.iter().filter(|v| v.opened.is_some()).count();
            let delivered = |v: &[Verdict]| v.iter().filter(|v| v.hold.is_none()).count();
            assert_eq!(opened(&alone), 1);
            assert_eq!(opened(&split), 1, "exactly one alert across both nodes");
            assert_eq!(first_opened(&split), first_opened(&alone));
            assert_eq!(delivered(&split), delivered(&alone));
            assert!(delivered(&split) <= 10, "{} delivered", delivered(&split));
            // Verdicts agree one by one (the same thread key opened, the same counts). Where a
            // storm started is each node's own note (for its alerts), not a decision.
            assert_eq!(without_origin(split.clone()), without_origin(alone.clone()));
            // Each node lists the breaker the other opened.
            let now = *times.last().unwrap();
            let (la, lb) = (a.open_breakers(now).await, b.open_breakers(now).await);
            assert!(!la.is_empty());
            assert_eq!(la, lb);
            assert_eq!(la, single.open_breakers(now).await);
        }
    });
}

#[test]
fn manual_trip_on_one_node_holds_on_the_other_and_reset_anywhere_clears_it() {
    let server = RedisServer::shared();
    rt().block_on(async {
        let url = server.url();
        let a = Engine::from_config(&config(Some((&url, "man:")), ""))
            .await
            .unwrap();
        let b = Engine::from_config(&config(Some((&url, "man:")), ""))
            .await
            .unwrap();
        a.try_trip("subj:RE: Office move", T0).await.unwrap();
        let listed = b.try_open_breakers(T0 + SEC).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "subj:office move");
        assert_eq!(listed[0].breaker, "manual");
        let env = Envelope::to("x@atos.test", &["all@atos.test"]);
        let v = b
            .decide(&env, reply(3, "Office move").as_bytes(), T0 + 2 * SEC)
            .await;
        assert_eq!(v.hold.as_ref().map(|h| h.breaker), Some("manual"));
        assert_eq!(
            b.try_reset("subj:office move", T0 + 2 * SEC)
                .await
                .unwrap()
                .as_deref(),
            Some("subj:office move")
        );
        assert!(a.try_open_breakers(T0 + 3 * SEC).await.unwrap().is_empty());
        let v = a
            .decide(&env, reply(7, "Office move").as_bytes(), T0 + 4 * SEC)
            .await;
        assert_eq!(v, Verdict::DELIVER);
    });
}

#[test]
fn simultaneous_replies_on_both_nodes_open_exactly_once() {
    let server = RedisServer::shared();
    let rt = rt();
    rt.block_on(async {
        let url = server.url();
        let cfg = config(Some((&url, "race:")), "[policy]\nfast_audience = 0");
        let a = Arc::new(Engine::from_config(&cfg).await.unwrap());
        let b = Arc::new(Engine::from_config(&cfg).await.unwrap());
        for round in 0..60usize {
            let subject = format!("Race {round}");
            // Eight replies of one thread at one instant, four on each node, in parallel: the
            // tenth reply of the thread is among them.
            let times = vec![T0; 6];
            storm(&[&a, &b], &subject, &times).await;
            let mut tasks = tokio::task::JoinSet::new();
            for i in 6..14usize {
                let node = if i % 2 == 0 { a.clone() } else { b.clone() };
                let subject = subject.clone();
                tasks.spawn(async move {
                    let env = Envelope::to(&format!("user{i}@atos.test"), &["all@atos.test"]);
                    node.decide(&env, reply(i, &subject).as_bytes(), T0 + SEC)
                        .await
                });
            }
            let verdicts: Vec<Verdict> = tasks.join_all().await;
            let opened = verdicts.iter().filter(|v| v.opened.is_some()).count();
            let held = verdicts.iter().filter(|v| v.hold.is_some()).count();
            assert_eq!(opened, 1, "round {round}: {verdicts:?}");
            assert_eq!(held, 4, "round {round}: replies 11 to 14 are held");
        }
    });
}

#[test]
fn a_node_started_while_redis_is_down_decides_locally_then_uses_redis() {
    let mut server = RedisServer::not_started();
    rt().block_on(async {
        let cfg = config(
            Some((&server.url(), "late:")),
            "[policy]\nfast_audience = 0",
        );
        let engine = Engine::from_config(&cfg)
            .await
            .expect("starts without Redis");
        let v = storm(&[&engine], "Early storm", &[T0; 12]).await;
        assert_eq!(first_opened(&v), Some(9), "local counters trip");
        assert!(v[10].hold.is_some());

        server.start();
        let mut used = false;
        for i in 0..300 {
            let env = Envelope::to(&format!("late{i}@atos.test"), &["all@atos.test"]);
            engine
                .decide(&env, reply(i, "Late storm").as_bytes(), T0)
                .await;
            if server.cli(&["DBSIZE"]).trim() != "0" {
                used = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(used, "the node never wrote to Redis once it was up");
    });
}

/// Verdicts without `Hold::origin`, which each engine notes for itself.
fn without_origin(mut verdicts: Vec<Verdict>) -> Vec<Verdict> {
    for v in &mut verdicts {
        for h in v.hold.iter_mut().chain(v.opened.iter_mut()) {
            h.origin = None;
        }
    }
    verdicts
}
