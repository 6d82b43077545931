//! The audit log: one JSON line per hold, release, delete, purge and expiry, and per breaker
//! tripped or reset by hand (console, admin API, `stormbreaker breaker`), appended to
//! `audit.log` in the quarantine folder. Each line is written with one `write` on a file opened
//! with O_APPEND, so lines from the proxy and from commands never interleave.

use crate::quarantine::record::{HeldMeta, rfc3339};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

pub const FILE_NAME: &str = "audit.log";

#[derive(Debug, Serialize)]
pub struct AuditLine<'a> {
    pub at: String,
    pub at_ms: u64,
    /// `$SUDO_USER`, else `$USER`, else "unknown" for commands; "proxy" for holds; the
    /// token's name (or "anonymous") for the console and the admin API.
    pub who: &'a str,
    /// hold, release, release-failed, delete, purge, expire.
    pub action: &'a str,
    pub id: &'a str,
    pub thread: &'a str,
    pub mail_from: &'a str,
    pub rcpt_to: Vec<&'a str>,
    pub message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub detail: &'a str,
}

/// Who is acting, for the audit log and the release journal.
pub fn who() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// Appends one line; a failure is logged, never fatal (the action itself already happened).
pub fn record(dir: &Path, who: &str, action: &str, meta: &HeldMeta, detail: &str) {
    let now = crate::now_ms();
    let line = AuditLine {
        at: rfc3339(now),
        at_ms: now,
        who,
        action,
        id: &meta.id,
        thread: &meta.thread,
        mail_from: &meta.envelope.mail_from,
        rcpt_to: meta
            .envelope
            .rcpts
            .iter()
            .map(|r| r.address.as_str())
            .collect(),
        message_id: meta.message_id.as_deref(),
        detail,
    };
    append(dir, &line, action, &meta.id);
}

/// A breaker tripped or reset by hand: `action` is `trip` or `reset`, `thread` the key.
#[derive(Debug, Serialize)]
pub struct BreakerLine<'a> {
    pub at: String,
    pub at_ms: u64,
    pub who: &'a str,
    pub action: &'a str,
    pub thread: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub detail: &'a str,
}

/// Appends one breaker line; a failure is logged, never fatal.
pub fn record_breaker(dir: &Path, who: &str, action: &str, thread: &str, detail: &str) {
    let now = crate::now_ms();
    let line = BreakerLine {
        at: rfc3339(now),
        at_ms: now,
        who,
        action,
        thread,
        detail,
    };
    append(dir, &line, action, thread);
}

/// One line, one `write` on a file opened with O_APPEND.
fn append(dir: &Path, line: &impl Serialize, action: &str, subject: &str) {
    let result = serde_json::to_vec(line)
        .map_err(std::io::Error::other)
        .and_then(|mut bytes| {
            bytes.push(b'\n');
            crate::quarantine::store::private_file()
                .create(true)
                .append(true)
                .open(dir.join(FILE_NAME))?
                .write_all(&bytes)
        });
    if let Err(e) = result {
        tracing::error!(error = %e, action, id = subject, "cannot write the quarantine audit log");
    }
}
