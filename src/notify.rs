//! Alert mail when a breaker opens, updates while it stays open, optional notices to held senders.
//!
//! The decisions (`AlertRates`) are pure, with time passed in; `Notifier` renders the mail and
//! sends it in the background to the upstream MTA, so no SMTP session ever waits for it.
//!
//! Loop safety: alerts go straight to the upstream (never through the proxy), their envelope
//! sender is `notify.from` (which the engine exempts), they carry `Auto-Submitted:
//! auto-generated`, and no notice ever goes to the null sender or to `notify.from` itself.

use crate::config::Config;
use crate::envelope::Envelope;
use crate::smtp::client::{SmtpClient, Target};
use crate::verdict::Hold;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the rate logic says to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// The first mail to the admins about this breaker opening.
    Alert(ThreadReport),
    /// A later mail to the admins while the breaker stays open.
    Update(ThreadReport),
    /// To a held sender, once per breaker.
    SenderNotice { to: String, report: ThreadReport },
}

/// What an alert tells about a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadReport {
    pub hold: Hold,
    /// Messages held on this thread since the breaker opened, as reported to this notifier.
    pub held: u32,
    pub opened_at_ms: u64,
}

#[derive(Debug)]
struct ThreadAlerts {
    opened_at_ms: u64,
    /// When the last mail to the admins went out.
    last_sent_ms: u64,
    last_activity_ms: u64,
    held: u32,
    hold: Hold,
    senders_told: HashSet<String>,
}

