//! Metric names, in one place, with their descriptions, label values and histogram buckets.
//!
//! Every metric is described and present from start-up: counters start at 0 with each label
//! value whose set is known (so `rate()` shows 0, not "no data"), gauges are set at each scrape,
//! histograms render their (empty) buckets.

use crate::config::{Config, StateBackend};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const SESSIONS: &str = "stormbreaker_sessions_total";
pub const SESSIONS_ACTIVE: &str = "stormbreaker_sessions_active";
pub const CONNECTIONS_REFUSED: &str = "stormbreaker_connections_refused_total";
/// Label `decision`: one of [`DECISIONS`].
pub const MESSAGES: &str = "stormbreaker_messages_total";
pub const DECISIONS: [&str; 6] = [
    "deliver",
    "would-hold",
    "quarantine",
    "reject",
    "tempfail",
    "refused",
];
pub const UPSTREAM_FAILURES: &str = "stormbreaker_upstream_failures_total";
/// Label `reason`: one of [`CONNECT_FAILURE_REASONS`] (`smtp::client::ClientError::kind`).
pub const UPSTREAM_CONNECT_FAILURES: &str = "stormbreaker_upstream_connect_failures_total";
pub const CONNECT_FAILURE_REASONS: [&str; 7] = [
    "connect",
    "timeout",
    "closed",
    "io",
    "bad-reply",
    "refused",
    "tls",
];
pub const UPSTREAM_CONNECTS: &str = "stormbreaker_upstream_connections_total";
pub const UPSTREAM_REUSED: &str = "stormbreaker_upstream_reused_total";
/// Histogram, label `step`: one of [`UPSTREAM_STEPS`].
pub const UPSTREAM_REPLY_SECONDS: &str = "stormbreaker_upstream_reply_seconds";
/// `greeting`: connect to 220; `command`: a command to its reply; `data`: the final dot to
/// the reply that says whether the upstream took the message.
pub const UPSTREAM_STEPS: [&str; 3] = ["greeting", "command", "data"];
pub const BREAKERS_OPENED: &str = "stormbreaker_breakers_opened_total";
/// Gauge, label `breaker`: one of [`BREAKER_RULES`].
pub const BREAKERS_OPEN: &str = "stormbreaker_breakers_open";
pub const BREAKER_RULES: [&str; 5] = ["replies", "fast", "me-too", "wave", "manual"];
/// Histogram: `Engine::decide`, envelope and headers to verdict, state store included.
pub const DECISION_SECONDS: &str = "stormbreaker_decision_seconds";
pub const HELD: &str = "stormbreaker_quarantine_held_total";
/// Gauge, label `state`: `held` (waiting) or `released` (kept until retention).
pub const QUARANTINE_MESSAGES: &str = "stormbreaker_quarantine_messages";
/// Label `result`: `released` or `failed`.
pub const RELEASES: &str = "stormbreaker_quarantine_releases_total";
pub const DELETES: &str = "stormbreaker_quarantine_deletes_total";
/// Label `result`: `sent` or `failed`.
pub const ALERT_MAILS: &str = "stormbreaker_alert_mails_total";
/// Label `backend`: the configured shared store.
pub const STATE_OUTAGES: &str = "stormbreaker_state_outages_total";
/// Gauge 1, label `version`.
pub const BUILD_INFO: &str = "stormbreaker_build_info";
/// Gauges, label `source`: `declared`, `lists_file`, or a `[[list_sources]]` name.
pub const LISTS_KNOWN: &str = "stormbreaker_lists_known";
pub const LISTS_IN_USE: &str = "stormbreaker_lists_in_use";
pub const LISTS_REFRESHED: &str = "stormbreaker_lists_refreshed_timestamp_seconds";
/// Label `source`: a `[[list_sources]]` name.
pub const LISTS_REFRESH_FAILURES: &str = "stormbreaker_lists_refresh_failures_total";

/// Seconds; from a memory-store decision (tens of microseconds) to a slow Redis.
const DECISION_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
/// Seconds; an MTA answers commands in milliseconds and may take seconds to queue a message.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// The exporter with our histogram buckets (without them histograms render as summaries).
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(DECISION_SECONDS.into()), &DECISION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(UPSTREAM_REPLY_SECONDS.into()),
                &UPSTREAM_BUCKETS,
            )
        })
        .expect("non-empty bucket lists")
}

