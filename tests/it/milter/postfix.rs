//! The milter against a real Postfix (3.7, `milter_protocol = 6`), a real smtplib client and a
//! recording sink behind Postfix; one Postfix per test, since each asks its own milter.

use crate::support::clients::{mail, queued_as, smtplib};
use crate::support::postfix::milter_main_cf;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Postfix, Sink, free_port, wait_for};
use std::collections::HashSet;
use std::sync::Arc;
use stormbreaker::envelope::Envelope;
use stormbreaker::frontend::{Decider, Deciding};
use stormbreaker::milter::{Options, Services, serve_with};
use stormbreaker::quarantine::{ListFilter, Quarantine, ReleaseOptions};
use stormbreaker::verdict::{Action, Hold, Verdict};

#[test]
fn plain_message_passes_and_reaches_the_sink() {
    let sink = Sink::start();
    let sb = Stormbreaker::milter("");
    let postfix = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));

    let out = smtplib(
        postfix.port,
        &[mail("alice@corp.test", &["bob@corp.test"], "plain one")],
    );
    assert_eq!(out[0].code, 250, "{out:?}");
    let queue_id = queued_as(&out[0].text);

    let got = sink.wait_delivered(1);
    assert_eq!(got.len(), 1);
    assert!(got[0].mentions("Subject: plain one"));
    // The milter saw it: it added its trace header naming the decision.
    assert!(
        got[0].mentions("X-Stormbreaker: deliver"),
        "{}",
        got[0].text()
    );

    // One log line naming Postfix's queue id, the sender and the recipients.
    let lines = wait_for(|| {
        let l = sb.log_lines("transaction");
        (!l.is_empty()).then_some(l)
    })
    .expect("gave up waiting for the log line");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["queue_id"], queue_id.as_str());
    assert_eq!(lines[0]["from"], "alice@corp.test");
    assert_eq!(lines[0]["rcpts"], 1);
    assert_eq!(lines[0]["client"], "127.0.0.1");
    assert_eq!(lines[0]["mode"], "milter");
    assert_eq!(lines[0]["decision"], "deliver");
    assert_eq!(lines[0]["message_id"], "<plain-one@corp.test>");
}

#[test]
fn several_messages_in_one_smtp_session_each_start_fresh() {
    let sink = Sink::start();
    let sb = Stormbreaker::milter("");
    let postfix = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));

    // Message i goes to i+1 recipients; an aborted transaction (RSET after RCPT) sits in the
    // middle with 9 recipients that must not leak into the next message.
    let rcpts: Vec<String> = (0..9).map(|r| format!("r{r}@corp.test")).collect();
    let to = |n: usize| rcpts[..n].iter().map(String::as_str).collect::<Vec<_>>();
    let mut mails = vec![
        mail("s0@corp.test", &to(1), "session msg 0"),
        mail("s1@corp.test", &to(2), "session msg 1"),
    ];
    let mut aborted = mail("aborted@corp.test", &to(9), "never sent");
    aborted.rset = true;
    mails.push(aborted);
    mails.push(mail("s3@corp.test", &to(3), "session msg 3"));
    mails.push(mail("s4@corp.test", &to(4), "session msg 4"));
    let out = smtplib(postfix.port, &mails);

    assert_eq!(out.len(), 5);
    assert_eq!(out[2].stage, "rset");
    let delivered: Vec<_> = [0, 1, 3, 4].iter().map(|&i| &out[i]).collect();
    for o in &delivered {
        assert_eq!((o.stage.as_str(), o.code), ("data", 250), "{out:?}");
    }
    let queue_ids: Vec<String> = delivered.iter().map(|o| queued_as(&o.text)).collect();

    let got = sink.wait_delivered(4);
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(|m| m.mentions("X-Stormbreaker: deliver")));

    let lines = wait_for(|| {
        let l = sb.log_lines("transaction");
        (l.len() >= 4).then_some(l)
    })
    .expect("gave up waiting for 4 log lines");
    assert_eq!(lines.len(), 4, "the aborted transaction is not decided");
    let logged: HashSet<&str> = lines
        .iter()
        .map(|l| l["queue_id"].as_str().unwrap())
        .collect();
    assert_eq!(logged, queue_ids.iter().map(String::as_str).collect());
    for (line, (from, n)) in lines.iter().zip([
        ("s0@corp.test", 1),
        ("s1@corp.test", 2),
        ("s3@corp.test", 3),
        ("s4@corp.test", 4),
    ]) {
        assert_eq!(line["from"], from);
        assert_eq!(line["rcpts"], n, "recipients of {from}: {line}");
    }
    // All five transactions used one milter connection (one SMTP session).
    let conns: HashSet<&str> = lines
        .iter()
        .map(|l| l["session"].as_str().unwrap())
        .collect();
    assert_eq!(conns.len(), 1);
}

