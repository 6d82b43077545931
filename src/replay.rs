//! `stormbreaker replay`: the policy run over past mail (an mbox or a Maildir), in arrival
//! order, with the engine's clock set to each message's time and a private in-process state
//! store. It tells which storms would have tripped and when, what would have been delivered
//! and held, and the deliveries avoided: how an administrator tunes thresholds on last
//! month's mail before turning the action on.
//!
//! What stands for the SMTP envelope, which an archive does not keep:
//! - time: the topmost `Received:` (when the last server took it), else `Date:`, else the
//!   mailbox's own date (the mbox `From ` line, the Maildir file time); messages with none are
//!   passed over and counted as undated;
//! - sender: `Return-Path:` (the envelope sender the delivering server recorded), else `From:`;
//! - recipients: `To:` and `Cc:` (and `Bcc:` when kept), plus `X-Original-To:` (Postfix's
//!   record of the envelope recipient before alias expansion: for mail sent to a list as Bcc,
//!   the list's address is only there). `Delivered-To:` is not used: it names the mailbox the
//!   copy landed in, one of the audience already, and would count that person twice;
//! - one message once: copies with the same `Message-ID` (one per mailbox in a journal or a
//!   merged export) are decided once, as the MTA would have seen one transaction.

use crate::config::{Config, HoldAction};
use crate::engine::Engine;
use crate::envelope::{Envelope, Recipient};
use crate::verdict::Verdict;
use anyhow::Context;
use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Where the past mail is.
#[derive(Debug, Clone)]
pub enum Mailbox {
    Mbox(PathBuf),
    Maildir(PathBuf),
}

impl Mailbox {
    pub fn path(&self) -> &Path {
        match self {
            Mailbox::Mbox(p) | Mailbox::Maildir(p) => p,
        }
    }
}

/// What the replay found. Times are RFC 3339, UTC.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mailbox: String,
    /// The configured action: with `log`, "held" below is what would have been held.
    pub action: HoldAction,
    pub messages: Counts,
    pub first: Option<String>,
    pub last: Option<String>,
    pub delivered: usize,
    pub held: usize,
    /// People who would not have received a held message: each held message times its
    /// audience.
    pub deliveries_avoided: u64,
    pub storms: Vec<Storm>,
    /// Every replayed message in order, with its decision.
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Messages in the mailbox.
    pub read: usize,
    pub replayed: usize,
    /// Copies of a Message-ID already replayed.
    pub duplicates: usize,
    /// No Received, Date or mailbox date.
    pub undated: usize,
    /// Not a message (no header could be read).
    pub unreadable: usize,
}

/// One breaker that opened.
#[derive(Debug, Serialize)]
pub struct Storm {
    /// The breaker's key, as `breaker list` and `quarantine release --thread` name it.
    pub thread: String,
    /// Which rule opened it: replies, fast, me-too.
    pub breaker: String,
    pub list: Option<String>,
    pub audience: u64,
    pub opened_at: String,
    /// The message that opened it (it was delivered; the next ones were held).
    pub opened_by: Option<String>,
    /// Wide replies (or messages) counted when it opened, and from how many senders.
    pub replies_at_open: u32,
    pub senders_at_open: u32,
    pub held: usize,
    pub first_held_at: Option<String>,
    pub last_held_at: Option<String>,
    pub deliveries_avoided: u64,
}

#[derive(Debug, Serialize)]
pub struct Decision {
    pub at: String,
    pub message_id: Option<String>,
    pub from: String,
    pub subject: String,
    /// deliver, opened (delivered, and the breaker opened), held.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<u64>,
}

/// One message as the replay uses it.
struct Past {
    at_ms: u64,
    /// Position in the mailbox: ties in time keep mailbox order.
    seq: usize,
    envelope: Envelope,
    headers: Vec<u8>,
    message_id: Option<String>,
    subject: String,
}

/// Replays `mailbox` under `config`'s policy and lists (list sources are read once first).
pub async fn run(config: &Config, mailbox: &Mailbox) -> anyhow::Result<Report> {
    let engine = Engine::new(config)?;
    if !config.list_sources.is_empty() {
        let failed = engine.lists().refresh_all().await;
        if failed > 0 {
            eprintln!(
                "stormbreaker replay: {failed} list source(s) could not be read; their lists \
                 count as one recipient each"
            );
        }
    }
    let mut counts = Counts::default();
    let mut mails = read(mailbox, &mut counts)?;
    mails.sort_by_key(|m| (m.at_ms, m.seq));
    let mut report = Report {
        mailbox: mailbox.path().display().to_string(),
        action: config.policy.action,
        first: mails.first().map(|m| rfc3339(m.at_ms)),
        last: mails.last().map(|m| rfc3339(m.at_ms)),
        messages: counts,
        delivered: 0,
        held: 0,
        deliveries_avoided: 0,
        storms: Vec::new(),
        decisions: Vec::with_capacity(mails.len()),
    };
    let mut storms: BTreeMap<String, usize> = BTreeMap::new();
    for mail in &mails {
        let verdict = engine
            .decide(&mail.envelope, &mail.headers, mail.at_ms)
            .await;
        report.messages.replayed += 1;
        record(&mut report, &mut storms, mail, &verdict);
    }
    Ok(report)
}

