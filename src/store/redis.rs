//! The shared state store: breaker state in Redis, so that every node counts the same storm.
//!
//! Each decision is one round trip: one EVALSHA of `redis.lua`, which steps every thread key of
//! the message (window, senders, circuit, trip) atomically, so two nodes that see replies of one
//! thread at the same instant cannot both open its breaker. `redis::Script` loads the script
//! again after NOSCRIPT (a restart, SCRIPT FLUSH).
//!
//! Keys: `{TAG}t:<key id>` is a key's hash: a storm (`s`: its `breaker::StormState` packed,
//! 38 bytes and 8 per sender; `l`: its label; `k`: the labels of keys joined to it) or a link to
//! one (`p`: the storm's id, `e`: until when); `{TAG}m:<id>` a decided message's outcomes, for
//! its copies; `{TAG}open` the sorted set of opened breakers. TAG is the prefix alone on a
//! standalone server or behind Sentinel (one slot, every key of a message joins as it may), and
//! `PREFIX<16 hex digits>` of the counter's subject key (else its first key) on a Cluster
//! (`shard_of`): a script's keys are always in one slot, and storms spread over the shards. On a
//! Cluster `{PREFIX}shards` lists the tags with open breakers. Every key expires a little after
//! its state stops mattering, and the opened sets are trimmed and capped; nothing grows without
//! bound. Times are the nodes' clocks, passed in.
//!
//! When Redis fails or answers slower than `state.timeout`, calls return `StoreError` and the
//! engine falls back (local counters or tempfail). An outage is logged once and counted; while
//! it lasts, one call per second probes Redis and the others fail at once, so a dead Redis
//! costs no message more than one timeout.

use super::redis_link::{Link, Target, classify};
use super::{BreakerStatus, Counter, ObserveRequest, Observed, StateStore, StoreError, to_secs};
use crate::breaker::{Limits, Outcome, Phase, Rule};
use crate::config::{RedisMode, StateConfig};
use crate::fingerprint::ThreadKey;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server-side step of all commands (observe, trip, reset, open).
const SCRIPT: &str = include_str!("redis.lua");

/// Cluster only: the directory of shards with an open breaker (`{PREFIX}shards`, a sorted set
/// of shard tags scored by when their last breaker stops mattering). Written after a script
/// reports that a breaker opened (a second round trip for that one decision only; held
/// messages pay none), read by `open_breakers`, trimmed of past members and capped like the
/// per-shard index.
const DIRECTORY_SCRIPT: &str = r#"
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
local cap = tonumber(ARGV[4])
if n > cap then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1) end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] then
  local ttl = tonumber(top[2]) - tonumber(ARGV[3]) + 60
  if ttl < 60 then ttl = 60 end
  redis.call('EXPIRE', KEYS[1], ttl)
end
return n
"#;

/// Opened breakers listed at most; those closing soonest are dropped first.
const MAX_OPEN: u32 = 10_000;
/// While Redis is down, one call per this interval tries it again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Admin calls (trip, reset, listing, counting) may take longer than a decision.
const ADMIN_TIMEOUT_MIN: Duration = Duration::from_secs(2);
/// Values the script returns per counter.
const OUTCOME_FIELDS: usize = 11;

/// The shard a counter's keys live in on a Cluster: its subject key when it has one (every
/// reply of a thread carries the subject, whatever its client adds), else its first key.
/// Standalone and sentinel keep every key under the prefix alone, as before.
pub fn shard_of(keys: &[ThreadKey]) -> Option<&ThreadKey> {
    keys.iter()
        .find(|k| k.label.starts_with("subj:"))
        .or_else(|| keys.first())
}

pub struct RedisStore {
    link: Link,
    script: redis::Script,
    directory_script: redis::Script,
    prefix: String,
    /// Keys are spread over one hash tag per storm (Cluster), or all under `{PREFIX}`.
    sharded: bool,
    timeout: Duration,
    health: Health,
}

/// The keys of one hash tag: the index of its opened breakers, its keys' and messages' prefixes.
struct Shard {
    tag: String,
}

impl Shard {
    fn index(&self) -> String {
        format!("{}open", self.tag)
    }
    fn threads(&self) -> String {
        format!("{}t:", self.tag)
    }
    fn messages(&self) -> String {
        format!("{}m:", self.tag)
    }
}

