//! The decision point: envelope + headers + now -> verdict. Both front ends call `decide`.
//!
//! Per message: exempt senders and lists pass; a narrow audience passes without its headers even
//! being parsed; a wide reply is counted under each of its thread keys (one store call), and is
//! held when any key's breaker is open; a wide new message is counted for "me too" storms by
//! subject and audience. See `breaker` for the per-key rules and `store` for where counts live.

use crate::breaker::{Limits, Outcome, Rule};
use crate::config::{Config, HoldAction, PolicyConfig, StateBackend, StateFallback};
use crate::envelope::Envelope;
use crate::fingerprint::{self, Audience, ListRule, ListTable, ThreadKey, ThreadKeys};
use crate::lists::Lists;
use crate::store::{
    BreakerStatus, MemoryStore, ObserveRequest, RedisStore, StateStore, StoreError,
};
use crate::verdict::{Action, Hold, Verdict};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Most thread keys tracked by the local fallback when a shared store is down.
const FALLBACK_MAX_THREADS: usize = 100_000;

/// The storm engine as the front ends see it. Send + Sync: share it in an `Arc`.
pub struct Engine {
    policy: PolicyConfig,
    /// Swapped whole by list refreshes; each decision reads one snapshot.
    lists: Arc<Lists>,
    /// Hashes of lowercased exempt envelope senders (policy.exempt_senders and notify.from).
    exempt_senders: HashSet<u64>,
    store: Arc<dyn StateStore>,
    on_unavailable: StateFallback,
    /// In-process counters used while a shared store does not answer (`on_unavailable = local`).
    fallback: OnceLock<MemoryStore>,
    /// `decide`'s time, to the recorder installed when the engine was built (none: no-op). A
    /// handle, so a decision does not look the metric up by name.
    decision_seconds: metrics::Histogram,
}

impl Engine {
    /// An engine with the in-process state store, sized by `policy.max_threads`. Loads
    /// `[[lists]]` and `policy.lists_file`; errors name the file and line.
    pub fn new(config: &Config) -> anyhow::Result<Engine> {
        let store = Arc::new(MemoryStore::new(config.policy.max_threads));
        Engine::with_store(config, store)
    }

    /// An engine on the state store `[state]` names: in process (as `new`), or Redis. A Redis
    /// that does not answer at start-up is logged and fallen back from like any outage; only a
    /// bad `state.url` or `state.prefix` is an error. Call inside a Tokio runtime.
    pub async fn from_config(config: &Config) -> anyhow::Result<Engine> {
        let store: Arc<dyn StateStore> = match config.state.backend {
            StateBackend::Memory => Arc::new(MemoryStore::new(config.policy.max_threads)),
            StateBackend::Redis => {
                let redis = RedisStore::new(&config.state)?;
                if redis.ping().await.is_ok() {
                    tracing::info!(prefix = %config.state.prefix, "redis state store answers");
                }
                Arc::new(redis)
            }
        };
        Engine::with_store(config, store)
    }

    /// An engine on the given state store (for example the Redis backend).
    pub fn with_store(config: &Config, store: Arc<dyn StateStore>) -> anyhow::Result<Engine> {
        // [[lists]] and lists_file now; list sources are read by `Lists::refresh_all`.
        let lists = Arc::new(Lists::from_config(config)?);
        Ok(Engine::with_lists(config, store, lists))
    }

    /// An engine on the given state store and list table.
    fn with_lists(config: &Config, store: Arc<dyn StateStore>, lists: Arc<Lists>) -> Engine {
        let exempt_senders = config
            .policy
            .exempt_senders
            .iter()
            .chain(std::iter::once(&config.notify.from))
            .filter(|a| !a.is_empty())
            .map(|a| fingerprint::hash_lowercase(a.trim()))
            .collect();
        tracing::info!(
            lists = lists.table().len(),
            list_sources = config.list_sources.len(),
            backend = store.backend(),
            wide_audience = config.policy.wide_audience,
            trip_replies = config.policy.trip_replies,
            "storm engine ready"
        );
        Engine {
            policy: config.policy.clone(),
            lists,
            exempt_senders,
            store,
            on_unavailable: config.state.on_unavailable,
            fallback: OnceLock::new(),
            decision_seconds: metrics::histogram!(crate::admin::metric::DECISION_SECONDS),
        }
    }

