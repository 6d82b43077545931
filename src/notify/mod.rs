//! Mail to people: an alert when a breaker opens and updates while it stays open (to
//! `[notify] admins`), a notice to each sender whose reply was held (once per storm), and
//! reminders of held mail waiting and about to be deleted (`remind`).
//!
//! The decisions (`AlertRates`, `remind::plan`) are pure, with time passed in; `Notifier`
//! writes the mail (`letters`, with mail-builder) and sends it in the background to the
//! reinjection target, so no SMTP session ever waits for it.
//!
//! Loop safety: this mail goes straight to the MTA (never through the proxy), carries
//! `Auto-Submitted: auto-generated`; alerts come from `notify.from` (which the engine exempts)
//! and notices from the null sender (MAIL FROM:<>), so nothing answers them and a bounce of
//! one goes nowhere. No notice goes to the null sender, `notify.from`, an admin, an exempt
//! sender, or the sender of an automatic reply.

mod letters;
pub mod remind;

pub use letters::{Letter, Words, build, check_template, clean, fill};
pub use remind::{HeldStorm, Reminder, ReminderKind};

use crate::config::{Config, HoldAction};
use crate::envelope::Envelope;
use crate::origins::Origin;
use crate::smtp::client::{SmtpClient, Target};
use crate::verdict::Hold;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What the rate logic says to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// The first mail to the admins about this breaker opening.
    Alert(ThreadReport),
    /// A later mail to the admins while the breaker stays open.
    Update(ThreadReport),
    /// To a held sender, once per storm; `id` is the held message's.
    SenderNotice {
        to: String,
        id: String,
        report: ThreadReport,
    },
}

/// What an alert tells about a storm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadReport {
    pub hold: Hold,
    /// Messages held in this storm since the breaker opened, as reported to this notifier.
    pub held: u32,
    pub opened_at_ms: u64,
    /// The storm's subject and original sender, from the first hold that named them.
    pub origin: Option<Arc<Origin>>,
    /// The senders of the held messages, most held first (at most `TOP_SENDERS`).
    pub top_senders: Vec<(String, u32)>,
    /// Deliveries the held messages did not make: the sum of their audiences.
    pub avoided: u64,
}

#[derive(Debug)]
struct ThreadAlerts {
    opened_at_ms: u64,
    /// When the last mail to the admins went out.
    last_sent_ms: u64,
    last_activity_ms: u64,
    held: u32,
    hold: Hold,
    origin: Option<Arc<Origin>>,
    avoided: u64,
    /// Held messages per sender, at most `MAX_TALLIED` senders.
    tally: HashMap<String, u32>,
    /// Senders noticed in this storm, at most `MAX_TOLD`.
    told: HashSet<String>,
}

/// Senders shown in an alert.
pub const TOP_SENDERS: usize = 5;
/// Senders counted per storm for the alert's top senders: bounded, a storm stays small.
const MAX_TALLIED: usize = 256;
/// Senders noticed per storm: past this a storm's senders are no longer told (logged), so the
/// table stays bounded whatever the storm.
const MAX_TOLD: usize = 20_000;

/// Pure rate decisions: one alert per breaker opening, at most one mail to the admins per
/// `interval` per storm, one notice per sender per storm (kept here, in memory: a restart or
/// another node on Redis may tell a sender once more).
#[derive(Debug)]
pub struct AlertRates {
    interval_ms: u64,
    admins: bool,
    notify_senders: bool,
    /// Lowercased addresses never sent a notice: `notify.from`, the admins, exempt senders.
    never_told: HashSet<String>,
    threads: HashMap<String, ThreadAlerts>,
}

/// Threads quiet for this many intervals are forgotten (their breaker has long closed).
const FORGET_AFTER_INTERVALS: u64 = 4;
const PRUNE_ABOVE: usize = 1024;

impl AlertRates {
    pub fn new(config: &Config) -> AlertRates {
        let mut rates = AlertRates {
            interval_ms: 0,
            admins: false,
            notify_senders: false,
            never_told: HashSet::new(),
            threads: HashMap::new(),
        };
        rates.apply(config);
        rates
    }

    /// Takes `[notify]`'s settings, keeping what was already told.
    pub fn apply(&mut self, config: &Config) {
        self.interval_ms = config.notify.interval.as_millis() as u64;
        self.admins = !config.notify.admins.is_empty();
        self.notify_senders = config.notify.notify_senders;
        self.never_told = std::iter::once(&config.notify.from)
            .chain(&config.notify.admins)
            .chain(&config.policy.exempt_senders)
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
    }

