//! The shared state store: breaker state in Redis, so that every node counts the same storm.
//!
//! Each decision is one round trip: one EVALSHA of `redis.lua`, which steps every thread key of
//! the message (window, senders, circuit, trip) atomically, so two nodes that see replies of one
//! thread at the same instant cannot both open its breaker. `redis::Script` loads the script
//! again after NOSCRIPT (a restart, SCRIPT FLUSH).
//!
//! Keys: `{PREFIX}t:<key id>` is a key's hash: a storm (`s`: its `breaker::StormState` packed,
//! 38 bytes and 8 per sender; `l`: its label; `k`: the labels of keys joined to it) or a link to
//! one (`p`: the storm's id, `e`: until when); `{PREFIX}m:<id>` a decided message's outcomes, for
//! its copies; `{PREFIX}open` the sorted set of opened breakers. The prefix is the hash tag, so a
//! script's keys always sit in one cluster slot (one slot per prefix: the state is small, and
//! sharding it would split a message's keys). Every key expires a little after its state stops
//! mattering, and the opened set is trimmed and capped; nothing grows without bound. Times are
//! the nodes' clocks, passed in.
//!
//! When Redis fails or answers slower than `state.timeout`, calls return `StoreError` and the
//! engine falls back (local counters or tempfail). An outage is logged once and counted; while
//! it lasts, one call per second probes Redis and the others fail at once, so a dead Redis
//! costs no message more than one timeout.

use super::{BreakerStatus, ObserveRequest, Observed, StateStore, StoreError, to_secs};
use crate::breaker::{Limits, Outcome, Phase, Rule};
use crate::config::StateConfig;
use crate::fingerprint::ThreadKey;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server-side step of all commands (observe, trip, reset, open).
const SCRIPT: &str = include_str!("redis.lua");

/// Opened breakers listed at most; those closing soonest are dropped first.
const MAX_OPEN: u32 = 10_000;
/// While Redis is down, one call per this interval tries it again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Admin calls (trip, reset, listing, counting) may take longer than a decision.
const ADMIN_TIMEOUT_MIN: Duration = Duration::from_secs(2);
/// Values the script returns per counter.
const OUTCOME_FIELDS: usize = 11;

pub struct RedisStore {
    conn: ConnectionManager,
    script: redis::Script,
    /// `{PREFIX}open`.
    index: String,
    /// `{PREFIX}t:`.
    thread_prefix: String,
    /// `{PREFIX}m:`.
    message_prefix: String,
    timeout: Duration,
    health: Health,
}