    /// An engine with `config`'s policy, lists and exemptions on this engine's state store:
    /// what a reload puts in place (counts and open breakers are kept). The list table is
    /// shared, not copied: once the reload is in place, `lists().reconfigure(config)` gives it
    /// the new `[[lists]]`, `lists_file` and sources (what unchanged sources read is kept).
    pub fn rebuilt(&self, config: &Config) -> anyhow::Result<Engine> {
        Ok(Engine::with_lists(
            config,
            self.store.clone(),
            self.lists.clone(),
        ))
    }

    /// The list table and its sources: `refresh_all` at start, `run` for the schedule,
    /// `reload` on SIGHUP.
    pub fn lists(&self) -> &Arc<Lists> {
        &self.lists
    }

    /// True for envelope senders never counted nor held (policy.exempt_senders, notify.from).
    pub fn is_exempt_sender(&self, addr: &str) -> bool {
        !self.exempt_senders.is_empty()
            && self
                .exempt_senders
                .contains(&fingerprint::hash_lowercase(addr.trim()))
    }

    /// Whether `decide` could hold a message with this envelope at all (a wide audience, sender
    /// and list not exempt). When false, `decide` delivers whatever the headers say, so a front
    /// end may start relaying before it has them.
    pub fn could_hold(&self, envelope: &Envelope) -> bool {
        self.wide_audience(envelope, &self.lists.table()).is_some()
    }

    /// Decides for one message. `headers` is the raw header block (up to the empty line);
    /// `now_ms` is Unix time in milliseconds, passed in so storms can be simulated.
    pub async fn decide(&self, envelope: &Envelope, headers: &[u8], now_ms: u64) -> Verdict {
        let started = std::time::Instant::now();
        let lists = self.lists.table();
        let verdict = match self.wide_audience(envelope, &lists) {
            None => Verdict::DELIVER,
            Some(audience) => {
                let keys = fingerprint::parse_headers(headers);
                self.decide_wide(envelope, &keys, audience, &lists, now_ms)
                    .await
            }
        };
        self.decision_seconds
            .record(started.elapsed().as_secs_f64());
        verdict
    }

    /// `decide` with the headers already fingerprinted (`fingerprint::parse_headers`).
    pub async fn decide_keys(
        &self,
        envelope: &Envelope,
        keys: &ThreadKeys,
        now_ms: u64,
    ) -> Verdict {
        let started = std::time::Instant::now();
        let lists = self.lists.table();
        let verdict = match self.wide_audience(envelope, &lists) {
            None => Verdict::DELIVER,
            Some(audience) => {
                self.decide_wide(envelope, keys, audience, &lists, now_ms)
                    .await
            }
        };
        self.decision_seconds
            .record(started.elapsed().as_secs_f64());
        verdict
    }

    /// The audience when the message is wide and neither sender nor list is exempt.
    fn wide_audience(&self, envelope: &Envelope, lists: &ListTable) -> Option<Audience> {
        // exempt_senders may name the envelope sender or the name the client authenticated
        // as (SMTP AUTH on the submission port).
        if self.is_exempt_sender(&envelope.mail_from)
            || envelope
                .auth
                .as_deref()
                .is_some_and(|name| self.is_exempt_sender(name))
        {
            return None;
        }
        let audience = fingerprint::audience(&envelope.rcpts, lists);
        if audience.exempt {
            return None;
        }
        let wide = audience
            .list(lists)
            .and_then(|l| l.wide_audience)
            .unwrap_or(self.policy.wide_audience);
        (audience.weight >= wide).then_some(audience)
    }

