//! Release: SMTP re-injection of a held message to the upstream with its original envelope.
//!
//! Each attempt records itself in the message's journal: `sending` (fsynced) before the final dot,
//! `accepted` after the upstream's 250, `failed` after any other reply. Recipients the upstream
//! accepted are never sent to again; recipients of an attempt whose reply never arrived (crash or
//! lost connection after the dot) are "in doubt" and only `--force` sends to them again. So a
//! release delivers at least once, and a second copy only ever goes out on an administrator's
//! explicit `--force`.

use crate::envelope::Recipient;
use crate::quarantine::audit;
use crate::quarantine::journal::{Entry, Event, InDoubt, Journal};
use crate::quarantine::store::{Quarantine, QuarantineError, State};
use crate::smtp::client::{Reply, SmtpClient, Target};
use crate::smtp::command::{mail_command, rcpt_command};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ReleaseOptions {
    /// Send again to recipients already released or in doubt.
    pub force: bool,
    /// Attempts in all while the upstream answers 4xx (or cannot be reached).
    pub attempts: u32,
    pub retry_delay: Duration,
    /// Who releases, for the journal and the audit log.
    pub who: String,
    /// Marks what is re-injected as released (`mark.rs`), so a stormbreaker milter on the
    /// upstream MTA delivers it instead of holding it again.
    pub mark: Option<crate::mark::MarkKey>,
}

impl Default for ReleaseOptions {
    fn default() -> Self {
        ReleaseOptions {
            force: false,
            attempts: 3,
            retry_delay: Duration::from_secs(5),
            who: audit::who(),
            mark: None,
        }
    }
}

/// What one release did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseReport {
    pub id: String,
    /// Accepted by the upstream in this release.
    pub delivered_now: Vec<String>,
    /// Already accepted in an earlier release, so skipped.
    pub delivered_before: Vec<String>,
    /// Not delivered, with the upstream's last reply (or the connection error) for each.
    pub failed: Vec<(String, String)>,
    /// Cut off after the final dot with no reply: the upstream may or may not have the message.
    pub in_doubt: Vec<String>,
    /// The upstream's reply to the final dot of the last attempt that got one.
    pub last_reply: Option<String>,
}

impl ReleaseReport {
    /// Every recipient has the message.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.in_doubt.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
    #[error(
        "no MTA to release to: set [upstream] address, or [reinject] address for a port that \
         relays for this host (with the milter, one that does not call it, e.g. 127.0.0.1:10025 \
         with -o smtpd_milters=)"
    )]
    NoUpstream,
    #[error("{0} was already released to every recipient; use --force to send it again")]
    AlreadyReleased(String),
    #[error(
        "{id}: an earlier release by {by} was cut off after the message went to the upstream, \
         which may have delivered it to {rcpts}; check the upstream's log, then use --force to send \
         again",
        by = .doubt[0].by, rcpts = .doubt.iter().flat_map(|d| d.rcpts.iter().map(String::as_str)).collect::<Vec<_>>().join(", ")
    )]
    InDoubt { id: String, doubt: Vec<InDoubt> },
}

/// How one recipient fared in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// 4xx or no connection: worth another attempt.
    Temporary(String),
    /// 5xx: no point retrying.
    Permanent(String),
    /// The final dot went out and no reply was recorded.
    InDoubt(String),
}

