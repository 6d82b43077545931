//! What the web console shows: storms, built from what exists today (open breakers and the
//! quarantine's records), held mail per storm with search, and the storm report (CSV).
//!
//! A storm's id is the key that started it (`mid:…`, `subj:…`, `tidx:…`, `wave:…`); open
//! breakers and held records carry it, with the storm's other keys (`BreakerStatus::keys`,
//! `HeldMeta::keys`), which `keys` lists. A trip or reset of any of them acts on the storm.
//!
//! The engine keeps no per-minute history, so the timeline counts what the quarantine holds:
//! each held (or released) message by the minute it was held. Replies that went through
//! before the breaker opened are in the breaker's own counts (`replies`, `senders`), not in
//! the timeline.

use crate::quarantine::HeldMeta;
use crate::quarantine::record::rfc3339;
use crate::store::BreakerStatus;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Points a timeline has at most: wider buckets beyond that.
const MAX_POINTS: u64 = 180;
/// Senders listed by name in a storm.
const TOP_SENDERS: usize = 10;

/// The storm an open breaker belongs to.
pub fn storm_of_breaker(b: &BreakerStatus) -> String {
    b.key.clone()
}

/// The storm a held message belongs to.
pub fn storm_of_held(meta: &HeldMeta) -> String {
    meta.thread.clone()
}

/// A key an administrator may trip or reset (`fingerprint::parse_key`: a known prefix and a
/// well-formed value).
pub fn check_thread_key(key: &str) -> Result<(), String> {
    crate::fingerprint::parse_key(key).map(drop)
}

/// One breaker of a storm, for people: times in RFC 3339 as well as milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    /// The storm's id: the key that started it.
    pub id: String,
    /// Kept under its old name for scripts that read `breaker list`.
    pub key: String,
    /// The storm's other keys.
    pub keys: Vec<String>,
    /// The rule that opened it: replies, fast, me-too, manual.
    pub breaker: &'static str,
    /// open or half-open.
    pub phase: &'static str,
    pub opened_at: String,
    pub opened_at_ms: u64,
    pub until: String,
    pub until_ms: u64,
    /// Wide replies and distinct senders in the breaker's window now (senders are counted up
    /// to the engine's slot limit).
    pub replies: u32,
    pub senders: u32,
}