    async fn decide_wide(
        &self,
        envelope: &Envelope,
        keys: &ThreadKeys,
        audience: Audience,
        lists: &ListTable,
        now_ms: u64,
    ) -> Verdict {
        let sender = if envelope.mail_from.is_empty() {
            let from = keys.from.as_deref().unwrap_or("<>");
            if self.is_exempt_sender(from) {
                return Verdict::DELIVER;
            }
            from
        } else {
            &envelope.mail_from
        };
        let list = audience.list(lists);
        let mut limits = self.limits(list);
        let me_too_key;
        let (rule, count_keys): (Rule, &[ThreadKey]) = if keys.reply {
            (Rule::Replies, &keys.keys)
        } else {
            let me_too = list
                .and_then(|l| l.me_too_messages)
                .unwrap_or(self.policy.me_too_messages);
            if me_too == 0 || keys.subject.is_empty() {
                return Verdict::DELIVER;
            }
            limits.trip = me_too;
            limits.fast_senders = 0;
            me_too_key = [ThreadKey::new(&format!(
                "metoo:{:016x}:{}",
                audience.fingerprint, keys.subject
            ))];
            (Rule::MeToo, &me_too_key[..])
        };
        if count_keys.is_empty() {
            return Verdict::DELIVER;
        }
        let request = ObserveRequest {
            keys: count_keys,
            sender: (fingerprint::hash_lowercase(sender) >> 32) as u32,
            rule,
            fast: self.policy.fast_audience > 0 && audience.weight >= self.policy.fast_audience,
            limits,
            now_ms,
        };
        let outcomes = match self.observe(&request).await {
            Ok(outcomes) => outcomes,
            Err(verdict) => return verdict,
        };
        self.verdict(sender, count_keys, &outcomes, &audience, list)
    }

    /// One store call; on failure the configured fallback.
    async fn observe(&self, request: &ObserveRequest<'_>) -> Result<Vec<Outcome>, Verdict> {
        match self.store.observe(request).await {
            Ok(outcomes) => Ok(outcomes),
            Err(error) => match self.on_unavailable {
                StateFallback::Local => {
                    // The store logs each outage once (and its end); per message, debug only.
                    tracing::debug!(%error, "state store failed; deciding with local counters");
                    let local = self
                        .fallback
                        .get_or_init(|| MemoryStore::new(FALLBACK_MAX_THREADS));
                    local.observe(request).await.map_err(|e| {
                        tracing::error!(error = %e, "local state store failed");
                        Verdict::DELIVER
                    })
                }
                StateFallback::Tempfail => {
                    tracing::warn!(%error, "state store failed; deferring the message");
                    Err(Verdict {
                        action: Action::Tempfail,
                        hold: None,
                        opened: None,
                    })
                }
            },
        }
    }

