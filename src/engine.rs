//! The decision point: envelope + headers + now -> verdict. Both front ends call `decide`.
//!
//! Per message:
//! 1. `could_hold`: an envelope whose sender or list is exempt, or with fewer recipients than
//!    `header_audience_from` (lists counted by members), is delivered unread; the milter accepts
//!    such mail at DATA and the proxy sends it upstream at once, so both decide it alike.
//! 2. A valid `X-Stormbreaker-Mark` (this installation already decided, `mark`) delivers.
//! 3. The audience is the wider of the envelope's and the headers' (To/Cc addresses, declared
//!    lists found there weighted); under `wide_audience` the message is delivered.
//! 4. An automatic reply to a wide audience is held from the first (breaker `auto-reply`).
//! 5. A reply is counted in the storm its thread keys join; a new message in its audience's
//!    "me too" (same subject) and wave (any subject) breakers. One store call does it all, and
//!    remembers the verdict for the message's other copies (same Message-ID and sender within
//!    `copies_window`: a message the sending MTA split over several transactions), which get it
//!    without being counted again.
//!
//! See `breaker` for the per-storm rules and `store` for how keys join storms.

use crate::breaker::{Limits, MIN_SENDER_SLOTS, Rule};
use crate::config::{Config, HoldAction, PolicyConfig, StateBackend, StateFallback};
use crate::envelope::Envelope;
use crate::fingerprint::{self, Audience, ListRule, ListTable, ThreadKey, ThreadKeys};
use crate::lists::Lists;
use crate::mark::{self, MarkKey};
use crate::origins::Origin;
use crate::store::{
    BreakerStatus, Counter, MemoryStore, ObserveRequest, Observed, RedisStore, StateStore,
    StoreError, StormSnapshot,
};
use crate::verdict::{Action, Hold, Verdict};
use anyhow::Context;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Most entries tracked by the local fallback when a shared store is down.
const FALLBACK_MAX_THREADS: usize = 100_000;

/// The storm engine as the front ends see it. Send + Sync: share it in an `Arc`.
pub struct Engine {
    policy: PolicyConfig,
    /// Swapped whole by list refreshes; each decision reads one snapshot.
    lists: Arc<Lists>,
    /// Hashes of lowercased exempt envelope senders (policy.exempt_senders and notify.from).
    exempt_senders: HashSet<u64>,
    /// Hashes of senders whose new messages the wave rule neither counts nor holds.
    wave_exempt: HashSet<u64>,
    store: Arc<dyn StateStore>,
    on_unavailable: StateFallback,
    /// In-process counters used while a shared store does not answer (`on_unavailable = local`).
    fallback: OnceLock<MemoryStore>,
    /// The secret of `X-Stormbreaker-Mark`; without it marks are neither made nor honoured.
    mark: Option<MarkKey>,
    /// Mark the mail the proxy relays after a decision (`[mark] stamp`).
    stamp: bool,
    /// Senders kept per storm: the largest sender threshold of the policy.
    sender_cap: u32,
    /// Woken when a breaker opens, is tripped or reset (the snapshot task writes soon after).
    /// Shared with the engines a reload builds, so the task hears theirs too.
    changed: Arc<tokio::sync::Notify>,
    /// `decide`'s time, to the recorder installed when the engine was built (none: no-op). A
    /// handle, so a decision does not look the metric up by name.
    decision_seconds: metrics::Histogram,
    /// Where storms started (subject, original sender), for alerts; shared with the engines a
    /// reload builds.
    origins: Arc<crate::origins::Origins>,
}

/// A decision as the proxy acts on it: the verdict and, for a message delivered after being
/// counted, the mark header line to add so that a milter further on does not count it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub stamp: Option<String>,
}

impl Decision {
    const DELIVER: Decision = Decision {
        verdict: Verdict::DELIVER,
        stamp: None,
    };
}