impl From<&BreakerStatus> for BreakerView {
    fn from(b: &BreakerStatus) -> Self {
        BreakerView {
            id: b.key.clone(),
            key: b.key.clone(),
            keys: b.keys.clone(),
            breaker: b.breaker,
            phase: match b.phase {
                crate::breaker::Phase::HalfOpen => "half-open",
                crate::breaker::Phase::Open => "open",
                crate::breaker::Phase::Closed => "closed",
            },
            opened_at: rfc3339(b.opened_at_ms),
            opened_at_ms: b.opened_at_ms,
            until: rfc3339(b.until_ms),
            until_ms: b.until_ms,
            replies: b.replies,
            senders: b.senders,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SenderCount {
    pub address: String,
    pub messages: usize,
}

/// One bucket of a storm's timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Point {
    pub at_ms: u64,
    pub at: String,
    /// Messages held in this bucket (released since or not).
    pub replies: usize,
    /// Distinct envelope senders among them.
    pub senders: usize,
    /// Senders not seen earlier in the storm.
    pub new_senders: usize,
    /// Deliveries the still-held messages of this bucket kept back (their audience).
    pub avoided: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Timeline {
    /// Width of a bucket: one minute, wider for storms longer than 180 minutes.
    pub bucket_ms: u64,
    pub points: Vec<Point>,
}

/// A storm as the console lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    pub id: String,
    /// The thread keys of this storm (one today).
    pub keys: Vec<String>,
    /// open, half-open (a breaker still guards) or closed (only held mail is left).
    pub status: &'static str,
    pub breakers: Vec<BreakerView>,
    pub subject: Option<String>,
    pub list: Option<String>,
    /// The largest audience of its messages.
    pub audience: u64,
    pub held: usize,
    pub released: usize,
    /// Distinct envelope senders of its held and released messages.
    pub senders: usize,
    pub top_senders: Vec<SenderCount>,
    /// Deliveries kept back: the audiences of the messages still held, added up.
    pub deliveries_avoided: u64,
    pub first_at: Option<String>,
    pub last_at: Option<String>,
    pub last_ms: u64,
    pub timeline: Timeline,
}

/// A held or released message as the console lists it (and as another node's
/// `quarantine list --all-nodes` and console read it from this one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldRow {
    /// The node whose quarantine has it (`[admin] node_name`); its id is unique there only.
    #[serde(default)]
    pub node: String,
    pub id: String,
    pub storm: String,
    /// held or released.
    pub state: String,
    pub received_at: String,
    pub received_at_ms: u64,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub audience: u64,
    pub list: Option<String>,
    pub thread: String,
    /// The message's other thread keys (`quarantine list --thread` matches them too).
    #[serde(default)]
    pub keys: Vec<String>,
    pub breaker: String,
    pub reason: String,
    pub size: u64,
}

impl HeldRow {
    pub fn new(node: &str, meta: &HeldMeta, state: &str) -> HeldRow {
        HeldRow {
            node: node.into(),
            id: meta.id.clone(),
            storm: storm_of_held(meta),
            state: state.into(),
            received_at: rfc3339(meta.received_at_ms),
            received_at_ms: meta.received_at_ms,
            mail_from: meta.envelope.mail_from.clone(),
            rcpt_to: meta
                .envelope
                .rcpts
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            message_id: meta.message_id.clone(),
            subject: meta.subject.clone(),
            audience: meta.audience,
            list: meta.list.clone(),
            thread: meta.thread.clone(),
            keys: meta.keys.clone(),
            breaker: meta.breaker.clone(),
            reason: meta.reason.clone(),
            size: meta.size,
        }
    }

    /// The record's metadata as far as a row carries it (another node's held mail, for the
    /// storm list, the CLI's filters and its summary): recipients without their parameters,
    /// the breaker's counts at the hold left out.
    pub fn to_meta(&self) -> HeldMeta {
        let rcpts: Vec<&str> = self.rcpt_to.iter().map(String::as_str).collect();
        HeldMeta {
            id: self.id.clone(),
            received_at_ms: self.received_at_ms,
            envelope: crate::envelope::Envelope::to(&self.mail_from, &rcpts),
            message_id: self.message_id.clone(),
            subject: self.subject.clone(),
            thread: self.thread.clone(),
            keys: self.keys.clone(),
            list: self.list.clone(),
            audience: self.audience,
            breaker: self.breaker.clone(),
            replies: 0,
            senders: 0,
            reason: self.reason.clone(),
            size: self.size,
        }
    }

    /// How a release or delete names this row from any node: `NODE:ID`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.node, self.id)
    }

    /// Whether every word of `query` appears (any case) in the id, sender, a recipient, the
    /// subject or the Message-ID.
    pub fn matches(&self, query: &str) -> bool {
        let hay = format!(
            "{} {} {} {} {}",
            self.id,
            self.mail_from,
            self.rcpt_to.join(" "),
            self.subject.as_deref().unwrap_or(""),
            self.message_id.as_deref().unwrap_or("")
        )
        .to_lowercase();
        query
            .to_lowercase()
            .split_whitespace()
            .all(|word| hay.contains(word))
    }
}