impl RedisStore {
    /// A store on `state.url` with `state.prefix`. Connects lazily (the first call connects), so a
    /// Redis that is down at start-up only means falling back. Fails on a missing or malformed
    /// url or a prefix with braces. Must be called inside a Tokio runtime.
    pub fn new(state: &StateConfig) -> Result<RedisStore, StoreError> {
        let url = state.url.as_deref().ok_or_else(|| {
            StoreError::Backend("state.url: the redis backend needs a url".into())
        })?;
        if state.prefix.contains(['{', '}']) {
            return Err(StoreError::Backend(format!(
                "state.prefix {:?}: braces are not allowed (the prefix is the hash tag)",
                state.prefix
            )));
        }
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Backend(format!("state.url {url:?}: {e}")))?;
        let timeout = state.timeout.max(Duration::from_millis(1));
        // One connection attempt per call (our own retry pacing is in `Health`), bounded by the
        // decision timeout but never absurdly short for a remote Redis.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::Backend(format!("state.url {url:?}: {e}")))?;
        Ok(RedisStore {
            conn,
            script: redis::Script::new(SCRIPT),
            index: format!("{{{}}}open", state.prefix),
            thread_prefix: format!("{{{}}}t:", state.prefix),
            message_prefix: format!("{{{}}}m:", state.prefix),
            timeout,
            health: Health::new(),
        })
    }

    /// The Redis key of a key's storm or link (for tests and operators' `redis-cli`).
    pub fn thread_key(&self, key: &ThreadKey) -> String {
        format!("{}{:016x}", self.thread_prefix, key.id)
    }

    /// The Redis key of a decided message's record.
    pub fn message_key(&self, message: u64) -> String {
        format!("{}{message:016x}", self.message_prefix)
    }

    /// The Redis key of the opened-breakers index.
    pub fn index_key(&self) -> &str {
        &self.index
    }

    /// One PING through the outage logic; start-up uses it to log whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.call(self.timeout, async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    /// Outages so far (each logged once).
    pub fn outages(&self) -> u64 {
        self.health.outages.load(Ordering::Relaxed)
    }

    /// Calls that failed or were refused because Redis was down.
    pub fn failed_calls(&self) -> u64 {
        self.health.failed.load(Ordering::Relaxed)
    }

    /// True while an outage lasts.
    pub fn is_down(&self) -> bool {
        self.health.down.load(Ordering::Acquire)
    }

    fn admin_timeout(&self) -> Duration {
        self.timeout.max(ADMIN_TIMEOUT_MIN)
    }

    /// Runs one Redis call under `timeout` and the outage logic.
    async fn call<T>(
        &self,
        timeout: Duration,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let _probe = match self.health.admit() {
            Admit::Go(probe) => probe,
            Admit::Refuse => {
                self.health.failed.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Unavailable(
                    "redis is down; retrying at most once a second".into(),
                ));
            }
        };
        let error = match tokio::time::timeout(timeout, work).await {
            Ok(Ok(value)) => {
                self.health.up();
                return Ok(value);
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                StoreError::Unavailable(e.to_string())
            }
            Ok(Err(e)) => StoreError::Backend(e.to_string()),
            Err(_) => StoreError::Timeout(timeout.as_millis() as u64),
        };
        self.health.down(&error);
        Err(error)
    }

    fn invocation<'a>(&'a self, command: &str, now_ms: u64) -> redis::ScriptInvocation<'a> {
        let mut invocation = self.script.prepare_invoke();
        invocation.key(&self.index);
        invocation
            .arg(command)
            .arg(to_secs(now_ms))
            .arg(&self.thread_prefix)
            .arg(&self.message_prefix);
        invocation
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        RedisStore::ping(self).await
    }

    async fn observe(&self, req: &ObserveRequest<'_>) -> Result<Vec<Observed>, StoreError> {
        let mut invocation = self.invocation("observe", req.now_ms);
        let (message, ttl) = match req.message {
            Some((id, ttl)) => (format!("{id:016x}"), ttl),
            None => (String::new(), 0),
        };
        invocation
            .arg(req.sender)
            .arg(u8::from(req.fast))
            .arg(req.sender_cap)
            .arg(MAX_OPEN)
            .arg(message)
            .arg(ttl)
            .arg(req.counters.len());
        let mut counted = 0;
        for c in req.counters {
            let l = &c.limits;
            invocation
                .arg(c.rule as u8)
                .arg(l.trip)
                .arg(l.window_s)
                .arg(l.block_s)
                .arg(l.max_block_s)
                .arg(l.fast_senders)
                .arg(l.fast_window_s)
                .arg(c.keys.len());
            for key in c.keys {
                invocation.arg(format!("{:016x}", key.id)).arg(&*key.label);
            }
            counted += usize::from(!c.keys.is_empty());
        }
        let mut conn = self.conn.clone();
        let flat: Vec<redis::Value> = self
            .call(self.timeout, async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        // A copy returns what its first copy was decided with, whatever this request holds.
        if !flat.len().is_multiple_of(OUTCOME_FIELDS)
            || (req.message.is_none() && flat.len() != counted * OUTCOME_FIELDS)
        {
            return Err(StoreError::Backend(format!(
                "script returned {} values for {} counters",
                flat.len(),
                counted
            )));
        }
        flat.chunks_exact(OUTCOME_FIELDS).map(observed).collect()
    }

    async fn trip(
        &self,
        key: &ThreadKey,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        let mut invocation = self.invocation("trip", now_ms);
        invocation
            .arg(limits.block_s)
            .arg(limits.window_s)
            .arg(MAX_OPEN)
            .arg(format!("{:016x}", key.id))
            .arg(&*key.label);
        let mut conn = self.conn.clone();
        self.call(self.admin_timeout(), async move {
            invocation.invoke_async::<String>(&mut conn).await
        })
        .await
    }

    async fn reset(&self, key: &ThreadKey, now_ms: u64) -> Result<Option<String>, StoreError> {
        let mut invocation = self.invocation("reset", now_ms);
        invocation.arg(format!("{:016x}", key.id));
        let mut conn = self.conn.clone();
        self.call(self.admin_timeout(), async move {
            invocation.invoke_async::<Option<String>>(&mut conn).await
        })
        .await
    }

    async fn open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError> {
        type Row = (String, String, u8, u8, u64, u64, u32, u32);
        let invocation = self.invocation("open", now_ms);
        let mut conn = self.conn.clone();
        let rows: Vec<Row> = self
            .call(self.admin_timeout(), async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        let mut open: Vec<BreakerStatus> = rows
            .into_iter()
            .map(
                |(key, members, rule, phase, opened_at, until, replies, senders)| BreakerStatus {
                    key,
                    keys: serde_json::from_str(&members).unwrap_or_default(),
                    breaker: Rule::from_u8(rule).name(),
                    phase: if phase == 1 {
                        Phase::Open
                    } else {
                        Phase::HalfOpen
                    },
                    opened_at_ms: opened_at * 1000,
                    until_ms: until * 1000,
                    replies,
                    senders,
                },
            )
            .collect();
        open.sort_by(|a, b| b.opened_at_ms.cmp(&a.opened_at_ms).then(a.key.cmp(&b.key)));
        Ok(open)
    }

    async fn tracked(&self) -> Result<usize, StoreError> {
        let patterns = [
            format!("{}*", glob_escape(&self.thread_prefix)),
            format!("{}*", glob_escape(&self.message_prefix)),
        ];
        let mut conn = self.conn.clone();
        self.call(self.admin_timeout(), async move {
            let mut count = 0usize;
            for pattern in &patterns {
                let mut cursor = 0u64;
                loop {
                    let (next, keys): (u64, Vec<redis::Value>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await?;
                    count += keys.len();
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Ok(count)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

/// One counter's 11 values from the script: phase, held, opened, rule, count, senders,
/// opened_at, until, storm id (16 hex digits), copy, label ('' unless held or opened).
fn observed(v: &[redis::Value]) -> Result<Observed, StoreError> {
    let int = |i: usize| -> Result<i64, StoreError> {
        match &v[i] {
            redis::Value::Int(n) => Ok(*n),
            other => Err(StoreError::Backend(format!(
                "script value {i} is {other:?}, not an integer"
            ))),
        }
    };
    let text = |i: usize| -> Result<String, StoreError> {
        match &v[i] {
            redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            redis::Value::SimpleString(s) => Ok(s.clone()),
            other => Err(StoreError::Backend(format!(
                "script value {i} is {other:?}, not a string"
            ))),
        }
    };
    let u32_of = |i: usize| {
        let n = int(i)?;
        u32::try_from(n).map_err(|_| StoreError::Backend(format!("script value {n} out of range")))
    };
    let storm = text(8)?;
    let outcome = Outcome {
        phase: match int(0)? {
            0 => Phase::Closed,
            1 => Phase::Open,
            2 => Phase::HalfOpen,
            p => return Err(StoreError::Backend(format!("script returned phase {p}"))),
        },
        held: int(1)? != 0,
        opened: int(2)? != 0,
        rule: Rule::from_u8(u8::try_from(int(3)?).unwrap_or(0)),
        count: u32_of(4)?,
        senders: u32_of(5)?,
        opened_at: u32_of(6)?,
        until: u32_of(7)?,
        storm: u64::from_str_radix(&storm, 16)
            .map_err(|_| StoreError::Backend(format!("script returned storm id {storm:?}")))?,
        copy: int(9)? != 0,
    };
    let label = text(10)?;
    Ok(Observed {
        outcome,
        storm_label: (!label.is_empty()).then(|| Arc::from(label.as_str())),
    })
}

/// Escapes Redis glob metacharacters.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Outage bookkeeping: up, or down since an instant with the next probe due at another.
struct Health {
    down: AtomicBool,
    /// A call is probing a down Redis now.
    probing: AtomicBool,
    /// When down: since when, and when the next probe may go.
    outage: Mutex<Option<(Instant, Instant)>>,
    outages: AtomicU64,
    failed: AtomicU64,
}

enum Admit<'a> {
    /// Go ahead; the guard (when probing) lets the next probe go when dropped.
    Go(Option<ProbeGuard<'a>>),
    Refuse,
}

struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Health {
    fn new() -> Health {
        Health {
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            outage: Mutex::new(None),
            outages: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Instant)>> {
        self.outage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up: every call goes. Down: one call per `RETRY_EVERY` goes (the probe), others are refused.
    fn admit(&self) -> Admit<'_> {
        if !self.down.load(Ordering::Acquire) {
            return Admit::Go(None);
        }
        let due = match *self.outage() {
            Some((_, retry_at)) => Instant::now() >= retry_at,
            None => true,
        };
        if due && !self.probing.swap(true, Ordering::AcqRel) {
            Admit::Go(Some(ProbeGuard(&self.probing)))
        } else {
            Admit::Refuse
        }
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            let since = self.outage().take().map(|(since, _)| since);
            tracing::warn!(
                backend = "redis",
                down_ms = since.map_or(0, |s| s.elapsed().as_millis() as u64),
                failed_calls = self.failed.load(Ordering::Relaxed),
                "state store answers again; shared counting resumed"
            );
        }
    }

    fn down(&self, error: &StoreError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut outage = self.outage();
        let since = outage.map_or(now, |(since, _)| since);
        *outage = Some((since, now + RETRY_EVERY));
        drop(outage);
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormbreaker_state_outages_total", "backend" => "redis")
                .increment(1);
            tracing::error!(
                backend = "redis",
                %error,
                "state store unavailable; deciding as state.on_unavailable says until it answers \
                 (retrying once a second)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_parses_and_rejects_garbage() {
        use redis::Value::{BulkString, Int};
        let mut v = vec![
            Int(2),
            Int(0),
            Int(1),
            Int(3),
            Int(10),
            Int(4),
            Int(100),
            Int(200),
            BulkString(b"00000000000000ff".to_vec()),
            Int(0),
            BulkString(b"subj:x".to_vec()),
        ];
        let o = observed(&v).unwrap();
        assert_eq!(o.outcome.phase, Phase::HalfOpen);
        assert!(o.outcome.opened && !o.outcome.held && !o.outcome.copy);
        assert_eq!(o.outcome.rule, Rule::Manual);
        assert_eq!(o.outcome.storm, 255);
        assert_eq!(o.storm_label.as_deref(), Some("subj:x"));
        assert_eq!(
            (
                o.outcome.count,
                o.outcome.senders,
                o.outcome.opened_at,
                o.outcome.until
            ),
            (10, 4, 100, 200)
        );
        v[10] = BulkString(Vec::new());
        assert_eq!(observed(&v).unwrap().storm_label, None);
        v[0] = Int(7);
        assert!(observed(&v).is_err());
        v[0] = Int(0);
        v[4] = Int(-1);
        assert!(observed(&v).is_err());
        v[4] = Int(1);
        v[8] = BulkString(b"not hex".to_vec());
        assert!(observed(&v).is_err());
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("{a*}t:"), "{a\\*}t:");
        assert_eq!(glob_escape("x[1]?"), "x\\[1\\]\\?");
    }

    #[test]
    fn health_refuses_all_but_one_probe_per_second_while_down() {
        let h = Health::new();
        assert!(matches!(h.admit(), Admit::Go(None)));
        h.down(&StoreError::Timeout(1));
        h.down(&StoreError::Timeout(1));
        assert_eq!(h.outages.load(Ordering::Relaxed), 1);
        assert!(matches!(h.admit(), Admit::Refuse));
        // Make the probe due.
        *h.outage() = Some((Instant::now(), Instant::now()));
        let probe = h.admit();
        assert!(matches!(probe, Admit::Go(Some(_))));
        assert!(matches!(h.admit(), Admit::Refuse), "one probe at a time");
        drop(probe);
        assert!(matches!(h.admit(), Admit::Go(Some(_))));
        h.up();
        assert!(matches!(h.admit(), Admit::Go(None)));
        h.down(&StoreError::Timeout(1));
        assert_eq!(h.outages.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn bad_urls_and_prefixes_are_named() {
        let mut state = StateConfig {
            url: Some("http://nope".into()),
            ..StateConfig::default()
        };
        let err = RedisStore::new(&state).err().unwrap().to_string();
        assert!(err.contains("state.url"), "{err}");
        state.url = Some("redis://127.0.0.1:1".into());
        state.prefix = "a{b}".into();
        let err = RedisStore::new(&state).err().unwrap().to_string();
        assert!(err.contains("state.prefix"), "{err}");
        state.url = None;
        assert!(RedisStore::new(&state).is_err());
    }
}
