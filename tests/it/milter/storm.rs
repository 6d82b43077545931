//! An Atos-shaped reply-all storm through a real Postfix with stormbreaker as its milter on a
//! unix socket: one announcement to a 5,000-person list, then reply-alls from different people.
//! The first `trip_replies` replies reach the sink behind Postfix; the rest are in stormbreaker's
//! own quarantine (Postfix discarded its copies), listed like proxy holds, with one alert to the
//! admins and the counts in /metrics, until `quarantine release --thread` sends them on.

use crate::support::clients::{Mail, queued_as, smtplib};
use crate::support::postfix::milter_main_cf;
use crate::support::stormbreaker::{Stormbreaker, assert_held_entry_fields};
use crate::support::{Postfix, Sink, free_port, http, wait_for};
use std::collections::HashSet;

const TRIP_REPLIES: usize = 3;
const REPLIES: usize = 8;

/// The policy, with alerts and releases going to `upstream` (in production a Postfix port
/// without the milter; here the sink) and the admin API on `admin`.
fn policy(upstream: &str, admin: u16) -> String {
    format!(
        "[policy]\nwide_audience = 100\ntrip_replies = {TRIP_REPLIES}\nwindow = \"1h\"\n\
         action = \"quarantine\"\nfast_audience = 0\n\n\
         [[lists]]\naddress = \"all@corp.test\"\nmembers = 5000\n\n\
         [upstream]\naddress = \"{upstream}\"\n\n\
         [notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    )
}

fn original() -> Mail {
    Mail {
        from: "ceo@corp.test".into(),
        to: vec!["all@corp.test".into()],
        data: "From: CEO <ceo@corp.test>\r\nTo: All staff <all@corp.test>\r\n\
               Subject: Company update\r\nMessage-ID: <update-1@corp.test>\r\n\
               Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\nPlease read.\r\n"
            .into(),
        rset: false,
    }
}

fn reply_all(i: usize) -> Mail {
    let from = format!("user{i}@corp.test");
    Mail {
        from: from.clone(),
        to: vec!["all@corp.test".into(), "ceo@corp.test".into()],
        data: format!(
            "From: User {i} <{from}>\r\nTo: All staff <all@corp.test>\r\nCc: ceo@corp.test\r\n\
             Subject: RE: Company update\r\nMessage-ID: <reply-{i}@corp.test>\r\n\
             In-Reply-To: <update-1@corp.test>\r\nReferences: <update-1@corp.test>\r\n\
             Thread-Topic: Company update\r\nDate: Mon, 23 Nov 2026 09:0{i}:00 +0000\r\n\r\n\
             Please remove me from this list.\r\n"
        ),
        rset: false,
    }
}

#[test]
fn reply_all_storm_through_the_milter_is_held_alerted_counted_and_released() {
    let sink = Sink::start();
    let admin = free_port();
    // As in production: no trace header, so mail that cannot be held is accepted at DATA.
    let sb = Stormbreaker::start_milter(true, false, &policy(&sink.address(), admin));
    let postfix = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));

    let out = smtplib(postfix.port, &[original()]);
    assert_eq!(out[0].code, 250, "{out:?}");
    // Each reply from its own SMTP session, as from different people's clients.
    let mut reply_ids = Vec::new();
    for i in 1..=REPLIES {
        let out = smtplib(postfix.port, &[reply_all(i)]);
        // Quarantine is silent: the sender hears 250 either way.
        assert_eq!(out[0].code, 250, "reply {i}: {out:?}");
        reply_ids.push(queued_as(&out[0].text));
    }
    let held_n = REPLIES - TRIP_REPLIES;

    // The original and the first TRIP_REPLIES replies reach the sink; one alert goes to the
    // admins (straight to [upstream]); the rest are in our quarantine, and Postfix keeps none.
    let reached = |m: &crate::support::sink::Delivered| {
        !m.addresses().contains(&"admin@corp.test".to_string())
    };
    wait_for(|| {
        (sink.delivered().iter().filter(|m| reached(m)).count() > TRIP_REPLIES).then_some(())
    })
    .expect("the first replies at the sink");
    let held = wait_for(|| {
        let l = sb.quarantine_list();
        (l.len() >= held_n).then_some(l)
    })
    .expect("gave up waiting for the held replies in the quarantine");
    assert_eq!(held.len(), held_n);
    for entry in &held {
        // The same fields as a proxy hold.
        assert_held_entry_fields(entry);
    }
    let held_ids: HashSet<String> = held
        .iter()
        .map(|e| e["message_id"].as_str().unwrap().to_string())
        .collect();
    let expected: HashSet<String> = (TRIP_REPLIES + 1..=REPLIES)
        .map(|i| format!("reply-{i}@corp.test"))
        .collect();
    assert_eq!(held_ids, expected, "the replies after the trip are held");
    assert!(postfix.held().is_empty(), "nothing in Postfix's hold queue");
    wait_for(|| postfix.queue().is_empty().then_some(()))
        .expect("Postfix's queue empties: held copies were discarded");
    let alerts = wait_for(|| {
        let a: Vec<_> = sink
            .delivered()
            .into_iter()
            .filter(|m| m.addresses() == ["admin@corp.test"])
            .collect();
        (!a.is_empty()).then_some(a)
    })
    .expect("gave up waiting for the alert");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alerts_now: Vec<String> = sink
        .delivered()
        .into_iter()
        .filter(|m| m.addresses() == ["admin@corp.test"])
        .map(|m| {
            m.text()
                .lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(alerts_now.len(), 1, "one alert per storm: {alerts_now:?}");
    assert!(
        alerts[0].mentions("release --thread"),
        "{}",
        alerts[0].text()
    );

    // /metrics counts the milter's decisions like the proxy's.
    let metrics = http::get(admin, "/metrics", &[]).body;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    assert_eq!(
        value("stormbreaker_quarantine_held_total"),
        held_n as f64,
        "{metrics}"
    );
    assert_eq!(
        value("stormbreaker_breakers_opened_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value("stormbreaker_messages_total{decision=\"quarantine\"}"),
        held_n as f64,
        "{metrics}"
    );

    // The log line per message names Postfix's queue id and our quarantine id.
    let lines = sb.log_lines("transaction");
    let held_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["decision"] == "quarantine")
        .collect();
    assert_eq!(held_lines.len(), held_n);
    for l in &held_lines {
        assert!(reply_ids.iter().any(|q| l["queue_id"] == q.as_str()), "{l}");
        assert!(l["held_id"].as_str().is_some(), "{l}");
        assert_eq!(l["mode"], "milter");
    }

    // During the storm, a reply to one person in the same thread is narrow: accepted at DATA
    // (Postfix then sends us nothing of its content) and delivered.
    let private = Mail {
        from: "user1@corp.test".into(),
        to: vec!["ceo@corp.test".into()],
        data: "From: user1@corp.test\r\nTo: ceo@corp.test\r\nSubject: RE: Company update\r\n\
               Message-ID: <private-1@corp.test>\r\nReferences: <update-1@corp.test>\r\n\r\n\
               Thanks, just to you.\r\n"
            .into(),
        rset: false,
    };
    let out = smtplib(postfix.port, &[private]);
    assert_eq!(out[0].code, 250, "{out:?}");
    let private_id = queued_as(&out[0].text);
    wait_for(|| sink.mentioning("<private-1@corp.test>").first().cloned())
        .expect("gave up waiting for the private reply at the sink");
    let line = wait_for(|| {
        sb.log_lines("transaction")
            .into_iter()
            .find(|l| l["queue_id"] == private_id.as_str())
    })
    .expect("gave up waiting for the private reply's log line");
    assert_eq!(line["decided_at"], "data", "{line}");

    // release --thread sends every held reply on, with its envelope.
    let thread = held[0]["thread"].as_str().unwrap().to_string();
    let out = sb.admin(&["quarantine", "release", "--thread", &thread]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in TRIP_REPLIES + 1..=REPLIES {
        let id = format!("<reply-{i}@corp.test>");
        let got = wait_for(|| sink.mentioning(&id).first().cloned())
            .unwrap_or_else(|| panic!("released {id} at the sink"));
        let mut to = got.addresses();
        to.sort();
        assert_eq!(to, ["all@corp.test", "ceo@corp.test"]);
    }
    assert!(sb.quarantine_list().is_empty());
}
