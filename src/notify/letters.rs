//! The words: every mail stormbreaker writes (alerts, updates, sender notices, reminders),
//! built with mail-builder so that subjects and names in any script are encoded (RFC 2047)
//! and the body is proper MIME (text/plain, UTF-8), with Date, Message-ID and
//! `Auto-Submitted: auto-generated`.
//!
//! Values from mail (subjects, addresses, storm ids) are someone else's text: control
//! characters become `?` before they go anywhere, so none can start a header or a line.

use super::{Reminder, ReminderKind, ThreadReport};
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use std::collections::HashMap;
use std::path::PathBuf;

/// Placeholders a sender notice may use.
pub const NOTICE_PLACEHOLDERS: &[&str] = &[
    "subject", "storm", "list", "audience", "sender", "id", "reason", "advice", "from",
];

/// What every letter is written with: `[notify]`, the policy file's absolute path (for the
/// commands), the console's address.
#[derive(Debug, Clone)]
pub struct Words {
    pub from: String,
    pub hostname: String,
    /// Absolute, so a command copied from the mail works from any directory.
    pub config_path: PathBuf,
    /// `http://host:port/` when `[admin] listen` is set.
    pub console: Option<String>,
    /// Declared list sizes by lowercased address.
    pub lists: HashMap<String, u64>,
    pub notice_subject: String,
    pub notice_template: String,
}

/// A mail ready to send: envelope and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// Envelope sender; empty for the null sender (notices).
    pub mail_from: String,
    pub to: Vec<String>,
    pub bytes: Vec<u8>,
}

impl Words {
    /// The first mail about a storm (`update`: a later one while its breaker stays open).
    pub fn alert(&self, admins: &[String], r: &ThreadReport, update: bool, now_ms: u64) -> Letter {
        let h = &r.hold;
        let storm = clean(&h.thread);
        let subject_line = match storm_subject(r) {
            Some(s) => format!("\"{s}\""),
            None => format!("thread {storm}"),
        };
        let what = action_words(h.action);
        let subject = if update {
            format!(
                "[stormbreaker] Update: reply-all storm on {subject_line}, {} {} so far (storm {storm})",
                r.held, what.past
            )
        } else {
            format!("[stormbreaker] Reply-all storm stopped on {subject_line} (storm {storm})")
        };
        let mut b = String::new();
        b += &format!(
            "A reply-all storm breaker is open: further replies to everybody on\n\
             this thread are {} (action = \"{}\").\n\n",
            what.future, what.name
        );
        let mut row = |k: &str, v: String| b.push_str(&format!("{k:<20}{v}\n"));
        row("Storm:", storm.clone());
        row(
            "Subject:",
            storm_subject(r).unwrap_or_else(|| "(not known here)".into()),
        );
        row("Original sender:", original_sender(r));
        row("List:", self.list_line(h.list.as_deref()));
        row("Audience:", format!("{} people per reply", h.audience));
        row(
            "Rule:",
            format!(
                "{} ({} wide replies from {} distinct senders)",
                h.breaker, h.replies, h.senders
            ),
        );
        if h.action == crate::config::HoldAction::Quarantine {
            row("Held so far:", r.held.to_string());
            row(
                "Deliveries avoided:",
                format!("{} (held messages x audience)", r.avoided),
            );
            row("Top senders held:", senders_line(&r.top_senders));
        }
        row(
            "Open since:",
            crate::quarantine::record::rfc3339(r.opened_at_ms),
        );
        row("Why:", clean(&h.reason));
        b += "\n";
        b += &self.commands(&[h.thread.as_str()]);
        b += "\nAt most one update per storm follows per notify.interval while the\n\
              breaker stays open, and a reminder per notify.remind_every while held\n\
              mail waits.\n";
        self.letter(&self.from, admins, &subject, b, now_ms)
    }

    /// The notice to a sender whose reply was held (the null envelope sender: never answered).
    pub fn notice(&self, to: &str, id: &str, r: &ThreadReport, now_ms: u64) -> Letter {
        let h = &r.hold;
        let subject = storm_subject(r).unwrap_or_else(|| clean(&h.thread));
        let list = self.list_line(h.list.as_deref());
        let audience = h.audience.to_string();
        let (storm, sender, id, reason) =
            (clean(&h.thread), clean(to), clean(id), clean(&h.reason));
        let vars: [(&str, &str); 9] = [
            ("subject", &subject),
            ("storm", &storm),
            ("list", &list),
            ("audience", &audience),
            ("sender", &sender),
            ("id", &id),
            ("reason", &reason),
            ("advice", crate::engine::advice(h.breaker)),
            ("from", &self.from),
        ];
        let subject = fill(&self.notice_subject, &vars);
        let body = fill(&self.notice_template, &vars);
        self.letter("", &[to.to_string()], &subject, body, now_ms)
    }

