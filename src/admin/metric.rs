//! Metric names, in one place, with their descriptions.

pub const SESSIONS: &str = "stormbreaker_sessions_total";
pub const SESSIONS_ACTIVE: &str = "stormbreaker_sessions_active";
pub const CONNECTIONS_REFUSED: &str = "stormbreaker_connections_refused_total";
/// Label `decision`: deliver, would-hold, quarantine, reject, tempfail, refused (framing/limits).
pub const MESSAGES: &str = "stormbreaker_messages_total";
pub const UPSTREAM_FAILURES: &str = "stormbreaker_upstream_failures_total";
/// Label `reason`: connect, timeout, closed, io, bad-reply, refused, tls.
pub const UPSTREAM_CONNECT_FAILURES: &str = "stormbreaker_upstream_connect_failures_total";
pub const UPSTREAM_CONNECTS: &str = "stormbreaker_upstream_connections_total";
pub const UPSTREAM_REUSED: &str = "stormbreaker_upstream_reused_total";
pub const BREAKERS_OPENED: &str = "stormbreaker_breakers_opened_total";
pub const HELD: &str = "stormbreaker_quarantine_held_total";

/// Registers descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(SESSIONS, "SMTP client sessions accepted by the proxy");
    metrics::describe_gauge!(SESSIONS_ACTIVE, "SMTP client sessions open now");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused with 421 at the limit"
    );
    metrics::describe_counter!(MESSAGES, "Messages by the decision taken for them");
    metrics::describe_counter!(
        UPSTREAM_FAILURES,
        "Upstream sessions lost or refused mid-transaction"
    );
    metrics::describe_counter!(
        UPSTREAM_CONNECT_FAILURES,
        "Upstream connections that could not be opened or set up, by reason"
    );
    metrics::describe_counter!(UPSTREAM_CONNECTS, "Upstream connections opened");
    metrics::describe_counter!(
        UPSTREAM_REUSED,
        "Client sessions served by an idle upstream connection from the pool"
    );
    metrics::describe_counter!(BREAKERS_OPENED, "Thread breakers opened (one alert each)");
    metrics::describe_counter!(HELD, "Messages committed to the quarantine");
}
