//! Release against real peers: the suite's Postfix relaying to its recording sink, and a sink
//! of the test's own when it needs it to defer or hang up.

use super::{content, envelope, hold_one, quarantine_cmd, stderr, stdout, write_config};
use crate::support::sink::Faults;
use crate::support::{Sink, free_port, relay, token, wait_for};
use std::collections::BTreeSet;
use std::time::Duration;
use stormbreaker::quarantine::journal::{Entry, Event, Journal};
use stormbreaker::quarantine::{ListFilter, Quarantine, ReleaseError, ReleaseOptions, State};
use stormbreaker::smtp::client::{Target, Timeouts};

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn upstream(address: String) -> Target {
    Target {
        address,
        hostname: "sb.corp.test".into(),
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            reply: Duration::from_secs(30),
        },
        tls: None,
    }
}

fn opts(force: bool) -> ReleaseOptions {
    ReleaseOptions {
        force,
        attempts: 2,
        retry_delay: Duration::from_millis(10),
        who: "tester".into(),
        mark: None,
    }
}

fn audit_actions(q: &Quarantine) -> Vec<String> {
    std::fs::read_to_string(q.dir().join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn release_through_postfix_delivers_the_held_bytes_to_every_original_recipient() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("policy.toml");
    write_config(&config, &tmp.path().join("q"), &relay().postfix.address());
    let q = Quarantine::open(&tmp.path().join("q")).unwrap();
    let tag = token("round trip");
    let id = hold_one(&q, "tidx:quarterly", &tag);

    let out = quarantine_cmd(&config, &["release", &id]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("released to 3"), "{}", stdout(&out));

    // Postfix may split recipients over transactions; together they must be exactly the three.
    let delivered = wait_for(|| {
        let d = relay().sink.mentioning(&tag);
        let n: usize = d.iter().map(|m| m.rcpts.len()).sum();
        (n >= 3).then_some(d)
    })
    .expect("all three recipients at the sink");
    let mut rcpts = BTreeSet::new();
    for m in &delivered {
        assert!(
            m.mail_from.starts_with("<bob@corp.test>"),
            "{}",
            m.mail_from
        );
        let head = String::from_utf8_lossy(&m.content[..200]).to_string();
        assert!(
            head.starts_with("Received: from") && head.contains("by postfix.test (Postfix)"),
            "went through Postfix: {head}"
        );
        assert_eq!(
            strip_trace(&m.content),
            &content(&tag)[..],
            "delivered bytes differ from held bytes beyond trace headers:\n{}",
            m.text()
        );
        // Marked as released, so a stormbreaker milter on that MTA does not hold it again.
        assert!(
            m.text().contains("\r\nX-Stormbreaker-Mark: v=1; t=")
                && m.text().contains("; r=released; m="),
            "{}",
            m.text()
        );
        rcpts.extend(m.addresses());
        for r in &m.rcpts {
            if r.starts_with("<all@corp.test>") {
                assert!(r.contains("NOTIFY=FAILURE"), "DSN parameter kept: {r}");
            }
        }
    }
    assert_eq!(
        rcpts,
        set(&["all@corp.test", "carol@corp.test", "hidden@corp.test"]),
        "Bcc recipient included"
    );

    assert!(q.list(&ListFilter::default()).unwrap().is_empty());
    assert_eq!(q.get(&id).unwrap().state, State::Released);
    let again = quarantine_cmd(&config, &["release", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(audit_actions(&q), ["hold", "release"]);
}

#[test]
fn upstream_down_keeps_the_message_held_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("policy.toml");
    let closed = format!("127.0.0.1:{}", free_port());
    write_config(&config, &tmp.path().join("q"), &closed);
    let q = Quarantine::open(&tmp.path().join("q")).unwrap();
    let id = hold_one(&q, "tidx:quarterly", "down");

    let out = quarantine_cmd(&config, &["release", &id, "--retry-delay", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("connect to {closed}")),
        "{}",
        stderr(&out)
    );
    let held = q.list(&ListFilter::default()).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(q.get(&id).unwrap().content, content("down"));
    assert_eq!(audit_actions(&q), ["hold", "release-failed"]);
}

#[tokio::test(flavor = "current_thread")]
async fn retry_after_a_partial_release_sends_only_to_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let q = Quarantine::open(&tmp.path().join("q")).unwrap();
    let id = hold_one(&q, "tidx:quarterly", "partial");
    sink.set_faults(Faults {
        defer_rcpts: vec!["hidden@corp.test".into()],
        ..Faults::default()
    });

    let first = q
        .release(&id, &upstream(sink.address()), &opts(false))
        .await
        .unwrap();
    assert!(!first.is_complete());
    assert_eq!(first.delivered_now, ["all@corp.test", "carol@corp.test"]);
    assert_eq!(first.failed.len(), 1);
    assert!(
        first.failed[0].1.starts_with("451 4.2.0"),
        "{:?}",
        first.failed
    );
    assert_eq!(q.get(&id).unwrap().state, State::Held);
    // Two attempts: the first delivered to two, the second tried the deferred one alone.
    assert_eq!(sink.delivered().len(), 1);

    sink.set_faults(Faults::default());
    let second = q
        .release(&id, &upstream(sink.address()), &opts(false))
        .await
        .unwrap();
    assert!(second.is_complete(), "{second:?}");
    assert_eq!(second.delivered_now, ["hidden@corp.test"]);
    assert_eq!(
        second.delivered_before,
        ["all@corp.test", "carol@corp.test"]
    );
    let d = sink.delivered();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].addresses(), ["all@corp.test", "carol@corp.test"]);
    assert_eq!(d[1].addresses(), ["hidden@corp.test"]);
    assert!(d.iter().all(|m| m.content == content("partial")));
    assert_eq!(q.get(&id).unwrap().state, State::Released);
}

