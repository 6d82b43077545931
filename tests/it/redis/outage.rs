//! Redis killed mid-storm, and Redis frozen: decisions keep coming back (local counters), the
//! outage is logged once and counted, and the node uses Redis again once it answers.

use super::{SEC, T0, config, reply};
use crate::support::logs;
use crate::support::redis::RedisServer;
use std::sync::Arc;
use std::time::Duration;
use stormbreaker::config::StateConfig;
use stormbreaker::engine::Engine;
use stormbreaker::envelope::Envelope;
use stormbreaker::fingerprint::ThreadKey;
use stormbreaker::store::RedisStore;
use stormbreaker::verdict::Verdict;

/// The store's once-per-outage line (the engine also warns per message it decides locally).
const DOWN: &str = "state store unavailable; deciding as state.on_unavailable says";
const BACK: &str = "state store answers again";

async fn storm(engine: &Engine, subject: &str, from: usize, n: usize, t: u64) -> Vec<Verdict> {
    let mut out = Vec::new();
    for i in from..from + n {
        let env = Envelope::to(&format!("user{i}@atos.test"), &["all@atos.test"]);
        let now = t + i as u64 * 5 * SEC;
        out.push(engine.decide(&env, reply(i, subject).as_bytes(), now).await);
    }
    out
}

/// Decides replies of a fresh thread, pausing between them, until the store is up again.
async fn until_up(engine: &Engine, store: &RedisStore) -> bool {
    for i in 0..300 {
        if !store.is_down() {
            return true;
        }
        storm(engine, &format!("probe {i}"), 0, 1, T0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn redis_killed_mid_storm_then_back_and_frozen_then_thawed() {
    // The store and engine run on this thread (a current-thread runtime), so their log lines
    // are captured here, apart from those of the tests running beside this one.
    let logs = logs::capture();
    let mut server = RedisServer::start_new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = config(Some((&server.url(), "out:")), "[policy]\nfast_audience = 0");
        let store = Arc::new(
            RedisStore::new(&StateConfig {
                timeout: Duration::from_millis(200),
                ..cfg.state.clone()
            })
            .unwrap(),
        );
        let engine = Engine::with_store(&cfg, store.clone()).unwrap();

        // Five replies counted in Redis, then Redis dies.
        let v = storm(&engine, "Office move", 0, 5, T0).await;
        assert!(v.iter().all(|v| *v == Verdict::DELIVER));
        server.stop();

        // The storm goes on: every message gets a verdict from the local counters, which
        // trip on their own tenth reply and hold the rest.
        let v = storm(&engine, "Office move", 5, 200, T0).await;
        assert_eq!(v.len(), 200);
        assert_eq!(v.iter().filter(|v| v.opened.is_some()).count(), 1);
        assert_eq!(v.iter().filter(|v| v.hold.is_none()).count(), 10);
        assert!(store.is_down());
        assert_eq!(store.outages(), 1);
        assert!(store.failed_calls() >= 200);
        assert_eq!(logs.count(DOWN), 1, "the outage is logged once");
        assert_eq!(logs.count(BACK), 0);

        // A new redis-server on the same port: the node uses it again.
        server.start();
        assert!(until_up(&engine, &store).await, "the store never came back");
        assert_eq!(logs.count(BACK), 1);
        let v = storm(&engine, "After the outage", 0, 12, T0).await;
        assert!(v[9].opened.is_some() && v[10].hold.is_some());
        let key = store.thread_key(&ThreadKey::new("subj:after the outage"));
        assert_eq!(
            server.cli(&["HGET", &key, "l"]).trim(),
            "subj:after the outage"
        );
        assert_eq!(store.outages(), 1);

        // A frozen Redis (accepts, never answers): the decision gives up after the timeout.
        server.signal("-STOP");
        let v = storm(&engine, "Frozen", 0, 3, T0).await;
        assert!(v.iter().all(|v| *v == Verdict::DELIVER));
        assert!(store.is_down());
        assert_eq!(store.outages(), 2);
        assert_eq!(logs.count(DOWN), 2);
        server.signal("-CONT");
        assert!(
            until_up(&engine, &store).await,
            "the store never came back after thawing"
        );
        assert_eq!(logs.count(BACK), 2);
    });
}