/// Why an administrator's trip or reset was not done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The key is not one messages can have (the text says which forms exist).
    #[error("{0}")]
    BadKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    /// An engine with the in-process state store, sized by `policy.max_threads`. Loads
    /// `[[lists]]` and `policy.lists_file`; errors name the file and line. No mark secret (see
    /// `with_mark`).
    pub fn new(config: &Config) -> anyhow::Result<Engine> {
        let store = Arc::new(MemoryStore::new(config.policy.max_threads));
        Engine::with_store(config, store)
    }

    /// An engine on the state store `[state]` names: in process (as `new`), or Redis. A Redis
    /// that does not answer at start-up is logged and fallen back from like any outage; only a
    /// bad `state.url` or `state.prefix` is an error. Loads (or makes) the mark secret. Call
    /// inside a Tokio runtime.
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
        let path = config.mark_key_path();
        let key = MarkKey::load_or_create(&path).context("mark.key_file")?;
        Ok(Engine::with_store(config, store)?.with_mark(key))
    }

    /// An engine on the given state store (for example the Redis backend).
    pub fn with_store(config: &Config, store: Arc<dyn StateStore>) -> anyhow::Result<Engine> {
        // [[lists]] and lists_file now; list sources are read by `Lists::refresh_all`.
        let lists = Arc::new(Lists::from_config(config)?);
        Ok(Engine::with_lists(config, store, lists))
    }

    /// An engine on the given state store and list table.
    fn with_lists(config: &Config, store: Arc<dyn StateStore>, lists: Arc<Lists>) -> Engine {
        let hashed = |addrs: &mut dyn Iterator<Item = &String>| -> HashSet<u64> {
            addrs
                .filter(|a| !a.trim().is_empty())
                .map(|a| fingerprint::hash_lowercase(a.trim()))
                .collect()
        };
        let exempt_senders = hashed(
            &mut config
                .policy
                .exempt_senders
                .iter()
                .chain(std::iter::once(&config.notify.from)),
        );
        let wave_exempt = hashed(&mut config.policy.wave_exempt_senders.iter());
        tracing::info!(
            lists = lists.table().len(),
            list_sources = config.list_sources.len(),
            backend = store.backend(),
            wide_audience = config.policy.wide_audience,
            trip_replies = config.policy.trip_replies,
            wave_senders = config.policy.wave_senders,
            "storm engine ready"
        );
        Engine {
            policy: config.policy.clone(),
            lists,
            exempt_senders,
            wave_exempt,
            store,
            on_unavailable: config.state.on_unavailable,
            fallback: OnceLock::new(),
            mark: None,
            stamp: config.mark.stamp,
            sender_cap: config.sender_threshold().max(MIN_SENDER_SLOTS),
            changed: Arc::new(tokio::sync::Notify::new()),
            decision_seconds: metrics::histogram!(crate::admin::metric::DECISION_SECONDS),
            origins: Arc::default(),
        }
    }

    /// An engine with `config`'s policy, lists and exemptions on this engine's state store:
    /// what a reload puts in place (counts, open breakers and copies' records are kept, and so
    /// are the mark secret and the snapshot task's notifications: `[mark] key_file` takes
    /// effect on restart).
    /// The list table is shared, not copied: once the reload is in place,
    /// `lists().reconfigure(config)` gives it the new `[[lists]]`, `lists_file` and sources.
    pub fn rebuilt(&self, config: &Config) -> anyhow::Result<Engine> {
        let mut engine = Engine::with_lists(config, self.store.clone(), self.lists.clone());
        engine.mark = self.mark.clone();
        engine.changed = self.changed.clone();
        engine.origins = self.origins.clone();
        Ok(engine)
    }

    /// The list table and its sources: `refresh_all` at start, `run` for the schedule,
    /// `reload` on SIGHUP.
    pub fn lists(&self) -> &Arc<Lists> {
        &self.lists
    }

    /// Makes and honours `X-Stormbreaker-Mark` with this secret.
    pub fn with_mark(mut self, key: MarkKey) -> Engine {
        self.mark = Some(key);
        self
    }

    /// The mark secret, when there is one.
    pub fn mark_key(&self) -> Option<&MarkKey> {
        self.mark.as_ref()
    }

    /// True for envelope senders never counted nor held (policy.exempt_senders, notify.from).
    pub fn is_exempt_sender(&self, addr: &str) -> bool {
        !self.exempt_senders.is_empty()
            && self
                .exempt_senders
                .contains(&fingerprint::hash_lowercase(addr.trim()))
    }

    /// Whether `decide` could hold a message with this envelope at all: neither sender nor list
    /// exempt, and at least `header_audience_from` recipients (lists counted by their members).
    /// When false, `decide` delivers whatever the headers say, so a front end may start relaying
    /// (the proxy) or accept (the milter) before it has them.
    pub fn could_hold(&self, envelope: &Envelope) -> bool {
        self.holdable(envelope, &self.lists.table()).is_some()
    }

    /// `could_hold`, with the envelope's audience when true (so it is weighed once).
    fn holdable(&self, envelope: &Envelope, lists: &ListTable) -> Option<Audience> {
        if self.is_exempt_sender(&envelope.mail_from)
            || envelope
                .auth
                .as_deref()
                .is_some_and(|name| self.is_exempt_sender(name))
        {
            return None;
        }
        let audience = fingerprint::audience(&envelope.rcpts, lists);
        (!audience.exempt && audience.weight >= self.read_headers_from(&audience, lists))
            .then_some(audience)
    }

    /// Envelope weight from which the headers are read: `header_audience_from`, or less when a
    /// list's own `wide_audience` is lower still.
    fn read_headers_from(&self, envelope: &Audience, lists: &ListTable) -> u64 {
        self.policy
            .header_audience_from
            .max(1)
            .min(self.wide(envelope.list(lists)))
    }

    fn wide(&self, list: Option<&ListRule>) -> u64 {
        list.and_then(|l| l.wide_audience)
            .unwrap_or(self.policy.wide_audience)
    }

    /// Decides for one message. `headers` is the raw header block (up to the empty line);
    /// `now_ms` is Unix time in milliseconds, passed in so storms can be simulated.
    pub async fn decide(&self, envelope: &Envelope, headers: &[u8], now_ms: u64) -> Verdict {
        self.decide_message(envelope, headers, now_ms).await.verdict
    }

    /// `decide`, with the mark to add when the message is relayed.
    pub async fn decide_message(
        &self,
        envelope: &Envelope,
        headers: &[u8],
        now_ms: u64,
    ) -> Decision {
        let started = std::time::Instant::now();
        let lists = self.lists.table();
        let decision = match self.holdable(envelope, &lists) {
            Some(audience) => {
                let keys = fingerprint::parse_headers(headers);
                self.decide_parsed(envelope, audience, &keys, &lists, now_ms)
                    .await
            }
            None => Decision::DELIVER,
        };
        self.decision_seconds
            .record(started.elapsed().as_secs_f64());
        decision
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
        let verdict = match self.holdable(envelope, &lists) {
            Some(audience) => {
                self.decide_parsed(envelope, audience, keys, &lists, now_ms)
                    .await
                    .verdict
            }
            None => Verdict::DELIVER,
        };
        self.decision_seconds
            .record(started.elapsed().as_secs_f64());
        verdict
    }

    async fn decide_parsed(
        &self,
        envelope: &Envelope,
        envelope_audience: Audience,
        keys: &ThreadKeys,
        lists: &ListTable,
        now_ms: u64,
    ) -> Decision {
        let sender = if envelope.mail_from.is_empty() {
            let from = keys.from.as_deref().unwrap_or("<>");
            if self.is_exempt_sender(from) {
                return Decision::DELIVER;
            }
            from
        } else {
            &envelope.mail_from
        };
        let message_id = keys.message_id.as_deref().unwrap_or("");
        if let Some(key) = &self.mark
            && !keys.marks.is_empty()
        {
            let now_s = now_ms / 1000;
            if let Some(reason) = keys
                .marks
                .iter()
                .find_map(|m| key.verify(m, message_id, &envelope.mail_from, now_s))
            {
                tracing::debug!(
                    sender,
                    message_id,
                    reason = reason.as_str(),
                    "marked as decided already; delivered without counting"
                );
                return Decision::DELIVER;
            }
        }
        let header_audience = fingerprint::header_audience(&keys.to_cc, lists);
        let audience = envelope_audience.widest(header_audience, lists);
        let list = audience.list(lists);
        if audience.exempt || audience.weight < self.wide(list) {
            return Decision::DELIVER;
        }
        let verdict = if keys.auto_reply && self.policy.hold_auto_replies {
            self.auto_reply(sender, keys, &audience, list)
        } else {
            self.count(envelope, sender, keys, &audience, list, now_ms)
                .await
        };
        let stamp = match (&self.mark, self.stamp, verdict.action) {
            (Some(key), true, Action::Deliver) => Some(key.stamp(
                mark::Reason::Relayed,
                message_id,
                &envelope.mail_from,
                now_ms / 1000,
            )),
            _ => None,
        };
        Decision { verdict, stamp }
    }

    /// An automatic reply to a wide audience: held from the first, counted nowhere.
    fn auto_reply(
        &self,
        sender: &str,
        keys: &ThreadKeys,
        audience: &Audience,
        list: Option<&ListRule>,
    ) -> Verdict {
        let action = list.and_then(|l| l.action).unwrap_or(self.policy.action);
        let origin = Origin::new(&keys.display_subject, sender, true);
        let hold = Hold {
            thread: format!("auto-reply:{}", sender.to_ascii_lowercase()),
            list: list.map(|l| l.address.clone()),
            audience: audience.weight,
            breaker: Rule::AutoReply.name(),
            replies: 1,
            senders: 1,
            reason: reason(Rule::AutoReply, 1, audience.weight),
            action,
            origin: Some(Arc::new(origin)),
        };
        self.hold(sender, hold, 0, false)
    }

    /// Counts a wide message in its breakers (one store call) and decides on the outcome.
    async fn count(
        &self,
        envelope: &Envelope,
        sender: &str,
        keys: &ThreadKeys,
        audience: &Audience,
        list: Option<&ListRule>,
        now_ms: u64,
    ) -> Verdict {
        let limits = self.limits(list);
        let mut own: Vec<ThreadKey> = Vec::new();
        let mut rules: Vec<(Rule, Limits, usize)> = Vec::new();
        if !keys.reply {
            self.thread_started(sender, keys);
        }
        if keys.reply {
            if keys.keys.is_empty() {
                return Verdict::DELIVER;
            }
        } else {
            let me_too = list
                .and_then(|l| l.me_too_messages)
                .unwrap_or(self.policy.me_too_messages);
            if me_too > 0 && !keys.subject.is_empty() {
                own.push(ThreadKey::new(&format!(
                    "metoo:{:016x}:{}",
                    audience.fingerprint, keys.subject
                )));
                let l = Limits {
                    trip: me_too,
                    fast_senders: 0,
                    ..limits
                };
                rules.push((Rule::MeToo, l, own.len() - 1));
            }
            let wave = list
                .and_then(|l| l.wave_senders)
                .unwrap_or(self.policy.wave_senders);
            let wave_exempt = !self.wave_exempt.is_empty()
                && self
                    .wave_exempt
                    .contains(&fingerprint::hash_lowercase(sender.trim()));
            if wave > 0 && !wave_exempt {
                own.push(ThreadKey::new(&match list {
                    Some(l) => format!("wave:{}", l.address.to_ascii_lowercase()),
                    None => format!("wave:aud-{:016x}", audience.fingerprint),
                }));
                let window = list
                    .and_then(|l| l.wave_window)
                    .unwrap_or(self.policy.wave_window);
                let l = Limits {
                    trip: wave,
                    window_s: secs(window),
                    fast_senders: 0,
                    ..limits
                };
                rules.push((Rule::Wave, l, own.len() - 1));
            }
            if rules.is_empty() {
                return Verdict::DELIVER;
            }
        }
        // At most two counters (me too and wave): on the stack, not the heap.
        let unused = Counter {
            keys: &[],
            rule: Rule::Replies,
            limits,
        };
        let mut slots = [unused; 2];
        let n = if keys.reply {
            slots[0] = Counter {
                keys: &keys.keys,
                rule: Rule::Replies,
                limits,
            };
            1
        } else {
            for (slot, (rule, limits, i)) in slots.iter_mut().zip(&rules) {
                *slot = Counter {
                    keys: std::slice::from_ref(&own[*i]),
                    rule: *rule,
                    limits: *limits,
                };
            }
            rules.len()
        };
        let counters = &slots[..n];
        let message = keys.message_id.as_deref().map(|id| {
            (
                fingerprint::hash_message(id, &envelope.mail_from),
                secs(self.policy.copies_window),
            )
        });
        let request = ObserveRequest {
            counters,
            sender: (fingerprint::hash_lowercase(sender) >> 32) as u32,
            fast: self.policy.fast_audience > 0 && audience.weight >= self.policy.fast_audience,
            sender_cap: self.sender_cap,
            message,
            now_ms,
        };
        let observed = match self.observe(&request).await {
            Ok(observed) => observed,
            Err(verdict) => return verdict,
        };
        self.verdict(sender, keys, counters, &observed, audience, list)
    }

    /// A wide new message: the storm its replies may raise is named by its Message-ID (their
    /// References root), its Thread-Index or its subject, so its sender and subject are kept
    /// under each for the alert.
    fn thread_started(&self, sender: &str, keys: &ThreadKeys) {
        let own = keys.message_id.iter().map(|id| format!("mid:{id}"));
        let labels = own.chain(keys.keys.iter().map(|k| k.label.to_string()));
        self.origins
            .started(labels, Origin::new(&keys.display_subject, sender, true));
    }

    /// One store call; on failure the configured fallback.
    async fn observe(&self, request: &ObserveRequest<'_>) -> Result<Vec<Observed>, Verdict> {
        match self.store.observe(request).await {
            Ok(observed) => Ok(observed),
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
        keys: &ThreadKeys,
        counters: &[Counter<'_>],
        observed: &[Observed],
        audience: &Audience,
        list: Option<&ListRule>,
    ) -> Verdict {
        let action = list.and_then(|l| l.action).unwrap_or(self.policy.action);
        let hold_for = |i: usize| {
            let o = &observed[i];
            let thread = match &o.storm_label {
                Some(label) => label.to_string(),
                None => counters
                    .get(i)
                    .and_then(|c| c.keys.first())
                    .map_or_else(String::new, |k| k.label.to_string()),
            };
            let labels = counters
                .get(i)
                .into_iter()
                .flat_map(|c| c.keys.iter().map(|k| &*k.label));
            let origin = self.origins.of(&thread, labels, || {
                Origin::new(&keys.display_subject, sender, false)
            });
            Hold {
                thread,
                list: list.map(|l| l.address.clone()),
                audience: audience.weight,
                breaker: o.outcome.rule.name(),
                replies: o.outcome.count,
                senders: o.outcome.senders,
                reason: reason(o.outcome.rule, o.outcome.senders, audience.weight),
                action,
                origin: Some(origin),
            }
        };
        // Two breakers of one new message (me too and wave) can both be open: the hold names
        // the one that opened first (within a second: the one with more people).
        let first_open = observed
            .iter()
            .enumerate()
            .filter(|(_, o)| o.outcome.held)
            .min_by_key(|(i, o)| {
                (
                    o.outcome.opened_at,
                    std::cmp::Reverse(o.outcome.senders),
                    *i,
                )
            })
            .map(|(i, _)| i);
        if let Some(i) = first_open {
            let o = observed[i].outcome;
            return self.hold(sender, hold_for(i), o.until, o.copy);
        }
        if let Some(i) = observed.iter().position(|o| o.outcome.opened) {
            let opened = hold_for(i);
            tracing::warn!(
                thread = %opened.thread,
                list = opened.list.as_deref().unwrap_or("-"),
                breaker = opened.breaker,
                sender,
                audience = opened.audience,
                replies = opened.replies,
                senders = opened.senders,
                until_ms = u64::from(observed[i].outcome.until) * 1000,
                "breaker opened; this message passes, further replies are held"
            );
            self.changed.notify_one();
            return Verdict {
                action: Action::Deliver,
                hold: None,
                opened: Some(opened),
            };
        }
        Verdict::DELIVER
    }

    /// The verdict (and log line) for a held message.
    fn hold(&self, sender: &str, hold: Hold, until: u32, copy: bool) -> Verdict {
        let action = hold.action;
        tracing::warn!(
            thread = %hold.thread,
            list = hold.list.as_deref().unwrap_or("-"),
            breaker = hold.breaker,
            action = ?hold.action,
            sender,
            audience = hold.audience,
            replies = hold.replies,
            senders = hold.senders,
            until_ms = u64::from(until) * 1000,
            copy,
            reason = %hold.reason,
            "{}",
            if action == HoldAction::Log { "would hold" } else { "holding" }
        );
        Verdict {
            action: match action {
                HoldAction::Quarantine => Action::Quarantine,
                HoldAction::Reject => Action::Reject,
                HoldAction::Tempfail => Action::Tempfail,
                HoldAction::Log => Action::Deliver,
            },
            hold: Some(hold),
            opened: None,
        }
    }

    /// Thresholds for a message, the governing list's overrides applied.
    fn limits(&self, list: Option<&ListRule>) -> Limits {
        let p = &self.policy;
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

    /// Opens a storm's breaker by hand for `policy.block_for`. Errors are logged; use
    /// `try_trip` to see them.
    pub async fn trip(&self, key: &str, now_ms: u64) {
        if let Err(error) = self.try_trip(key, now_ms).await {
            tracing::error!(thread = key, %error, "manual trip failed");
        }
    }

    /// Opens the breaker of the storm `key` belongs to (a storm id is the key that started it),
    /// starting a storm at a key no message has had yet, so that an administrator can stop a
    /// thread before it storms. `key` must have one of the forms in `fingerprint::KEY_FORMS`.
    /// Returns the storm's id.
    pub async fn try_trip(&self, key: &str, now_ms: u64) -> Result<String, AdminError> {
        let key = fingerprint::parse_key(key).map_err(AdminError::BadKey)?;
        let storm = self.store.trip(&key, &self.limits(None), now_ms).await?;
        tracing::warn!(thread = %storm, key = %key.label, breaker = "manual", "breaker tripped by hand");
        self.changed.notify_one();
        Ok(storm)
    }

    /// Closes a storm's breaker and forgets its counts. Errors are logged; see `try_reset`.
    pub async fn reset(&self, key: &str, now_ms: u64) {
        if let Err(error) = self.try_reset(key, now_ms).await {
            tracing::error!(thread = key, %error, "manual reset failed");
        }
    }

    /// Closes the breaker of the storm `key` belongs to and forgets its counts: every key of
    /// the storm passes again. The storm's id, or `None` when no storm has that key.
    pub async fn try_reset(&self, key: &str, now_ms: u64) -> Result<Option<String>, AdminError> {
        let key = fingerprint::parse_key(key).map_err(AdminError::BadKey)?;
        let storm = self.store.reset(&key, now_ms).await?;
        match &storm {
            Some(storm) => {
                tracing::warn!(thread = %storm, key = %key.label, "breaker reset by hand");
                self.changed.notify_one();
            }
            None => tracing::info!(key = %key.label, "reset of a key no storm has"),
        }
        Ok(storm)
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

    /// Entries tracked by the state store.
    pub async fn tracked_threads(&self) -> Result<usize, StoreError> {
        self.store.tracked().await
    }

    /// Open breakers to keep across a restart, when the state store loses them with the
    /// process (the in-process store); `None` for Redis.
    pub fn snapshot(&self, now_ms: u64) -> Option<Vec<StormSnapshot>> {
        self.store.snapshot(now_ms)
    }

    /// Takes breakers back after a restart; returns how many.
    pub fn restore(&self, storms: &[StormSnapshot], now_ms: u64) -> usize {
        self.store.restore(storms, now_ms)
    }

    /// Notified when a breaker opens, is tripped or is reset.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The policy's block and window, for breakers rebuilt from held messages.
    pub fn default_limits(&self) -> Limits {
        self.limits(None)
    }
}

fn secs(d: Duration) -> u32 {
    d.as_secs().clamp(1, u64::from(u32::MAX)) as u32
}

/// What happened, in one ASCII line for logs, the quarantine and the refusal texts (the front
/// ends put it after "Not delivered:" or "Deferred, try later:" and add [`advice`]), so it
/// says neither "held" nor "refused". `people` counts distinct senders.
pub fn reason(rule: Rule, people: u32, audience: u64) -> String {
    match rule {
        Rule::Replies | Rule::Fast => format!(
            "reply-all storm on this thread ({people} people replied to {audience} recipients)"
        ),
        Rule::MeToo => format!(
            "reply-all storm on this subject ({people} people sent it to {audience} recipients)"
        ),
        Rule::Wave => format!(
            "mail storm to these recipients ({people} people wrote to {audience} recipients within minutes)"
        ),
        Rule::AutoReply => {
            format!("automatic reply to {audience} recipients (RFC 3834)")
        }
        Rule::Manual => {
            "reply-all storm on this thread (stopped by the mail administrators)".into()
        }
    }
}

/// What the sender should do instead, by the rule's name (`Hold::breaker`).
pub fn advice(breaker: &str) -> &'static str {
    match breaker {
        "wave" => "write to the person concerned only",
        "me-too" => "write to the sender only",
        "auto-reply" => "automatic replies go to the sender only",
        _ => "reply to the sender only",
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

    /// `n` replies from `n` different people, a minute apart.
    async fn storm(engine: &Engine, to: &str, n: usize) -> Vec<Verdict> {
        let mut out = Vec::new();
        for i in 0..n {
            let env = Envelope::to(&format!("user{i}@corp.test"), &[to]);
            out.push(
                engine
                    .decide(&env, reply(i).as_bytes(), T0 + i as u64 * MIN)
                    .await,
            );
        }
        out
    }

    fn rcpts(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("p{i}@corp.test")).collect()
    }

    fn envelope(from: &str, to: &[String]) -> Envelope {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        Envelope::to(from, &to)
    }

    #[tokio::test]
    async fn tenth_person_opens_and_later_replies_are_quarantined() {
        let engine = Engine::new(&config("[policy]\nfast_audience = 0")).unwrap();
        let v = storm(&engine, "all@corp.test", 12).await;
        assert!(v[..9].iter().all(|v| *v == Verdict::DELIVER));
        let opened = v[9].opened.as_ref().expect("tenth reply opens");
        assert_eq!(v[9].action, Action::Deliver);
        assert_eq!(opened.senders, 10);
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
    async fn one_sender_updating_its_own_thread_is_never_held() {
        // An operations desk posts 15 updates to everybody in its own thread.
        let engine = Engine::new(&config("")).unwrap();
        for i in 0..15 {
            let env = Envelope::to("ops-desk@corp.test", &["all@corp.test"]);
            let v = engine
                .decide(&env, reply(i).as_bytes(), T0 + i as u64 * MIN)
                .await;
            assert_eq!(v, Verdict::DELIVER, "update {i}");
        }
        assert!(engine.open_breakers(T0 + 15 * MIN).await.is_empty());
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
                reply(100).as_bytes(),
                T0 + 13 * MIN,
            )
            .await;
        assert_eq!(v, Verdict::DELIVER);
        // The name a submission client authenticated as counts too.
        let mut by_login = Envelope::to("someone@corp.test", &["all@corp.test"]);
        by_login.auth = Some("ceo@corp.test".into());
        let v = engine
            .decide(&by_login, reply(101).as_bytes(), T0 + 13 * MIN)
            .await;
        assert_eq!(v, Verdict::DELIVER);
        by_login.auth = Some("intern".into());
        let v = engine
            .decide(&by_login, reply(102).as_bytes(), T0 + 13 * MIN)
            .await;
        assert_eq!(v.action, Action::Quarantine);
        let v = storm(&engine, "announce@corp.test", 30).await;
        assert!(v.iter().all(|v| *v == Verdict::DELIVER));
        // An exempt list named only in the headers exempts the message too.
        let headers = "Message-ID: <x1@corp.test>\r\nIn-Reply-To: <root@corp.test>\r\n\
                       To: announce@corp.test\r\nSubject: RE: Quarterly results\r\n\r\n";
        let env = envelope("user3@corp.test", &rcpts(0..200));
        let v = engine.decide(&env, headers.as_bytes(), T0 + 14 * MIN).await;
        assert_eq!(v, Verdict::DELIVER);
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
        assert_eq!(
            engine
                .try_trip("subj:RE: Quarterly Results", T0)
                .await
                .unwrap(),
            "subj:quarterly results"
        );
        let open = engine.open_breakers(T0).await;
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].key, "subj:quarterly results");
        assert_eq!(open[0].breaker, "manual");
        let v = storm(&engine, "all@corp.test", 1).await;
        let hold = v[0].hold.as_ref().unwrap();
        assert_eq!(hold.breaker, "manual");
        assert_eq!(hold.thread, "subj:quarterly results");
        // The reply joined its root id to the tripped storm: a reset by that key stops it.
        assert_eq!(
            engine
                .try_reset("mid:<root@corp.test>", T0 + MIN)
                .await
                .unwrap()
                .as_deref(),
            Some("subj:quarterly results")
        );
        assert!(engine.open_breakers(T0 + MIN).await.is_empty());
        let env = Envelope::to("x@corp.test", &["all@corp.test"]);
        assert_eq!(
            engine.decide(&env, reply(5).as_bytes(), T0 + 2 * MIN).await,
            Verdict::DELIVER
        );
        assert_eq!(engine.try_reset("subj:never seen", T0).await.unwrap(), None);
        for bad in ["ref:<id@host>", "garbage", "mid:no-at"] {
            assert!(
                matches!(engine.try_trip(bad, T0).await, Err(AdminError::BadKey(_))),
                "{bad}"
            );
            assert!(matches!(
                engine.try_reset(bad, T0).await,
                Err(AdminError::BadKey(_))
            ));
        }
    }

    #[tokio::test]
    async fn me_too_storm_of_new_messages_trips() {
        let engine =
            Engine::new(&config("[policy]\nme_too_messages = 3\nwave_senders = 0")).unwrap();
        let mut verdicts = Vec::new();
        for i in 0..4u64 {
            let env = Envelope::to(&format!("u{i}@corp.test"), &["all@corp.test"]);
            let h = format!("Message-ID: <n{i}@corp.test>\r\nSubject: Please remove me\r\n\r\n");
            verdicts.push(engine.decide(&env, h.as_bytes(), T0 + i * MIN).await);
        }
        assert!(verdicts[2].opened.is_some());
        assert_eq!(verdicts[3].hold.as_ref().unwrap().breaker, "me-too");
    }

    fn new_message(i: u64, subject: &str) -> String {
        format!("Message-ID: <new{i}@corp.test>\r\nSubject: {subject}\r\n\r\n")
    }

    #[tokio::test]
    async fn a_wave_of_new_threads_to_one_audience_trips_its_wave_breaker() {
        let engine =
            Engine::new(&config("[policy]\nwave_senders = 5\nwave_window = \"15m\"")).unwrap();
        let subjects = [
            "Remove me",
            "Why am I on this list?",
            "unsubscribe",
            "STOP",
            "??",
            "x",
        ];
        let mut verdicts = Vec::new();
        for (i, subject) in subjects.iter().enumerate() {
            let env = Envelope::to(&format!("u{i}@corp.test"), &["all@corp.test"]);
            let h = new_message(i as u64, subject);
            verdicts.push(engine.decide(&env, h.as_bytes(), T0 + i as u64 * MIN).await);
        }
        assert!(verdicts[..4].iter().all(|v| *v == Verdict::DELIVER));
        let opened = verdicts[4].opened.as_ref().expect("the fifth person opens");
        assert_eq!(opened.breaker, "wave");
        assert_eq!(opened.thread, "wave:all@corp.test");
        let hold = verdicts[5].hold.as_ref().unwrap();
        assert_eq!(
            (hold.breaker, hold.thread.as_str()),
            ("wave", "wave:all@corp.test")
        );
        // Replies are not new threads: the wave does not hold them.
        let v = engine
            .decide(
                &Envelope::to("u9@corp.test", &["all@corp.test"]),
                reply(1).as_bytes(),
                T0 + 7 * MIN,
            )
            .await;
        assert_eq!(v, Verdict::DELIVER);
    }

    #[tokio::test]
    async fn a_few_broadcasts_and_exempt_announcers_pass() {
        let engine = Engine::new(&config(
            "[policy]\nwave_senders = 3\nwave_exempt_senders = [\"hr@corp.test\"]",
        ))
        .unwrap();
        // Three announcements from two senders in ten minutes.
        for (i, from) in ["comms@corp.test", "it@corp.test", "comms@corp.test"]
            .iter()
            .enumerate()
        {
            let env = Envelope::to(from, &["all@corp.test"]);
            let h = new_message(i as u64, &format!("Announcement {i}"));
            let v = engine
                .decide(&env, h.as_bytes(), T0 + i as u64 * 5 * MIN)
                .await;
            assert_eq!(v, Verdict::DELIVER, "announcement {i}");
        }
        // An exempt announcer is neither counted nor held.
        for i in 0..5u64 {
            let env = Envelope::to("hr@corp.test", &["all@corp.test"]);
            let h = new_message(10 + i, &format!("HR news {i}"));
            let v = engine.decide(&env, h.as_bytes(), T0 + 11 * MIN + i).await;
            assert_eq!(v, Verdict::DELIVER);
        }
        assert!(engine.open_breakers(T0 + 12 * MIN).await.is_empty());
    }

    #[tokio::test]
    async fn automatic_replies_to_a_wide_audience_are_held_from_the_first() {
        let engine = Engine::new(&config("")).unwrap();
        let oof = "Message-ID: <oof1@corp.test>\r\nIn-Reply-To: <root@corp.test>\r\n\
                   Subject: Automatic reply: Quarterly results\r\nAuto-Submitted: auto-replied\r\n\r\n";
        let wide = Envelope::to("away@corp.test", &["all@corp.test"]);
        let v = engine.decide(&wide, oof.as_bytes(), T0).await;
        let hold = v.hold.as_ref().expect("held from the first");
        assert_eq!(hold.breaker, "auto-reply");
        assert_eq!(hold.thread, "auto-reply:away@corp.test");
        assert_eq!(v.action, Action::Quarantine);
        // To the sender alone it passes.
        let narrow = Envelope::to("away@corp.test", &["boss@corp.test", "cc@corp.test"]);
        assert_eq!(
            engine.decide(&narrow, oof.as_bytes(), T0).await,
            Verdict::DELIVER
        );
        // With the rule off it is counted like any reply.
        let engine = Engine::new(&config("[policy]\nhold_auto_replies = false")).unwrap();
        assert_eq!(
            engine.decide(&wide, oof.as_bytes(), T0).await,
            Verdict::DELIVER
        );
    }

    /// A reply to 150 people sent as 100 + 50 by the sending MTA (`wide_audience = 120`).
    fn split_reply(i: usize) -> (String, Envelope, Envelope) {
        let people = rcpts(0..150);
        let headers = format!(
            "Message-ID: <split{i}@corp.test>\r\nIn-Reply-To: <root@corp.test>\r\n\
             Subject: RE: Offsite\r\nTo: {}\r\n\r\n",
            people.join(",\r\n ")
        );
        let from = format!("user{i}@corp.test");
        (
            headers,
            envelope(&from, &people[..100]),
            envelope(&from, &people[100..]),
        )
    }

    #[tokio::test]
    async fn a_split_message_is_one_reply_with_one_verdict() {
        let engine =
            Engine::new(&config("[policy]\nwide_audience = 120\ntrip_replies = 3")).unwrap();
        let mut verdicts = Vec::new();
        for i in 0..6 {
            let (headers, first, second) = split_reply(i);
            let now = T0 + i as u64 * MIN;
            let a = engine.decide(&first, headers.as_bytes(), now).await;
            let b = engine.decide(&second, headers.as_bytes(), now + 2000).await;
            assert_eq!(a.action, b.action, "reply {i}: one verdict for both copies");
            assert!(b.opened.is_none(), "the copy opens nothing");
            verdicts.push(a);
        }
        // Counted once per message: the third person opens, the fourth is held.
        assert!(verdicts[..2].iter().all(|v| *v == Verdict::DELIVER));
        assert!(verdicts[2].opened.is_some());
        assert_eq!(verdicts[2].opened.as_ref().unwrap().senders, 3);
        assert!(verdicts[3..].iter().all(|v| v.action == Action::Quarantine));
        // Each half alone is wide by its headers, not by its envelope.
        let (headers, _, second) = split_reply(99);
        assert!(engine.could_hold(&second));
        let v = engine
            .decide(&second, headers.as_bytes(), T0 + 10 * MIN)
            .await;
        assert_eq!(v.action, Action::Quarantine);
    }

    #[tokio::test]
    async fn holds_stay_on_one_storm() {
        // Replies from clients that keep In-Reply-To and References, References only, or only
        // the subject join one storm: every hold names it.
        let engine = Engine::new(&config("[policy]\nfast_audience = 0")).unwrap();
        let root = "Message-ID: <root@corp.test>\r\nSubject: Welcome\r\n\r\n";
        let env = Envelope::to("hr@corp.test", &["all@corp.test"]);
        engine.decide(&env, root.as_bytes(), T0).await;
        let mut threads = std::collections::HashSet::new();
        let mut opened = 0;
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
            opened += usize::from(v.opened.is_some());
            if let Some(hold) = v.hold {
                threads.insert(hold.thread);
            }
        }
        assert_eq!(opened, 1, "one breaker, one alert");
        assert_eq!(threads.len(), 1, "{threads:?}");
        assert_eq!(engine.open_breakers(T0 + 200).await.len(), 1);
    }

    #[tokio::test]
    async fn marked_mail_is_delivered_without_counting_and_delivered_mail_is_marked() {
        let key = MarkKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let engine = Engine::new(&config("[policy]\ntrip_replies = 3"))
            .unwrap()
            .with_mark(key.clone());
        let now_s = T0 / 1000;
        // A proxy's decision, then the milter behind it: the mark makes it one count.
        for i in 0..5usize {
            let env = Envelope::to(&format!("user{i}@corp.test"), &["all@corp.test"]);
            let decision = engine
                .decide_message(&env, reply(i).as_bytes(), T0 + i as u64)
                .await;
            if decision.verdict.action != Action::Deliver {
                assert!(decision.stamp.is_none(), "held mail is not marked");
                continue;
            }
            let stamp = decision.stamp.expect("delivered wide mail is marked");
            let again = format!("{stamp}{}", reply(i));
            let v = engine
                .decide(&env, again.as_bytes(), T0 + i as u64 + 500)
                .await;
            assert_eq!(v, Verdict::DELIVER, "reply {i} at the milter");
        }
        let open = engine.open_breakers(T0 + 10).await;
        // Three delivered and two held, each counted once (not again at the milter).
        assert_eq!(open[0].replies, 5, "{open:?}");
        // A released message passes the open breaker; a forged or foreign mark does not.
        let env = Envelope::to("user7@corp.test", &["all@corp.test"]);
        let released = key.stamp(
            mark::Reason::Released,
            "r7@corp.test",
            "user7@corp.test",
            now_s,
        );
        let v = engine
            .decide(&env, format!("{released}{}", reply(7)).as_bytes(), T0 + 20)
            .await;
        assert_eq!(v, Verdict::DELIVER);
        let other = MarkKey::from_bytes(b"another secret of 32 bytes......");
        let forged = other.stamp(
            mark::Reason::Released,
            "r8@corp.test",
            "user8@corp.test",
            now_s,
        );
        let env = Envelope::to("user8@corp.test", &["all@corp.test"]);
        let v = engine
            .decide(&env, format!("{forged}{}", reply(8)).as_bytes(), T0 + 21)
            .await;
        assert_eq!(v.action, Action::Quarantine);
        // A mark made for another message does not carry over.
        let env = Envelope::to("user7@corp.test", &["all@corp.test"]);
        let v = engine
            .decide(&env, format!("{released}{}", reply(9)).as_bytes(), T0 + 22)
            .await;
        assert_eq!(v.action, Action::Quarantine);
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

    #[test]
    fn could_hold_reads_headers_from_two_recipients_and_never_for_exemptions() {
        let engine =
            Engine::new(&config("[policy]\nexempt_senders = [\"ceo@corp.test\"]")).unwrap();
        assert!(engine.could_hold(&Envelope::to("a@corp.test", &["all@corp.test"])));
        assert!(engine.could_hold(&Envelope::to(
            "a@corp.test",
            &["b@corp.test", "c@corp.test"]
        )));
        assert!(!engine.could_hold(&Envelope::to("a@corp.test", &["b@corp.test"])));
        assert!(!engine.could_hold(&Envelope::to("ceo@corp.test", &["all@corp.test"])));
        assert!(!engine.could_hold(&Envelope::to("a@corp.test", &["announce@corp.test"])));
        // The alert sender is always exempt.
        assert!(!engine.could_hold(&Envelope::to("storm@corp.test", &["all@corp.test"])));
        let every = Engine::new(&config("[policy]\nheader_audience_from = 1")).unwrap();
        assert!(every.could_hold(&Envelope::to("a@corp.test", &["b@corp.test"])));
    }

    #[tokio::test]
    async fn what_could_not_be_held_is_delivered_whatever_the_headers() {
        // The milter accepts at DATA what could_hold refuses: decide must agree.
        let engine =
            Engine::new(&config("[policy]\nwide_audience = 100\ntrip_replies = 1")).unwrap();
        let (headers, _, _) = split_reply(1);
        let one = Envelope::to("user1@corp.test", &["p1@corp.test"]);
        assert!(!engine.could_hold(&one));
        assert_eq!(
            engine.decide(&one, headers.as_bytes(), T0).await,
            Verdict::DELIVER
        );
        assert!(engine.open_breakers(T0).await.is_empty());
    }

    #[test]
    fn reasons_are_one_short_ascii_line() {
        for rule in Rule::ALL {
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
            ("[policy]\nfast_senders = 101", "policy.fast_senders"),
            ("[policy]\nfast_senders = 0", "policy.fast_senders"),
            ("[policy]\ntrip_replies = 101", "policy.trip_replies"),
            ("[policy]\nwave_senders = 500", "policy.wave_senders"),
            (
                "[policy]\nheader_audience_from = 0",
                "policy.header_audience_from",
            ),
            (
                "[policy]\nwave_exempt_senders = [\"a b\"]",
                "policy.wave_exempt_senders[0]",
            ),
            (
                "[[lists]]\naddress = \"x@y\"\nmembers = 5\ntrip_replies = 0",
                "lists[3].trip_replies",
            ),
            (
                "[[lists]]\naddress = \"x@y\"\nmembers = 5\nfast_senders = 200",
                "lists[3].fast_senders",
            ),
            (
                "[[lists]]\naddress = \"x@y\"\nmembers = 5\nwave_senders = 101",
                "lists[3].wave_senders",
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
        // Storms keep as many senders as the largest threshold, lists included.
        let big = "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n\
                   [[lists]]\naddress = \"a@b\"\nmembers = 1\nwave_senders = 40\n";
        assert_eq!(
            Config::parse(big, Path::new("t.toml"))
                .unwrap()
                .sender_threshold(),
            40
        );
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Engine>();
    }
}