fn record(
    report: &mut Report,
    storms: &mut BTreeMap<String, usize>,
    mail: &Past,
    verdict: &Verdict,
) {
    let at = rfc3339(mail.at_ms);
    let mut decision = Decision {
        at: at.clone(),
        message_id: mail.message_id.clone(),
        from: mail.envelope.mail_from.clone(),
        subject: mail.subject.clone(),
        decision: "deliver",
        thread: None,
        audience: None,
    };
    if let Some(opened) = &verdict.opened {
        decision.decision = "opened";
        decision.thread = Some(opened.thread.clone());
        decision.audience = Some(opened.audience);
        storms.entry(opened.thread.clone()).or_insert_with(|| {
            report.storms.push(Storm {
                thread: opened.thread.clone(),
                breaker: opened.breaker.to_string(),
                list: opened.list.clone(),
                audience: opened.audience,
                opened_at: at.clone(),
                opened_by: mail.message_id.clone(),
                replies_at_open: opened.replies,
                senders_at_open: opened.senders,
                held: 0,
                first_held_at: None,
                last_held_at: None,
                deliveries_avoided: 0,
            });
            report.storms.len() - 1
        });
    }
    match &verdict.hold {
        Some(hold) => {
            decision.decision = "held";
            decision.thread = Some(hold.thread.clone());
            decision.audience = Some(hold.audience);
            report.held += 1;
            report.deliveries_avoided = report.deliveries_avoided.saturating_add(hold.audience);
            // A breaker opened by hand or before the mailbox begins has no opening here.
            let i = *storms.entry(hold.thread.clone()).or_insert_with(|| {
                report.storms.push(Storm {
                    thread: hold.thread.clone(),
                    breaker: hold.breaker.to_string(),
                    list: hold.list.clone(),
                    audience: hold.audience,
                    opened_at: at.clone(),
                    opened_by: None,
                    replies_at_open: hold.replies,
                    senders_at_open: hold.senders,
                    held: 0,
                    first_held_at: None,
                    last_held_at: None,
                    deliveries_avoided: 0,
                });
                report.storms.len() - 1
            });
            let storm = &mut report.storms[i];
            storm.held += 1;
            storm.first_held_at.get_or_insert_with(|| at.clone());
            storm.last_held_at = Some(at);
            storm.deliveries_avoided = storm.deliveries_avoided.saturating_add(hold.audience);
        }
        None => report.delivered += 1,
    }
    report.decisions.push(decision);
}

/// Every message of the mailbox that can be replayed, in mailbox order.
fn read(mailbox: &Mailbox, counts: &mut Counts) -> anyhow::Result<Vec<Past>> {
    let mut raw: Vec<(Vec<u8>, u64)> = Vec::new();
    match mailbox {
        Mailbox::Mbox(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("{}: cannot open the mbox", path.display()))?;
            let reader = std::io::BufReader::new(file);
            for message in mail_parser::mailbox::mbox::MessageIterator::new(reader) {
                let message =
                    message.with_context(|| format!("{}: cannot read", path.display()))?;
                let date = message.internal_date();
                raw.push((message.unwrap_contents(), date));
            }
        }
        Mailbox::Maildir(path) => {
            let messages = mail_parser::mailbox::maildir::MessageIterator::new(path.clone())
                .with_context(|| format!("{}: not a Maildir (cur/ and new/)", path.display()))?;
            for message in messages {
                let message =
                    message.with_context(|| format!("{}: cannot read", path.display()))?;
                let date = message.internal_date();
                raw.push((message.unwrap_contents(), date));
            }
        }
    }
    let mut seen_ids = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (seq, (contents, mailbox_date)) in raw.into_iter().enumerate() {
        counts.read += 1;
        let headers = header_block(&contents);
        let Some(message) = MessageParser::new().parse_headers(headers) else {
            counts.unreadable += 1;
            continue;
        };
        if message.headers().is_empty() {
            counts.unreadable += 1;
            continue;
        }
        let message_id = message.message_id().map(str::to_string);
        if let Some(id) = &message_id
            && !seen_ids.insert(id.to_ascii_lowercase())
        {
            counts.duplicates += 1;
            continue;
        }
        let at_s = message
            .received()
            .and_then(|r| r.date())
            .map(|d| d.to_timestamp())
            .or_else(|| message.date().map(|d| d.to_timestamp()))
            .filter(|&t| t > 0)
            .map(|t| t as u64)
            .or((mailbox_date > 0).then_some(mailbox_date));
        let Some(at_s) = at_s else {
            counts.undated += 1;
            continue;
        };
        let mut rcpts: Vec<String> = Vec::new();
        for field in [message.to(), message.cc(), message.bcc()]
            .into_iter()
            .flatten()
        {
            rcpts.extend(addresses(field));
        }
        for value in message.header_values(HeaderName::Other("X-Original-To".into())) {
            rcpts.extend(value_addresses(value));
        }
        let return_path = value_addresses(message.return_path()).into_iter().next();
        let from = message.from().and_then(|a| addresses(a).into_iter().next());
        let mail_from = return_path.or(from).unwrap_or_default();
        out.push(Past {
            at_ms: at_s.saturating_mul(1000),
            seq,
            envelope: Envelope {
                mail_from,
                rcpts: rcpts.iter().map(|r| Recipient::plain(r)).collect(),
                ..Envelope::default()
            },
            message_id,
            subject: message.subject().unwrap_or("").to_string(),
            headers: headers.to_vec(),
        });
    }
    Ok(out)
}