impl RedisStore {
    /// A store as `[state]` says (standalone `url`, cluster `nodes`, sentinel `sentinels` and
    /// `master_name`, TLS files) with `state.prefix`. Connects lazily (the first call
    /// connects), so a Redis that is down at start-up only means falling back. Fails on a
    /// value the backend cannot use, naming its key. Must be called inside a Tokio runtime.
    pub fn new(state: &StateConfig) -> Result<RedisStore, StoreError> {
        let timeout = state.timeout.max(Duration::from_millis(1));
        let target =
            Target::from_config(state, timeout).map_err(|e| StoreError::Backend(e.to_string()))?;
        let link = Link::new(target, timeout).map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(RedisStore {
            link,
            script: redis::Script::new(SCRIPT),
            directory_script: redis::Script::new(DIRECTORY_SCRIPT),
            prefix: state.prefix.clone(),
            sharded: state.mode == RedisMode::Cluster,
            timeout,
            health: Health::new(),
        })
    }

    /// Whether storms are spread over one hash tag each (a Cluster).
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// Connections made to a primary so far (re-resolutions after failovers included).
    pub fn resolutions(&self) -> u64 {
        self.link.resolutions.load(Ordering::Relaxed)
    }

    fn shard(&self, key: Option<&ThreadKey>) -> Shard {
        match key {
            Some(key) if self.sharded => Shard {
                tag: format!("{{{}{:016x}}}", self.prefix, key.id),
            },
            _ => Shard {
                tag: format!("{{{}}}", self.prefix),
            },
        }
    }

    fn shard_of_tag(&self, tag: &str) -> Shard {
        Shard { tag: tag.into() }
    }

    /// The directory of shards with open breakers (Cluster).
    fn directory(&self) -> String {
        format!("{{{}}}shards", self.prefix)
    }

    /// The Redis key of a key's storm or link (for tests and operators' `redis-cli`); on a
    /// Cluster, in the shard of `thread` (the counter's keys, see `shard_of`).
    pub fn thread_key_in(&self, thread: &[ThreadKey], key: &ThreadKey) -> String {
        format!("{}{:016x}", self.shard(shard_of(thread)).threads(), key.id)
    }

    /// The Redis key of a key's storm or link when its counter has only that key.
    pub fn thread_key(&self, key: &ThreadKey) -> String {
        self.thread_key_in(std::slice::from_ref(key), key)
    }

    /// The Redis key of a decided message's record (unsharded layout).
    pub fn message_key(&self, message: u64) -> String {
        format!("{}{message:016x}", self.shard(None).messages())
    }

    /// The Redis key of the opened-breakers index (unsharded layout).
    pub fn index_key(&self) -> String {
        self.shard(None).index()
    }

    /// One PING through the outage logic; start-up uses it to log whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        self.call(self.timeout, move |mut conn| {
            let cmd = cmd.clone();
            async move { cmd.query_async::<String>(&mut conn).await }
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

