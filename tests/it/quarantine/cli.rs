//! `stormbreaker quarantine list/show/delete/purge` run as a real process.

use super::{content, hold_one, quarantine_cmd, stderr, stdout, write_config};
use crate::support::stormbreaker::assert_held_entry_fields;
use stormbreaker::quarantine::Quarantine;

struct Setup {
    _tmp: tempfile::TempDir,
    config: std::path::PathBuf,
    q: Quarantine,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("quarantine");
    let config = tmp.path().join("policy.toml");
    write_config(&config, &dir, "127.0.0.1:9");
    let q = Quarantine::open(&dir).unwrap();
    Setup {
        _tmp: tmp,
        config,
        q,
    }
}

#[test]
fn list_json_carries_the_documented_fields() {
    let s = setup();
    let a = hold_one(&s.q, "tidx:one", "a");
    let b = hold_one(&s.q, "tidx:two", "b");
    let out = quarantine_cmd(&s.config, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let ids: Vec<&str> = list.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
    let e = &list[0];
    assert_held_entry_fields(e);
    assert_eq!(e["rcpt_to"].as_array().unwrap().len(), 3);
    assert_eq!(e["mail_from"], "bob@corp.test");
    assert_eq!(e["message_id"], "reply-7@corp.test");
    assert_eq!(e["size"], content("a").len());

    let out = quarantine_cmd(&s.config, &["list", "--json", "--thread", "tidx:two"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], b.as_str());

    let out = quarantine_cmd(
        &s.config,
        &["list", "--sender", "eve@corp.test", "--since", "1h"],
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("0 held"), "{}", stdout(&out));
}

#[test]
fn show_prints_metadata_then_exact_bytes() {
    let s = setup();
    let id = hold_one(&s.q, "tidx:one", "a");
    let out = quarantine_cmd(&s.config, &["show", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.ends_with(&content("a")));
    let text = stdout(&out);
    assert!(text.contains("\"state\": \"held\""), "{text}");
    assert!(text.contains("hidden@corp.test"), "{text}");
    assert!(text.contains("NOTIFY=FAILURE"), "{text}");
}

#[test]
fn unknown_id_and_bad_arguments_exit_2() {
    let s = setup();
    for args in [
        &["show", "20200101000000-00000000"][..],
        &["show", "../../etc/passwd"],
        &["delete", "20200101000000-00000000"],
        &["release", "20200101000000-00000000"],
        &["release", "--thread", "tidx:none"],
        &["purge", "--older-than", "soon"],
        &["release"],
    ] {
        let out = quarantine_cmd(&s.config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?} says why");
    }
}

#[test]
fn delete_by_id_and_thread_then_purge_with_dry_run() {
    let s = setup();
    let a = hold_one(&s.q, "tidx:one", "a");
    let _b = hold_one(&s.q, "tidx:two", "b");
    let _c = hold_one(&s.q, "tidx:two", "c");
    let d = hold_one(&s.q, "tidx:three", "d");

    let out = quarantine_cmd(&s.config, &["delete", &a]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        quarantine_cmd(&s.config, &["show", &a]).status.code(),
        Some(2)
    );

    let out = quarantine_cmd(&s.config, &["delete", "--thread", "tidx:two"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).matches("deleted").count(), 2);

    let out = quarantine_cmd(&s.config, &["purge", "--older-than", "1d", "--dry-run"]);
    assert!(stdout(&out).contains("would purge 0"), "{}", stdout(&out));
    let out = quarantine_cmd(&s.config, &["purge", "--older-than", "0s", "--dry-run"]);
    assert!(stdout(&out).contains(&d), "{}", stdout(&out));
    assert!(
        quarantine_cmd(&s.config, &["show", &d]).status.success(),
        "dry run keeps it"
    );
    let out = quarantine_cmd(&s.config, &["purge", "--older-than", "0s"]);
    assert!(stdout(&out).contains("purged 1"), "{}", stdout(&out));
    assert_eq!(
        quarantine_cmd(&s.config, &["show", &d]).status.code(),
        Some(2)
    );

    let audit = std::fs::read_to_string(s.q.dir().join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "hold", "hold", "hold", "hold", "delete", "delete", "delete", "purge"
        ]
    );
    assert!(lines[4..].iter().all(|l| l["who"] == "alice"), "{audit}");
}

#[test]
fn list_warns_about_a_damaged_file_and_does_not_list_it() {
    let s = setup();
    let good = hold_one(&s.q, "tidx:one", "a");
    let bad = hold_one(&s.q, "tidx:one", "b");
    let path = s.q.dir().join("held").join(&bad).join("message");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let out = quarantine_cmd(&s.config, &["list", "--json"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], good.as_str());
    assert!(stderr(&out).contains(&bad), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    let show = quarantine_cmd(&s.config, &["show", &bad]);
    assert_eq!(show.status.code(), Some(1));
    assert!(stderr(&show).contains("damaged"), "{}", stderr(&show));
}
