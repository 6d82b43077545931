//! `/metrics` as Prometheus reads it (parsed by the prometheus_client package's own text
//! parser), `/health` and `/ready`, on processes in front of the suite's Postfix.

use crate::support::clients::script;
use crate::support::http::{self, require_python_module};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::{wait_for, wait_port};
use crate::support::{free_port, relay, storm, token};
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// The families of a scrape, parsed by prometheus_client: name -> (type, samples).
struct Scrape(HashMap<String, (String, Vec<serde_json::Value>)>);

impl Scrape {
    fn of(port: u16) -> Scrape {
        let answer = http::get(port, "/metrics", &[]);
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        require_python_module("prometheus_client");
        let mut child = Command::new("python3")
            .arg(script("parse_metrics.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refuses the scrape: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            answer.body
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Scrape(
            parsed["families"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["name"].as_str().unwrap().to_string(),
                        (
                            f["type"].as_str().unwrap().to_string(),
                            f["samples"].as_array().unwrap().clone(),
                        ),
                    )
                })
                .collect(),
        )
    }

    /// The value of sample `name` with every label of `labels`.
    fn value(&self, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, samples) = self
            .0
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        samples
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .and_then(|s| s["value"].as_f64())
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:?}"))
    }
}

/// Every family, with its type (the parser names counters without `_total`), and the label
/// values each must show from the start.
const FAMILIES: [(&str, &str, &str, &[&str]); 19] = [
    ("stormbreaker_sessions", "counter", "", &[]),
    ("stormbreaker_sessions_active", "gauge", "", &[]),
    ("stormbreaker_connections_refused", "counter", "", &[]),
    (
        "stormbreaker_messages",
        "counter",
        "decision",
        &[
            "deliver",
            "would-hold",
            "quarantine",
            "reject",
            "tempfail",
            "refused",
        ],
    ),
    ("stormbreaker_upstream_failures", "counter", "", &[]),
    (
        "stormbreaker_upstream_connect_failures",
        "counter",
        "reason",
        &[
            "connect",
            "timeout",
            "closed",
            "io",
            "bad-reply",
            "refused",
            "tls",
        ],
    ),
    ("stormbreaker_upstream_connections", "counter", "", &[]),
    ("stormbreaker_upstream_reused", "counter", "", &[]),
    (
        "stormbreaker_upstream_reply_seconds",
        "histogram",
        "step",
        &["greeting", "command", "data"],
    ),
    ("stormbreaker_breakers_opened", "counter", "", &[]),
    (
        "stormbreaker_breakers_open",
        "gauge",
        "breaker",
        &["replies", "fast", "me-too", "wave", "manual"],
    ),
    ("stormbreaker_decision_seconds", "histogram", "", &[]),
    ("stormbreaker_quarantine_held", "counter", "", &[]),
    (
        "stormbreaker_quarantine_messages",
        "gauge",
        "state",
        &["held", "released"],
    ),
    (
        "stormbreaker_quarantine_releases",
        "counter",
        "result",
        &["released", "failed"],
    ),
    ("stormbreaker_quarantine_deletes", "counter", "", &[]),
    (
        "stormbreaker_alert_mails",
        "counter",
        "result",
        &["sent", "failed"],
    ),
    (
        "stormbreaker_build_info",
        "gauge",
        "version",
        &[env!("CARGO_PKG_VERSION")],
    ),
    (
        "stormbreaker_state_outages",
        "counter",
        "backend",
        &["redis"],
    ),
];

fn admin_section(port: u16) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n")
}

