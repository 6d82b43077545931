//! `stormbreaker replay`, the real binary, over mailboxes written here: an Atos-shaped evening
//! (one original, 419 reply-alls to a list of 91,053) trips where the policy says and reports
//! the deliveries avoided; legitimate threads (ours, and notmuch's when present) trip nothing,
//! while a hair trigger on the same mail does.

use crate::support::stormbreaker::command;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// 2026-11-06T18:00:00Z: the evening the storm starts.
const T0: i64 = 1_793_988_000;
const LIST: &str = "all@corp.test";
const MEMBERS: u64 = 91_053;
/// Replies come every 30 s: 419 of them take the evening (3.5 hours).
const GAP: i64 = 30;

fn date(t: i64) -> String {
    mail_parser::DateTime::from_timestamp(t).to_rfc822()
}

/// The header block of message `i` of the storm (0 is the original), sent at `t`. The list is
/// in `To:`, or only in `X-Original-To:` (a Bcc to the list, as the delivering Postfix records
/// it).
fn storm_message(i: usize, t: i64, list_in_to: bool) -> String {
    let mut h = format!(
        "Return-Path: <user{i}@corp.test>\nDelivered-To: someone@corp.test\n\
         Received: from mx1.corp.test by mbox.corp.test with ESMTP; {d}\n\
         From: User {i} <user{i}@corp.test>\nDate: {d}\n",
        d = date(t)
    );
    if list_in_to {
        writeln!(h, "To: All Staff <{LIST}>").unwrap();
    } else {
        writeln!(h, "X-Original-To: {LIST}\nTo: Someone <someone@corp.test>").unwrap();
    }
    if i == 0 {
        h.push_str("Subject: Welcome to the new intranet\nMessage-ID: <root@corp.test>\n");
    } else {
        write!(
            h,
            "Subject: RE: Welcome to the new intranet\nMessage-ID: <r{i}@corp.test>\n\
             In-Reply-To: <root@corp.test>\nReferences: <root@corp.test>\n"
        )
        .unwrap();
    }
    h
}