    fn verdict(
        &self,
        sender: &str,
        keys: &[ThreadKey],
        outcomes: &[Outcome],
        audience: &Audience,
        list: Option<&ListRule>,
    ) -> Verdict {
        let action = list.and_then(|l| l.action).unwrap_or(self.policy.action);
        let hold_for = |i: usize| {
            let o = &outcomes[i];
            Hold {
                thread: keys[i].label.to_string(),
                list: list.map(|l| l.address.clone()),
                audience: audience.weight,
                breaker: o.rule.name(),
                replies: o.count,
                senders: o.senders,
                reason: reason(o.rule, o.count, audience.weight),
                action,
            }
        };
        // One storm can open several of a message's keys (subject first, References root
        // later); naming the breaker that opened first (within a second: the one that has
        // counted more) keeps the hold, its alert and its release command on one thread key.
        let first_open = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.held)
            .min_by_key(|(i, o)| (o.opened_at, std::cmp::Reverse(o.count), *i))
            .map(|(i, _)| i);
        if let Some(i) = first_open {
            let hold = hold_for(i);
            tracing::warn!(
                thread = %hold.thread,
                list = hold.list.as_deref().unwrap_or("-"),
                breaker = hold.breaker,
                action = ?hold.action,
                sender,
                audience = hold.audience,
                replies = hold.replies,
                senders = hold.senders,
                until_ms = u64::from(outcomes[i].until) * 1000,
                reason = %hold.reason,
                "{}",
                if action == HoldAction::Log { "would hold" } else { "holding" }
            );
            return Verdict {
                action: match action {
                    HoldAction::Quarantine => Action::Quarantine,
                    HoldAction::Reject => Action::Reject,
                    HoldAction::Tempfail => Action::Tempfail,
                    HoldAction::Log => Action::Deliver,
                },
                hold: Some(hold),
                opened: None,
            };
        }
        if let Some(i) = outcomes.iter().position(|o| o.opened) {
            let opened = hold_for(i);
            tracing::warn!(
                thread = %opened.thread,
                list = opened.list.as_deref().unwrap_or("-"),
                breaker = opened.breaker,
                sender,
                audience = opened.audience,
                replies = opened.replies,
                senders = opened.senders,
                until_ms = u64::from(outcomes[i].until) * 1000,
                "breaker opened; this message passes, further replies are held"
            );
            return Verdict {
                action: Action::Deliver,
                hold: None,
                opened: Some(opened),
            };
        }
        Verdict::DELIVER
    }

    /// Thresholds for a message, the governing list's overrides applied.
    fn limits(&self, list: Option<&ListRule>) -> Limits {
        let p = &self.policy;
        let secs = |d: Duration| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
        let block = list.and_then(|l| l.block_for).unwrap_or(p.block_for);
        Limits {
            trip: list.and_then(|l| l.trip_replies).unwrap_or(p.trip_replies),
            window_s: secs(list.and_then(|l| l.window).unwrap_or(p.window)),
            block_s: secs(block),
            max_block_s: secs(p.max_block.max(block)),
            fast_senders: if p.fast_audience == 0 {
                0
            } else {
                list.and_then(|l| l.fast_senders).unwrap_or(p.fast_senders)
            },
            fast_window_s: secs(p.fast_window),
        }
    }

    /// Opens a thread's breaker by hand for `policy.block_for`. Errors are logged; use
    /// `try_trip` to see them.
    pub async fn trip(&self, thread_key: &str, now_ms: u64) {
        if let Err(error) = self.try_trip(thread_key, now_ms).await {
            tracing::error!(thread = thread_key, %error, "manual trip failed");
        }
    }

    pub async fn try_trip(&self, thread_key: &str, now_ms: u64) -> Result<(), StoreError> {
        let key = admin_key(thread_key);
        self.store.trip(&key, &self.limits(None), now_ms).await?;
        tracing::warn!(thread = %key.label, breaker = "manual", "breaker tripped by hand");
        Ok(())
    }

    /// Closes a thread's breaker and forgets its counts. Errors are logged; see `try_reset`.
    pub async fn reset(&self, thread_key: &str) {
        if let Err(error) = self.try_reset(thread_key).await {
            tracing::error!(thread = thread_key, %error, "manual reset failed");
        }
    }

    /// True when the key had state to reset.
    pub async fn try_reset(&self, thread_key: &str) -> Result<bool, StoreError> {
        let key = admin_key(thread_key);
        let existed = self.store.reset(&key).await?;
        tracing::warn!(thread = %key.label, existed, "breaker reset by hand");
        Ok(existed)
    }

    /// Breakers open or half-open at `now_ms`, most recent first. Errors are logged and give an
    /// empty list; see `try_open_breakers`.
    pub async fn open_breakers(&self, now_ms: u64) -> Vec<BreakerStatus> {
        self.try_open_breakers(now_ms)
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, "listing open breakers failed");
                Vec::new()
            })
    }

    pub async fn try_open_breakers(&self, now_ms: u64) -> Result<Vec<BreakerStatus>, StoreError> {
        self.store.open_breakers(now_ms).await
    }

    /// Whether the state store answers (for readiness checks).
    pub async fn ping_store(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Thread keys tracked by the state store.
    pub async fn tracked_threads(&self) -> Result<usize, StoreError> {
        self.store.tracked().await
    }
}

