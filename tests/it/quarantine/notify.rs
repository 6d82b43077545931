//! Alert mail sent for real: to a recording sink of its own (exact counts), and through the
//! suite's Postfix (a real MTA accepts and relays it).

use super::{envelope, hold};
use crate::support::{Sink, free_port, relay, token, wait_for};
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
        n.message_held(&bob, &h, now + 2 + i);
    }
    bob.mail_from = "carol@corp.test".into();
    n.message_held(&bob, &h, now + 10);
    bob.mail_from = String::new();
    n.message_held(&bob, &h, now + 11);
    assert_eq!(n.flush().await, (3, 0));

    let d = sink.delivered();
    assert_eq!(d.len(), 3, "one alert, one notice each to bob and carol");
    assert!(
        d.iter()
            .all(|m| m.mail_from.starts_with("<stormbreaker@corp.test>"))
    );
    // Sent concurrently: find each by its recipients.
    let alerts: Vec<_> = d.iter().filter(|m| m.rcpts.len() == 2).collect();
    assert_eq!(alerts.len(), 1);
    let alert = alerts[0];
    assert_eq!(alert.addresses(), ["admin@corp.test", "ops@corp.test"]);
    assert_eq!(
        header(&alert.content, "Auto-Submitted"),
        Some("auto-generated")
    );
    let body = alert.text();
    assert!(
        body.contains(
            "stormbreaker quarantine --config /etc/sb/policy.toml release --thread tidx:quarterly"
        ),
        "{body}"
    );
    let notices: Vec<_> = d.iter().filter(|m| m.rcpts.len() == 1).collect();
    let mut told: Vec<Vec<String>> = notices.iter().map(|m| m.addresses()).collect();
    told.sort();
    assert_eq!(told, [["bob@corp.test"], ["carol@corp.test"]]);
    assert!(
        notices
            .iter()
            .all(|m| m.text().contains("reply to the original sender only"))
    );
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
    assert!(
        header(&d[0].content, "Subject")
            .unwrap()
            .contains(&format!("Reply-all storm stopped on thread {thread}"))
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
    n.message_held(&envelope(), &hold("t"), 1);
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