/// One mbox message: the `From ` line (its date from `t`, or none), the message, a blank line;
/// body lines that look like a `From ` line are quoted (mboxrd).
fn mbox_entry(out: &mut String, message: &str, t: Option<i64>) {
    let when = t.map_or("Thu Jan  1 00:00:00 1970".to_string(), |t| {
        // asctime form, as the `From ` line has it: "Fri Nov  6 18:00:00 2026".
        let d = mail_parser::DateTime::from_timestamp(t);
        let rfc = d.to_rfc822(); // "Fri, 06 Nov 2026 18:00:00 +0000"
        let parts: Vec<&str> = rfc.split_whitespace().collect();
        format!(
            "{} {} {:>2} {} {}",
            parts[0].trim_end_matches(','),
            parts[2],
            parts[1].trim_start_matches('0'),
            parts[4],
            parts[3]
        )
    });
    writeln!(out, "From MAILER-DAEMON {when}").unwrap();
    for line in message.lines() {
        if line.trim_start_matches('>').starts_with("From ") {
            out.push('>');
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

fn atos_mbox(dir: &Path) -> PathBuf {
    let mut mbox = String::new();
    for i in 0..=419 {
        let t = T0 + i as i64 * GAP;
        let message = format!(
            "{}\nPlease remove me from this list.\nFrom now on I read nothing.\n",
            storm_message(i, t, true)
        );
        mbox_entry(&mut mbox, &message, Some(t));
    }
    let path = dir.join("atos.mbox");
    std::fs::write(&path, mbox).unwrap();
    path
}

fn policy(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("[milter]\nlisten = \"127.0.0.1:8891\"\n{text}\n"),
    )
    .unwrap();
    path
}

/// `stormbreaker replay ARGS --config CONFIG [--json]`: stdout, asserting exit 0.
fn replay(source: &[&str], config: &Path, json: bool) -> String {
    let mut cmd = command();
    cmd.arg("replay").args(source).arg("--config").arg(config);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn replay_json(source: &[&str], config: &Path) -> Value {
    let text = replay(source, config, true);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("--json output: {e}\n{text}"))
}

#[test]
fn an_atos_evening_trips_at_the_tenth_reply_and_reports_the_deliveries_avoided() {
    let dir = tempfile::tempdir().unwrap();
    let mbox = atos_mbox(dir.path());
    let mbox = mbox.to_str().unwrap();
    let config = policy(
        dir.path(),
        "tuning.toml",
        &format!(
            "[policy]\naction = \"log\"\ntrip_replies = 10\nfast_audience = 0\n\
             [[lists]]\naddress = \"{LIST}\"\nmembers = {MEMBERS}\n"
        ),
    );
    let report = replay_json(&["--mbox", mbox], &config);
    assert_eq!(report["messages"]["read"], 420);
    assert_eq!(report["messages"]["replayed"], 420);
    assert_eq!(report["action"], "log");
    // The 10th reply opens the breaker and is delivered; replies 11 to 419 are held.
    let storms = report["storms"].as_array().unwrap();
    assert_eq!(storms.len(), 1, "{storms:#?}");
    let storm = &storms[0];
    assert_eq!(storm["thread"], "mid:root@corp.test");
    assert_eq!(storm["breaker"], "replies");
    assert_eq!(storm["list"], LIST);
    assert_eq!(storm["audience"], MEMBERS);
    assert_eq!(storm["opened_by"], "r10@corp.test");
    assert_eq!(storm["opened_at"], "2026-11-06T18:05:00Z");
    assert_eq!(storm["replies_at_open"], 10);
    assert_eq!(storm["held"], 409);
    assert_eq!(storm["first_held_at"], "2026-11-06T18:05:30Z");
    assert_eq!(storm["last_held_at"], "2026-11-06T21:29:30Z");
    assert_eq!(report["delivered"], 11);
    assert_eq!(report["held"], 409);
    assert_eq!(report["deliveries_avoided"], 409 * MEMBERS);
    assert_eq!(storm["deliveries_avoided"], 409 * MEMBERS);
    // Every message has its decision, in time order.
    let decisions = report["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 420);
    assert_eq!(decisions[10]["decision"], "opened");
    assert_eq!(decisions[11]["decision"], "held");
    assert_eq!(decisions[11]["from"], "user11@corp.test");
    assert!(decisions[..10].iter().all(|d| d["decision"] == "deliver"));

    let text = replay(&["--mbox", mbox], &config, false);
    for expected in [
        "replayed 420 message(s)",
        "would be held        409",
        "deliveries avoided   37240677",
        "1 storm(s) would have tripped",
        "mid:root@corp.test",
        "opened        2026-11-06T18:05:00Z by the replies rule, at 10 replies",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

#[test]
fn with_the_default_policy_the_fast_trip_opens_at_the_fifth_sender() {
    let dir = tempfile::tempdir().unwrap();
    let mbox = atos_mbox(dir.path());
    let config = policy(
        dir.path(),
        "default.toml",
        &format!("[[lists]]\naddress = \"{LIST}\"\nmembers = {MEMBERS}\n"),
    );
    let report = replay_json(&["--mbox", mbox.to_str().unwrap()], &config);
    let storm = &report["storms"][0];
    assert_eq!(storm["breaker"], "fast", "{report:#}");
    assert_eq!(storm["opened_by"], "r5@corp.test");
    assert_eq!(report["held"], 414);
    assert_eq!(report["deliveries_avoided"], 414 * MEMBERS);
}

#[test]
fn a_maildir_of_copies_with_the_list_only_in_x_original_to_trips_once_per_message() {
    // Each message twice, as two mailboxes' copies merged into one Maildir would have it.
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    for i in 0..=30 {
        let t = T0 + i as i64 * GAP;
        let message = format!("{}\nMe too.\n", storm_message(i, t, false));
        for copy in 0..2 {
            std::fs::write(
                maildir.join(format!("cur/{t}.M{i}P{copy}.mbox:2,S")),
                &message,
            )
            .unwrap();
        }
    }
    let config = policy(
        dir.path(),
        "p.toml",
        &format!(
            "[policy]\ntrip_replies = 10\nfast_audience = 0\n\
             [[lists]]\naddress = \"{LIST}\"\nmembers = {MEMBERS}\n"
        ),
    );
    let report = replay_json(&["--maildir", maildir.to_str().unwrap()], &config);
    assert_eq!(report["messages"]["read"], 62);
    assert_eq!(report["messages"]["duplicates"], 31);
    assert_eq!(
        report["storms"][0]["opened_by"], "r10@corp.test",
        "{report:#}"
    );
    assert_eq!(report["held"], 20);
    // The list's members (from X-Original-To) and the one person in To:; Delivered-To names
    // that same person and is not counted again.
    assert_eq!(report["storms"][0]["audience"], MEMBERS + 1);
    // The envelope sender is the Return-Path.
    assert_eq!(report["decisions"][12]["from"], "user12@corp.test");
}

/// An mbox of a corpus's `.eml` files, each as delivered through `everyone@corpus.test` (an
/// `X-Original-To:` added on top); the `From ` lines carry no date, so only the messages'
/// own headers date them.
fn corpus_mbox(root: &Path, out: &Path) -> usize {
    let mut files = Vec::new();
    walk(root, &mut files);
    let mut mbox = String::new();
    for file in &files {
        let raw = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
        mbox_entry(
            &mut mbox,
            &format!("X-Original-To: everyone@corpus.test\n{text}"),
            None,
        );
    }
    std::fs::write(out, mbox).unwrap();
    files.len()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "eml") {
            out.push(p);
        }
    }
}

fn corpora() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![root.join("tests/it/data/threads")];
    let notmuch = match std::env::var("STORMBREAKER_CORPORA") {
        Ok(dir) => PathBuf::from(dir).join("notmuch"),
        Err(_) => root.join("../shared/corpora/notmuch"),
    };
    if notmuch.is_dir() {
        out.push(notmuch);
    } else {
        println!(
            "note: no notmuch corpora at {}; replayed our threads only",
            notmuch.display()
        );
    }
    out
}

#[test]
fn legitimate_threads_trip_nothing_and_a_hair_trigger_shows_the_replay_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let lists = "[[lists]]\naddress = \"everyone@corpus.test\"\nmembers = 5000\n";
    let quiet = policy(dir.path(), "default.toml", lists);
    let hair = policy(
        dir.path(),
        "hair.toml",
        &format!("[policy]\ntrip_replies = 2\n{lists}"),
    );
    for (i, corpus) in corpora().iter().enumerate() {
        let mbox = dir.path().join(format!("corpus{i}.mbox"));
        let files = corpus_mbox(corpus, &mbox);
        let mbox = mbox.to_str().unwrap();
        let report = replay_json(&["--mbox", mbox], &quiet);
        assert_eq!(report["messages"]["read"], files, "{}", corpus.display());
        assert!(
            report["messages"]["replayed"].as_u64().unwrap() >= 30,
            "{}: {report:#}",
            corpus.display()
        );
        assert_eq!(
            report["storms"],
            Value::Array(vec![]),
            "{}",
            corpus.display()
        );
        assert_eq!(report["held"], 0);
        assert_eq!(report["deliveries_avoided"], 0);
        let text = replay(&["--mbox", mbox], &quiet, false);
        assert!(text.contains("no storm would have tripped"), "{text}");

        let control = replay_json(&["--mbox", mbox], &hair);
        assert!(
            !control["storms"].as_array().unwrap().is_empty(),
            "{}: trip_replies = 2 trips nothing, so the replay is not counting: {control:#}",
            corpus.display()
        );
    }
}

#[test]
fn a_missing_mailbox_or_a_bad_policy_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = policy(dir.path(), "p.toml", "");
    let out = command()
        .args(["replay", "--mbox", "/nonexistent/mbox", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mbox"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = policy(dir.path(), "bad.toml", "[policy]\ntrip_replies = 0\n");
    let out = command()
        .args(["replay", "--maildir", "/tmp", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4") && err.contains("policy.trip_replies"),
        "{err}"
    );
}
