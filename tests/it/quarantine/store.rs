//! The quarantine store on a real folder: durable commit, torn files, crashed writers.

use std::path::{Path, PathBuf};
use stormbreaker::config::HoldAction;
use stormbreaker::envelope::{Envelope, Recipient};
use stormbreaker::quarantine::{ListFilter, Quarantine, QuarantineError, State};
use stormbreaker::verdict::Hold;

const HEADERS: &[u8] = b"From: Bob <bob@corp.test>\r\nTo: all@corp.test\r\n\
Message-ID: <reply-7@corp.test>\r\nSubject: RE: Quarterly results\r\n\r\n";

fn envelope() -> Envelope {
    Envelope {
        client_addr: Some("192.0.2.7:40000".parse().unwrap()),
        helo: "client.corp.test".into(),
        mail_from: "bob@corp.test".into(),
        mail_params: "SIZE=300 BODY=8BITMIME".into(),
        rcpts: vec![
            Recipient {
                address: "all@corp.test".into(),
                params: "NOTIFY=FAILURE ORCPT=rfc822;all@corp.test".into(),
            },
            Recipient {
                address: "hidden@corp.test".into(),
                params: String::new(),
            },
        ],
        auth: None,
    }
}

fn hold() -> Hold {
    Hold {
        thread: "tidx:quarterly".into(),
        list: Some("all@corp.test".into()),
        audience: 91053,
        breaker: "replies",
        replies: 12,
        senders: 9,
        reason: "reply-all storm on thread tidx:quarterly".into(),
        action: HoldAction::Quarantine,
        origin: None,
    }
}

fn content() -> Vec<u8> {
    let mut c = HEADERS.to_vec();
    c.extend_from_slice(b"Please remove me from this list.\r\n.\r\n..\r\n.x\r\n");
    c
}

fn commit_one(q: &Quarantine) -> String {
    let mut w = q.begin().unwrap();
    let c = content();
    let (a, b) = c.split_at(17);
    w.write_all(a).unwrap();
    w.write_all(b).unwrap();
    w.commit(&envelope(), &hold(), HEADERS).unwrap().0
}

fn held_file(dir: &Path, id: &str) -> PathBuf {
    dir.join("held").join(id).join("message")
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn committed_message_is_listed_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let id = commit_one(&q);

    let list = q.list(&ListFilter::default()).unwrap();
    assert_eq!(list.len(), 1);
    let s = &list[0];
    assert_eq!(s.id, id);
    assert_eq!(s.mail_from, "bob@corp.test");
    assert_eq!(s.rcpt_to, vec!["all@corp.test", "hidden@corp.test"]);
    assert_eq!(s.message_id.as_deref(), Some("reply-7@corp.test"));
    assert_eq!(s.subject.as_deref(), Some("RE: Quarterly results"));
    assert_eq!(s.thread, "tidx:quarterly");
    assert_eq!(s.size, content().len() as u64);

    let m = q.get(&id).unwrap();
    assert_eq!(m.content, content());
    assert_eq!(m.meta.envelope, envelope());
    assert_eq!(m.state, State::Held);
    assert_eq!(m.meta.breaker, "replies");

    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(audit.lines().count(), 1);
    assert!(
        audit.contains("\"action\":\"hold\"") && audit.contains(&id),
        "{audit}"
    );
    assert_eq!(entries(&dir.path().join("tmp")), 0);
}