    /// The reminder of held mail waiting, or about to be deleted by retention.
    pub fn reminder(&self, admins: &[String], r: &Reminder, now_ms: u64) -> Letter {
        let total: usize = r.storms.iter().map(|s| s.count).sum();
        let subject = match r.kind {
            ReminderKind::Waiting => format!(
                "[stormbreaker] Reminder: {total} held messages wait in {} storms",
                r.storms.len()
            ),
            ReminderKind::Expiring => {
                format!("[stormbreaker] {total} held messages will be deleted by retention soon")
            }
        };
        let mut b = match r.kind {
            ReminderKind::Waiting => format!(
                "{} waiting for a decision. Held mail is deleted\n\
                 {} after it was held (quarantine.retention).\n\n",
                count(total, "held message"),
                crate::config::format_duration(r.retention)
            ),
            ReminderKind::Expiring => format!(
                "{} will be deleted by retention ({} after being held)\n\
                 unless released before then.\n\n",
                count(total, "held message"),
                crate::config::format_duration(r.retention)
            ),
        };
        for s in &r.storms {
            b += &format!("Storm {}\n", clean(&s.thread));
            let mut row = |k: &str, v: String| b.push_str(&format!("  {k:<18}{v}\n"));
            if !s.subject.is_empty() {
                row("Subject:", clean(&s.subject));
            }
            row("List:", self.list_line(s.list.as_deref()));
            row("Held:", s.count.to_string());
            row(
                "Deliveries avoided:",
                format!("{} (held messages x audience)", s.avoided),
            );
            row("Top senders:", senders_line(&s.top_senders));
            row(
                "Oldest held:",
                crate::quarantine::record::rfc3339(s.oldest_ms),
            );
            row(
                "Deleted from:",
                crate::quarantine::record::rfc3339(s.deletes_at_ms),
            );
            if r.kind == ReminderKind::Expiring {
                for id in &s.ids {
                    b += &format!("  Message {}\n", clean(id));
                }
                if s.ids.len() < s.count {
                    b += &format!("  and {} more\n", s.count - s.ids.len());
                }
            }
            b += "\n";
        }
        let threads: Vec<&str> = r.storms.iter().map(|s| s.thread.as_str()).collect();
        b += &self.commands(&threads);
        self.letter(&self.from, admins, &subject, b, now_ms)
    }

    /// The exact commands for these storms, with the policy file's absolute path.
    fn commands(&self, storms: &[&str]) -> String {
        let config = shell_quote(&self.config_path.display().to_string());
        let mut b = String::from("What to do:\n");
        for storm in storms {
            let id = shell_quote(&clean(storm));
            if storms.len() > 1 {
                b += &format!("  Storm {}:\n", clean(storm));
            }
            b += &format!(
                "  See what is held:\n\
                 \x20   stormbreaker quarantine list --thread {id} --config {config}\n\
                 \x20 If this is not a storm, release everything held on it:\n\
                 \x20   stormbreaker quarantine release --thread {id} --config {config}\n\
                 \x20 and close its breaker (needs [admin] listen):\n\
                 \x20   stormbreaker breaker reset {id} --config {config}\n"
            );
        }
        if let Some(url) = &self.console {
            b += &format!("  Or use the console: {url}\n");
        }
        b
    }

    fn list_line(&self, list: Option<&str>) -> String {
        match list {
            Some(list) => match self.lists.get(&list.to_ascii_lowercase()) {
                Some(members) => format!("{} ({members} members)", clean(list)),
                None => clean(list),
            },
            None => "(no declared list)".into(),
        }
    }

    fn letter(
        &self,
        mail_from: &str,
        to: &[String],
        subject: &str,
        body: String,
        now_ms: u64,
    ) -> Letter {
        let bytes = build(&self.from, to, subject, body, now_ms, &self.hostname);
        Letter {
            mail_from: mail_from.to_string(),
            to: to.to_vec(),
            bytes,
        }
    }
}

/// The whole message: From `stormbreaker <from>`, To, an encoded Subject, Date, Message-ID,
/// `Auto-Submitted: auto-generated` (RFC 3834: no responder answers it), a text/plain body.
pub fn build(
    from: &str,
    to: &[String],
    subject: &str,
    body: String,
    now_ms: u64,
    hostname: &str,
) -> Vec<u8> {
    let to: Vec<Address<'_>> = to
        .iter()
        .map(|a| Address::new_address(None::<&str>, clean(a)))
        .collect();
    let hostname: String = clean(hostname).replace(' ', "");
    let subject = clean(subject);
    // ASCII stays readable (folded only) for admins who grep their mail logs; anything else
    // is encoded (RFC 2047).
    let message = if subject.is_ascii() {
        MessageBuilder::new().header("Subject", Raw::new(subject))
    } else {
        MessageBuilder::new().subject(subject)
    };
    message
        .from(Address::new_address(Some("stormbreaker"), clean(from)))
        .to(to)
        .date(Date::new((now_ms / 1000) as i64))
        .message_id(format!(
            "{now_ms}.{:08x}.stormbreaker@{hostname}",
            rand::random::<u32>()
        ))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        // Exchange and Outlook: no out-of-office or other automatic answer to this.
        .header("X-Auto-Response-Suppress", Raw::new("All"))
        .body(text_part(body))
        .write_to_vec()
        .unwrap_or_default()
}