#[test]
fn every_metric_is_described_and_present_from_the_start_then_counts_a_storm() {
    let mut redis = crate::support::redis::RedisServer::start_new();
    let admin = free_port();
    let extra = format!(
        "{}[state]\nbackend = \"redis\"\nurl = \"{}\"\n",
        storm::policy("quarantine", 3, &admin_section(admin)),
        redis.url()
    );
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &extra);
    assert!(wait_port(admin));

    let before = Scrape::of(admin);
    for (family, kind, label, values) in FAMILIES {
        let (found, samples) = before
            .0
            .get(family)
            .unwrap_or_else(|| panic!("{family} missing before any traffic"));
        assert_eq!(found, kind, "{family}");
        for value in values {
            assert!(
                samples.iter().any(|s| s["labels"][label] == *value),
                "{family}{{{label}={value:?}}} missing at start: {samples:?}"
            );
        }
        // Sessions: the harness's one probe of the listening port.
        if kind == "counter" && family != "stormbreaker_sessions" {
            assert!(
                samples.iter().all(|s| s["value"].as_f64() == Some(0.0)),
                "{family} starts at 0: {samples:?}"
            );
        }
    }
    assert_eq!(
        before.value("stormbreaker_build_info", "stormbreaker_build_info", &[]),
        1.0
    );

    // A storm: 5 replies, the 3rd opens the breaker, the 4th and 5th are held.
    let thread = token("metrics").replace('-', "");
    let held = storm::send(proxy.port, &thread, 5);
    assert_eq!(held.len(), 2);
    let after = wait_for(|| {
        let s = Scrape::of(admin);
        (s.value(
            "stormbreaker_alert_mails",
            "stormbreaker_alert_mails_total",
            &[("result", "sent")],
        ) >= 1.0)
            .then_some(s)
    })
    .expect("the alert is counted as sent");
    let v = |family: &str, name: &str, labels: &[(&str, &str)]| after.value(family, name, labels);
    assert_eq!(
        v(
            "stormbreaker_messages",
            "stormbreaker_messages_total",
            &[("decision", "quarantine")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "stormbreaker_messages",
            "stormbreaker_messages_total",
            &[("decision", "deliver")]
        ),
        4.0,
        "the original and three replies"
    );
    assert_eq!(
        v(
            "stormbreaker_quarantine_messages",
            "stormbreaker_quarantine_messages",
            &[("state", "held")]
        ),
        2.0
    );
    assert!(
        v(
            "stormbreaker_breakers_open",
            "stormbreaker_breakers_open",
            &[("breaker", "replies")]
        ) >= 1.0
    );
    assert!(
        v(
            "stormbreaker_decision_seconds",
            "stormbreaker_decision_seconds_count",
            &[]
        ) >= 6.0,
        "one decision per message"
    );
    assert!(
        v(
            "stormbreaker_upstream_reply_seconds",
            "stormbreaker_upstream_reply_seconds_count",
            &[("step", "data")]
        ) >= 4.0,
        "one final-dot reply per delivered message"
    );
    assert!(
        v(
            "stormbreaker_upstream_reply_seconds",
            "stormbreaker_upstream_reply_seconds_bucket",
            &[("step", "data"), ("le", "+Inf")]
        ) >= 4.0
    );

    // Liveness and readiness: upstream, Redis and the quarantine all answer.
    let health = http::get(admin, "/health", &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = http::get(admin, "/ready", &[]);
    assert_eq!(ready.status, 200, "{}", ready.body);
    let ready = ready.json();
    assert_eq!(ready["ready"], true);
    for check in ["upstream", "state", "quarantine"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{ready}");
    }

    // Redis stops: not ready, and the answer says which check failed (after the cache).
    redis.stop();
    let not_ready = wait_for(|| {
        let a = http::get(admin, "/ready", &[]);
        (a.status == 503).then_some(a)
    })
    .expect("/ready turns 503 when Redis is gone");
    let body = not_ready.json();
    assert_eq!(body["failed"], serde_json::json!(["state"]), "{body}");
    assert!(body["checks"]["state"]["error"].is_string());
}

#[test]
fn ready_names_a_dead_upstream_and_milter_mode_has_every_metric() {
    let admin = free_port();
    let dead = free_port();
    let proxy = Stormbreaker::proxy(dead, "", &admin_section(admin));
    let _ = &proxy;
    assert!(wait_port(admin));
    let answer = http::get(admin, "/ready", &[]);
    assert_eq!(answer.status, 503, "{}", answer.body);
    let body = answer.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["failed"], serde_json::json!(["upstream"]), "{body}");
    assert!(
        body["checks"]["upstream"]["error"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string())
    );
    assert_eq!(http::get(admin, "/health", &[]).status, 200);

    // Milter mode (the review found an empty page): every family is there too.
    let milter_admin = free_port();
    // On a unix socket: no second TCP port to pick beside the admin one.
    let milter = Stormbreaker::milter_on_unix_socket(&admin_section(milter_admin));
    let _ = &milter;
    assert!(wait_port(milter_admin));
    let scrape = Scrape::of(milter_admin);
    for (family, kind, _, _) in FAMILIES {
        if family == "stormbreaker_state_outages" {
            continue; // only with a Redis backend
        }
        assert_eq!(
            scrape.0.get(family).map(|(k, _)| k.as_str()),
            Some(kind),
            "{family} in milter mode"
        );
    }
    let ready = http::get(milter_admin, "/ready", &[]).json();
    assert_eq!(
        ready["ready"], true,
        "no upstream check without the proxy: {ready}"
    );
    assert!(ready["checks"]["upstream"].is_null());
}