impl Quarantine {
    /// Releases one message (held, or released before when `force`). Blocking file I/O happens
    /// inline: call from a command or from spawn_blocking-free admin paths.
    pub async fn release(
        &self,
        id: &str,
        upstream: &Target,
        opts: &ReleaseOptions,
    ) -> Result<ReleaseReport, ReleaseError> {
        if upstream.address.is_empty() {
            return Err(ReleaseError::NoUpstream);
        }
        let lock = self.lock(id)?;
        let msg = self.get(id)?;
        if msg.state == State::Released && !opts.force {
            return Err(ReleaseError::AlreadyReleased(id.into()));
        }
        let doubt = msg.journal.in_doubt();
        if !doubt.is_empty() && !opts.force {
            return Err(ReleaseError::InDoubt {
                id: id.into(),
                doubt,
            });
        }
        let journal_path = self.journal_path(id)?;
        let before: BTreeSet<String> = match msg.state {
            State::Released => BTreeSet::new(),
            State::Held => msg.journal.delivered(),
        };
        let mut pending: Vec<Recipient> = Vec::new();
        for r in &msg.meta.envelope.rcpts {
            if !before.contains(&r.address) && !pending.iter().any(|p| p.address == r.address) {
                pending.push(r.clone());
            }
        }
        let mut report = ReleaseReport {
            id: id.into(),
            delivered_before: before.into_iter().collect(),
            ..Default::default()
        };
        let first_attempt = msg.journal.next_attempt();
        let content = match &opts.mark {
            Some(key) => {
                let stamp = key.stamp_content(
                    crate::mark::Reason::Released,
                    &msg.content,
                    &msg.meta.envelope.mail_from,
                    crate::now_ms() / 1000,
                );
                [stamp.as_bytes(), &msg.content[..]].concat()
            }
            None => msg.content.clone(),
        };
        let attempts = opts.attempts.max(1);
        let mut refused = Vec::new();
        for n in 1..=attempts {
            // Empty when an earlier release delivered to all but was cut off before moving the
            // message to released/: nothing to send, just finish.
            if pending.is_empty() {
                break;
            }
            let outcomes = send_once(
                upstream,
                &msg.meta.envelope.mail_from,
                &msg.meta.envelope.mail_params,
                &pending,
                &content,
                &journal_path,
                first_attempt + u64::from(n) - 1,
                &opts.who,
                &mut report.last_reply,
            )
            .await;
            let mut retry = Vec::new();
            let mut deferred = Vec::new();
            for (rcpt, outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Accepted => report.delivered_now.push(rcpt.address),
                    Outcome::Temporary(reply) => {
                        deferred.push((rcpt.address.clone(), reply));
                        retry.push(rcpt);
                    }
                    Outcome::Permanent(reply) => refused.push((rcpt.address, reply)),
                    Outcome::InDoubt(_) => report.in_doubt.push(rcpt.address),
                }
            }
            pending = retry;
            report.failed = refused.iter().cloned().chain(deferred).collect();
            if pending.is_empty() || !report.in_doubt.is_empty() {
                break;
            }
            if n < attempts {
                tracing::info!(id, attempt = n, "upstream deferred the release; retrying");
                tokio::time::sleep(opts.retry_delay).await;
            }
        }
        let recipients = report.delivered_now.join(", ");
        if report.is_complete() {
            if msg.state == State::Held {
                self.mark_released(&lock, id)
                    .map_err(QuarantineError::from)?;
            }
            let detail = format!(
                "to {recipients}: {}",
                report.last_reply.as_deref().unwrap_or("")
            );
            audit::record(self.dir(), &opts.who, "release", &msg.meta, &detail);
            tracing::info!(id, who = %opts.who, %recipients, "held message released");
        } else {
            let detail = report
                .failed
                .iter()
                .map(|(r, reply)| format!("{r}: {reply}"))
                .chain(report.in_doubt.iter().map(|r| format!("{r}: in doubt")))
                .collect::<Vec<_>>()
                .join("; ");
            audit::record(self.dir(), &opts.who, "release-failed", &msg.meta, &detail);
            tracing::warn!(id, who = %opts.who, %detail, "release incomplete; the message stays held");
        }
        Ok(report)
    }
}