#[test]
fn filters_select_by_thread_list_sender_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    commit_one(&q);
    let all = |f: ListFilter| q.list(&f).unwrap().len();
    assert_eq!(
        all(ListFilter {
            thread: Some("tidx:quarterly".into()),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        all(ListFilter {
            thread: Some("tidx:other".into()),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        all(ListFilter {
            list: Some("ALL@corp.test".into()),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        all(ListFilter {
            list: Some("x@corp.test".into()),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        all(ListFilter {
            sender: Some("Bob@Corp.test".into()),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        all(ListFilter {
            sender: Some("eve@corp.test".into()),
            ..Default::default()
        }),
        0
    );
    let now = stormbreaker::now_ms();
    assert_eq!(
        all(ListFilter {
            since_ms: Some(now - 60_000),
            ..Default::default()
        }),
        1
    );
    assert_eq!(
        all(ListFilter {
            since_ms: Some(now + 60_000),
            ..Default::default()
        }),
        0
    );
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let mut w = q.begin().unwrap();
    w.write_all(&content()).unwrap();
    drop(w);
    assert!(q.list(&ListFilter::default()).unwrap().is_empty());
    assert_eq!(entries(&dir.path().join("tmp")), 0);
    assert_eq!(entries(&dir.path().join("held")), 0);
}

#[test]
fn unfinished_writer_is_never_held_and_its_lock_protects_it() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let mut w = q.begin().unwrap();
    w.write_all(&content()).unwrap();
    // A crash: no commit, no drop. Its lock goes away with its file handle, as with a dead
    // process; the temporary folder stays behind.
    let id = w.id().to_string();
    std::mem::forget(w);
    assert!(q.list(&ListFilter::default()).unwrap().is_empty());
    assert!(matches!(q.get(&id), Err(QuarantineError::UnknownId(_))));
    assert_eq!(entries(&dir.path().join("tmp")), 1);
    // The forgotten writer still holds its flock here (same process, file not closed), so a
    // reopen must leave it alone, as it would a live writer in the proxy.
    Quarantine::open(dir.path()).unwrap();
    assert_eq!(entries(&dir.path().join("tmp")), 1);
}

#[test]
fn unlocked_leftover_is_cleaned_on_open_but_a_live_writer_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    // What a writer killed after its fsync but before its rename leaves: a complete file in tmp/.
    let id = commit_one(&q);
    let tmp = dir.path().join("tmp").join(&id);
    std::fs::rename(dir.path().join("held").join(&id), &tmp).unwrap();
    let mut live = q.begin().unwrap();
    live.write_all(b"Subject: in flight\r\n\r\nbody\r\n")
        .unwrap();

    let q2 = Quarantine::open(dir.path()).unwrap();
    assert!(!tmp.exists(), "abandoned write removed");
    assert!(q2.list(&ListFilter::default()).unwrap().is_empty());
    let id2 = live
        .commit(&envelope(), &hold(), b"Subject: in flight\r\n\r\n")
        .unwrap();
    assert_eq!(
        q2.get(&id2.0).unwrap().meta.subject.as_deref(),
        Some("in flight")
    );
}

#[test]
fn truncated_file_at_any_offset_is_never_held() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let id = commit_one(&q);
    let path = held_file(dir.path(), &id);
    let whole = std::fs::read(&path).unwrap();
    let content_len = content().len();
    // Every offset: inside the content, at its end, inside the metadata, inside the trailer.
    for cut in 0..whole.len() {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let scan = q.scan().unwrap();
        assert!(
            scan.held.is_empty(),
            "cut at {cut} (content is {content_len})"
        );
        assert_eq!(scan.torn.len(), 1, "cut at {cut}");
        assert!(q.list(&ListFilter::default()).unwrap().is_empty());
        assert!(
            matches!(q.get(&id), Err(QuarantineError::Torn(..))),
            "cut at {cut}"
        );
    }
    std::fs::write(&path, &whole).unwrap();
    assert_eq!(q.list(&ListFilter::default()).unwrap().len(), 1);
}

#[test]
fn damaged_bytes_are_caught_by_the_checksums() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let id = commit_one(&q);
    let path = held_file(dir.path(), &id);
    let whole = std::fs::read(&path).unwrap();
    for at in [
        0,
        content().len() / 2,
        content().len() + 5,
        whole.len() - 10,
    ] {
        let mut bad = whole.clone();
        bad[at] ^= 0x20;
        std::fs::write(&path, &bad).unwrap();
        assert!(
            matches!(q.get(&id), Err(QuarantineError::Torn(..))),
            "flip at {at}"
        );
    }
}

#[test]
fn delete_and_purge_remove_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let a = commit_one(&q);
    let b = commit_one(&q);
    assert!(matches!(
        q.delete("../etc", "alice"),
        Err(QuarantineError::BadId(_))
    ));
    assert!(matches!(
        q.delete("20200101000000-00000000", "alice"),
        Err(QuarantineError::UnknownId(_))
    ));
    q.delete(&a, "alice").unwrap();
    assert!(matches!(q.get(&a), Err(QuarantineError::UnknownId(_))));

    let now = stormbreaker::now_ms();
    let day = std::time::Duration::from_secs(86400);
    assert!(
        q.purge_older_than(day, now, false, "alice")
            .unwrap()
            .is_empty()
    );
    let would = q
        .purge_older_than(day, now + 2 * 86_400_000, true, "alice")
        .unwrap();
    assert_eq!(would.len(), 1);
    assert_eq!(would[0].id, b);
    assert_eq!(
        q.list(&ListFilter::default()).unwrap().len(),
        1,
        "dry run keeps it"
    );
    let expired = q.purge_expired(day, now + 2 * 86_400_000).unwrap();
    assert_eq!(expired.len(), 1);
    assert!(q.list(&ListFilter::default()).unwrap().is_empty());
    assert_eq!(entries(&dir.path().join("tmp")), 0);

    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(actions, ["hold", "hold", "delete", "expire"]);
    assert!(audit.contains("\"who\":\"alice\""));
}

#[tokio::test(flavor = "current_thread")]
async fn retention_task_expires_old_messages_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    commit_one(&q);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(stormbreaker::quarantine::expiry::run(
        q.clone(),
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(3600),
        stop_rx,
    ));
    while !q.list(&ListFilter::default()).unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .last()
            .unwrap()
            .contains("\"action\":\"expire\""),
        "{audit}"
    );
}

#[test]
fn held_mail_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(&dir.path().join("q")).unwrap();
    let id = commit_one(&q);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = dir.path().join("q");
    assert_eq!(mode(root.join("held")), 0o700);
    assert_eq!(mode(root.join("held").join(&id)), 0o700);
    assert_eq!(mode(held_file(&root, &id)), 0o600);
    assert_eq!(mode(root.join("audit.log")), 0o600);
}

#[test]
fn a_stray_file_in_held_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let q = Quarantine::open(dir.path()).unwrap();
    let id = commit_one(&q);
    std::fs::write(dir.path().join("held").join("stray.txt"), b"x").unwrap();
    let scan = q.scan().unwrap();
    assert_eq!(scan.held.len(), 1);
    assert_eq!(scan.held[0].id, id);
    assert_eq!(scan.torn.len(), 1);
}