/// The body. ASCII within SMTP's line limit goes as it is (7bit), so the commands read and
/// copy whole even in a raw view or a log; anything else is encoded by mail-builder
/// (quoted-printable or base64, whichever is shorter).
fn text_part(body: String) -> MimePart<'static> {
    /// RFC 5322 2.1.1: 998 characters per line; well within it.
    const MAX_RAW_LINE: usize = 900;
    if body.is_ascii() && body.lines().all(|l| l.len() <= MAX_RAW_LINE) {
        let crlf: String = body.lines().flat_map(|l| [l, "\r\n"]).collect();
        MimePart::new("text/plain", crlf).transfer_encoding("7bit")
    } else {
        MimePart::new("text/plain", body)
    }
}

/// The storm's subject as people wrote it, when known.
fn storm_subject(r: &ThreadReport) -> Option<String> {
    let origin = r.origin.as_ref().or(r.hold.origin.as_ref())?;
    (!origin.subject.is_empty()).then(|| clean(&origin.subject))
}

fn original_sender(r: &ThreadReport) -> String {
    match r.origin.as_ref().or(r.hold.origin.as_ref()) {
        Some(o) if o.started_thread => clean(&o.sender),
        Some(o) => format!(
            "{}\n{:20}(the first sender seen in the storm: the thread's first\n{:20}message did not pass this node)",
            clean(&o.sender),
            "",
            ""
        ),
        None => "(not known here)".into(),
    }
}

/// "1 held message", "5 held messages".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn senders_line(senders: &[(String, u32)]) -> String {
    if senders.is_empty() {
        return "none held yet".into();
    }
    senders
        .iter()
        .map(|(s, n)| format!("{} ({n})", clean(s)))
        .collect::<Vec<_>>()
        .join(", ")
}

struct ActionWords {
    name: &'static str,
    future: &'static str,
    past: &'static str,
}

fn action_words(action: crate::config::HoldAction) -> ActionWords {
    use crate::config::HoldAction::*;
    match action {
        Quarantine => ActionWords {
            name: "quarantine",
            future: "held for review in the quarantine",
            past: "held",
        },
        Reject => ActionWords {
            name: "reject",
            future: "refused (550 5.7.1 Not delivered: ...), and their senders told by the bounce",
            past: "refused",
        },
        Tempfail => ActionWords {
            name: "tempfail",
            future: "deferred (451 4.7.1), to be retried by the senders' servers",
            past: "deferred",
        },
        Log => ActionWords {
            name: "log",
            future: "delivered and logged as would-hold (dry run)",
            past: "logged",
        },
    }
}

/// Control characters (CR, LF, tabs, ...) become '?': a value cannot break a line or a header.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Quoted for a POSIX shell (shlex); a value with a NUL (impossible after `clean`) is dropped.
fn shell_quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| "''".into())
}

/// A template with unknown placeholders or stray braces is refused (by `check-config`).
pub fn check_template(template: &str) -> Result<(), String> {
    parse_template(template, |_| Ok(()))
}

/// `template` with each `{name}` replaced by its value; `{{` and `}}` are braces.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let result = parse_template(template, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => {
                if let Some((_, v)) = vars.iter().find(|(n, _)| *n == name) {
                    out.push_str(v);
                }
            }
        }
        Ok(())
    });
    // Templates are checked when the policy loads; an unchecked one is used as it is.
    if result.is_err() {
        return template.to_string();
    }
    out
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn parse_template<'a>(
    template: &'a str,
    mut each: impl FnMut(Piece<'a>) -> Result<(), String>,
) -> Result<(), String> {
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        each(Piece::Text(&rest[..i]))?;
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            each(Piece::Text("{"))?;
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            each(Piece::Text("}"))?;
            rest = after;
        } else if tail.starts_with('}') {
            return Err("has a '}' without its '{' (write '}}' for a brace)".into());
        } else {
            let Some(end) = tail.find('}') else {
                return Err("has a '{' without its '}' (write '{{' for a brace)".into());
            };
            let name = &tail[1..end];
            if !NOTICE_PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}}; known: {}",
                    NOTICE_PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            each(Piece::Var(name))?;
            rest = &tail[end + 1..];
        }
    }
    each(Piece::Text(rest))
}