#[tokio::test(flavor = "current_thread")]
async fn a_release_cut_off_after_the_dot_is_never_repeated_silently() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let q = Quarantine::open(&tmp.path().join("q")).unwrap();
    let id = hold_one(&q, "tidx:quarterly", "doubt");
    sink.set_faults(Faults {
        drop_after_dot: true,
        ..Faults::default()
    });

    let first = q
        .release(&id, &upstream(sink.address()), &opts(false))
        .await
        .unwrap();
    assert!(!first.is_complete());
    assert_eq!(first.in_doubt.len(), 3, "{first:?}");
    assert_eq!(
        sink.delivered().len(),
        1,
        "no second attempt after a lost reply"
    );
    assert_eq!(q.get(&id).unwrap().state, State::Held);

    sink.set_faults(Faults::default());
    let refused = q
        .release(&id, &upstream(sink.address()), &opts(false))
        .await;
    match refused {
        Err(ReleaseError::InDoubt { doubt, .. }) => assert_eq!(doubt[0].rcpts.len(), 3),
        other => panic!("expected InDoubt, got {other:?}"),
    }
    assert_eq!(sink.delivered().len(), 1, "nothing sent without --force");

    let forced = q
        .release(&id, &upstream(sink.address()), &opts(true))
        .await
        .unwrap();
    assert!(forced.is_complete(), "{forced:?}");
    assert_eq!(sink.delivered().len(), 2);
    assert_eq!(q.get(&id).unwrap().state, State::Released);
    assert!(matches!(
        q.release(&id, &upstream(sink.address()), &opts(false))
            .await,
        Err(ReleaseError::AlreadyReleased(_))
    ));
}

#[test]
fn release_by_thread_releases_every_held_message_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let config = tmp.path().join("policy.toml");
    write_config(&config, &tmp.path().join("q"), &sink.address());
    let q = Quarantine::open(&tmp.path().join("q")).unwrap();
    hold_one(&q, "tidx:storm", "one");
    hold_one(&q, "tidx:storm", "two");
    let other = hold_one(&q, "tidx:calm", "three");

    let out = quarantine_cmd(&config, &["release", "--thread", "tidx:storm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let d = sink.delivered();
    assert_eq!(d.len(), 2);
    let held: Vec<String> = q
        .list(&ListFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(held, [other]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_release_cut_off_after_the_250_finishes_without_sending_again() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let q = Quarantine::open(&tmp.path().join("q")).unwrap();
    let id = hold_one(&q, "tidx:quarterly", "finish");
    // What a release killed right after recording the upstream's 250 leaves behind.
    let journal = tmp.path().join("q/held").join(&id).join("journal");
    let all: Vec<String> = envelope().rcpts.into_iter().map(|r| r.address).collect();
    let entry = |event| Entry {
        at_ms: 1,
        by: "alice".into(),
        attempt: 1,
        event,
    };
    Journal::append(&journal, &entry(Event::Sending { rcpts: all.clone() })).unwrap();
    let accepted = Event::Accepted {
        rcpts: all.clone(),
        reply: "250 2.0.0 queued".into(),
    };
    Journal::append(&journal, &entry(accepted)).unwrap();
    assert_eq!(
        q.list(&ListFilter::default()).unwrap().len(),
        1,
        "still listed as held"
    );

    let r = q
        .release(&id, &upstream(sink.address()), &opts(false))
        .await
        .unwrap();
    assert!(r.is_complete());
    assert!(r.delivered_now.is_empty());
    assert_eq!(r.delivered_before.len(), 3);
    assert!(sink.delivered().is_empty(), "nothing sent twice");
    assert_eq!(q.get(&id).unwrap().state, State::Released);
}

/// The message without the trace headers an MTA put on top (Received and its continuation
/// lines, Return-Path, X-Original-To, Delivered-To).
fn strip_trace(bytes: &[u8]) -> &[u8] {
    let mut rest = bytes;
    let mut in_trace = false;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").map(|i| i + 2);
        let Some(end) = line_end else { return rest };
        let line = &rest[..end];
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        let lower = line.to_ascii_lowercase();
        let trace = [
            &b"received:"[..],
            b"return-path:",
            b"x-original-to:",
            b"delivered-to:",
            b"x-stormbreaker-mark:",
        ]
        .iter()
        .any(|h| lower.starts_with(h));
        if trace || (continuation && in_trace) {
            in_trace = true;
            rest = &rest[end..];
        } else {
            return rest;
        }
    }
}
