//! `stormbreaker quarantine ...`: list, show, release, delete, purge.
//!
//! Exit codes: 0 done; 1 a release did not reach every recipient (the upstream's reply is
//! printed) or was refused without --force; 2 unknown id or bad arguments.

use crate::config::{Config, parse_duration};
use crate::quarantine::audit;
use crate::quarantine::record::rfc3339;
use crate::quarantine::{
    HeldSummary, ListFilter, Quarantine, QuarantineError, ReleaseError, ReleaseOptions,
};
use std::io::Write;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List held messages, oldest first.
    List {
        /// One JSON array of objects instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this storm (its id, or any key of the held messages: subj:SUBJECT is normalised
        /// as messages are, mid:<id> may keep its brackets).
        #[arg(long)]
        thread: Option<String>,
        /// Only messages to this distribution list.
        #[arg(long)]
        list: Option<String>,
        /// Only this envelope sender.
        #[arg(long)]
        sender: Option<String>,
        /// Only messages held within this long, e.g. "2h".
        #[arg(long, value_parser = duration_arg)]
        since: Option<Duration>,
    },
    /// Show one message: its metadata and release journal, then its exact bytes.
    Show { id: String },
    /// Send held messages on to the upstream with their original envelope.
    Release {
        #[arg(required_unless_present = "thread", conflicts_with = "thread")]
        ids: Vec<String>,
        /// Every held message of this storm (its id or any of its keys).
        #[arg(long)]
        thread: Option<String>,
        /// Send again to recipients already released or in doubt.
        #[arg(long)]
        force: bool,
        /// Attempts in all while the upstream answers 4xx or cannot be reached.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        attempts: u32,
        /// Wait between attempts.
        #[arg(long, default_value = "5s", value_parser = duration_arg)]
        retry_delay: Duration,
    },
    /// Remove held messages without delivering them.
    Delete {
        #[arg(required_unless_present = "thread", conflicts_with = "thread")]
        ids: Vec<String>,
        #[arg(long)]
        thread: Option<String>,
    },
    /// Remove messages older than a duration (held and released).
    Purge {
        #[arg(long = "older-than", value_parser = duration_arg)]
        older_than: Duration,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

pub fn run(config: &Config, command: Command) -> anyhow::Result<i32> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    run_with(config, command, &mut out)
}