/// Pure rate decisions: one alert per breaker opening, at most one mail to the admins per
/// `interval` per thread, one notice per sender per breaker.
#[derive(Debug)]
pub struct AlertRates {
    interval_ms: u64,
    admins: bool,
    notify_senders: bool,
    from: String,
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
            from: String::new(),
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
        self.from = config.notify.from.clone();
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
                t.last_activity_ms = now_ms;
                Vec::new()
            }
            _ => {
                let t = ThreadAlerts {
                    opened_at_ms: now_ms,
                    last_sent_ms: now_ms,
                    last_activity_ms: now_ms,
                    held: 0,
                    hold: hold.clone(),
                    senders_told: HashSet::new(),
                };
                let report = report(&t);
                self.threads.insert(hold.thread.clone(), t);
                self.admin_mail(Outgoing::Alert(report))
            }
        }
    }

    /// A breaker brought back after a restart: its opening was told before, so holds on it
    /// raise no second alert (updates follow at `interval` as usual).
    pub fn restored(&mut self, thread: &str, opened_at_ms: u64, now_ms: u64) {
        self.threads
            .entry(thread.to_string())
            .or_insert_with(|| ThreadAlerts {
                opened_at_ms,
                last_sent_ms: now_ms,
                last_activity_ms: now_ms,
                held: 0,
                hold: Hold {
                    thread: thread.to_string(),
                    list: None,
                    audience: 0,
                    breaker: "restored",
                    replies: 0,
                    senders: 0,
                    reason: String::new(),
                    action: crate::config::HoldAction::default(),
                },
                senders_told: HashSet::new(),
            });
    }

    /// A message was held on `hold.thread`.
    pub fn message_held(&mut self, envelope: &Envelope, hold: &Hold, now_ms: u64) -> Vec<Outgoing> {
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
        t.held += 1;
        t.hold = hold.clone();
        t.last_activity_ms = now_ms;
        if out.is_empty() && now_ms.saturating_sub(t.last_sent_ms) >= interval {
            t.last_sent_ms = now_ms;
            let update = Outgoing::Update(report(t));
            out.extend(self.admin_mail(update));
        }
        let sender = envelope.mail_from.to_ascii_lowercase();
        let Some(t) = self.threads.get_mut(&hold.thread) else {
            return out;
        };
        if self.notify_senders
            && !sender.is_empty()
            && !sender.eq_ignore_ascii_case(&self.from)
            && t.senders_told.insert(sender)
        {
            out.push(Outgoing::SenderNotice {
                to: envelope.mail_from.clone(),
                report: report(t),
            });
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

fn report(t: &ThreadAlerts) -> ThreadReport {
    ThreadReport {
        hold: t.hold.clone(),
        held: t.held,
        opened_at_ms: t.opened_at_ms,
    }
}

/// Sends alerts and notices in the background. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    rates: Mutex<AlertRates>,
    /// Swapped whole by a reload.
    settings: arc_swap::ArcSwap<Settings>,
    config_path: PathBuf,
    in_flight: Mutex<Vec<tokio::task::JoinHandle<bool>>>,
}

/// What alerts are built from, from `[notify]`, `[proxy]`, `[[lists]]` and `[upstream]`.
struct Settings {
    admins: Vec<String>,
    from: String,
    hostname: String,
    upstream: Target,
    lists: HashMap<String, u64>,
}

impl Settings {
    fn new(config: &Config, upstream: Target) -> Settings {
        Settings {
            admins: config.notify.admins.clone(),
            from: config.notify.from.clone(),
            hostname: config.proxy.hostname.clone(),
            upstream,
            lists: config
                .lists
                .iter()
                .map(|l| (l.address.to_ascii_lowercase(), l.members))
                .collect(),
        }
    }
}

impl Notifier {
    /// `config_path` is the policy file's path, quoted in the release command of each alert;
    /// alerts go to `upstream` (`[upstream]`, with its TLS).
    pub fn new(config: &Config, config_path: &Path, upstream: Target) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                rates: Mutex::new(AlertRates::new(config)),
                settings: arc_swap::ArcSwap::new(Arc::new(Settings::new(config, upstream))),
                config_path: config_path.to_path_buf(),
                in_flight: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A reloaded configuration: new recipients, sender, interval and upstream; breakers
    /// already reported stay reported (no second alert).
    pub fn reload(&self, config: &Config, upstream: Target) {
        self.rates().apply(config);
        self.inner
            .settings
            .store(Arc::new(Settings::new(config, upstream)));
    }

    /// Waits for the mail handed to the background since the last flush (for shutdown and
    /// tests); returns how many of them were sent and how many failed (failures are logged).
    pub async fn flush(&self) -> (usize, usize) {
        let pending = std::mem::take(&mut *lock(&self.inner.in_flight));
        let (mut sent, mut failed) = (0, 0);
        for task in pending {
            match task.await {
                Ok(true) => sent += 1,
                _ => failed += 1,
            }
        }
        (sent, failed)
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

    /// Call after a message was committed to the quarantine. With `breaker_opened` for the
    /// same message, either order gives one alert.
    pub fn message_held(&self, envelope: &Envelope, hold: &Hold, now_ms: u64) {
        let out = self.rates().message_held(envelope, hold, now_ms);
        self.send_all(out, now_ms);
    }

    fn rates(&self) -> std::sync::MutexGuard<'_, AlertRates> {
        lock(&self.inner.rates)
    }

    fn send_all(&self, out: Vec<Outgoing>, now_ms: u64) {
        for mail in out {
            let (rcpts, bytes) = self.render(&mail, now_ms);
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                tracing::error!("alert not sent: no async runtime");
                continue;
            };
            let settings = self.inner.settings.load_full();
            let thread = report_of(&mail).hold.thread.clone();
            if settings.upstream.address.is_empty() {
                tracing::error!(%thread, to = ?rcpts, "alert not sent: [upstream] address is not set");
                continue;
            }
            let task = handle.spawn(async move {
                let sent =
                    SmtpClient::send(&settings.upstream, &settings.from, &rcpts, &bytes).await;
                match sent {
                    Ok(reply) => {
                        metrics::counter!(crate::admin::metric::ALERT_MAILS, "result" => "sent")
                            .increment(1);
                        tracing::info!(%thread, to = ?rcpts, %reply, "alert sent");
                        true
                    }
                    Err(e) => {
                        metrics::counter!(crate::admin::metric::ALERT_MAILS, "result" => "failed")
                            .increment(1);
                        tracing::error!(%thread, to = ?rcpts, error = %e, "alert not sent");
                        false
                    }
                }
            });
            lock(&self.inner.in_flight).push(task);
        }
    }

    /// Recipients and the whole message.
    pub fn render(&self, mail: &Outgoing, now_ms: u64) -> (Vec<String>, Vec<u8>) {
        let i = self.inner.settings.load();
        let r = report_of(mail);
        let thread = &r.hold.thread;
        let (to, subject, body) = match mail {
            Outgoing::Alert(_) | Outgoing::Update(_) => {
                let subject = match mail {
                    Outgoing::Alert(_) => format!("Reply-all storm stopped on thread {thread}"),
                    _ => format!(
                        "Update: reply-all storm on thread {thread} still held ({} held)",
                        r.held
                    ),
                };
                (i.admins.clone(), subject, self.admin_body(r))
            }
            Outgoing::SenderNotice { to, .. } => (
                vec![to.clone()],
                "Your reply-all was held".to_string(),
                self.sender_body(r),
            ),
        };
        let mut m = String::new();
        m += &format!("From: stormbreaker <{}>\r\n", header_safe(&i.from));
        m += &format!("To: {}\r\n", header_safe(&to.join(", ")));
        m += &format!("Subject: [stormbreaker] {}\r\n", header_safe(&subject));
        m += &format!("Date: {}\r\n", rfc2822(now_ms));
        m += &format!(
            "Message-ID: <{now_ms}.{:08x}.stormbreaker@{}>\r\n",
            rand::random::<u32>(),
            header_safe(&i.hostname)
        );
        m += "Auto-Submitted: auto-generated\r\n";
        m += "X-Auto-Response-Suppress: All\r\n";
        m += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n";
        m += "Content-Transfer-Encoding: 8bit\r\n\r\n";
        for line in body.lines() {
            m += line;
            m += "\r\n";
        }
        (to, m.into_bytes())
    }

    fn list_line(&self, hold: &Hold) -> String {
        match &hold.list {
            Some(list) => match self
                .inner
                .settings
                .load()
                .lists
                .get(&list.to_ascii_lowercase())
            {
                Some(members) => format!("{} ({members} members)", text_safe(list)),
                None => text_safe(list),
            },
            None => "(no declared list)".into(),
        }
    }

    fn admin_body(&self, r: &ThreadReport) -> String {
        let mut h = r.hold.clone();
        h.thread = text_safe(&h.thread);
        h.reason = text_safe(&h.reason);
        let h = &h;
        let config = shell_quote(&self.inner.config_path.display().to_string());
        let thread = shell_quote(&h.thread);
        format!(
            "A reply-all storm breaker is open; replies to this thread are being held.\n\
             \n\
             Storm:             {}\n\
             List:              {}\n\
             Audience:          {} people per reply\n\
             Breaker:           {}\n\
             Wide replies:      {} so far\n\
             Distinct senders:  {} so far\n\
             Held so far:       {}\n\
             Open since:        {}\n\
             Reason:            {}\n\
             \n\
             To see what is held:\n\
             \x20 stormbreaker quarantine --config {config} list --thread {thread}\n\
             If this is not a storm, release everything held on the thread:\n\
             \x20 stormbreaker quarantine --config {config} release --thread {thread}\n\
             and close its breaker (with [admin] listen set):\n\
             \x20 stormbreaker breaker --config {config} reset {thread}\n\
             \n\
             At most one update per thread follows per notify.interval while the breaker stays open.\n",
            h.thread,
            self.list_line(h),
            h.audience,
            h.breaker,
            h.replies,
            h.senders,
            r.held,
            crate::quarantine::record::rfc3339(r.opened_at_ms),
            h.reason,
        )
    }

    fn sender_body(&self, r: &ThreadReport) -> String {
        format!(
            "Your message went to {} and was held, not delivered.\n\
             \n\
             Many people were replying to everybody in the same thread at once (a reply-all\n\
             storm), so further replies to everybody are held for a while. If you meant to\n\
             answer the original sender, please reply to the original sender only.\n\
             \n\
             An administrator has been told and can release your message if it was held by\n\
             mistake. This notice is sent once; it is automatic, please do not reply.\n",
            self.list_line(&r.hold)
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn report_of(mail: &Outgoing) -> &ThreadReport {
    match mail {
        Outgoing::Alert(r) | Outgoing::Update(r) => r,
        Outgoing::SenderNotice { report, .. } => report,
    }
}

/// Header text: printable ASCII only (anything else becomes '?'), so no header injection.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// Body text: control characters become '?', so a value cannot break a line.
fn text_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Single-quoted for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@+=,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// RFC 5322 date in UTC, e.g. `Mon, 23 Nov 2026 09:14:48 +0000`.
fn rfc2822(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86400;
    let (h, mi, s) = (secs % 86400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        h,
        mi,
        s
    )
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
            reason: "10 wide replies in 60m".into(),
            action: HoldAction::Quarantine,
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
                r.message_held(&env("x@corp.test"), &hold("t"), t0 + i * MIN / 2)
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
            for out in r.message_held(&env("x@corp.test"), &hold("t"), t0 + minute * MIN) {
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
        let out = r.message_held(&env("x@corp.test"), &hold("t"), 5);
        assert_eq!(kinds(&out), ["alert"]);
        assert!(
            r.breaker_opened(&hold("t"), 6).is_empty(),
            "either order: one alert"
        );
        assert!(
            r.message_held(&env("y@corp.test"), &hold("t"), 7)
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
            r.message_held(&env("x@corp.test"), &hold("t"), 40 * MIN)
                .is_empty()
        );
    }

    #[test]
    fn senders_hear_once_per_breaker_and_never_the_null_sender_or_ourselves() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], true));
        r.breaker_opened(&hold("t"), 0);
        assert_eq!(
            kinds(&r.message_held(&env("bob@corp.test"), &hold("t"), 1)),
            ["notice"]
        );
        assert!(
            r.message_held(&env("Bob@Corp.test"), &hold("t"), 2)
                .is_empty()
        );
        assert!(r.message_held(&env(""), &hold("t"), 3).is_empty());
        assert!(
            r.message_held(&env("StormBreaker@corp.test"), &hold("t"), 4)
                .is_empty()
        );
        // Another breaker (thread): told again.
        r.breaker_opened(&hold("u"), 5);
        assert_eq!(
            kinds(&r.message_held(&env("bob@corp.test"), &hold("u"), 6)),
            ["notice"]
        );
        // A new opening of the first thread later is a new breaker.
        r.breaker_opened(&hold("t"), 40 * MIN);
        assert_eq!(
            kinds(&r.message_held(&env("bob@corp.test"), &hold("t"), 40 * MIN + 1)),
            ["notice"]
        );
    }

    #[test]
    fn sender_notice_off_by_default() {
        let mut r = AlertRates::new(&config(&["admin@corp.test"], false));
        r.breaker_opened(&hold("t"), 0);
        assert!(
            r.message_held(&env("bob@corp.test"), &hold("t"), 1)
                .is_empty()
        );
    }

    #[test]
    fn alert_mail_names_everything_and_cannot_loop() {
        let mut c = config(&["admin@corp.test", "ops@corp.test"], false);
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
        let target = crate::proxy::session::upstream_target(&c).unwrap();
        let n = Notifier::new(&c, Path::new("/etc/stormbreaker/policy.toml"), target);
        let mut h = hold("subj:it's quarterly\r\nBcc: x@evil.test");
        h.thread = "subj:it's quarterly\r\nBcc: x@evil.test".into();
        let report = ThreadReport {
            hold: h,
            held: 3,
            opened_at_ms: 0,
        };
        let (to, bytes) = n.render(&Outgoing::Alert(report), 1_795_000_000_000);
        assert_eq!(to, ["admin@corp.test", "ops@corp.test"]);
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Auto-Submitted: auto-generated"), "{head}");
        assert!(head.contains("From: stormbreaker <stormbreaker@corp.test>"));
        assert!(
            head.contains("Date: Wed, 18 Nov 2026 11:06:40 +0000"),
            "{head}"
        );
        assert!(!head.contains("\r\nBcc:"), "no header injection: {head}");
        assert!(body.contains("all@corp.test (91053 members)"), "{body}");
        assert!(body.contains("Held so far:       3"), "{body}");
        assert!(body.contains("Distinct senders:  8"), "{body}");
        assert!(
            body.contains(
                "stormbreaker quarantine --config /etc/stormbreaker/policy.toml release --thread 'subj:it'\\''s quarterly??Bcc: x@evil.test'"
            ),
            "{body}"
        );
        assert!(
            body.contains("breaker --config /etc/stormbreaker/policy.toml reset"),
            "{body}"
        );
        // The milter holds in our quarantine too: one set of commands for both front ends.
        assert!(!body.contains("postsuper"), "{body}");
    }

    #[test]
    fn dates_and_quoting() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(shell_quote("tidx:6f1c"), "tidx:6f1c");
        assert_eq!(shell_quote("subj:a b"), "'subj:a b'");
        assert_eq!(shell_quote(""), "''");
    }
}