/// Registers descriptions with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SESSIONS, "SMTP client sessions accepted by the proxy");
    describe_gauge!(SESSIONS_ACTIVE, "SMTP client sessions open now");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused with 421 at the limit"
    );
    describe_counter!(MESSAGES, "Messages by the decision taken for them");
    describe_counter!(
        UPSTREAM_FAILURES,
        "Upstream sessions lost or refused mid-transaction"
    );
    describe_counter!(
        UPSTREAM_CONNECT_FAILURES,
        "Upstream connections that could not be opened or set up, by reason"
    );
    describe_counter!(UPSTREAM_CONNECTS, "Upstream connections opened");
    describe_counter!(
        UPSTREAM_REUSED,
        "Client sessions served by an idle upstream connection from the pool"
    );
    describe_histogram!(
        UPSTREAM_REPLY_SECONDS,
        metrics::Unit::Seconds,
        "Time the upstream MTA took to answer, by step (greeting, command, data = final dot)"
    );
    describe_counter!(BREAKERS_OPENED, "Thread breakers opened (one alert each)");
    describe_gauge!(
        BREAKERS_OPEN,
        "Breakers open or half-open now, by the rule that opened them"
    );
    describe_histogram!(
        DECISION_SECONDS,
        metrics::Unit::Seconds,
        "Time the storm engine took to decide on a message, state store included"
    );
    describe_counter!(HELD, "Messages committed to the quarantine");
    describe_gauge!(
        QUARANTINE_MESSAGES,
        "Messages in the quarantine now: held (waiting) or released (kept until retention)"
    );
    describe_counter!(
        RELEASES,
        "Held messages released through the console or admin API, by result"
    );
    describe_counter!(
        DELETES,
        "Held messages deleted through the console or admin API"
    );
    describe_counter!(
        ALERT_MAILS,
        "Alert, update and sender-notice mails, by whether the upstream took them"
    );
    describe_counter!(
        STATE_OUTAGES,
        "Times the shared state store stopped answering"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_gauge!(
        LISTS_KNOWN,
        "Lists each source gave at its last good read (declared, lists_file, list sources)"
    );
    describe_gauge!(
        LISTS_IN_USE,
        "Lists the engine takes from each source, after precedence ([[lists]] first)"
    );
    describe_gauge!(
        LISTS_REFRESHED,
        "Unix time of each list source's last good read"
    );
    describe_counter!(
        LISTS_REFRESH_FAILURES,
        "List source reads that failed (the last good lists were kept)"
    );
}

/// Makes every metric present with 0 (counters with each known label value), so dashboards
/// and alerts see it before its first event.
pub fn zero(config: &Config) {
    use metrics::{counter, gauge, histogram};
    for name in [
        SESSIONS,
        CONNECTIONS_REFUSED,
        UPSTREAM_FAILURES,
        UPSTREAM_CONNECTS,
        UPSTREAM_REUSED,
        BREAKERS_OPENED,
        HELD,
        DELETES,
    ] {
        counter!(name).increment(0);
    }
    for decision in DECISIONS {
        counter!(MESSAGES, "decision" => decision).increment(0);
    }
    for reason in CONNECT_FAILURE_REASONS {
        counter!(UPSTREAM_CONNECT_FAILURES, "reason" => reason).increment(0);
    }
    for result in ["released", "failed"] {
        counter!(RELEASES, "result" => result).increment(0);
    }
    for result in ["sent", "failed"] {
        counter!(ALERT_MAILS, "result" => result).increment(0);
    }
    for (i, source) in config.list_sources.iter().enumerate() {
        counter!(LISTS_REFRESH_FAILURES, "source" => source.label(i)).increment(0);
    }
    if config.state.backend == StateBackend::Redis {
        counter!(STATE_OUTAGES, "backend" => "redis").increment(0);
    }
    gauge!(SESSIONS_ACTIVE).increment(0.0);
    for rule in BREAKER_RULES {
        gauge!(BREAKERS_OPEN, "breaker" => rule).set(0.0);
    }
    for state in ["held", "released"] {
        gauge!(QUARANTINE_MESSAGES, "state" => state).set(0.0);
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let _ = histogram!(DECISION_SECONDS);
    for step in UPSTREAM_STEPS {
        let _ = histogram!(UPSTREAM_REPLY_SECONDS, "step" => step);
    }
}
