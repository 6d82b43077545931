//! Sendmail 8.17 as a milter client of stormbreaker's milter (`[milter] listen`): a reply-all
//! storm sent through Sendmail trips the breaker; the replies after the trip are kept in
//! stormbreaker's quarantine and Sendmail discards its copies (nothing in its queue, nothing in
//! its own quarantine), the earlier ones reach the sink behind Sendmail, and a held one
//! released with `stormbreaker quarantine release` reaches the sink too.

use super::{LIST, original, reply_all, storm_policy, tags};
use crate::support::clients::{Mail, smtplib};
use crate::support::peers::Sendmail;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Sink, token, wait_for};
use std::collections::HashSet;

const TRIP_REPLIES: usize = 3;
const REPLIES: usize = 7;

/// Sendmail's queue id in its reply to the dot: "2.0.0 <id> Message accepted for delivery".
fn queue_id(text: &str) -> String {
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no queue id in {text:?}"))
        .to_string()
}

#[test]
fn a_storm_through_sendmail_is_held_in_our_quarantine_and_released() {
    let sink = Sink::start();
    // Releases and alerts go to [upstream]: here the sink, in production a port of the MTA
    // that does not call the milter.
    let upstream = format!("[upstream]\naddress = \"{}\"\n", sink.address());
    let milter = Stormbreaker::milter(&format!(
        "{}{upstream}",
        storm_policy("quarantine", TRIP_REPLIES as u32, "")
    ));
    let sendmail = Sendmail::start(sink.port(), &milter.port.to_string());
    let thread = token("sendmailstorm").replace('-', "");

    let announce = Mail {
        from: "hr@corp.test".into(),
        to: vec![LIST.into()],
        data: original(&thread),
        rset: false,
    };
    let out = smtplib(sendmail.port(), &[announce]);
    assert_eq!(out[0].code, 250, "{out:?}");
    // Each reply in its own session, as from different people's clients.
    let mut ids = Vec::new();
    for i in 0..REPLIES {
        let from = format!("user{i}@corp.test");
        let reply = Mail {
            from: from.clone(),
            to: vec![LIST.into()],
            data: reply_all(&thread, i, &from),
            rset: false,
        };
        let out = smtplib(sendmail.port(), &[reply]);
        // A quarantine is silent: the sender hears Sendmail's 250 either way.
        assert_eq!(
            (out[0].stage.as_str(), out[0].code),
            ("data", 250),
            "{out:?}"
        );
        ids.push(queue_id(&out[0].text));
    }

    let delivered = || {
        let texts: Vec<String> = sink
            .mentioning(&thread)
            .iter()
            .map(|m| m.text().into_owned())
            .collect();
        tags(&thread, texts.iter().map(String::as_str))
    };
    let first: HashSet<String> = (0..TRIP_REPLIES)
        .map(|i| format!("{thread}-r{i}"))
        .collect();
    assert!(
        wait_for(|| delivered() == first).is_some(),
        "the replies before the trip reach the sink: {:?}",
        delivered()
    );
    let expected_held: HashSet<String> = (TRIP_REPLIES..REPLIES)
        .map(|i| format!("{thread}-r{i}@corp.test"))
        .collect();
    let held = wait_for(|| {
        let h: HashSet<String> = milter
            .quarantine_list()
            .iter()
            .filter_map(|e| e["message_id"].as_str().map(str::to_string))
            .collect();
        (h == expected_held).then_some(h)
    });
    assert!(
        held.is_some(),
        "the quarantine holds the replies after the trip: {:?} (expected {expected_held:?}); milter log:\n{}",
        milter.quarantine_list(),
        milter.log()
    );
    // Sendmail discarded its copies: none in its queue or its own quarantine.
    assert!(sendmail.held_ids().is_empty(), "{}", sendmail.held());
    // The log names Sendmail's queue id of each held message.
    let logged: HashSet<String> = milter
        .log_lines("transaction")
        .iter()
        .filter(|l| l["decision"] == "quarantine")
        .filter_map(|l| l["queue_id"].as_str().map(str::to_string))
        .collect();
    let sent_ids: HashSet<String> = ids[TRIP_REPLIES..].iter().cloned().collect();
    assert_eq!(logged, sent_ids);
    // Every delivered message went past the milter, which said so in its trace header.
    // (Notices to held senders come from the null sender, straight from stormbreaker.)
    for m in sink
        .mentioning(&thread)
        .iter()
        .filter(|m| !m.mail_from.starts_with("<>"))
    {
        assert!(m.text().contains("X-Stormbreaker: deliver"), "{}", m.text());
    }

    // Release the first held reply: it reaches the sink; the others stay held.
    let first = milter
        .quarantine_list()
        .into_iter()
        .find(|e| e["message_id"] == format!("{thread}-r{TRIP_REPLIES}@corp.test").as_str())
        .expect("the first held reply");
    let out = milter.admin(&["quarantine", "release", first["id"].as_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tag = format!("{thread}-r{TRIP_REPLIES}");
    assert!(
        wait_for(|| delivered().contains(&tag)).is_some(),
        "the released reply did not reach the sink"
    );
    assert_eq!(milter.quarantine_list().len(), REPLIES - TRIP_REPLIES - 1);
    assert_eq!(delivered().len(), TRIP_REPLIES + 1);
}
