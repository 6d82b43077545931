//! Exim 4.96 as the proxy's upstream: proxy -> Exim -> recording sink. Exim offers neither
//! XCLIENT nor XFORWARD, answers the dot with `250 OK id=...`, and is strict about SMTP
//! synchronisation, so this is the relay, the storm hold and the release against an MTA that is
//! not Postfix; and the smuggling sequences against an MTA that was itself vulnerable to them.

use super::{LIST, original, reply_all, storm_policy, tags};
use crate::support::clients::{Raw, send_message, swaks, text};
use crate::support::peers::Exim;
use crate::support::stormbreaker::{Stormbreaker, assert_held_entry_fields};
use crate::support::{Sink, token, wait_for};
use std::collections::HashSet;
use std::sync::OnceLock;
use stormbreaker::smtp::data::SMUGGLING_SEQUENCES;

const TRIP_REPLIES: usize = 10;

struct World {
    sink: Sink,
    exim: Exim,
    /// Holds replies to [`LIST`] after the 10th of a thread.
    proxy: Stormbreaker,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let sink = Sink::start();
        let exim = Exim::start(sink.port());
        exim.0.stop_at_exit();
        let proxy = Stormbreaker::proxy(
            exim.port(),
            "",
            &storm_policy("quarantine", TRIP_REPLIES as u32, ""),
        );
        proxy.kill_at_exit();
        World { sink, exim, proxy }
    })
}

/// Waits until Exim has delivered (or failed) everything it accepted, then checks it failed
/// nothing: what the sink holds is then final.
fn settle() {
    let w = world();
    let emptied = wait_for(|| w.exim.queue() == 0).is_some();
    assert!(emptied, "Exim's queue never emptied:\n{}", w.exim.mainlog());
    assert_eq!(w.exim.failures(), "", "{}", w.exim.mainlog());
}

#[test]
fn a_message_goes_through_exim_with_exims_reply() {
    let w = world();
    let t = token("via-exim");
    let out = text(&swaks(
        w.proxy.port,
        &[
            "--from",
            "a@corp.test",
            "--to",
            "b@corp.test",
            "--header",
            &format!("Subject: {t}"),
        ],
    ));
    // Exim's own reply to the dot, relayed verbatim.
    assert!(out.contains("<-  250 OK id="), "{out}");
    let m = wait_for(|| w.sink.mentioning(&t).into_iter().next()).expect("delivered");
    assert_eq!(m.addresses(), ["b@corp.test"]);
    assert!(m.text().contains("by exim.corp.test"), "{}", m.text());
}

#[test]
fn a_multi_recipient_message_reaches_every_recipient_once() {
    let w = world();
    let t = token("exim-multi");
    let rcpts = [
        "m1@corp.test",
        "m2@corp.test",
        "m3@corp.test",
        "m4@corp.test",
    ];
    let answer = send_message(
        w.proxy.port,
        "a@corp.test",
        &rcpts,
        &format!("Subject: {t}\r\n\r\nfour recipients\r\n"),
    );
    assert!(answer.starts_with("250 OK id="), "{answer}");
    settle();
    let got: Vec<String> = w
        .sink
        .mentioning(&t)
        .iter()
        .flat_map(|m| m.addresses())
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, rcpts, "each recipient once: {got:?}");
}