#[test]
fn unix_socket_listener_serves_postfix() {
    let sink = Sink::start();
    let sb = Stormbreaker::milter_on_unix_socket("");
    let postfix = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));
    let out = smtplib(
        postfix.port,
        &[mail("alice@corp.test", &["bob@corp.test"], "over a socket")],
    );
    assert_eq!(out[0].code, 250, "{out:?}");
    let got = sink.wait_delivered(1);
    assert!(
        got[0].mentions("X-Stormbreaker: deliver"),
        "{}",
        got[0].text()
    );
}

#[test]
fn stopped_stormbreaker_means_postfix_tempfails() {
    let sink = Sink::start();
    let mut sb = Stormbreaker::milter("");
    let postfix = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));

    let out = smtplib(
        postfix.port,
        &[mail("a@corp.test", &["b@corp.test"], "before stop")],
    );
    assert_eq!(out[0].code, 250, "{out:?}");
    sink.wait_delivered(1);

    assert!(sb.stop(), "stormbreaker exits cleanly on SIGTERM");
    let out = smtplib(
        postfix.port,
        &[mail("a@corp.test", &["b@corp.test"], "after stop")],
    );
    // milter_default_action = tempfail: the client hears 4xx, the mail stays with the sender.
    assert!(
        (400..500).contains(&out[0].code),
        "expected a 4xx with stormbreaker down, got {out:?}"
    );
    assert!(
        postfix.maillog().contains("milter"),
        "Postfix logs the milter failure"
    );
    assert!(postfix.queue().is_empty(), "nothing was queued");
    assert_eq!(sink.delivered().len(), 1, "nothing more reached the sink");
}

/// Stands in for the storm engine: decides by the Subject, so every verdict can be checked
/// against what a real Postfix does with it.
struct BySubject;

impl Decider for BySubject {
    fn decide<'a>(
        &'a self,
        envelope: &'a Envelope,
        headers: &'a [u8],
        _now_ms: u64,
    ) -> Deciding<'a> {
        Box::pin(async move { by_subject(envelope, headers) })
    }
}

fn by_subject(envelope: &Envelope, headers: &[u8]) -> Verdict {
    {
        let headers = String::from_utf8_lossy(headers);
        let subject = headers
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("");
        let hold = Hold {
            thread: format!("subj:{subject}"),
            list: Some("all@corp.test".into()),
            audience: 5000,
            breaker: "replies",
            replies: 11,
            senders: 7,
            reason: format!(
                "reply-all storm on \"{subject}\" from {}",
                envelope.mail_from
            ),
            action: Default::default(),
            origin: None,
        };
        let action = match subject.split(' ').next().unwrap_or("") {
            "hold" => Action::Quarantine,
            "reject" => Action::Reject,
            "tempfail" => Action::Tempfail,
            "dry" => Action::Deliver,
            _ => return Verdict::DELIVER,
        };
        Verdict {
            action,
            hold: Some(hold),
            opened: None,
        }
    }
}