    /// The engine reports that `hold` opened a breaker.
    pub fn breaker_opened(&mut self, hold: &Hold, now_ms: u64) -> Vec<Outgoing> {
        self.prune(now_ms);
        let interval = self.interval_ms;
        match self.threads.get_mut(&hold.thread) {
            // Told within the interval (a duplicate report, or a re-opening soon after):
            // fold it into the next update.
            Some(t) if now_ms.saturating_sub(t.last_sent_ms) < interval => {
                t.hold = hold.clone();
                t.origin = t.origin.take().or_else(|| hold.origin.clone());
                t.last_activity_ms = now_ms;
                Vec::new()
            }
            _ => {
                let t = ThreadAlerts::new(hold.clone(), now_ms, now_ms);
                let report = report(&t);
                self.threads.insert(hold.thread.clone(), t);
                self.admin_mail(Outgoing::Alert(report))
            }
        }
    }

    /// A breaker brought back after a restart: its opening was told before, so holds on it
    /// raise no second alert (updates follow at `interval` as usual).
    pub fn restored(&mut self, thread: &str, opened_at_ms: u64, now_ms: u64) {
        self.threads.entry(thread.to_string()).or_insert_with(|| {
            let hold = Hold {
                thread: thread.to_string(),
                list: None,
                audience: 0,
                breaker: "restored",
                replies: 0,
                senders: 0,
                reason: String::new(),
                action: HoldAction::default(),
                origin: None,
            };
            ThreadAlerts::new(hold, opened_at_ms, now_ms)
        });
    }

    /// A message was held (in the quarantine) in `hold.thread`'s storm, as `id`.
    pub fn message_held(
        &mut self,
        envelope: &Envelope,
        hold: &Hold,
        id: &str,
        now_ms: u64,
    ) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if !self.threads.contains_key(&hold.thread) {
            // The opening was not reported here (another instance, or a restart): this hold
            // is the first we hear of the breaker, so it gets the alert.
            out = self.breaker_opened(hold, now_ms);
        }
        let interval = self.interval_ms;
        let Some(t) = self.threads.get_mut(&hold.thread) else {
            return out;
        };
        let sender = envelope.mail_from.trim().to_ascii_lowercase();
        t.held += 1;
        t.hold = hold.clone();
        t.origin = t.origin.take().or_else(|| hold.origin.clone());
        t.avoided = t.avoided.saturating_add(hold.audience);
        t.last_activity_ms = now_ms;
        let shown = if sender.is_empty() { "<>" } else { &sender };
        if let Some(n) = t.tally.get_mut(shown) {
            *n += 1;
        } else if t.tally.len() < MAX_TALLIED {
            t.tally.insert(shown.to_string(), 1);
        }
        if out.is_empty() && now_ms.saturating_sub(t.last_sent_ms) >= interval {
            t.last_sent_ms = now_ms;
            let update = Outgoing::Update(report(t));
            out.extend(self.admin_mail(update));
        }
        let Some(t) = self.threads.get_mut(&hold.thread) else {
            return out;
        };
        let tell = self.notify_senders
            && hold.action == HoldAction::Quarantine
            && hold.breaker != "auto-reply"
            && !sender.is_empty()
            && !self.never_told.contains(&sender)
            && !t.told.contains(&sender);
        if tell {
            if t.told.len() >= MAX_TOLD {
                tracing::warn!(thread = %hold.thread, told = t.told.len(), "sender notices: too many senders in this storm, no more are told");
            } else {
                t.told.insert(sender);
                out.push(Outgoing::SenderNotice {
                    to: envelope.mail_from.clone(),
                    id: id.to_string(),
                    report: report(t),
                });
            }
        }
        out
    }

    fn admin_mail(&self, mail: Outgoing) -> Vec<Outgoing> {
        if self.admins { vec![mail] } else { Vec::new() }
    }

    fn prune(&mut self, now_ms: u64) {
        if self.threads.len() > PRUNE_ABOVE {
            let keep = self.interval_ms.saturating_mul(FORGET_AFTER_INTERVALS);
            self.threads
                .retain(|_, t| now_ms.saturating_sub(t.last_activity_ms) < keep);
        }
    }
}

