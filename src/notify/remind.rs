//! Reminders to the admins while held mail waits (at most one per `notify.remind_every`), and
//! one naming the messages retention is about to delete (`notify.remind_before_expiry` before
//! `quarantine.retention`), so held mail never disappears unseen.
//!
//! `plan` is pure (the held messages, what was sent before, the time); `Notifier::remind` runs
//! it on the quarantine on a timer and keeps what was sent in `reminders.json` under the
//! quarantine dir (written whole, fsynced, renamed), so a restart neither repeats a reminder
//! nor warns twice of one expiry.

use super::{Notifier, top};
use crate::quarantine::Quarantine;
use crate::quarantine::record::HeldMeta;
use crate::service::Shutdown;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The state file, under the quarantine dir.
pub const FILE: &str = "reminders.json";
/// Held messages named one by one in an expiry warning, per storm.
const IDS_PER_STORM: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReminderKind {
    /// Held mail waits for a decision.
    Waiting,
    /// Held mail is about to be deleted by retention.
    Expiring,
}

/// One reminder mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reminder {
    pub kind: ReminderKind,
    pub storms: Vec<HeldStorm>,
    pub retention: Duration,
}

/// The held messages of one storm (for `Expiring`: only those about to be deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldStorm {
    pub thread: String,
    /// The subject of its held messages, reply prefixes removed.
    pub subject: String,
    pub list: Option<String>,
    pub count: usize,
    pub oldest_ms: u64,
    /// When retention deletes its oldest message.
    pub deletes_at_ms: u64,
    pub top_senders: Vec<(String, u32)>,
    pub avoided: u64,
    /// Some of its messages' ids.
    pub ids: Vec<String>,
}

/// What was sent, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemindState {
    /// When the last `Waiting` reminder went out, or when held mail was first seen waiting.
    pub last_reminder_ms: Option<u64>,
    /// Held messages already named in an expiry warning.
    pub warned: BTreeSet<String>,
}

/// The settings `plan` needs.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub every: Duration,
    pub before_expiry: Duration,
    pub retention: Duration,
}

/// What to send now, given the held messages; updates `state`.
pub fn plan(
    held: &[HeldMeta],
    state: &mut RemindState,
    schedule: Schedule,
    now_ms: u64,
) -> Vec<Reminder> {
    let mut out = Vec::new();
    let retention_ms = schedule.retention.as_millis() as u64;
    let before_ms = schedule.before_expiry.as_millis() as u64;
    // Messages gone (released, deleted, expired) are forgotten.
    let present: BTreeSet<&str> = held.iter().map(|m| m.id.as_str()).collect();
    state.warned.retain(|id| present.contains(id.as_str()));
    if held.is_empty() {
        // Nothing waits: the next held mail starts its own interval (its alert told of it).
        state.last_reminder_ms = None;
        return out;
    }
    match state.last_reminder_ms {
        None => state.last_reminder_ms = Some(now_ms),
        Some(last) if now_ms.saturating_sub(last) >= schedule.every.as_millis() as u64 => {
            state.last_reminder_ms = Some(now_ms);
            out.push(Reminder {
                kind: ReminderKind::Waiting,
                storms: storms(held.iter(), retention_ms),
                retention: schedule.retention,
            });
        }
        Some(_) => {}
    }
    let expiring: Vec<&HeldMeta> = held
        .iter()
        .filter(|m| {
            let deletes_at = m.received_at_ms.saturating_add(retention_ms);
            deletes_at.saturating_sub(before_ms) <= now_ms && !state.warned.contains(&m.id)
        })
        .collect();
    if !expiring.is_empty() {
        state.warned.extend(expiring.iter().map(|m| m.id.clone()));
        out.push(Reminder {
            kind: ReminderKind::Expiring,
            storms: storms(expiring.into_iter(), retention_ms),
            retention: schedule.retention,
        });
    }
    out
}