/// A thread key as an administrator types it. `subj:` keys are normalised the way messages
/// are, so `subj:RE: Quarterly Results` names the same breaker as `subj:quarterly results`.
pub fn admin_key(thread_key: &str) -> ThreadKey {
    let thread_key = thread_key.trim();
    match thread_key.strip_prefix("subj:") {
        Some(subject) => {
            ThreadKey::new(&format!("subj:{}", fingerprint::normalize_subject(subject)))
        }
        None => ThreadKey::new(thread_key),
    }
}

/// One ASCII line for logs and for the sender (the proxy puts it in its 550 5.7.1 text):
/// what happened and what to do instead.
pub fn reason(rule: Rule, count: u32, audience: u64) -> String {
    match rule {
        Rule::Replies | Rule::Fast => format!(
            "Reply-all storm: {count} replies to {audience} recipients in this thread; \
             your reply was held. Please reply to the sender only, not to all."
        ),
        Rule::MeToo => format!(
            "Reply-all storm: {count} messages with this subject to {audience} recipients; \
             yours was held. Please write to the sender only, not to all."
        ),
        Rule::Manual => "Reply-all storm: mail administrators stopped this thread; \
             your reply was held. Please reply to the sender only, not to all."
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const T0: u64 = 1_700_000_000_000;
    const MIN: u64 = 60_000;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n[notify]\nfrom = \"storm@corp.test\"\n{extra}\n\
             [[lists]]\naddress = \"all@corp.test\"\nmembers = 91053\n\
             [[lists]]\naddress = \"announce@corp.test\"\nmembers = 91053\nexempt = true\n\
             [[lists]]\naddress = \"eng@corp.test\"\nmembers = 3000\ntrip_replies = 3\naction = \"reject\"\n"
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    fn reply(n: usize) -> String {
        format!(
            "Message-ID: <r{n}@corp.test>\r\nIn-Reply-To: <root@corp.test>\r\n\
             References: <root@corp.test>\r\nSubject: RE: Quarterly results\r\n\r\n"
        )
    }

    async fn storm(engine: &Engine, to: &str, n: usize) -> Vec<Verdict> {
        let mut out = Vec::new();
        for i in 0..n {
            let env = Envelope::to(&format!("user{}@corp.test", i % 3), &[to]);
            out.push(
                engine
                    .decide(&env, reply(i).as_bytes(), T0 + i as u64 * MIN)
                    .await,
            );
        }
        out
    }

    #[tokio::test]
    async fn tenth_reply_opens_and_later_replies_are_quarantined() {
        let engine = Engine::new(&config("[policy]\nfast_audience = 0")).unwrap();
        let v = storm(&engine, "all@corp.test", 12).await;
        assert!(v[..9].iter().all(|v| *v == Verdict::DELIVER));
        let opened = v[9].opened.as_ref().expect("tenth reply opens");
        assert_eq!(v[9].action, Action::Deliver);
        assert_eq!(opened.replies, 10);
        assert_eq!(opened.list.as_deref(), Some("all@corp.test"));
        assert_eq!(v[10].action, Action::Quarantine);
        let hold = v[10].hold.as_ref().unwrap();
        assert_eq!(hold.thread, "mid:root@corp.test");
        assert_eq!(hold.breaker, "replies");
        assert_eq!(hold.audience, 91053);
        assert!(v[10].opened.is_none());
        assert_eq!(v[11].label(), "quarantine");
    }

    #[tokio::test]
    async fn narrow_replies_pass_even_when_the_thread_is_tripped() {
        let engine = Engine::new(&config("")).unwrap();
        storm(&engine, "all@corp.test", 12).await;
        let env = Envelope::to("user1@corp.test", &["boss@corp.test"]);
        let v = engine
            .decide(&env, reply(99).as_bytes(), T0 + 13 * MIN)
            .await;
        assert_eq!(v, Verdict::DELIVER);
    }

    #[tokio::test]
    async fn exempt_senders_and_lists_are_never_held() {
        let engine =
            Engine::new(&config("[policy]\nexempt_senders = [\"CEO@corp.test\"]")).unwrap();
        assert!(engine.is_exempt_sender("ceo@corp.test"));
        assert!(engine.is_exempt_sender("Storm@Corp.Test"));
        assert!(!engine.is_exempt_sender("user@corp.test"));
        storm(&engine, "all@corp.test", 12).await;
        let v = engine
            .decide(
                &Envelope::to("ceo@corp.test", &["all@corp.test"]),
                reply(1).as_bytes(),
                T0 + 13 * MIN,
            )
            .await;
        assert_eq!(v, Verdict::DELIVER);
        // The name a submission client authenticated as counts too.
        let mut by_login = Envelope::to("someone@corp.test", &["all@corp.test"]);
        by_login.auth = Some("ceo@corp.test".into());
        let v = engine
            .decide(&by_login, reply(2).as_bytes(), T0 + 13 * MIN)
            .await;
        assert_eq!(v, Verdict::DELIVER);
        by_login.auth = Some("intern".into());
        let v = engine
            .decide(&by_login, reply(3).as_bytes(), T0 + 13 * MIN)
            .await;
        assert_eq!(v.action, Action::Quarantine);
        let v = storm(&engine, "announce@corp.test", 30).await;
        assert!(v.iter().all(|v| *v == Verdict::DELIVER));
    }

    #[tokio::test]
    async fn list_overrides_apply() {
        let engine = Engine::new(&config("")).unwrap();
        let v = storm(&engine, "eng@corp.test", 4).await;
        assert!(v[2].opened.is_some());
        assert_eq!(v[3].action, Action::Reject);
        let reason = &v[3].hold.as_ref().unwrap().reason;
        assert!(
            reason.is_ascii() && reason.len() < 200 && !reason.contains('\n'),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn log_action_delivers_with_the_hold_set() {
        let engine = Engine::new(&config("[policy]\naction = \"log\"")).unwrap();
        let v = storm(&engine, "all@corp.test", 12).await;
        assert_eq!(v[11].action, Action::Deliver);
        assert!(v[11].hold.is_some());
        assert_eq!(v[11].label(), "would-hold");
    }

    #[tokio::test]
    async fn manual_trip_reset_and_listing() {
        let engine = Engine::new(&config("")).unwrap();
        engine.trip("subj:RE: Quarterly Results", T0).await;
        let open = engine.open_breakers(T0).await;
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].key, "subj:quarterly results");
        assert_eq!(open[0].breaker, "manual");
        let v = storm(&engine, "all@corp.test", 1).await;
        assert_eq!(v[0].hold.as_ref().unwrap().breaker, "manual");
        engine.reset("subj:quarterly results").await;
        assert!(engine.open_breakers(T0).await.is_empty());
        let env = Envelope::to("x@corp.test", &["all@corp.test"]);
        assert_eq!(
            engine.decide(&env, reply(5).as_bytes(), T0 + MIN).await,
            Verdict::DELIVER
        );
    }

    #[tokio::test]
    async fn me_too_storm_of_new_messages_trips() {
        let engine = Engine::new(&config("[policy]\nme_too_messages = 3")).unwrap();
        let mut verdicts = Vec::new();
        for i in 0..4u64 {
            let env = Envelope::to(&format!("u{i}@corp.test"), &["all@corp.test"]);
            let h = format!("Message-ID: <n{i}@corp.test>\r\nSubject: Please remove me\r\n\r\n");
            verdicts.push(engine.decide(&env, h.as_bytes(), T0 + i * MIN).await);
        }
        assert!(verdicts[2].opened.is_some());
        assert_eq!(verdicts[3].hold.as_ref().unwrap().breaker, "me-too");
    }

    #[tokio::test]
    async fn lists_file_loads_and_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lists.txt");
        std::fs::write(&path, "big@corp.test 5000\nbad line\n").unwrap();
        let mut c = config("");
        c.policy.lists_file = Some(path.clone());
        let err = Engine::new(&c).err().unwrap().to_string();
        assert!(err.contains("lists.txt:2:"), "{err}");
        std::fs::write(&path, "big@corp.test 5000\n").unwrap();
        let engine = Engine::new(&c).unwrap();
        let v = storm(&engine, "big@corp.test", 11).await;
        assert!(v[9].opened.is_some());
        c.policy.lists_file = Some(dir.path().join("missing.txt"));
        let err = Engine::new(&c).err().unwrap().to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[tokio::test]
    async fn holds_stay_on_the_key_that_opened_first() {
        // Replies from clients that keep In-Reply-To and References, References only, or only
        // the subject: the subject key opens first, the References root later, within the same
        // second. Every hold names the subject key, so alert and release stay on one thread.
        let engine = Engine::new(&config("[policy]\nfast_audience = 0")).unwrap();
        let root = "Message-ID: <root@corp.test>\r\nSubject: Welcome\r\n\r\n";
        let env = Envelope::to("hr@corp.test", &["all@corp.test"]);
        engine.decide(&env, root.as_bytes(), T0).await;
        let mut keys = std::collections::HashSet::new();
        for i in 0..40u64 {
            let threading = match i % 3 {
                0 => "In-Reply-To: <root@corp.test>\r\nReferences: <root@corp.test>\r\n",
                1 => "References: <root@corp.test>\r\n",
                _ => "",
            };
            let h =
                format!("Subject: RE: Welcome\r\n{threading}Message-ID: <r{i}@corp.test>\r\n\r\n");
            let env = Envelope::to(&format!("user{i}@corp.test"), &["all@corp.test"]);
            let v = engine.decide(&env, h.as_bytes(), T0 + 100 + i).await;
            if let Some(hold) = v.hold {
                keys.insert(hold.thread);
            }
        }
        assert_eq!(keys.len(), 1, "{keys:?}");
    }

    #[test]
    fn could_hold_only_wide_unexempt_envelopes() {
        let engine =
            Engine::new(&config("[policy]\nexempt_senders = [\"ceo@corp.test\"]")).unwrap();
        assert!(engine.could_hold(&Envelope::to("a@corp.test", &["all@corp.test"])));
        assert!(!engine.could_hold(&Envelope::to(
            "a@corp.test",
            &["b@corp.test", "c@corp.test"]
        )));
        assert!(!engine.could_hold(&Envelope::to("ceo@corp.test", &["all@corp.test"])));
        assert!(!engine.could_hold(&Envelope::to("a@corp.test", &["announce@corp.test"])));
        // The alert sender is always exempt.
        assert!(!engine.could_hold(&Envelope::to("storm@corp.test", &["all@corp.test"])));
    }

    #[test]
    fn reasons_are_one_short_ascii_line() {
        for rule in [Rule::Replies, Rule::Fast, Rule::MeToo, Rule::Manual] {
            let r = reason(rule, u32::MAX, u64::MAX);
            assert!(
                r.is_ascii() && r.len() < 200 && !r.contains(['\r', '\n']),
                "{r}"
            );
        }
    }

    #[test]
    fn threshold_overrides_are_validated_with_their_key() {
        for (extra, key) in [
            ("[policy]\nfast_senders = 9", "policy.fast_senders"),
            ("[policy]\nfast_senders = 0", "policy.fast_senders"),
            (
                "[[lists]]\naddress = \"x@y\"\nmembers = 5\ntrip_replies = 0",
                "lists[3].trip_replies",
            ),
            (
                "[[lists]]\naddress = \"x@y\"\nmembers = 5\nfast_senders = 20",
                "lists[3].fast_senders",
            ),
            (
                "[[lists]]\naddress = \"x@y\"\nmembers = 5\nwindow = \"0s\"",
                "lists[3].window",
            ),
        ] {
            let text = format!(
                "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n[[lists]]\naddress = \"a@b\"\nmembers = 1\n\
                 [[lists]]\naddress = \"c@d\"\nmembers = 1\n[[lists]]\naddress = \"e@f\"\nmembers = 1\n{extra}\n"
            );
            let err = Config::parse(&text, Path::new("t.toml")).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{extra}: {err}");
        }
        // Turning the fast trip off makes fast_senders irrelevant.
        let ok = "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n[policy]\nfast_audience = 0\nfast_senders = 0\n";
        assert!(Config::parse(ok, Path::new("t.toml")).is_ok());
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
    }
}