impl ThreadAlerts {
    fn new(hold: Hold, opened_at_ms: u64, now_ms: u64) -> ThreadAlerts {
        ThreadAlerts {
            opened_at_ms,
            last_sent_ms: now_ms,
            last_activity_ms: now_ms,
            held: 0,
            origin: hold.origin.clone(),
            hold,
            avoided: 0,
            tally: HashMap::new(),
            told: HashSet::new(),
        }
    }
}

fn report(t: &ThreadAlerts) -> ThreadReport {
    ThreadReport {
        hold: t.hold.clone(),
        held: t.held,
        opened_at_ms: t.opened_at_ms,
        origin: t.origin.clone(),
        top_senders: top(&t.tally),
        avoided: t.avoided,
    }
}

/// The `TOP_SENDERS` most frequent, most first, then by address.
pub fn top(tally: &HashMap<String, u32>) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = tally.iter().map(|(s, n)| (s.clone(), *n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(TOP_SENDERS);
    v
}

/// Sends alerts, notices and reminders in the background. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    rates: Mutex<AlertRates>,
    /// Swapped whole by a reload.
    settings: arc_swap::ArcSwap<Settings>,
    in_flight: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Mail sent and failed since the last `flush`.
    sent: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicUsize,
}

/// What mail is written and sent with, from `[notify]`, `[proxy]`, `[admin]`, `[[lists]]`,
/// `[quarantine]` and the reinjection target.
struct Settings {
    admins: Vec<String>,
    words: Words,
    upstream: Target,
    reminders: bool,
    remind_every: std::time::Duration,
    remind_before_expiry: std::time::Duration,
    retention: std::time::Duration,
}

impl Settings {
    fn new(config: &Config, config_path: &Path, upstream: Target) -> Settings {
        let console = config.admin.listen.map(|a| {
            let host = if a.ip().is_unspecified() {
                config.proxy.hostname.clone()
            } else if a.is_ipv6() {
                format!("[{}]", a.ip())
            } else {
                a.ip().to_string()
            };
            format!("http://{host}:{}/", a.port())
        });
        Settings {
            admins: config.notify.admins.clone(),
            words: Words {
                from: config.notify.from.clone(),
                hostname: config.proxy.hostname.clone(),
                // No file system access: the path as `run` was given it, made absolute.
                config_path: std::path::absolute(config_path)
                    .unwrap_or_else(|_| config_path.to_path_buf()),
                console,
                lists: config
                    .lists
                    .iter()
                    .map(|l| (l.address.to_ascii_lowercase(), l.members))
                    .collect(),
                notice_subject: config.notify.sender_notice_subject.clone(),
                notice_template: config.notify.sender_notice_template.clone(),
            },
            upstream,
            reminders: config.notify.reminders,
            remind_every: config.notify.remind_every,
            remind_before_expiry: config.notify.remind_before_expiry,
            retention: config.quarantine.retention,
        }
    }
}