/// Held messages grouped by storm, the storm with the oldest message first.
fn storms<'a>(held: impl Iterator<Item = &'a HeldMeta>, retention_ms: u64) -> Vec<HeldStorm> {
    struct Acc<'a> {
        first: &'a HeldMeta,
        count: usize,
        oldest_ms: u64,
        avoided: u64,
        senders: HashMap<String, u32>,
        ids: Vec<String>,
    }
    let mut by: BTreeMap<&str, Acc<'a>> = BTreeMap::new();
    for m in held {
        let a = by.entry(m.thread.as_str()).or_insert_with(|| Acc {
            first: m,
            count: 0,
            oldest_ms: u64::MAX,
            avoided: 0,
            senders: HashMap::new(),
            ids: Vec::new(),
        });
        a.count += 1;
        a.oldest_ms = a.oldest_ms.min(m.received_at_ms);
        a.avoided = a.avoided.saturating_add(m.audience);
        let sender = if m.envelope.mail_from.is_empty() {
            "<>".to_string()
        } else {
            m.envelope.mail_from.to_ascii_lowercase()
        };
        *a.senders.entry(sender).or_default() += 1;
        if a.ids.len() < IDS_PER_STORM {
            a.ids.push(m.id.clone());
        }
    }
    let mut out: Vec<HeldStorm> = by
        .into_iter()
        .map(|(thread, a)| HeldStorm {
            thread: thread.to_string(),
            subject: a
                .first
                .subject
                .as_deref()
                .map(|s| {
                    crate::fingerprint::subject::strip_prefixes(s)
                        .0
                        .trim()
                        .to_string()
                })
                .unwrap_or_default(),
            list: a.first.list.clone(),
            count: a.count,
            oldest_ms: a.oldest_ms,
            deletes_at_ms: a.oldest_ms.saturating_add(retention_ms),
            top_senders: top(&a.senders),
            avoided: a.avoided,
            ids: a.ids,
        })
        .collect();
    out.sort_by_key(|s| s.oldest_ms);
    out
}

/// The state file's path.
pub fn path(quarantine_dir: &Path) -> PathBuf {
    quarantine_dir.join(FILE)
}

/// The state from `path`; absent or unreadable: empty (logged), so at worst a reminder comes
/// once more.
pub fn load(path: &Path) -> RemindState {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "reminder state unreadable; starting afresh");
            RemindState::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RemindState::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "reminder state not read; starting afresh");
            RemindState::default()
        }
    }
}