    /// Runs one Redis call under `timeout` and the outage logic. When the error says the
    /// server stopped being the primary (or went away, under Sentinel), the link resolves it
    /// again at once and the call is retried there once, within the same timeout.
    async fn call<T, F, Fut>(&self, timeout: Duration, work: F) -> Result<T, StoreError>
    where
        F: Fn(super::redis_link::Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let _probe = match self.health.admit() {
            Admit::Go(probe) => probe,
            Admit::Refuse => {
                self.health.failed.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Unavailable(
                    "redis is down; retrying at most once a second".into(),
                ));
            }
        };
        let attempt = async {
            let conn = self.link.get().await?;
            match work(conn).await {
                Err(e) => match self.link.recover(classify(&e)).await {
                    Some(conn) => work(conn).await,
                    None => Err(e),
                },
                ok => ok,
            }
        };
        let error = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(value)) => {
                self.health.up();
                return Ok(value);
            }
            Ok(Err(e))
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || matches!(classify(&e), super::redis_link::Failure::Demoted) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            Ok(Err(e)) => StoreError::Backend(e.to_string()),
            Err(_) => StoreError::Timeout(timeout.as_millis() as u64),
        };
        self.health.down(&error);
        Err(error)
    }

    fn invocation<'a>(
        &'a self,
        shard: &Shard,
        command: &str,
        now_ms: u64,
    ) -> redis::ScriptInvocation<'a> {
        let mut invocation = self.script.prepare_invoke();
        invocation.key(shard.index());
        invocation
            .arg(command)
            .arg(to_secs(now_ms))
            .arg(shard.threads())
            .arg(shard.messages());
        invocation
    }

    /// Runs a prepared invocation under the outage logic.
    async fn invoke<T: redis::FromRedisValue + Send>(
        &self,
        timeout: Duration,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let invocation = &invocation;
        self.call(timeout, move |mut conn| async move {
            invocation.invoke_async::<T>(&mut conn).await
        })
        .await
    }

    /// One script call for the counters of one shard; their outcomes, in order.
    async fn observe_shard(
        &self,
        shard: &Shard,
        req: &ObserveRequest<'_>,
        counters: &[&Counter<'_>],
    ) -> Result<Vec<Observed>, StoreError> {
        let mut invocation = self.invocation(shard, "observe", req.now_ms);
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
            .arg(counters.len());
        let mut counted = 0;
        for c in counters {
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
        let flat: Vec<redis::Value> = self.invoke(self.timeout, invocation).await?;
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

    /// Cluster: notes that `shard` has a breaker open until `until` (seconds). A failure is
    /// only logged: the breaker holds mail whether or not it is listed (a breaker whose entry
    /// was lost is missing from listings until it opens again or is tripped by hand).
    async fn note_open(&self, shard: &Shard, until: u64, now_s: u32) {
        if !self.sharded {
            return;
        }
        let mut invocation = self.directory_script.prepare_invoke();
        invocation
            .key(self.directory())
            .arg(until)
            .arg(&shard.tag)
            .arg(now_s)
            .arg(MAX_OPEN);
        if let Err(error) = self.invoke::<i64>(self.timeout, invocation).await {
            tracing::warn!(%error, shard = %shard.tag, "could not list an open breaker's shard");
        }
    }

    /// The shards with open breakers (Cluster), or the one shard.
    async fn open_shards(&self, now_ms: u64) -> Result<Vec<Shard>, StoreError> {
        if !self.sharded {
            return Ok(vec![self.shard(None)]);
        }
        let key = self.directory();
        let now = to_secs(now_ms);
        let tags: Vec<String> = self
            .call(self.admin_timeout(), move |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(format!("({now}"))
                        .arg("+inf")
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(tags.iter().map(|t| self.shard_of_tag(t)).collect())
    }

    /// Open breakers with the shard each lives in.
    async fn open_with_shards(
        &self,
        now_ms: u64,
    ) -> Result<Vec<(String, BreakerStatus)>, StoreError> {
        type Row = (String, String, u8, u8, u64, u64, u32, u32);
        let mut open = Vec::new();
        for shard in self.open_shards(now_ms).await? {
            let invocation = self.invocation(&shard, "open", now_ms);
            let rows: Vec<Row> = self.invoke(self.admin_timeout(), invocation).await?;
            open.extend(rows.into_iter().map(
                |(key, members, rule, phase, opened_at, until, replies, senders)| {
                    (
                        shard.tag.clone(),
                        BreakerStatus {
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
                },
            ));
        }
        open.sort_by(|(_, a), (_, b)| b.opened_at_ms.cmp(&a.opened_at_ms).then(a.key.cmp(&b.key)));
        Ok(open)
    }

    /// Cluster: the shards whose open storms name `key` (as id or joined key). A key typed by
    /// an admin carries no subject, so its storm's shard is found through the open breakers.
    async fn shards_naming(&self, key: &ThreadKey, now_ms: u64) -> Result<Vec<Shard>, StoreError> {
        let mut tags: Vec<String> = Vec::new();
        for (tag, status) in self.open_with_shards(now_ms).await? {
            if (status.key == *key.label || status.keys.iter().any(|k| *k == *key.label))
                && !tags.contains(&tag)
            {
                tags.push(tag);
            }
        }
        Ok(tags.iter().map(|t| self.shard_of_tag(t)).collect())
    }

    async fn reset_in(
        &self,
        shard: &Shard,
        key: &ThreadKey,
        now_ms: u64,
    ) -> Result<Option<String>, StoreError> {
        let mut invocation = self.invocation(shard, "reset", now_ms);
        invocation.arg(format!("{:016x}", key.id));
        self.invoke(self.admin_timeout(), invocation).await
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        RedisStore::ping(self).await
    }

    async fn observe(&self, req: &ObserveRequest<'_>) -> Result<Vec<Observed>, StoreError> {
        if !self.sharded {
            let all: Vec<&Counter<'_>> = req.counters.iter().collect();
            return self.observe_shard(&self.shard(None), req, &all).await;
        }
        // Cluster: one script call per shard (a reply's counter is one shard; a new message's
        // me-too and wave counters are one each). Counters with no keys give no outcome.
        let mut groups: Vec<(u64, Shard, Vec<&Counter<'_>>)> = Vec::new();
        for c in req.counters.iter().filter(|c| !c.keys.is_empty()) {
            let key = shard_of(c.keys).expect("keys");
            match groups.iter_mut().find(|(id, _, _)| *id == key.id) {
                Some((_, _, members)) => members.push(c),
                None => groups.push((key.id, self.shard(Some(key)), vec![c])),
            }
        }
        let mut out = Vec::with_capacity(req.counters.len());
        for (_, shard, counters) in &groups {
            let observed = self.observe_shard(shard, req, counters).await?;
            if let Some(until) = observed
                .iter()
                .filter(|o| o.outcome.opened)
                .map(|o| u64::from(o.outcome.until))
                .max()
            {
                let window = counters
                    .iter()
                    .map(|c| c.limits.window_s)
                    .max()
                    .unwrap_or(0);
                self.note_open(shard, until + u64::from(window), to_secs(req.now_ms))
                    .await;
            }
            out.extend(observed);
        }
        Ok(out)
    }

    async fn trip(
        &self,
        key: &ThreadKey,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<String, StoreError> {
        // Cluster: a storm already open that names the key, else the key's own shard (where
        // a subject, wave or me-too key's storm always lives).
        let shard = if self.sharded && !key.label.starts_with("subj:") {
            match self.shards_naming(key, now_ms).await?.into_iter().next() {
                Some(shard) => shard,
                None => self.shard(Some(key)),
            }
        } else {
            self.shard(Some(key))
        };
        let mut invocation = self.invocation(&shard, "trip", now_ms);
        invocation
            .arg(limits.block_s)
            .arg(limits.window_s)
            .arg(MAX_OPEN)
            .arg(format!("{:016x}", key.id))
            .arg(&*key.label);
        let label: String = self.invoke(self.admin_timeout(), invocation).await?;
        let until = u64::from(to_secs(now_ms)) + u64::from(limits.block_s);
        self.note_open(&shard, until + u64::from(limits.window_s), to_secs(now_ms))
            .await;
        Ok(label)
    }

    async fn reset(&self, key: &ThreadKey, now_ms: u64) -> Result<Option<String>, StoreError> {
        if !self.sharded {
            return self.reset_in(&self.shard(None), key, now_ms).await;
        }
        // Cluster: every open storm naming the key, else the storm in the key's own shard.
        let mut first = None;
        for shard in self.shards_naming(key, now_ms).await? {
            let label = self.reset_in(&shard, key, now_ms).await?;
            first = first.or(label);
        }
        match first {
            Some(label) => Ok(Some(label)),
            None => self.reset_in(&self.shard(Some(key)), key, now_ms).await,
        }
    }

    async fn open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError> {
        Ok(self
            .open_with_shards(now_ms)
            .await?
            .into_iter()
            .map(|(_, status)| status)
            .collect())
    }

    async fn tracked(&self) -> Result<usize, StoreError> {
        // `{PREFIX}` (one shard) or `{PREFIX` and 16 hex digits `}` (Cluster).
        let tag = if self.sharded {
            "[0-9a-f]".repeat(16)
        } else {
            String::new()
        };
        let pattern = format!("{{{}{tag}}}[tm]:*", glob_escape(&self.prefix));
        let nodes = if self.sharded {
            self.call(self.admin_timeout(), |_conn| self.link.primaries())
                .await?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let mut count = 0usize;
        for node in nodes {
            let pattern = pattern.clone();
            count += self
                .call(self.admin_timeout(), move |mut conn| {
                    let pattern = pattern.clone();
                    let node = node.clone();
                    async move {
                        let mut count = 0usize;
                        let mut cursor = 0u64;
                        loop {
                            let mut scan = redis::cmd("SCAN");
                            scan.arg(cursor)
                                .arg("MATCH")
                                .arg(&pattern)
                                .arg("COUNT")
                                .arg(1000);
                            let value = match (&node, &mut conn) {
                                (Some((host, port)), super::redis_link::Conn::Cluster(cluster)) => {
                                    use redis::cluster_routing::{
                                        RoutingInfo, SingleNodeRoutingInfo,
                                    };
                                    cluster
                                        .route_command(
                                            scan,
                                            RoutingInfo::SingleNode(
                                                SingleNodeRoutingInfo::ByAddress {
                                                    host: host.clone(),
                                                    port: *port,
                                                },
                                            ),
                                        )
                                        .await?
                                }
                                _ => scan.query_async(&mut conn).await?,
                            };
                            let (next, keys): (u64, Vec<redis::Value>) =
                                redis::FromRedisValue::from_redis_value(value)?;
                            count += keys.len();
                            if next == 0 {
                                break;
                            }
                            cursor = next;
                        }
                        Ok(count)
                    }
                })
                .await?;
        }
        Ok(count)
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