impl Notifier {
    /// `config_path` is the policy file's path (made absolute), quoted in the commands of each
    /// alert; mail goes to `upstream` (the reinjection target, with its TLS).
    pub fn new(config: &Config, config_path: &Path, upstream: Target) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                rates: Mutex::new(AlertRates::new(config)),
                settings: arc_swap::ArcSwap::new(Arc::new(Settings::new(
                    config,
                    config_path,
                    upstream,
                ))),
                in_flight: Mutex::new(Vec::new()),
                sent: Default::default(),
                failed: Default::default(),
            }),
        }
    }

    /// A reloaded configuration: new recipients, sender, interval, templates and upstream;
    /// breakers already reported stay reported (no second alert), senders told stay told.
    pub fn reload(&self, config: &Config, upstream: Target) {
        self.rates().apply(config);
        let path = self.inner.settings.load().words.config_path.clone();
        self.inner
            .settings
            .store(Arc::new(Settings::new(config, &path, upstream)));
    }

    /// Waits for the mail handed to the background since the last flush (for shutdown and
    /// tests); returns how many of them were sent and how many failed (failures are logged).
    pub async fn flush(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let pending = std::mem::take(&mut *lock(&self.inner.in_flight));
        let mut panicked = 0;
        for task in pending {
            if task.await.is_err() {
                panicked += 1;
            }
        }
        let sent = self.inner.sent.swap(0, SeqCst);
        let failed = self.inner.failed.swap(0, SeqCst);
        (sent, failed + panicked)
    }

    /// Call when a verdict has `opened: Some(hold)`.
    pub fn breaker_opened(&self, hold: &Hold, now_ms: u64) {
        let out = self.rates().breaker_opened(hold, now_ms);
        self.send_all(out, now_ms);
    }

    /// Call for each breaker restored at start (see `AlertRates::restored`).
    pub fn restored(&self, thread: &str, opened_at_ms: u64) {
        self.rates().restored(thread, opened_at_ms, crate::now_ms());
    }

    /// Call after a message was committed to the quarantine as `id`. With `breaker_opened`
    /// for the same message, either order gives one alert.
    pub fn message_held(&self, envelope: &Envelope, hold: &Hold, id: &str, now_ms: u64) {
        let out = self.rates().message_held(envelope, hold, id, now_ms);
        self.send_all(out, now_ms);
    }

    fn rates(&self) -> std::sync::MutexGuard<'_, AlertRates> {
        lock(&self.inner.rates)
    }

    /// The mail for `mail`, as it would be sent.
    pub fn render(&self, mail: &Outgoing, now_ms: u64) -> Letter {
        let s = self.inner.settings.load();
        match mail {
            Outgoing::Alert(r) => s.words.alert(&s.admins, r, false, now_ms),
            Outgoing::Update(r) => s.words.alert(&s.admins, r, true, now_ms),
            Outgoing::SenderNotice { to, id, report } => s.words.notice(to, id, report, now_ms),
        }
    }

    fn send_all(&self, out: Vec<Outgoing>, now_ms: u64) {
        for mail in out {
            let (kind, thread) = match &mail {
                Outgoing::Alert(r) => ("alert", &r.hold.thread),
                Outgoing::Update(r) => ("update", &r.hold.thread),
                Outgoing::SenderNotice { report, .. } => ("sender notice", &report.hold.thread),
            };
            let thread = thread.clone();
            self.send(self.render(&mail, now_ms), kind, thread);
        }
    }

    /// Hands `letter` to the background.
    fn send(&self, letter: Letter, kind: &'static str, thread: String) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(kind, "mail not sent: no async runtime");
            return;
        };
        let settings = self.inner.settings.load_full();
        if settings.upstream.address.is_empty() {
            tracing::error!(kind, %thread, to = ?letter.to, "mail not sent: [upstream] address is not set");
            return;
        }
        let inner = self.inner.clone();
        let task = handle.spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let sent = SmtpClient::send(
                &settings.upstream,
                &letter.mail_from,
                &letter.to,
                &letter.bytes,
            )
            .await;
            match sent {
                Ok(reply) => {
                    metrics::counter!(crate::admin::metric::ALERT_MAILS, "result" => "sent")
                        .increment(1);
                    tracing::info!(kind, %thread, to = ?letter.to, %reply, "{kind} sent");
                    inner.sent.fetch_add(1, SeqCst);
                }
                Err(e) => {
                    metrics::counter!(crate::admin::metric::ALERT_MAILS, "result" => "failed")
                        .increment(1);
                    tracing::error!(kind, %thread, to = ?letter.to, error = %e, "{kind} not sent");
                    inner.failed.fetch_add(1, SeqCst);
                }
            }
        });
        let mut in_flight = lock(&self.inner.in_flight);
        // Finished sends are dropped here, so the list stays as long as what is in flight.
        in_flight.retain(|t| !t.is_finished());
        in_flight.push(task);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HoldAction;

    const MIN: u64 = 60_000;

    fn config(admins: &[&str], notify_senders: bool) -> Config {
        let mut c = Config::default();
        c.notify.admins = admins.iter().map(|s| s.to_string()).collect();
        c.notify.from = "stormbreaker@corp.test".into();
        c.notify.interval = std::time::Duration::from_secs(30 * 60);
        c.notify.notify_senders = notify_senders;
        c
    }

    fn hold(thread: &str) -> Hold {
        Hold {
            thread: thread.into(),
            list: Some("all@corp.test".into()),
            audience: 91053,
            breaker: "replies",
            replies: 10,
            senders: 8,
            reason: crate::engine::reason(crate::breaker::Rule::Replies, 10, 91053),
            action: HoldAction::Quarantine,
            origin: Some(Arc::new(Origin::new(
                "Réunion trimestrielle — résultats",
                "alice@corp.test",
                true,
            ))),
        }
    }

    fn env(sender: &str) -> Envelope {
        Envelope::to(sender, &["all@corp.test"])
    }

    fn kinds(out: &[Outgoing]) -> Vec<&'static str> {
        out.iter()
            .map(|o| match o {
                Outgoing::Alert(_) => "alert",
                Outgoing::Update(_) => "update",
                Outgoing::SenderNotice { .. } => "notice",
            })
            .collect()
    }

    #[test]
    fn one_alert_per_opening_within_an_interval() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], false));
        let t0 = 1_000_000;
        assert_eq!(kinds(&r.breaker_opened(&hold("t"), t0)), ["alert"]);
        // Duplicate or repeated opening reports within the interval: nothing more.
        assert!(r.breaker_opened(&hold("t"), t0 + 1).is_empty());
        assert!(r.breaker_opened(&hold("t"), t0 + 29 * MIN).is_empty());
        // Held messages within the interval: no mail either.
        for i in 0..50 {
            assert!(
                r.message_held(&env("x@corp.test"), &hold("t"), "id", t0 + i * MIN / 2)
                    .is_empty()
            );
        }
        // Another thread is independent.
        assert_eq!(kinds(&r.breaker_opened(&hold("u"), t0 + 2)), ["alert"]);
    }

    #[test]
    fn at_most_one_update_per_interval_while_holds_continue() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], false));
        let t0 = 1_000_000;
        r.breaker_opened(&hold("t"), t0);
        let mut updates = Vec::new();
        for minute in 1..=95 {
            for out in r.message_held(&env("x@corp.test"), &hold("t"), "id", t0 + minute * MIN) {
                if let Outgoing::Update(report) = out {
                    updates.push((minute, report.held));
                }
            }
        }
        assert_eq!(updates, [(30, 30), (60, 60), (90, 90)]);
    }

    #[test]
    fn a_hold_without_a_reported_opening_raises_the_alert_once() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], false));
        let out = r.message_held(&env("x@corp.test"), &hold("t"), "id", 5);
        assert_eq!(kinds(&out), ["alert"]);
        assert!(
            r.breaker_opened(&hold("t"), 6).is_empty(),
            "either order: one alert"
        );
        assert!(
            r.message_held(&env("y@corp.test"), &hold("t"), "id", 7)
                .is_empty()
        );
    }

    #[test]
    fn reopening_after_the_interval_alerts_again() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], false));
        r.breaker_opened(&hold("t"), 0);
        assert_eq!(kinds(&r.breaker_opened(&hold("t"), 31 * MIN)), ["alert"]);
    }

    #[test]
    fn no_admins_means_no_admin_mail() {
        let mut r = AlertRates::new(&config(&[], false));
        assert!(r.breaker_opened(&hold("t"), 0).is_empty());
        assert!(
            r.message_held(&env("x@corp.test"), &hold("t"), "id", 40 * MIN)
                .is_empty()
        );
    }

    #[test]
    fn senders_hear_once_per_storm_and_never_the_null_sender_admins_exempt_or_ourselves() {
        let mut c = config(&["admin@corp.test"], true);
        c.policy.exempt_senders = vec!["CEO@corp.test".into()];
        let mut r = AlertRates::new(&c);
        r.breaker_opened(&hold("t"), 0);
        assert_eq!(
            kinds(&r.message_held(&env("bob@corp.test"), &hold("t"), "id", 1)),
            ["notice"]
        );
        for quiet in [
            "Bob@Corp.test",
            "",
            "StormBreaker@corp.test",
            "admin@corp.test",
            "ceo@corp.test",
        ] {
            assert!(
                r.message_held(&env(quiet), &hold("t"), "id", 2).is_empty(),
                "{quiet}"
            );
        }
        // Another storm: told again.
        r.breaker_opened(&hold("u"), 5);
        assert_eq!(
            kinds(&r.message_held(&env("bob@corp.test"), &hold("u"), "id", 6)),
            ["notice"]
        );
        // Never for a refusal (the client has the SMTP reply) nor an automatic reply.
        for action in [HoldAction::Reject, HoldAction::Tempfail] {
            let mut h = hold("v");
            h.action = action;
            assert!(
                r.message_held(&env("dave@corp.test"), &h, "id", 7)
                    .iter()
                    .all(|o| !matches!(o, Outgoing::SenderNotice { .. })),
                "{action:?}"
            );
        }
        let mut h = hold("auto-reply:erin@corp.test");
        h.breaker = "auto-reply";
        assert!(
            r.message_held(&env("erin@corp.test"), &h, "id", 8)
                .iter()
                .all(|o| !matches!(o, Outgoing::SenderNotice { .. }))
        );
    }

    #[test]
    fn sender_notices_are_on_by_default() {
        let c = Config::default();
        assert!(c.notify.notify_senders);
        let mut r = AlertRates::new(&c);
        assert_eq!(
            kinds(&r.message_held(&env("bob@corp.test"), &hold("t"), "id", 1)),
            ["notice"]
        );
    }

    #[test]
    fn updates_name_the_top_senders_and_the_deliveries_avoided() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], false));
        r.breaker_opened(&hold("t"), 0);
        for (i, s) in ["b@x", "a@x", "b@x", "c@x", "b@x", "a@x"]
            .iter()
            .enumerate()
        {
            r.message_held(&env(s), &hold("t"), "id", i as u64);
        }
        let out = r.message_held(&env("d@x"), &hold("t"), "id", 31 * MIN);
        let Some(Outgoing::Update(report)) = out.first() else {
            panic!("{out:?}")
        };
        assert_eq!(report.held, 7);
        assert_eq!(report.avoided, 7 * 91053);
        assert_eq!(
            report.top_senders,
            [
                ("b@x".to_string(), 3),
                ("a@x".to_string(), 2),
                ("c@x".to_string(), 1),
                ("d@x".to_string(), 1)
            ]
        );
    }

    fn notifier(c: &Config) -> Notifier {
        let target = crate::proxy::session::upstream_target(c).unwrap();
        Notifier::new(c, Path::new("/etc/stormbreaker/policy.toml"), target)
    }

    fn parse(bytes: &[u8]) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(bytes)
            .expect("a message mail-parser reads")
    }

    #[test]
    fn the_alert_decodes_with_its_utf8_subject_origin_and_absolute_commands() {
        let mut c = config(&["admin@corp.test", "ops@corp.test"], false);
        c.admin.listen = Some("127.0.0.1:8025".parse().unwrap());
        c.lists.push(crate::config::ListConfig {
            address: "all@corp.test".into(),
            members: 91053,
            exempt: false,
            wide_audience: None,
            trip_replies: None,
            window: None,
            block_for: None,
            action: None,
            fast_senders: None,
            me_too_messages: None,
            wave_senders: None,
            wave_window: None,
        });
        // A relative path as `run` may be given it: the commands say it absolutely.
        let target = crate::proxy::session::upstream_target(&c).unwrap();
        let n = Notifier::new(&c, Path::new("policy.toml"), target);
        let report = ThreadReport {
            hold: hold("mid:root@corp.test"),
            held: 3,
            opened_at_ms: 0,
            origin: None,
            top_senders: vec![("bob@corp.test".into(), 2), ("carol@corp.test".into(), 1)],
            avoided: 3 * 91053,
        };
        let letter = n.render(&Outgoing::Alert(report), 1_795_000_000_000);
        assert_eq!(letter.to, ["admin@corp.test", "ops@corp.test"]);
        assert_eq!(letter.mail_from, "stormbreaker@corp.test");
        let raw = String::from_utf8(letter.bytes.clone()).unwrap();
        let (head, _) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.is_ascii(), "headers are encoded: {head}");
        assert!(head.contains("=?utf-8?"), "RFC 2047: {head}");
        let m = parse(&letter.bytes);
        assert_eq!(
            m.subject(),
            Some(
                "[stormbreaker] Reply-all storm stopped on \"Réunion trimestrielle — résultats\" (storm mid:root@corp.test)"
            )
        );
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-generated")
        );
        assert!(m.date().is_some() && m.message_id().is_some());
        assert_eq!(m.date().unwrap().to_timestamp(), 1_795_000_000);
        assert_eq!(
            m.from().and_then(|a| a.first()).and_then(|a| a.address()),
            Some("stormbreaker@corp.test")
        );
        let body = m.body_text(0).unwrap();
        let abs = std::env::current_dir().unwrap().join("policy.toml");
        let abs = abs.display();
        for line in [
            "Subject:            Réunion trimestrielle — résultats".to_string(),
            "Original sender:    alice@corp.test".into(),
            "List:               all@corp.test (91053 members)".into(),
            "Held so far:        3".into(),
            "Deliveries avoided: 273159".into(),
            "Top senders held:   bob@corp.test (2), carol@corp.test (1)".into(),
            format!("stormbreaker quarantine list --thread mid:root@corp.test --config {abs}"),
            format!("stormbreaker quarantine release --thread mid:root@corp.test --config {abs}"),
            format!("stormbreaker breaker reset mid:root@corp.test --config {abs}"),
            "Or use the console: http://127.0.0.1:8025/".into(),
        ] {
            assert!(body.contains(&line), "{line:?} not in:\n{body}");
        }
        assert!(!body.contains("postsuper"), "{body}");
    }

    #[test]
    fn nothing_from_mail_can_add_a_header_or_break_a_command() {
        let c = config(&["admin@corp.test"], false);
        let n = notifier(&c);
        let mut h = hold("subj:it's quarterly\r\nBcc: x@evil.test");
        h.origin = Some(Arc::new(Origin::new("a\r\nBcc: y@evil.test", "z@x", false)));
        let report = ThreadReport {
            hold: h,
            held: 0,
            opened_at_ms: 0,
            origin: None,
            top_senders: Vec::new(),
            avoided: 0,
        };
        let letter = n.render(&Outgoing::Update(report), 0);
        let raw = String::from_utf8(letter.bytes.clone()).unwrap();
        let (head, _) = raw.split_once("\r\n\r\n").unwrap();
        assert!(!head.contains("\r\nBcc:"), "no header injection: {head}");
        let m = parse(&letter.bytes);
        assert!(m.bcc().is_none());
        let body = m.body_text(0).unwrap();
        assert!(
            body.contains(
                "stormbreaker quarantine release --thread \"subj:it's quarterly??Bcc: x@evil.test\" --config /etc/stormbreaker/policy.toml"
            ),
            "{body}"
        );
        assert!(
            body.contains("(the first sender seen in the storm"),
            "{body}"
        );
        assert!(body.contains("none held yet"), "{body}");
    }

    #[test]
    fn the_sender_notice_comes_from_the_null_sender_with_the_template_filled() {
        let mut c = config(&["admin@corp.test"], true);
        c.notify.sender_notice_subject = "Retenu : {subject}".into();
        c.notify.sender_notice_template =
            "{sender}: {storm} on {list} ({audience}), {id}. {{ok}}\n".into();
        let n = notifier(&c);
        let report = ThreadReport {
            hold: hold("mid:root@corp.test"),
            held: 1,
            opened_at_ms: 0,
            origin: None,
            top_senders: Vec::new(),
            avoided: 0,
        };
        let mail = Outgoing::SenderNotice {
            to: "bob@corp.test".into(),
            id: "0123abcd".into(),
            report,
        };
        let letter = n.render(&mail, 0);
        assert_eq!(letter.mail_from, "", "MAIL FROM:<>");
        assert_eq!(letter.to, ["bob@corp.test"]);
        let m = parse(&letter.bytes);
        assert_eq!(
            m.subject(),
            Some("Retenu : Réunion trimestrielle — résultats")
        );
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-generated")
        );
        assert_eq!(
            m.body_text(0).unwrap().trim_end(),
            "bob@corp.test: mid:root@corp.test on all@corp.test (91053), 0123abcd. {ok}"
        );
        // The default template says what happened and what to do.
        let n = notifier(&config(&["admin@corp.test"], true));
        let m2 = n.render(&mail, 0);
        let body = parse(&m2.bytes).body_text(0).unwrap().into_owned();
        assert!(
            body.contains("was held for review, not delivered"),
            "{body}"
        );
        assert!(body.contains("Please reply to the sender only."), "{body}");
        assert!(body.contains("0123abcd"), "{body}");
    }

    #[test]
    fn templates_with_unknown_placeholders_or_stray_braces_are_refused() {
        assert!(check_template(crate::config::SENDER_NOTICE_TEMPLATE).is_ok());
        assert!(check_template("{subject} {{literal}}").is_ok());
        let e = check_template("Hello {name}").unwrap_err();
        assert!(e.contains("unknown placeholder {name}"), "{e}");
        assert!(e.contains("{subject}"), "{e}");
        assert!(check_template("a { b").is_err());
        assert!(check_template("a } b").is_err());
        assert_eq!(
            fill("{id}{{x}}{list}", &[("id", "1"), ("list", "2")]),
            "1{x}2"
        );
    }
}
