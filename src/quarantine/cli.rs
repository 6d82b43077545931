//! `stormbreaker quarantine ...`: list, show, release, delete, purge.
//!
//! Exit codes: 0 done; 1 a release did not reach every recipient (the upstream's reply is
//! printed) or was refused without --force, or `list --all-nodes` could not ask every node
//! (what the others hold is still listed); 2 unknown id or bad arguments.
//!
//! Several nodes (`[admin] peers`): `list --all-nodes` adds every node's held mail through its
//! admin API, and `release`/`delete` of `NODE:ID` run on that node through its API (see
//! `admin::peers`).

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
        /// Every node's held mail: this one's, and each of [admin] peers' through its admin
        /// API; each entry names its node (a NODE column, a "node" field). A node that cannot
        /// be asked is named on standard error, and the exit code is 1.
        #[arg(long)]
        all_nodes: bool,
    },
    /// Show one message: its metadata and release journal, then its exact bytes.
    Show { id: String },
    /// Send held messages on to the upstream with their original envelope. Another node's
    /// message, NODE:ID as `list --all-nodes` shows it, is released there through its admin
    /// API (one attempt).
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
    /// Remove held messages without delivering them (NODE:ID: on that node).
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
            all_nodes,
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
            if all_nodes {
                return list_all_nodes(config, &who, &filter, held, json, out);
            }
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
            let (ids, remote) = split_by_node(config, ids);
            let mut code = on_other_nodes(config, &who, "delete", &remote, false, out)?;
            if ids.is_empty() && thread.is_none() {
                return Ok(code);
            }
            let ids = match select(&q, ids, thread.as_deref()) {
                Ok(ids) => ids,
                Err(code) => return Ok(code),
            };
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
            let (ids, remote) = split_by_node(config, ids);
            let remote_code = on_other_nodes(config, &who, "release", &remote, force, out)?;
            if ids.is_empty() && thread.is_none() {
                return Ok(remote_code);
            }
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
            let mut code = remote_code;
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

/// One entry of `list --all-nodes --json`: a held message and the node that has it.
#[derive(serde::Serialize)]
struct NodeEntry {
    node: String,
    #[serde(flatten)]
    held: HeldSummary,
}

/// `list --all-nodes`: this node's `held` and every peer's, oldest first.
fn list_all_nodes(
    config: &Config,
    who: &str,
    filter: &ListFilter,
    held: Vec<HeldSummary>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let me = config.admin.node_name();
    let mut entries: Vec<NodeEntry> = held
        .into_iter()
        .map(|held| NodeEntry {
            node: me.clone(),
            held,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answers = runtime.block_on(crate::admin::peers::held_rows(config, who, "state=held"));
    let mut code = 0;
    for answer in answers {
        match answer.rows {
            Ok(rows) => entries.extend(
                rows.iter()
                    .map(|row| row.to_meta())
                    .filter(|meta| filter.matches(meta))
                    .map(|meta| NodeEntry {
                        node: answer.node.clone(),
                        held: meta.summary(),
                    }),
            ),
            Err(e) => {
                eprintln!(
                    "stormbreaker: warning: node {} ({}): its held mail is not listed: {e}",
                    answer.node, answer.url
                );
                code = 1;
            }
        }
    }
    entries.sort_by(|x, y| {
        (x.held.received_at_ms, &x.node, &x.held.id).cmp(&(
            y.held.received_at_ms,
            &y.node,
            &y.held.id,
        ))
    });
    if json {
        serde_json::to_writer_pretty(&mut *out, &entries)?;
        writeln!(out)?;
    } else {
        let width = entries
            .iter()
            .map(|e| e.node.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut table = Vec::new();
        let held: Vec<HeldSummary> = entries.iter().map(|e| e.held.clone()).collect();
        print_table(&mut table, &held)?;
        let text = String::from_utf8_lossy(&table);
        let mut lines = text.lines();
        if let Some(header) = lines.next() {
            writeln!(out, "{:<width$} {header}", "NODE")?;
        }
        for (entry, line) in entries.iter().zip(lines.by_ref()) {
            writeln!(out, "{:<width$} {line}", entry.node)?;
        }
        for line in lines {
            writeln!(out, "{line}")?;
        }
    }
    Ok(code)
}

/// This node's ids (bare, or prefixed with its own name) and, by node, other nodes' `NODE:ID`.
fn split_by_node(config: &Config, ids: Vec<String>) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let me = config.admin.node_name();
    let mut local = Vec::new();
    let mut remote: Vec<(String, Vec<String>)> = Vec::new();
    for reference in &ids {
        match crate::admin::peers::split_reference(reference, &me) {
            (None, id) => local.push(id.to_string()),
            (Some(node), id) => match remote.iter_mut().find(|(n, _)| n == node) {
                Some((_, list)) => list.push(id.to_string()),
                None => remote.push((node.to_string(), vec![id.to_string()])),
            },
        }
    }
    (local, remote)
}

/// `action` (release, delete) of other nodes' ids through their admin API; the exit code.
fn on_other_nodes(
    config: &Config,
    who: &str,
    action: &str,
    remote: &[(String, Vec<String>)],
    force: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    if remote.is_empty() {
        return Ok(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut code = 0;
    for (node, ids) in remote {
        if let Err(e) = crate::admin::peers::find(config, node) {
            eprintln!("stormbreaker: {e}");
            code = code.max(2);
            continue;
        }
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut extra = serde_json::Map::new();
        if force {
            extra.insert("force".into(), true.into());
        }
        let outcomes = runtime.block_on(crate::admin::peers::act(
            config, who, action, node, &ids, extra,
        ));
        for o in outcomes {
            if o.ok {
                writeln!(out, "{}: {}", o.id, o.detail)?;
            } else {
                eprintln!("stormbreaker: {}: {}", o.id, o.detail);
                code = code.max(if o.detail == "no such held message" {
                    2
                } else {
                    1
                });
            }
        }
    }
    Ok(code)
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