/// One SMTP transaction for `rcpts`; one outcome per recipient, in order.
#[allow(clippy::too_many_arguments)]
async fn send_once(
    upstream: &Target,
    mail_from: &str,
    mail_params: &str,
    rcpts: &[Recipient],
    content: &[u8],
    journal_path: &std::path::Path,
    attempt: u64,
    who: &str,
    last_reply: &mut Option<String>,
) -> Vec<Outcome> {
    let all = |o: Outcome| vec![o; rcpts.len()];
    let mut client = match SmtpClient::connect(upstream).await {
        Ok(c) => c,
        Err(e) => return all(Outcome::Temporary(e.to_string())),
    };
    let mail = mail_command(mail_from, mail_params);
    match client.command(mail.as_bytes()).await {
        Ok(r) if r.is_success() => {}
        Ok(r) => {
            client.quit().await;
            return all(classify(&r));
        }
        Err(e) => return all(Outcome::Temporary(format!("MAIL FROM: {e}"))),
    }
    let mut outcomes = Vec::with_capacity(rcpts.len());
    for r in rcpts {
        let cmd = rcpt_command(&r.address, &r.params);
        outcomes.push(match client.command(cmd.as_bytes()).await {
            Ok(reply) if reply.is_success() => Outcome::Accepted,
            Ok(reply) => classify(&reply),
            Err(e) => Outcome::Temporary(format!("RCPT TO: {e}")),
        });
    }
    let accepted: Vec<String> = rcpts
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| **o == Outcome::Accepted)
        .map(|(r, _)| r.address.clone())
        .collect();
    if accepted.is_empty() {
        client.quit().await;
        return outcomes;
    }
    let data_outcome = match client.command(b"DATA\r\n").await {
        Ok(r) if r.code == 354 => None,
        Ok(r) => Some(classify(&r)),
        Err(e) => Some(Outcome::Temporary(format!("DATA: {e}"))),
    };
    let final_outcome = match data_outcome {
        Some(o) => o,
        None => {
            let sending = Entry {
                at_ms: crate::now_ms(),
                by: who.into(),
                attempt,
                event: Event::Sending {
                    rcpts: accepted.clone(),
                },
            };
            if let Err(e) = Journal::append(journal_path, &sending) {
                // Without the journal line we must not send the dot: dropping the connection
                // (no QUIT inside DATA) abandons the transaction.
                drop(client);
                return overlay(outcomes, Outcome::Temporary(format!("journal: {e}")));
            }
            match client.content(content).await {
                Ok(r) if r.is_success() => {
                    let reply = r.summary();
                    *last_reply = Some(reply.clone());
                    let entry = Entry {
                        at_ms: crate::now_ms(),
                        by: who.into(),
                        attempt,
                        event: Event::Accepted {
                            rcpts: accepted,
                            reply,
                        },
                    };
                    if let Err(e) = Journal::append(journal_path, &entry) {
                        client.quit().await;
                        return overlay(outcomes, Outcome::InDoubt(format!("journal: {e}")));
                    }
                    Outcome::Accepted
                }
                Ok(r) => {
                    let reply = r.summary();
                    *last_reply = Some(reply.clone());
                    let entry = Entry {
                        at_ms: crate::now_ms(),
                        by: who.into(),
                        attempt,
                        event: Event::Failed { reply },
                    };
                    let outcome = classify(&r);
                    if let Err(e) = Journal::append(journal_path, &entry) {
                        tracing::warn!(error = %e, "cannot record a refused release attempt");
                    }
                    outcome
                }
                Err(e) => Outcome::InDoubt(e.to_string()),
            }
        }
    };
    client.quit().await;
    overlay(outcomes, final_outcome)
}

/// Recipients accepted at RCPT take the outcome of the end of data.
fn overlay(outcomes: Vec<Outcome>, end_of_data: Outcome) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Accepted => end_of_data.clone(),
            other => other,
        })
        .collect()
}

fn classify(r: &Reply) -> Outcome {
    match r.code / 100 {
        2 => Outcome::Accepted,
        5 => Outcome::Permanent(r.summary()),
        _ => Outcome::Temporary(r.summary()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_gives_rcpt_accepted_the_end_of_data_outcome() {
        let t = Outcome::Temporary("451".into());
        let p = Outcome::Permanent("550".into());
        assert_eq!(
            overlay(vec![Outcome::Accepted, p.clone()], t.clone()),
            vec![t, p]
        );
    }

    #[test]
    fn replies_are_classified_by_their_class() {
        let r = Reply {
            code: 451,
            raw: b"451 4.3.0 try later\r\n".to_vec(),
        };
        assert_eq!(
            classify(&r),
            Outcome::Temporary("451 4.3.0 try later".into())
        );
        let r = Reply {
            code: 550,
            raw: b"550-first\r\n550 no\r\n".to_vec(),
        };
        assert_eq!(classify(&r), Outcome::Permanent("550 no".into()));
    }
}
