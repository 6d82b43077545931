//! One storm, one breaker, one id, through the real binary: replies from three kinds of mail
//! client (Outlook's Thread-Index, Thunderbird's References, a phone's subject only) open one
//! breaker and raise one alert; `breaker list`, the holds, `quarantine --thread` and
//! `breaker reset` all name it; a reset by any of its keys stops every hold; keys that are not
//! keys, or that no storm has, are refused with exit 2.

use super::{LIST, admin_alerts, held, reply_all, settle, thread_index};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{free_port, relay, token, wait_for};
use std::process::Output;

fn policy(admin: u16) -> String {
    format!(
        "[policy]\ntrip_replies = 5\nfast_audience = 0\n\
         [[lists]]\naddress = \"{LIST}\"\nmembers = 91053\n\
         [notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\ninterval = \"30m\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    )
}

/// Reply `i` to the thread, in the style of client `i % 3`; the answer to its final dot.
fn reply(port: u16, thread: &str, i: usize) -> String {
    let threading = match i % 3 {
        0 => format!(
            "Thread-Topic: Welcome {thread}\r\nThread-Index: {}\r\n",
            thread_index(0x7c, 1 + i)
        ),
        1 => format!("In-Reply-To: <{thread}@corp.test>\r\nReferences: <{thread}@corp.test>\r\n"),
        _ => String::new(),
    };
    let prefix = ["RE", "Re", "AW"][i % 3];
    let headers = format!("Subject: {prefix}: Welcome {thread}\r\n{threading}");
    reply_all(port, LIST, thread, i, &headers, "")
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn one_storm_has_one_id_that_every_tool_names_and_one_reset_stops() {
    let admin = free_port();
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(admin));
    let thread = token("ids").replace('-', "");
    let answers: Vec<String> = (0..9).map(|i| reply(proxy.port, &thread, i)).collect();
    assert!(answers[..5].iter().all(|a| !held(a)), "{answers:?}");
    assert!(answers[5..].iter().all(|a| held(a)), "{answers:?}");

    // One breaker, listed with the keys the three clients brought.
    let listed = proxy.admin(&["breaker", "list"]);
    assert!(listed.status.success(), "{}", out(&listed));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let ours: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|b| b.to_string().contains(&thread.to_lowercase()))
        .collect();
    assert_eq!(ours.len(), 1, "{listed:?}");
    let id = ours[0]["id"].as_str().unwrap().to_string();
    let mut keys: Vec<String> = ours[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    keys.push(id.clone());
    let subject_key = format!("subj:welcome {}", thread.to_lowercase());
    let root_key = format!("mid:{thread}@corp.test");
    assert!(keys.contains(&subject_key), "{keys:?}");
    assert!(keys.contains(&root_key), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("tidx:")), "{keys:?}");
    assert_eq!(ours[0]["senders"], 9);

    // Every hold names the storm; the quarantine finds them by its id, by a typed subject
    // (normalised as messages are) and by a Message-ID in angle brackets.
    let held_here: Vec<serde_json::Value> = proxy
        .quarantine_list()
        .into_iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .collect();
    assert_eq!(held_here.len(), 4);
    assert!(held_here.iter().all(|e| e["thread"] == id.as_str()));
    for filter in [
        id.clone(),
        format!("subj:AW: RE: Welcome {thread}"),
        format!("mid:<{thread}@corp.test>"),
    ] {
        let o = proxy.admin(&["quarantine", "list", "--json", "--thread", &filter]);
        assert!(o.status.success(), "{}", out(&o));
        let found: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let expected = if filter.starts_with("mid:") { 1 } else { 4 };
        assert_eq!(found.len(), expected, "--thread {filter}: {found:?}");
    }

    // One alert, naming the storm.
    assert!(wait_for(|| !admin_alerts(&id).is_empty()).is_some());
    settle();
    let sent = admin_alerts(&id);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].contains(&format!("release --thread {}", shell(&id))),
        "{}",
        sent[0]
    );

    // A reset by a key that is not the id stops every hold: each client's reply passes, and
    // no second alert follows.
    let other_key = keys.iter().find(|k| **k != id).unwrap().clone();
    let reset = proxy.admin(&["breaker", "reset", &other_key]);
    assert!(reset.status.success(), "{}", out(&reset));
    assert!(out(&reset).contains(&id), "{}", out(&reset));
    for i in 9..12 {
        let answer = reply(proxy.port, &thread, i);
        assert!(!held(&answer), "reply {i} after the reset: {answer}");
    }
    settle();
    assert_eq!(admin_alerts(&id).len(), 1, "no second alert after a reset");
}

fn shell(s: &str) -> String {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:@+=,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{s}'")
    }
}

#[test]
fn keys_that_are_not_keys_or_that_no_storm_has_are_refused_and_a_new_key_can_be_tripped() {
    let admin = free_port();
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(admin));
    for (args, says) in [
        (["breaker", "trip", "ref:<x@corp.test>"], "subj:SUBJECT"),
        (
            ["breaker", "trip", "garbage without prefix"],
            "mid:MESSAGE-ID",
        ),
        (
            ["breaker", "trip", "mid:no-at-sign"],
            "mid:local-part@domain",
        ),
        (
            ["breaker", "reset", "subj:never seen here"],
            "no storm has the key",
        ),
        (["breaker", "reset", "ref:<x@corp.test>"], "tidx:GUID"),
    ] {
        let o = proxy.admin(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out(&o));
        assert!(out(&o).contains(says), "{args:?}: {}", out(&o));
    }
    // An administrator stops a thread before it storms: the README's form, brackets and all.
    let thread = token("early").replace('-', "");
    let o = proxy.admin(&["breaker", "trip", &format!("mid:<{thread}@corp.test>")]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("mid:{thread}@corp.test")),
        "{}",
        out(&o)
    );
    let answer = reply(proxy.port, &thread, 1);
    assert!(held(&answer), "{answer}");
    let entry = proxy
        .quarantine_list()
        .into_iter()
        .find(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .unwrap();
    assert_eq!(entry["breaker"], "manual");
    assert_eq!(entry["thread"], format!("mid:{thread}@corp.test"));
}
