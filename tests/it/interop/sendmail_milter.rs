//! Sendmail 8.17 as a milter client of stormbreaker's milter (`[milter] listen`): a reply-all
//! storm sent through Sendmail trips the breaker; the replies after the trip wait in Sendmail's
//! quarantine (`hf` queue files, `sendmail -bp -qQ`), the earlier ones reach the sink behind
//! Sendmail, and a held one released with `sendmail -qQ -qI<id> -Q` reaches the sink too.

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
fn a_storm_through_sendmail_is_held_in_its_quarantine_and_released() {
    let sink = Sink::start();
    let milter = Stormbreaker::milter(&storm_policy("quarantine", TRIP_REPLIES as u32, ""));
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
    let expected_held: HashSet<String> = ids[TRIP_REPLIES..].iter().cloned().collect();
    let held = wait_for(|| {
        let h: HashSet<String> = sendmail.held_ids().into_iter().collect();
        (h == expected_held).then_some(h)
    });
    assert!(
        held.is_some(),
        "Sendmail's quarantine holds the replies after the trip: {:?} (expected {expected_held:?}); milter log:\n{}",
        sendmail.held_ids(),
        milter.log()
    );
    // Sendmail lists them with the milter's reason.
    let listing = sendmail.held();
    for id in &expected_held {
        assert!(listing.contains(id.as_str()), "{listing}");
    }
    assert!(listing.to_lowercase().contains("storm"), "{listing}");
    // Every delivered message went past the milter, which said so in its trace header.
    for m in sink.mentioning(&thread) {
        assert!(m.text().contains("X-Stormbreaker: deliver"), "{}", m.text());
    }

    // Release the first held reply: it reaches the sink; the others stay held.
    let released = &ids[TRIP_REPLIES];
    sendmail.release(released);
    let tag = format!("{thread}-r{TRIP_REPLIES}");
    assert!(
        wait_for(|| delivered().contains(&tag)).is_some(),
        "the released reply did not reach the sink"
    );
    let still: HashSet<String> = sendmail.held_ids().into_iter().collect();
    let mut rest = expected_held.clone();
    rest.remove(released);
    assert_eq!(still, rest);
    assert_eq!(delivered().len(), TRIP_REPLIES + 1);
}