#[test]
fn a_storm_is_held_after_the_trip_and_released_through_exim() {
    let w = world();
    let thread = token("eximstorm").replace('-', "");
    let answer = send_message(w.proxy.port, "hr@corp.test", &[LIST], &original(&thread));
    assert!(answer.starts_with("250 OK id="), "the original: {answer}");
    let replies = 14;
    let mut held = Vec::new();
    for i in 0..replies {
        let from = format!("user{i}@corp.test");
        let answer = send_message(w.proxy.port, &from, &[LIST], &reply_all(&thread, i, &from));
        if i < TRIP_REPLIES {
            assert!(answer.starts_with("250 OK id="), "reply {i}: {answer}");
        } else {
            // The proxy's own 250 for a message it committed to its quarantine.
            assert!(
                answer.starts_with("250 2.0.0") && answer.contains("held"),
                "reply {i}: {answer}"
            );
            held.push(format!("{thread}-r{i}"));
        }
    }
    settle();
    let delivered = || {
        let texts: Vec<String> = w
            .sink
            .mentioning(&thread)
            .iter()
            .map(|m| m.text().into_owned())
            .collect();
        tags(&thread, texts.iter().map(String::as_str))
    };
    let first: HashSet<String> = (0..TRIP_REPLIES)
        .map(|i| format!("{thread}-r{i}"))
        .collect();
    assert_eq!(delivered(), first, "the replies before the trip, no more");
    let entries: Vec<serde_json::Value> = w
        .proxy
        .quarantine_list()
        .into_iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .collect();
    assert_eq!(entries.len(), held.len(), "{entries:#?}");
    for e in &entries {
        assert_held_entry_fields(e);
        assert_eq!(e["rcpt_to"][0], LIST);
    }

    // The release goes to the upstream, Exim, which delivers every held reply.
    let key = entries[0]["thread"].as_str().expect("a thread key");
    let out = w.proxy.admin(&["quarantine", "release", "--thread", key]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all: HashSet<String> = (0..replies).map(|i| format!("{thread}-r{i}")).collect();
    assert!(
        wait_for(|| delivered() == all).is_some(),
        "after the release: {:?}",
        delivered()
    );
    settle();
    let mainlog = w.exim.mainlog();
    for tag in &held {
        assert!(
            mainlog.contains(&format!("id={tag}@corp.test")),
            "Exim did not log receiving the released {tag}:\n{mainlog}"
        );
    }
    assert!(
        w.proxy
            .quarantine_list()
            .iter()
            .all(|e| !e["subject"].as_str().unwrap_or("").contains(&thread)),
        "released messages leave the quarantine"
    );
}

/// Checklist line 1 through Exim: each sequence followed by a hidden transaction yields at
/// most the one visible message at the sink behind Exim, never the hidden one; with bare line
/// ends refused (the default) and with them turned into CRLF (`bare_newline = "normalize"`,
/// where the sequences reach Exim as content).
#[test]
fn smuggling_attempts_never_reach_exim_as_a_second_message() {
    let w = world();
    let normalizing = Stormbreaker::proxy(w.exim.port(), "bare_newline = \"normalize\"", "");
    let t = token("exim-smuggle");
    let mut accepted = 0;
    for (mode, port) in [("reject", w.proxy.port), ("normalize", normalizing.port)] {
        for (i, seq) in SMUGGLING_SEQUENCES.iter().enumerate() {
            let mut c = Raw::connect(port);
            c.cmd("EHLO evil.test");
            assert!(c.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
            assert!(c.cmd("RCPT TO:<b@corp.test>").starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            let mut data = format!("Subject: {t}-{mode}-s{i}\r\n\r\nvisible").into_bytes();
            data.extend_from_slice(seq);
            data.extend_from_slice(
                format!(
                    "MAIL FROM:<evil@corp.test>\r\nRCPT TO:<hidden-{t}@corp.test>\r\nDATA\r\n\
                     Subject: hidden {t}\r\n\r\nhidden\r\n"
                )
                .as_bytes(),
            );
            data.extend_from_slice(b"\r\n.\r\n");
            c.send(&data);
            let r = c.reply();
            assert!(
                r.starts_with("250") || r.starts_with("550 5.5.2"),
                "{mode} {seq:?}: {r}"
            );
            accepted += usize::from(r.starts_with("250"));
            // Whatever the answer, the session goes on in step.
            assert!(c.cmd("NOOP").starts_with("250"), "{mode} {seq:?}");
        }
    }
    settle();
    let mainlog = w.exim.mainlog();
    assert!(
        !mainlog.contains(&format!("hidden-{t}")),
        "Exim received the hidden transaction:\n{mainlog}"
    );
    let all = w.sink.mentioning(&t);
    assert_eq!(all.len(), accepted, "one message per accepted attempt");
    for m in &all {
        assert!(
            !m.addresses().iter().any(|a| a.starts_with("hidden-")),
            "a hidden recipient reached the sink: {:?}",
            m.rcpts
        );
        // The hidden text may be content of the visible message (sequences that are not an
        // end of data); a message of its own would carry its own Subject header.
        let text = m.text();
        let headers = text.split("\r\n\r\n").next().unwrap_or("");
        assert!(
            headers.contains(&format!("Subject: {t}-")) && !headers.contains("Subject: hidden"),
            "a message that is not one of the visible ones reached the sink: {text}"
        );
    }
    for mode in ["reject", "normalize"] {
        for i in 0..SMUGGLING_SEQUENCES.len() {
            let subject = format!("Subject: {t}-{mode}-s{i}\r\n");
            let n = all.iter().filter(|m| m.text().contains(&subject)).count();
            assert!(n <= 1, "{mode}, sequence {i}: {n} messages at the sink");
        }
    }
    // The normalizing proxy let sequences through as content: Exim did see them.
    assert!(
        accepted > 1,
        "only {accepted} attempt(s) accepted: the sequences never reached Exim"
    );
}
