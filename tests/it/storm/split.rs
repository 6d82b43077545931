//! A reply-all to explicit addresses, split by the sending MTA: a private Postfix is the
//! sending MTA (as the organisation's submission server would be), with a recipient limit per
//! transaction, relaying into the proxy (or into a Postfix with the milter). The audience is the
//! To/Cc of the headers, so every part is wide; the parts of one reply get one verdict (all held
//! or all delivered, never split) and the reply is counted once.

use super::{settle, settle_through};
use crate::support::clients::{Mail, smtplib};
use crate::support::postfix::milter_main_cf;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Postfix, Sink, relay, token, wait_for};
use std::collections::{BTreeMap, BTreeSet};

/// The addresses of an audience of `n` people.
fn people(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i}@corp.test")).collect()
}

/// A new announcement (`reply = None`) or reply `i` to it, To/Cc every one of `to`.
fn message(tag: &str, reply: Option<usize>, to: &[String]) -> Mail {
    let (from, id, threading, subject) = match reply {
        None => (
            "hr@corp.test".to_string(),
            format!("{tag}@corp.test"),
            String::new(),
            format!("Offsite {tag}"),
        ),
        Some(i) => (
            format!("user{i}@corp.test"),
            format!("{tag}-r{i}@corp.test"),
            format!("In-Reply-To: <{tag}@corp.test>\r\nReferences: <{tag}@corp.test>\r\n"),
            format!("RE: Offsite {tag}"),
        ),
    };
    let (to_half, cc_half) = to.split_at(to.len() / 2);
    Mail {
        from: from.clone(),
        to: to.to_vec(),
        data: format!(
            "From: <{from}>\r\nTo: {}\r\nCc: {}\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n\
             {threading}\r\nbody of {}\r\n",
            to_half.join(",\r\n "),
            cc_half.join(",\r\n "),
            id.trim_end_matches("@corp.test")
        ),
        rset: false,
    }
}

/// The sending MTA: a Postfix that relays everything to `next` in transactions of at most
/// `limit` recipients.
fn sending_mta(next: u16, limit: usize) -> Postfix {
    Postfix::start(
        next,
        &format!(
            "default_destination_recipient_limit = {limit}\n\
             smtp_destination_recipient_limit = {limit}\n\
             smtpd_recipient_limit = 5000\n"
        ),
    )
}

/// Submits `mail` to the sending MTA and waits until it has handed every part on.
fn submit(sender: &Postfix, mail: Mail) {
    let out = smtplib(sender.port, &[mail]);
    assert_eq!(out[0].code, 250, "{out:?}");
    assert!(
        wait_for(|| sender.queue().is_empty()).is_some(),
        "the sending MTA kept {:?}; see {}",
        sender.queue(),
        sender.maillog_path().display()
    );
}

/// Recipients each reply reached at `sink`, by reply number.
fn reached(sink: &Sink, tag: &str, replies: usize) -> BTreeMap<usize, usize> {
    (0..replies)
        .map(|i| {
            let body = format!("body of {tag}-r{i}\r\n");
            let rcpts: BTreeSet<String> = sink
                .delivered()
                .iter()
                .filter(|m| m.text().contains(&body))
                .flat_map(|m| m.addresses())
                .collect();
            (i, rcpts.len())
        })
        .collect()
}

fn proxy_policy(wide: usize, trip: usize) -> String {
    format!(
        "[policy]\nwide_audience = {wide}\ntrip_replies = {trip}\nfast_audience = 0\n\
         [notify]\nfrom = \"stormbreaker@corp.test\"\n"
    )
}

/// The scaled-down shape: 150 explicit recipients sent as 100 + 50 with
/// `wide_audience = 120`. Before, no part was wide (20 delivered, 0 held), or with
/// `wide_audience = 100` each reply was half held, half delivered.
#[test]
fn a_reply_split_100_plus_50_is_held_whole_or_delivered_whole_through_the_proxy() {
    const REPLIES: usize = 6;
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &proxy_policy(120, 3));
    let sender = sending_mta(proxy.port, 100);
    let tag = token("split").replace('-', "");
    let audience = people(150);
    submit(&sender, message(&tag, None, &audience));
    for i in 0..REPLIES {
        submit(&sender, message(&tag, Some(i), &audience));
    }
    settle();
    let reached = reached(&relay().sink, &tag, REPLIES);
    // Three people reply and reach everyone; the third opens the breaker; the rest are held
    // whole: no reply reached only a part of the audience.
    let expected: BTreeMap<usize, usize> = (0..REPLIES)
        .map(|i| (i, if i < 3 { 150 } else { 0 }))
        .collect();
    assert_eq!(reached, expected, "{}", proxy.log());
    let held: Vec<serde_json::Value> = proxy
        .quarantine_list()
        .into_iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&tag))
        .collect();
    let mut parts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for e in &held {
        let from = e["mail_from"].as_str().unwrap().to_string();
        parts
            .entry(from)
            .or_default()
            .push(e["rcpt_to"].as_array().unwrap().len());
    }
    for v in parts.values_mut() {
        v.sort_unstable();
    }
    let expected: BTreeMap<String, Vec<usize>> = (3..REPLIES)
        .map(|i| (format!("user{i}@corp.test"), vec![50, 100]))
        .collect();
    assert_eq!(parts, expected, "both parts of each held reply are held");
    // Each reply counted once: the breaker saw 6 messages from 6 people, not 12.
    let opened = proxy.log_lines("breaker opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(opened[0]["senders"], 3, "{opened:?}");
    assert!(
        proxy.log_lines("holding").iter().any(|l| l["copy"] == true),
        "the second part of a held reply is held as a copy"
    );
}