fn addresses(field: &Address) -> Vec<String> {
    field
        .iter()
        .filter_map(|a| a.address())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// The addresses of a header however mail-parser took it (an address list, or text).
fn value_addresses(value: &HeaderValue) -> Vec<String> {
    match value {
        HeaderValue::Address(a) => addresses(a),
        HeaderValue::Text(t) => bare_addresses(t),
        HeaderValue::TextList(l) => l.iter().flat_map(|t| bare_addresses(t)).collect(),
        _ => Vec::new(),
    }
}

/// `<a@b>`, `a@b, c@d`: the addresses of a header kept as text.
fn bare_addresses(text: &str) -> Vec<String> {
    text.split(',')
        .map(|a| {
            a.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim()
        })
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// The header block: up to and including the line break before the first empty line.
fn header_block(raw: &[u8]) -> &[u8] {
    let lf = memchr::memmem::find(raw, b"\n\n").map(|i| i + 1);
    let crlf = memchr::memmem::find(raw, b"\r\n\r\n").map(|i| i + 2);
    let end = match (lf, crlf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    };
    let end = end
        .min(crate::fingerprint::MAX_HEADER_BYTES.max(1))
        .min(raw.len());
    &raw[..end]
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The report for a person: storms, when they opened, what was held, deliveries avoided.
pub fn print_text(report: &Report, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let c = &report.messages;
    writeln!(
        out,
        "replayed {} message(s) from {}",
        c.replayed, report.mailbox
    )?;
    if let (Some(first), Some(last)) = (&report.first, &report.last) {
        writeln!(out, "  from {first} to {last}")?;
    }
    let mut passed_over = Vec::new();
    for (n, what) in [
        (c.duplicates, "duplicate Message-ID"),
        (c.undated, "undated"),
        (c.unreadable, "unreadable"),
    ] {
        if n > 0 {
            passed_over.push(format!("{n} {what}"));
        }
    }
    if !passed_over.is_empty() {
        writeln!(out, "  passed over: {}", passed_over.join(", "))?;
    }
    writeln!(out, "delivered            {}", report.delivered)?;
    if report.action == HoldAction::Log {
        writeln!(
            out,
            "would be held        {}  (action \"log\" delivers them and logs \"would hold\")",
            report.held
        )?;
    } else {
        writeln!(out, "held                 {}", report.held)?;
    }
    writeln!(out, "deliveries avoided   {}", report.deliveries_avoided)?;
    if report.storms.is_empty() {
        writeln!(out, "no storm would have tripped")?;
        return Ok(());
    }
    writeln!(out, "{} storm(s) would have tripped:", report.storms.len())?;
    for s in &report.storms {
        writeln!(out)?;
        writeln!(out, "  {}", s.thread)?;
        writeln!(
            out,
            "    opened        {} by the {} rule, at {} replies from {} senders{}",
            s.opened_at,
            s.breaker,
            s.replies_at_open,
            s.senders_at_open,
            s.opened_by
                .as_deref()
                .map(|id| format!(" (<{id}>)"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "    audience      {}{}",
            s.audience,
            s.list
                .as_deref()
                .map(|l| format!(" (list {l})"))
                .unwrap_or_default()
        )?;
        match (&s.first_held_at, &s.last_held_at) {
            (Some(first), Some(last)) => writeln!(
                out,
                "    held          {} message(s), {first} to {last}",
                s.held
            )?,
            _ => writeln!(out, "    held          none (the storm ended as it opened)")?,
        }
        writeln!(out, "    avoided       {} deliveries", s.deliveries_avoided)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_end_at_the_first_empty_line_either_way() {
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody\n\n"), b"A: 1\nB: 2\n");
        assert_eq!(header_block(b"A: 1\r\n\r\nbody"), b"A: 1\r\n");
        assert_eq!(header_block(b"A: 1\n"), b"A: 1\n");
    }

    #[test]
    fn text_headers_give_bare_addresses() {
        assert_eq!(bare_addresses(" <all@corp.test>"), ["all@corp.test"]);
        assert_eq!(bare_addresses("a@x, <b@y>"), ["a@x", "b@y"]);
        assert!(bare_addresses("<>").is_empty());
    }
}