/// `run`, writing results to `out` (errors still go to stderr).
pub fn run_with(config: &Config, command: Command, out: &mut dyn Write) -> anyhow::Result<i32> {
    let q = Quarantine::open(&config.quarantine.dir)
        .map_err(|e| anyhow::anyhow!("quarantine.dir {}: {e}", config.quarantine.dir.display()))?;
    let who = audit::who();
    match command {
        Command::List {
            json,
            thread,
            list,
            sender,
            since,
        } => {
            let filter = ListFilter {
                thread: thread.as_deref().map(crate::fingerprint::normalize_key),
                list,
                sender,
                since_ms: since.map(|d| crate::now_ms().saturating_sub(d.as_millis() as u64)),
            };
            let scan = q.scan()?;
            for (path, why) in &scan.torn {
                eprintln!(
                    "stormbreaker: warning: {}: damaged, not a held message: {why}",
                    path.display()
                );
            }
            let held: Vec<HeldSummary> = scan
                .held
                .iter()
                .filter(|m| filter.matches(m))
                .map(|m| m.summary())
                .collect();
            if json {
                serde_json::to_writer_pretty(&mut *out, &held)?;
                writeln!(out)?;
            } else {
                print_table(out, &held)?;
            }
            Ok(0)
        }
        Command::Show { id } => match q.get(&id) {
            Ok(m) => {
                let mut meta = serde_json::to_value(&m.meta)?;
                meta["received_at"] = rfc3339(m.meta.received_at_ms).into();
                meta["state"] = serde_json::to_value(m.state)?;
                meta["delivered"] = serde_json::to_value(m.journal.delivered())?;
                meta["in_doubt"] = m
                    .journal
                    .in_doubt()
                    .iter()
                    .flat_map(|d| d.rcpts.clone())
                    .collect::<Vec<_>>()
                    .into();
                serde_json::to_writer_pretty(&mut *out, &meta)?;
                writeln!(out)?;
                writeln!(out)?;
                out.write_all(&m.content)?;
                Ok(0)
            }
            Err(e) => Ok(report_error(&e)),
        },
        Command::Delete { ids, thread } => {
            let ids = match select(&q, ids, thread.as_deref()) {
                Ok(ids) => ids,
                Err(code) => return Ok(code),
            };
            let mut code = 0;
            for id in ids {
                match q.delete(&id, &who) {
                    Ok(_) => writeln!(out, "{id}: deleted")?,
                    Err(e) => code = code.max(report_error(&e)),
                }
            }
            Ok(code)
        }
        Command::Purge {
            older_than,
            dry_run,
        } => {
            let removed = q.purge_older_than(older_than, crate::now_ms(), dry_run, &who)?;
            let verb = if dry_run { "would purge" } else { "purged" };
            for s in &removed {
                writeln!(out, "{}: {verb} (held {})", s.id, s.received_at)?;
            }
            writeln!(out, "{verb} {} message(s)", removed.len())?;
            Ok(0)
        }
        Command::Release {
            ids,
            thread,
            force,
            attempts,
            retry_delay,
        } => {
            let ids = match select(&q, ids, thread.as_deref()) {
                Ok(ids) => ids,
                Err(code) => return Ok(code),
            };
            let upstream = crate::frontend::reinject_target(config)
                .map_err(|e| anyhow::anyhow!("reinject: {e}"))?;
            let mark = match crate::mark::MarkKey::load_or_create(&config.mark_key_path()) {
                Ok(key) => Some(key),
                Err(e) => {
                    eprintln!(
                        "stormbreaker: warning: releasing without the mark ({e}): a stormbreaker \
                         milter on the upstream MTA may hold the released mail again"
                    );
                    None
                }
            };
            let opts = ReleaseOptions {
                force,
                attempts,
                retry_delay,
                mark,
                ..ReleaseOptions::default()
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut code = 0;
            for id in ids {
                code = code.max(runtime.block_on(release_one(&q, &id, &upstream, &opts, out))?);
            }
            Ok(code)
        }
    }
}

async fn release_one(
    q: &Quarantine,
    id: &str,
    upstream: &crate::smtp::client::Target,
    opts: &ReleaseOptions,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match q.release(id, upstream, opts).await {
        Ok(r) if r.is_complete() => {
            let reply = r.last_reply.as_deref().unwrap_or("nothing left to send");
            writeln!(
                out,
                "{id}: released to {} ({reply})",
                r.delivered_now.len() + r.delivered_before.len()
            )?;
            Ok(0)
        }
        Ok(r) => {
            eprintln!("stormbreaker: {id}: not released to every recipient; it stays held");
            for rcpt in &r.delivered_now {
                eprintln!("  {rcpt}: accepted");
            }
            for (rcpt, reply) in &r.failed {
                eprintln!("  {rcpt}: {reply}");
            }
            for rcpt in &r.in_doubt {
                eprintln!(
                    "  {rcpt}: in doubt (no reply after the message was sent; see `show {id}`)"
                );
            }
            Ok(1)
        }
        Err(ReleaseError::Quarantine(e)) => Ok(report_error(&e)),
        Err(e) => {
            eprintln!("stormbreaker: {e}");
            Ok(1)
        }
    }
}

/// The ids named, or every held message of a thread.
fn select(q: &Quarantine, ids: Vec<String>, thread: Option<&str>) -> Result<Vec<String>, i32> {
    let Some(thread) = thread else {
        return Ok(ids);
    };
    let filter = ListFilter {
        thread: Some(crate::fingerprint::normalize_key(thread)),
        ..Default::default()
    };
    match q.list(&filter) {
        Ok(held) if held.is_empty() => {
            eprintln!("stormbreaker: no held message in thread {thread:?}");
            Err(2)
        }
        Ok(held) => Ok(held.into_iter().map(|s| s.id).collect()),
        Err(e) => {
            eprintln!("stormbreaker: {e}");
            Err(1)
        }
    }
}

fn report_error(e: &QuarantineError) -> i32 {
    eprintln!("stormbreaker: {e}");
    match e {
        QuarantineError::UnknownId(_) | QuarantineError::BadId(_) => 2,
        _ => 1,
    }
}

fn print_table(out: &mut dyn Write, held: &[HeldSummary]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<20} {:<28} {:>5} {:>8}  {:<24} SUBJECT",
        "ID", "RECEIVED", "FROM", "RCPTS", "SIZE", "THREAD"
    )?;
    for s in held {
        writeln!(
            out,
            "{:<24} {:<20} {:<28} {:>5} {:>8}  {:<24} {}",
            s.id,
            s.received_at,
            if s.mail_from.is_empty() {
                "<>"
            } else {
                &s.mail_from
            },
            s.rcpt_to.len(),
            s.size,
            s.thread,
            s.subject.as_deref().unwrap_or("")
        )?;
    }
    writeln!(out, "{} held", held.len())
}