/// The full shape: a reply-all to 3,000 explicit addresses, which Postfix sends as
/// three transactions of 1,000 (`smtp_destination_recipient_limit = 1000`), with the default
/// `wide_audience = 2500`: no transaction reaches it, the message does.
#[test]
fn a_reply_to_3000_addresses_split_by_postfix_into_1000s_is_one_wide_reply() {
    const REPLIES: usize = 3;
    let sink = Sink::start();
    let upstream = Postfix::start(
        sink.port(),
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8\nsmtp_destination_recipient_limit = 1000\n",
    );
    let proxy = Stormbreaker::proxy(upstream.port, "", &proxy_policy(2500, 2));
    let sender = sending_mta(proxy.port, 1000);
    let tag = token("big").replace('-', "");
    let audience = people(3000);
    for i in 0..REPLIES {
        submit(&sender, message(&tag, Some(i), &audience));
    }
    settle_through(&upstream, &sink);
    let reached = reached(&sink, &tag, REPLIES);
    assert_eq!(
        reached,
        BTreeMap::from([(0, 3000), (1, 3000), (2, 0)]),
        "{}",
        proxy.log()
    );
    let held: Vec<usize> = proxy
        .quarantine_list()
        .iter()
        .filter(|e| e["mail_from"] == "user2@corp.test")
        .map(|e| e["rcpt_to"].as_array().unwrap().len())
        .collect();
    assert_eq!(held, [1000, 1000, 1000], "all three parts held");
    let opened = proxy.log_lines("breaker opened");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["audience"], 3000);
}

/// The same split reaching Postfix with stormbreaker as its milter: both parts of a held reply
/// are held in the quarantine, both parts of the others are delivered.
#[test]
fn a_split_reply_is_held_whole_by_the_milter() {
    const REPLIES: usize = 5;
    let sink = Sink::start();
    let sb = Stormbreaker::milter_without_trace_header(&proxy_policy(120, 3));
    let with_milter = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));
    let sender = sending_mta(with_milter.port, 100);
    let tag = token("msplit").replace('-', "");
    let audience = people(150);
    for i in 0..REPLIES {
        submit(&sender, message(&tag, Some(i), &audience));
    }
    // Held parts are kept in stormbreaker's quarantine (Postfix discards them); the others
    // leave Postfix's queue for the sink.
    let held_parts = || {
        sb.quarantine_list()
            .into_iter()
            .filter(|m| {
                m["mail_from"]
                    .as_str()
                    .is_some_and(|f| f.ends_with("@corp.test"))
            })
            .map(|m| {
                (
                    m["mail_from"].as_str().unwrap_or("").to_string(),
                    m["rcpt_to"].as_array().map_or(0, |r| r.len()),
                )
            })
            .collect::<Vec<_>>()
    };
    let held = wait_for(|| {
        let h = held_parts();
        (h.len() >= 4 && with_milter.queue().is_empty()).then_some(h)
    })
    .unwrap_or_else(|| panic!("queue: {:?}\n{}", with_milter.queue(), sb.log()));
    let mut by_sender: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (sender, n) in held {
        by_sender.entry(sender).or_default().push(n);
    }
    for v in by_sender.values_mut() {
        v.sort_unstable();
    }
    assert_eq!(
        by_sender,
        BTreeMap::from([
            ("user3@corp.test".to_string(), vec![50, 100]),
            ("user4@corp.test".to_string(), vec![50, 100]),
        ])
    );
    let reached = reached(&sink, &tag, REPLIES);
    assert_eq!(
        reached,
        (0..REPLIES)
            .map(|i| (i, if i < 3 { 150 } else { 0 }))
            .collect()
    );
}
