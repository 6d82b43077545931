//! An Atos-shaped reply-all storm through a real Postfix with stormbreaker as its milter: one
//! announcement to a 5,000-person list, then reply-alls from different people. The first
//! `trip_replies` replies reach the sink behind Postfix; the rest wait in Postfix's hold queue,
//! under the queue ids stormbreaker logs, until `postsuper -H` releases them.

use crate::support::clients::{Mail, queued_as, smtplib};
use crate::support::postfix::milter_main_cf;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Postfix, Sink, wait_for};
use std::collections::HashSet;

const TRIP_REPLIES: usize = 3;
const REPLIES: usize = 8;

fn policy() -> String {
    format!(
        "[policy]\nwide_audience = 100\ntrip_replies = {TRIP_REPLIES}\nwindow = \"1h\"\n\
         action = \"quarantine\"\n\n\
         [[lists]]\naddress = \"all@corp.test\"\nmembers = 5000\n"
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
fn reply_all_storm_is_held_in_postfix_hold_queue() {
    let sink = Sink::start();
    let sb = Stormbreaker::milter_without_trace_header(&policy());
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

    // The original and the first TRIP_REPLIES replies reach the sink.
    sink.wait_delivered(1 + TRIP_REPLIES);
    let held_expected: HashSet<String> = reply_ids[TRIP_REPLIES..].iter().cloned().collect();
    let held = wait_for(|| {
        let h: HashSet<String> = postfix.held().into_iter().collect();
        (h.len() >= held_expected.len()).then_some(h)
    })
    .expect("gave up waiting for the held replies in the hold queue");
    assert_eq!(held, held_expected, "replies after the trip are held");
    // Everything not held has left Postfix's queue, and nothing more arrived at the sink.
    wait_for(|| (postfix.queue().len() == held_expected.len()).then_some(()))
        .expect("gave up waiting for the queue to hold only the held replies");
    assert_eq!(sink.delivered().len(), 1 + TRIP_REPLIES);
    for i in 1..=TRIP_REPLIES {
        assert!(
            sink.delivered()
                .iter()
                .any(|m| m.mentions(&format!("<reply-{i}@corp.test>"))),
            "reply {i} delivered"
        );
    }

    // The log names each held message by Postfix queue id, so the admin knows what to release.
    let logged: HashSet<String> = sb
        .log_lines("hold queue")
        .iter()
        .filter_map(|l| l["queue_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(logged, held_expected);

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
    let got = wait_for(|| {
        let m = sink.delivered();
        m.iter()
            .any(|x| x.mentions("<private-1@corp.test>"))
            .then_some(m)
    })
    .expect("gave up waiting for the private reply at the sink");
    assert_eq!(got.len(), 2 + TRIP_REPLIES);
    let line = wait_for(|| {
        sb.log_lines("delivered")
            .into_iter()
            .find(|l| l["queue_id"] == private_id.as_str())
    })
    .expect("gave up waiting for the private reply's log line");
    assert_eq!(line["decided_at"], "data", "{line}");
    let storm_line = sb
        .log_lines("delivered")
        .into_iter()
        .find(|l| l["queue_id"] == reply_ids[0].as_str())
        .expect("the first reply's log line");
    assert_eq!(storm_line["decided_at"], "end-of-message", "{storm_line}");

    // Releasing one sends it on.
    let first_held = reply_ids[TRIP_REPLIES].clone();
    postfix.release(&first_held);
    let released = format!("<reply-{}@corp.test>", TRIP_REPLIES + 1);
    let got = wait_for(|| {
        let m = sink.delivered();
        m.iter().any(|x| x.mentions(&released)).then_some(m)
    })
    .expect("gave up waiting for the released reply at the sink");
    let texts: Vec<_> = got.iter().map(|m| m.text()).collect();
    assert_eq!(got.len(), 3 + TRIP_REPLIES, "{texts:#?}");
}