/// Storms from open breakers and quarantined messages: open ones first, then the most
/// recently active.
pub fn storms(breakers: &[BreakerStatus], held: &[HeldMeta], released: &[HeldMeta]) -> Vec<Storm> {
    #[derive(Default)]
    struct Acc<'a> {
        keys: Vec<String>,
        breakers: Vec<&'a BreakerStatus>,
        messages: Vec<(&'a HeldMeta, bool)>,
    }
    impl Acc<'_> {
        fn key(&mut self, key: &str) {
            if !self.keys.iter().any(|k| k == key) {
                self.keys.push(key.to_string());
            }
        }
    }
    let mut by_id: BTreeMap<String, Acc> = BTreeMap::new();
    for b in breakers {
        let acc = by_id.entry(storm_of_breaker(b)).or_default();
        acc.key(&b.key);
        for k in &b.keys {
            acc.key(k);
        }
        acc.breakers.push(b);
    }
    for (list, is_held) in [(held, true), (released, false)] {
        for m in list {
            let acc = by_id.entry(storm_of_held(m)).or_default();
            acc.key(&m.thread);
            for k in &m.keys {
                acc.key(k);
            }
            acc.messages.push((m, is_held));
        }
    }
    let mut out: Vec<Storm> = by_id
        .into_iter()
        .map(|(id, acc)| {
            let mut messages = acc.messages;
            messages.sort_by_key(|(m, _)| (m.received_at_ms, m.id.clone()));
            let status = if acc
                .breakers
                .iter()
                .any(|b| b.phase == crate::breaker::Phase::Open)
            {
                "open"
            } else if acc.breakers.is_empty() {
                "closed"
            } else {
                "half-open"
            };
            let mut per_sender: HashMap<String, usize> = HashMap::new();
            for (m, _) in &messages {
                *per_sender
                    .entry(m.envelope.mail_from.to_lowercase())
                    .or_default() += 1;
            }
            let mut top: Vec<SenderCount> = per_sender
                .iter()
                .map(|(a, n)| SenderCount {
                    address: a.clone(),
                    messages: *n,
                })
                .collect();
            top.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.address.cmp(&b.address)));
            top.truncate(TOP_SENDERS);
            let first = messages.first().map(|(m, _)| m.received_at_ms);
            let last_msg = messages.last().map(|(m, _)| m.received_at_ms);
            let last_breaker = acc.breakers.iter().map(|b| b.opened_at_ms).max();
            let subject = messages
                .iter()
                .find_map(|(m, _)| m.subject.clone())
                .or_else(|| {
                    id.strip_prefix("subj:")
                        .or_else(|| {
                            id.strip_prefix("metoo:")
                                .and_then(|r| r.split_once(':').map(|(_, s)| s))
                        })
                        .map(str::to_string)
                });
            Storm {
                keys: acc.keys,
                status,
                breakers: acc.breakers.iter().map(|b| BreakerView::from(*b)).collect(),
                subject,
                list: messages.iter().find_map(|(m, _)| m.list.clone()),
                audience: messages.iter().map(|(m, _)| m.audience).max().unwrap_or(0),
                held: messages.iter().filter(|(_, h)| *h).count(),
                released: messages.iter().filter(|(_, h)| !*h).count(),
                senders: per_sender.len(),
                top_senders: top,
                deliveries_avoided: messages
                    .iter()
                    .filter(|(_, h)| *h)
                    .map(|(m, _)| m.audience)
                    .sum(),
                first_at: first.map(rfc3339),
                last_at: last_msg.map(rfc3339),
                last_ms: last_msg.max(last_breaker).unwrap_or(0),
                timeline: timeline(&messages),
                id,
            }
        })
        .collect();
    let rank = |s: &Storm| match s.status {
        "open" => 0,
        "half-open" => 1,
        _ => 2,
    };
    out.sort_by(|a, b| rank(a).cmp(&rank(b)).then(b.last_ms.cmp(&a.last_ms)));
    out
}