#[test]
fn every_verdict_does_what_postfix_promises() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let quarantine = Quarantine::open(&dir.path().join("q")).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let services = {
        let quarantine = quarantine.clone();
        move || Services {
            decider: Arc::new(BySubject),
            quarantine: Some(quarantine.clone()),
            notifier: None,
            trace_header: true,
        }
    };
    let server = runtime.spawn(serve_with(
        services,
        format!("127.0.0.1:{port}"),
        Options {
            shutdown_grace: std::time::Duration::from_secs(5),
        },
        shutdown,
    ));
    wait_for(|| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .expect("gave up waiting for the milter to listen");
    let sink = Sink::start();
    let postfix = Postfix::start(
        sink.port(),
        &milter_main_cf(&format!("inet:127.0.0.1:{port}")),
    );

    // All verdicts in one SMTP session: each message gets its own answer.
    let out = smtplib(
        postfix.port,
        &[
            mail("a@corp.test", &["all@corp.test"], "plain start"),
            mail("b@corp.test", &["all@corp.test", "x@corp.test"], "hold me"),
            mail("c@corp.test", &["all@corp.test"], "reject me"),
            mail("d@corp.test", &["all@corp.test"], "tempfail me"),
            mail("e@corp.test", &["all@corp.test"], "dry run"),
            mail("f@corp.test", &["all@corp.test"], "plain end"),
        ],
    );
    let codes: Vec<u16> = out.iter().map(|o| o.code).collect();
    assert_eq!(codes, [250, 250, 550, 451, 250, 250], "{out:?}");
    // Reject and tempfail carry the enhanced code and the reason to the client.
    assert!(
        out[2]
            .text
            .starts_with("5.7.1 Not delivered: reply-all storm on \"reject me\""),
        "{out:?}"
    );
    assert!(
        out[3]
            .text
            .starts_with("4.7.1 Deferred, try later: reply-all storm on \"tempfail me\""),
        "{out:?}"
    );

    // The held message is in our quarantine, whole, with its envelope; Postfix discarded its
    // own copy (its client heard 250 once ours was on disk). The other three go on.
    let held = quarantine.list(&ListFilter::default()).unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    let copy = quarantine.get(&held[0].id).unwrap();
    let content = String::from_utf8_lossy(&copy.content);
    assert!(content.contains("Subject: hold me\r\n"), "{content}");
    assert!(
        content.ends_with("\r\n\r\nHello.\r\n"),
        "the body is kept: {content}"
    );
    let rcpts: Vec<&str> = copy
        .meta
        .envelope
        .rcpts
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, ["all@corp.test", "x@corp.test"]);
    let got = sink.wait_delivered(3);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| !m.mentions("hold me")));
    let dry = got.iter().find(|m| m.mentions("Subject: dry run")).unwrap();
    assert!(dry.mentions("X-Stormbreaker: would-hold"));
    assert!(postfix.held().is_empty(), "nothing in Postfix's hold queue");
    assert!(
        wait_for(|| postfix.maillog().contains("milter-discard").then_some(())).is_some(),
        "{}",
        postfix.maillog()
    );

    // Released (here straight to the sink: a port without the milter), it reaches everyone.
    let target = stormbreaker::smtp::client::Target {
        address: sink.address(),
        hostname: "sb.test".into(),
        timeouts: stormbreaker::smtp::client::Timeouts {
            connect: std::time::Duration::from_secs(5),
            reply: std::time::Duration::from_secs(30),
        },
        tls: None,
    };
    let report = runtime
        .block_on(quarantine.release(&held[0].id, &target, &ReleaseOptions::default()))
        .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let got = sink.wait_delivered(4);
    let released = got.iter().find(|m| m.mentions("Subject: hold me")).unwrap();
    assert_eq!(released.addresses(), ["all@corp.test", "x@corp.test"]);

    stop.send(true).unwrap();
    drop(postfix);
    runtime.block_on(server).unwrap().unwrap();
}