/// Writes the state whole: to a temporary file, fsynced, renamed over the old one.
pub fn save(path: &Path, state: &RemindState) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Notifier {
    /// Runs the reminders until shutdown: looks at the quarantine every quarter of the
    /// shorter of `remind_every` and `remind_before_expiry` (at most every 5 minutes) and
    /// sends what `plan` says. Does nothing while `[notify] admins` is empty or
    /// `reminders = false` (a reload may turn it on).
    pub async fn remind(self, quarantine: Quarantine, mut stop: Shutdown) {
        let path = path(quarantine.dir());
        let mut state = load(&path);
        loop {
            let settings = self.inner.settings.load_full();
            let tick = (settings.remind_every.min(settings.remind_before_expiry) / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(300));
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            if !settings.reminders || settings.admins.is_empty() {
                continue;
            }
            let q = quarantine.clone();
            let held = match tokio::task::spawn_blocking(move || q.scan()).await {
                Ok(Ok(scan)) => scan.held,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reminders: the quarantine cannot be read");
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reminders: the quarantine scan failed");
                    continue;
                }
            };
            let schedule = Schedule {
                every: settings.remind_every,
                before_expiry: settings.remind_before_expiry,
                retention: settings.retention,
            };
            let before = state.clone();
            let now = crate::now_ms();
            for reminder in plan(&held, &mut state, schedule, now) {
                let letter = settings.words.reminder(&settings.admins, &reminder, now);
                let kind = match reminder.kind {
                    ReminderKind::Waiting => "reminder",
                    ReminderKind::Expiring => "expiry reminder",
                };
                let storms = reminder
                    .storms
                    .iter()
                    .map(|s| s.thread.as_str())
                    .collect::<Vec<_>>()
                    .join(" ");
                self.send(letter, kind, storms);
            }
            if state != before {
                let (p, s) = (path.clone(), state.clone());
                match tokio::task::spawn_blocking(move || save(&p, &s)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(path = %path.display(), error = %e, "reminder state not written")
                    }
                    Err(e) => tracing::warn!(error = %e, "reminder state not written"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    const H: u64 = 3_600_000;

    fn held(id: &str, thread: &str, sender: &str, at: u64) -> HeldMeta {
        HeldMeta {
            id: id.into(),
            received_at_ms: at,
            envelope: Envelope::to(sender, &["all@corp.test"]),
            message_id: None,
            subject: Some("RE: Réunion".into()),
            thread: thread.into(),
            keys: Vec::new(),
            list: Some("all@corp.test".into()),
            audience: 100,
            breaker: "replies".into(),
            replies: 10,
            senders: 10,
            reason: String::new(),
            size: 1,
        }
    }

    fn schedule() -> Schedule {
        Schedule {
            every: Duration::from_secs(4 * 3600),
            before_expiry: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(14 * 24 * 3600),
        }
    }

    #[test]
    fn one_reminder_per_interval_while_mail_waits() {
        let mut st = RemindState::default();
        let t0 = 1_000 * H;
        let m = vec![
            held("a", "mid:r", "bob@corp.test", t0),
            held("b", "mid:r", "Bob@corp.test", t0),
            held("c", "mid:r", "carol@corp.test", t0),
        ];
        // First sight: the alert told already.
        assert!(plan(&m, &mut st, schedule(), t0).is_empty());
        assert!(plan(&m, &mut st, schedule(), t0 + 3 * H).is_empty());
        let r = plan(&m, &mut st, schedule(), t0 + 4 * H);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].kind, ReminderKind::Waiting);
        assert_eq!(r[0].storms[0].count, 3);
        assert_eq!(r[0].storms[0].subject, "Réunion");
        assert_eq!(
            r[0].storms[0].top_senders,
            [
                ("bob@corp.test".to_string(), 2),
                ("carol@corp.test".to_string(), 1)
            ]
        );
        assert_eq!(r[0].storms[0].avoided, 300);
        assert!(plan(&m, &mut st, schedule(), t0 + 5 * H).is_empty());
        assert_eq!(plan(&m, &mut st, schedule(), t0 + 8 * H).len(), 1);
        // Nothing waits: nothing sent, and the interval starts again with the next hold.
        assert!(plan(&[], &mut st, schedule(), t0 + 20 * H).is_empty());
        assert_eq!(st.last_reminder_ms, None);
    }

    #[test]
    fn one_warning_before_retention_deletes_each_message() {
        let mut st = RemindState::default();
        let t0 = 1_000 * H;
        let m = vec![
            held("old", "mid:r", "bob@corp.test", t0),
            held("new", "mid:s", "bob@corp.test", t0 + 48 * H),
        ];
        plan(&m, &mut st, schedule(), t0);
        // 13 days later: "old" is deleted within 24 h.
        let now = t0 + 13 * 24 * H;
        let r: Vec<_> = plan(&m, &mut st, schedule(), now)
            .into_iter()
            .filter(|r| r.kind == ReminderKind::Expiring)
            .collect();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].storms.len(), 1);
        assert_eq!(r[0].storms[0].ids, ["old"]);
        assert_eq!(r[0].storms[0].deletes_at_ms, t0 + 14 * 24 * H);
        // Once.
        assert!(
            plan(&m, &mut st, schedule(), now + 1)
                .iter()
                .all(|r| r.kind != ReminderKind::Expiring)
        );
        // Released meanwhile: forgotten.
        plan(&m[1..], &mut st, schedule(), now + 2);
        assert!(!st.warned.contains("old"));
    }

    #[test]
    fn the_state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(load(&p), RemindState::default());
        let st = RemindState {
            last_reminder_ms: Some(42),
            warned: ["a".to_string()].into(),
        };
        save(&p, &st).unwrap();
        assert_eq!(load(&p), st);
        std::fs::write(&p, b"{not json").unwrap();
        assert_eq!(load(&p), RemindState::default());
    }
}
