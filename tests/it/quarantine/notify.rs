//! Alert mail sent for real: to a recording sink of its own (exact counts), and through the
//! suite's Postfix (a real MTA accepts and relays it); and a storm through the proxy: one
//! alert with a UTF-8 subject, one notice per held sender, none for a refused one, the texts
//! refused senders get, and the reminders.

use super::{envelope, hold};
use crate::support::clients::send_message;
use crate::support::sink::Delivered;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Sink, free_port, relay, token, wait_for};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::path::Path;
use stormbreaker::config::Config;
use stormbreaker::notify::Notifier;

fn config(upstream: &str, notify_senders: bool) -> Config {
    let mut c = Config::default();
    c.upstream.address = upstream.into();
    c.upstream.connect_timeout = std::time::Duration::from_secs(5);
    c.upstream.reply_timeout = std::time::Duration::from_secs(30);
    c.notify.admins = vec!["admin@corp.test".into(), "ops@corp.test".into()];
    c.notify.from = "stormbreaker@corp.test".into();
    c.notify.notify_senders = notify_senders;
    c
}

fn header<'a>(bytes: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alert_per_opening_reaches_the_admins_and_each_sender_hears_once() {
    let sink = Sink::start();
    let n = notifier(
        &config(&sink.address(), true),
        Path::new("/etc/sb/policy.toml"),
    );
    let now = stormbreaker::now_ms();
    let h = hold("tidx:quarterly");

    n.breaker_opened(&h, now);
    n.breaker_opened(&h, now + 1);
    let mut bob = envelope();
    for i in 0..5 {
        n.message_held(&bob, &h, "id-bob", now + 2 + i);
    }
    bob.mail_from = "carol@corp.test".into();
    n.message_held(&bob, &h, "id-carol", now + 10);
    bob.mail_from = String::new();
    n.message_held(&bob, &h, "id-null", now + 11);
    assert_eq!(n.flush().await, (3, 0));

    let d = sink.delivered();
    assert_eq!(d.len(), 3, "one alert, one notice each to bob and carol");
    // Sent concurrently: find each by its recipients.
    let alerts: Vec<_> = d.iter().filter(|m| m.rcpts.len() == 2).collect();
    assert_eq!(alerts.len(), 1);
    let alert = alerts[0];
    assert!(alert.mail_from.starts_with("<stormbreaker@corp.test>"));
    assert_eq!(alert.addresses(), ["admin@corp.test", "ops@corp.test"]);
    assert_eq!(
        header(&alert.content, "Auto-Submitted"),
        Some("auto-generated")
    );
    let body = parsed(alert).body_text(0).unwrap().into_owned();
    assert!(
        body.contains(
            "stormbreaker quarantine release --thread tidx:quarterly --config /etc/sb/policy.toml"
        ),
        "{body}"
    );
    let notices: Vec<_> = d.iter().filter(|m| m.rcpts.len() == 1).collect();
    let mut told: Vec<Vec<String>> = notices.iter().map(|m| m.addresses()).collect();
    told.sort();
    assert_eq!(told, [["bob@corp.test"], ["carol@corp.test"]]);
    // From the null sender, so that nothing ever answers them.
    assert!(notices.iter().all(|m| m.mail_from.starts_with("<>")));
    assert!(notices.iter().all(|m| {
        parsed(m)
            .body_text(0)
            .is_some_and(|b| b.contains("reply to the sender only"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_goes_through_a_real_postfix() {
    let thread = token("tidx:quarterly");
    let n = notifier(
        &config(&relay().postfix.address(), false),
        Path::new("/etc/sb/policy.toml"),
    );
    n.breaker_opened(&hold(&thread), stormbreaker::now_ms());
    assert_eq!(n.flush().await, (1, 0));
    let wanted = thread.clone();
    let d = tokio::task::spawn_blocking(move || {
        wait_for(|| {
            let d = relay().sink.mentioning(&wanted);
            (!d.is_empty()).then_some(d)
        })
        .expect("the alert at the sink")
    })
    .await
    .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].addresses(), ["admin@corp.test", "ops@corp.test"]);
    // Through Postfix, the subject still reads whole.
    assert_eq!(
        subject_of(&d[0]),
        format!("[stormbreaker] Reply-all storm stopped on thread {thread} (storm {thread})")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_upstream_is_logged_not_fatal() {
    let port = free_port();
    let n = notifier(
        &config(&format!("127.0.0.1:{port}"), true),
        Path::new("p.toml"),
    );
    n.breaker_opened(&hold("t"), 0);
    n.message_held(&envelope(), &hold("t"), "id", 1);
    assert_eq!(
        n.flush().await,
        (0, 2),
        "alert and notice both failed, nothing panicked"
    );
}

/// A notifier sending to the config's upstream, as the service builds it.
fn notifier(config: &Config, path: &Path) -> Notifier {
    let target = stormbreaker::proxy::session::upstream_target(config).unwrap();
    Notifier::new(config, path, target)
}

/// The subject of the storm: French, with an em dash, as mail clients send it (RFC 2047).
const SUBJECT: &str = "Réunion trimestrielle — résultats";

fn encoded(subject: &str) -> String {
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(subject)
    )
}

/// One message over its own session; returns the proxy's answer to its final dot.
fn send(port: u16, from: &str, to: &str, headers: &str) -> String {
    let message = format!("From: <{from}>\r\nTo: <{to}>\r\n{headers}\r\nHello all.\r\n");
    send_message(port, from, &[to], &message)
}

/// The thread's first message from alice to `list` on `subject`, then a reply from each of `senders` in
/// order; returns the proxy's answers to the replies.
fn storm(port: u16, thread: &str, subject: &str, list: &str, senders: &[&str]) -> Vec<String> {
    let answer = send(
        port,
        "alice@corp.test",
        list,
        &format!(
            "Subject: {}\r\nMessage-ID: <{thread}@corp.test>\r\n",
            encoded(subject)
        ),
    );
    assert!(answer.starts_with("250"), "{answer}");
    senders
        .iter()
        .enumerate()
        .map(|(i, from)| {
            send(
                port,
                from,
                list,
                &format!(
                    "Subject: {}\r\nIn-Reply-To: <{thread}@corp.test>\r\n\
                     References: <{thread}@corp.test>\r\nMessage-ID: <{thread}-r{i}@corp.test>\r\n",
                    encoded(&format!("RE: {subject}"))
                ),
            )
        })
        .collect()
}

fn parsed(m: &Delivered) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(&m.content)
        .expect("mail-parser reads it")
}

fn to_admin(m: &Delivered) -> bool {
    m.addresses() == ["admin@corp.test"]
}

fn subject_of(m: &Delivered) -> String {
    parsed(m).subject().unwrap_or_default().to_string()
}

/// A storm through the proxy in front of the recording sink, on three lists whose breakers
/// quarantine, reject and defer: the alert, the notices and the texts, then the reminders.
#[test]
fn a_storm_alerts_once_in_utf8_tells_each_held_sender_once_and_reminds_the_admins() {
    let sink = Sink::start();
    let policy = "[policy]\naction = \"quarantine\"\ntrip_replies = 3\nfast_audience = 0\n\
        [[lists]]\naddress = \"all-staff@corp.test\"\nmembers = 91053\n\
        [[lists]]\naddress = \"eng@corp.test\"\nmembers = 3000\naction = \"reject\"\n\
        [[lists]]\naddress = \"ops@corp.test\"\nmembers = 3000\naction = \"tempfail\"\n\
        [notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\n\
        interval = \"30m\"\nremind_every = \"2s\"\nremind_before_expiry = \"59m59s\"\n";
    // Retention at its least (1h): every held message is within remind_before_expiry of it,
    // so the warning before deletion comes at once.
    let sb = Stormbreaker::proxy_with_quarantine(sink.port(), "retention = \"1h\"", policy);
    let thread = token("reunion").replace('-', "");

    // Refused storms first: their senders hear the SMTP reply, and get no notice.
    let refused = [
        "dan@corp.test",
        "eve@corp.test",
        "fay@corp.test",
        "gus@corp.test",
    ];
    let answers = storm(
        sb.port,
        &format!("{thread}x"),
        &format!("Budget {thread}"),
        "eng@corp.test",
        &refused,
    );
    assert!(
        answers[..3].iter().all(|a| a.starts_with("250")),
        "{answers:?}"
    );
    assert!(
        answers[3].starts_with(
            "550 5.7.1 Not delivered: reply-all storm on this thread (4 people replied to 3000 recipients), reply to the sender only"
        ),
        "{answers:?}"
    );
    let answers = storm(
        sb.port,
        &format!("{thread}y"),
        &format!("Outage {thread}"),
        "ops@corp.test",
        &refused,
    );
    assert!(
        answers[3].starts_with("451 4.7.1 Deferred, try later: reply-all storm on this thread"),
        "{answers:?}"
    );

    // The quarantined storm: replies 1-3 pass (the third opens the breaker), the rest are
    // held; bob and carol reply twice.
    let senders = [
        "u1@corp.test",
        "u2@corp.test",
        "u3@corp.test",
        "bob@corp.test",
        "carol@corp.test",
        "bob@corp.test",
        "dave@corp.test",
        "carol@corp.test",
    ];
    let answers = storm(sb.port, &thread, SUBJECT, "all-staff@corp.test", &senders);
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("250"), "reply {i}: {a}");
        assert_eq!(a.contains("held for review"), i >= 3, "reply {i}: {a}");
    }
    let storm_id = format!("mid:{thread}@corp.test");

    // The reminder comes after remind_every; by then every alert and notice was sent (they
    // are handed to the background when the message is held, seconds earlier).
    let reminder = wait_for(|| {
        sink.delivered()
            .into_iter()
            .find(|m| to_admin(m) && subject_of(m).contains("Reminder:"))
    })
    .unwrap_or_else(|| panic!("no reminder; log:\n{}", sb.log()));
    let d = sink.delivered();

    // One alert for the storm, its subject decoded whole.
    let alerts: Vec<&Delivered> = d
        .iter()
        .filter(|m| to_admin(m) && subject_of(m).contains("Reply-all storm stopped"))
        .collect();
    let ours: Vec<&&Delivered> = alerts
        .iter()
        .filter(|m| subject_of(m).contains(&storm_id))
        .collect();
    assert_eq!(ours.len(), 1, "one alert per storm: {alerts:#?}");
    let alert = parsed(ours[0]);
    assert_eq!(
        alert.subject(),
        Some(
            format!("[stormbreaker] Reply-all storm stopped on \"{SUBJECT}\" (storm {storm_id})")
                .as_str()
        )
    );
    assert_eq!(
        alert.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-generated")
    );
    let body = alert.body_text(0).unwrap();
    let config = sb.config.display().to_string();
    assert!(Path::new(&config).is_absolute());
    for line in [
        format!("Subject:            {SUBJECT}"),
        "Original sender:    alice@corp.test".to_string(),
        "List:               all-staff@corp.test (91053 members)".into(),
        "Audience:           91053 people per reply".into(),
        format!("stormbreaker quarantine list --thread {storm_id} --config {config}"),
        format!("stormbreaker quarantine release --thread {storm_id} --config {config}"),
        format!("stormbreaker breaker reset {storm_id} --config {config}"),
    ] {
        assert!(body.contains(&line), "{line:?} not in the alert:\n{body}");
    }

    // Each held sender told exactly once, from the null sender; nobody else.
    let mut notices: BTreeMap<String, usize> = BTreeMap::new();
    for m in d.iter().filter(|m| m.mail_from.starts_with("<>")) {
        for a in m.addresses() {
            *notices.entry(a).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, usize> = ["bob@corp.test", "carol@corp.test", "dave@corp.test"]
        .iter()
        .map(|s| (s.to_string(), 1))
        .collect();
    assert_eq!(
        notices, expected,
        "one notice per held sender, none for refusals"
    );
    let notice = d
        .iter()
        .find(|m| m.mail_from.starts_with("<>") && m.addresses() == ["bob@corp.test"])
        .unwrap();
    let notice = parsed(notice);
    assert_eq!(
        notice.subject(),
        Some(format!("Your reply was held for review: {SUBJECT}").as_str())
    );
    assert_eq!(
        notice.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-generated")
    );
    let text = notice.body_text(0).unwrap();
    assert!(
        text.contains("was held for review, not delivered"),
        "{text}"
    );
    assert!(text.contains(&storm_id), "{text}");

    // The reminder lists the storm, its count and the commands.
    let reminder = parsed(&reminder);
    let text = reminder.body_text(0).unwrap();
    assert!(text.contains(&format!("Storm {storm_id}")), "{text}");
    assert!(text.contains("Held:             5"), "{text}");
    assert!(
        text.contains(
            "Top senders:      bob@corp.test (2), carol@corp.test (2), dave@corp.test (1)"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "stormbreaker quarantine release --thread {storm_id} --config {config}"
        )),
        "{text}"
    );

    // And a warning that retention will delete them: each held message named once (they
    // were held one by one, so one warning may name the first and another the rest).
    let warned = || -> Vec<String> {
        sink.delivered()
            .iter()
            .filter(|m| to_admin(m) && subject_of(m).contains("will be deleted by retention"))
            .flat_map(|m| {
                let text = parsed(m).body_text(0).unwrap().into_owned();
                assert!(text.contains(&format!("Storm {storm_id}")), "{text}");
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("Message "))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for(|| warned().len() >= 5).expect("warnings before retention deletes the held mail");
    // A second reminder follows after remind_every; no message is warned of twice.
    wait_for(|| {
        sink.delivered()
            .iter()
            .filter(|m| to_admin(m) && subject_of(m).contains("Reminder:"))
            .count()
            >= 2
    })
    .expect("a second reminder");
    let mut ids = warned();
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!(
        (all, ids.len()),
        (5, 5),
        "each held message warned of once: {ids:?}"
    );
}