/// Buckets of one minute (wider past [`MAX_POINTS`] minutes) from the first message to the
/// last, empty ones included so the chart's time axis is even.
fn timeline(messages: &[(&HeldMeta, bool)]) -> Timeline {
    let (Some((first, _)), Some((last, _))) = (messages.first(), messages.last()) else {
        return Timeline {
            bucket_ms: 60_000,
            points: Vec::new(),
        };
    };
    let span_min = (last.received_at_ms - first.received_at_ms) / 60_000 + 1;
    let bucket_ms = span_min.div_ceil(MAX_POINTS).max(1) * 60_000;
    let start = first.received_at_ms / bucket_ms * bucket_ms;
    let n = ((last.received_at_ms - start) / bucket_ms + 1) as usize;
    let mut points: Vec<Point> = (0..n)
        .map(|i| {
            let at_ms = start + i as u64 * bucket_ms;
            Point {
                at_ms,
                at: rfc3339(at_ms),
                replies: 0,
                senders: 0,
                new_senders: 0,
                avoided: 0,
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut in_bucket: Vec<std::collections::HashSet<String>> = vec![Default::default(); n];
    for (m, held) in messages {
        let i = ((m.received_at_ms - start) / bucket_ms) as usize;
        let sender = m.envelope.mail_from.to_lowercase();
        let p = &mut points[i];
        p.replies += 1;
        if *held {
            p.avoided += m.audience;
        }
        if in_bucket[i].insert(sender.clone()) {
            p.senders += 1;
        }
        if seen.insert(sender) {
            p.new_senders += 1;
        }
    }
    Timeline { bucket_ms, points }
}

/// The storm report: one row per held or released message of the storm.
pub fn report_csv(storm: &str, rows: &[HeldRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "storm",
        "thread",
        "id",
        "state",
        "received_at",
        "mail_from",
        "rcpt_count",
        "rcpt_to",
        "audience",
        "list",
        "subject",
        "message_id",
        "size",
        "breaker",
        "reason",
    ])?;
    for r in rows {
        w.write_record([
            cell(storm),
            cell(&r.thread),
            cell(&r.id),
            r.state.to_string(),
            r.received_at.clone(),
            cell(&r.mail_from),
            r.rcpt_to.len().to_string(),
            cell(&r.rcpt_to.join(" ")),
            r.audience.to_string(),
            cell(r.list.as_deref().unwrap_or("")),
            cell(r.subject.as_deref().unwrap_or("")),
            cell(r.message_id.as_deref().unwrap_or("")),
            r.size.to_string(),
            cell(&r.breaker),
            cell(&r.reason),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

/// Text from senders made safe for spreadsheets: a cell starting with = + - @ (or a tab or CR)
/// would be run as a formula, so it gets a leading apostrophe (OWASP, CSV injection).
fn cell(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::Phase;
    use crate::envelope::Envelope;

    fn meta(id: &str, at_ms: u64, from: &str, thread: &str, audience: u64) -> HeldMeta {
        HeldMeta {
            id: id.into(),
            received_at_ms: at_ms,
            envelope: Envelope::to(from, &["all@corp.test"]),
            message_id: Some(format!("<{id}@corp.test>")),
            subject: Some("RE: Budget".into()),
            thread: thread.into(),
            keys: vec![thread.into()],
            list: Some("all@corp.test".into()),
            audience,
            breaker: "replies".into(),
            replies: 10,
            senders: 8,
            reason: "storm".into(),
            size: 100,
        }
    }

    fn breaker(key: &str, phase: Phase) -> BreakerStatus {
        BreakerStatus {
            key: key.into(),
            keys: Vec::new(),
            breaker: "replies",
            phase,
            opened_at_ms: 1_000_000,
            until_ms: 2_000_000,
            replies: 10,
            senders: 8,
        }
    }

    #[test]
    fn storms_join_breakers_and_held_mail_by_storm_id() {
        let t0 = 1_800_000_000_000;
        let held = [
            meta("a", t0, "u1@corp.test", "mid:b@corp.test", 5000),
            meta("b", t0 + 10_000, "U1@corp.test", "mid:b@corp.test", 5000),
            meta("c", t0 + 61_000, "u2@corp.test", "mid:b@corp.test", 5000),
            meta("d", t0 + 200_000, "u3@corp.test", "mid:b@corp.test", 4000),
        ];
        let released = vec![meta(
            "e",
            t0 + 5_000,
            "u4@corp.test",
            "mid:b@corp.test",
            5000,
        )];
        let old = vec![meta("z", t0 - 10_000_000, "x@corp.test", "subj:old", 300)];
        let breakers = [
            breaker("mid:b@corp.test", Phase::Open),
            breaker("subj:budget", Phase::HalfOpen),
        ];
        let all_held: Vec<HeldMeta> = held.iter().chain(&old).cloned().collect();
        let s = storms(&breakers, &all_held, &released);
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["mid:b@corp.test", "subj:budget", "subj:old"]);
        let storm = &s[0];
        assert_eq!(storm.status, "open");
        assert_eq!(storm.keys, ["mid:b@corp.test"]);
        assert_eq!((storm.held, storm.released), (4, 1));
        assert_eq!(storm.senders, 4, "senders compared without case");
        assert_eq!(storm.top_senders[0].address, "u1@corp.test");
        assert_eq!(storm.top_senders[0].messages, 2);
        assert_eq!(storm.deliveries_avoided, 3 * 5000 + 4000);
        assert_eq!(storm.audience, 5000);
        let t = &storm.timeline;
        assert_eq!(t.bucket_ms, 60_000);
        // Minutes 0..=3 from the first message's minute (t0 is 20 s into its minute).
        let replies: Vec<usize> = t.points.iter().map(|p| p.replies).collect();
        assert_eq!(replies, [3, 1, 0, 1], "{t:?}");
        assert_eq!(t.points[0].senders, 2);
        assert_eq!(
            t.points[0].avoided, 10_000,
            "the released message avoided nothing"
        );
        assert_eq!(t.points[1].new_senders, 1);
        assert_eq!(s[1].status, "half-open");
        assert_eq!(s[1].held, 0);
        assert_eq!(s[1].subject.as_deref(), Some("budget"));
        assert_eq!(s[2].status, "closed");
    }

    #[test]
    fn long_storms_get_wider_buckets() {
        let t0 = 1_800_000_000_000;
        let msgs: Vec<HeldMeta> = (0..10)
            .map(|i| meta(&format!("m{i}"), t0 + i * 3_600_000, "a@b", "subj:x", 10))
            .collect();
        let s = storms(&[], &msgs, &[]);
        assert!(s[0].timeline.points.len() as u64 <= MAX_POINTS);
        assert_eq!(s[0].timeline.bucket_ms, 4 * 60_000);
        let total: usize = s[0].timeline.points.iter().map(|p| p.replies).sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn search_report_and_keys() {
        let mut m = meta(
            "20261201-ab",
            1_800_000_000_000,
            "Alice@corp.test",
            "subj:x",
            10,
        );
        m.subject = Some("=HYPERLINK(\"http://evil\")".into());
        let row = HeldRow::new("mx1", &m, "held");
        assert_eq!(row.reference(), "mx1:20261201-ab");
        let back: HeldRow = serde_json::from_value(serde_json::to_value(&row).unwrap()).unwrap();
        assert_eq!(back.to_meta().summary(), m.summary());
        assert!(row.matches("alice 20261201"));
        assert!(row.matches("HYPERLINK"));
        assert!(!row.matches("bob"));
        let csv = String::from_utf8(report_csv("subj:x", &[row]).unwrap()).unwrap();
        let mut lines = csv.lines();
        assert!(lines.next().unwrap().starts_with("storm,thread,id,state"));
        let line = lines.next().unwrap();
        assert!(
            line.contains("\"'=HYPERLINK(\"\"http://evil\"\")\""),
            "{line}"
        );
        assert!(line.contains(",held,"), "{line}");

        assert!(check_thread_key("subj:quarterly results").is_ok());
        assert!(check_thread_key("mid:a@b").is_ok());
        assert!(
            check_thread_key("mid:<a@b>").is_ok(),
            "brackets are dropped"
        );
        assert!(check_thread_key("ref:<a@b>").is_err());
        assert!(check_thread_key("garbage").is_err());
        assert!(check_thread_key("subj: ").is_err());
    }
}
