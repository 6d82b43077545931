//! Upstream connection reuse against real peers: a private Postfix per test (XFORWARD,
//! XCLIENT, its idle timeout; each test counts the connections in its log), swaks as the
//! client, and a scripted upstream that drops idle connections.

use crate::support::clients::{swaks, text};
use crate::support::sink::DropsSecondMail;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::wait_for;
use crate::support::{Postfix, Sink};
use std::time::Duration;

fn send(port: u16, helo: &str, subject: &str) -> String {
    let out = swaks(
        port,
        &[
            "--helo",
            helo,
            "--from",
            "a@corp.test",
            "--to",
            "b@corp.test",
            "--header",
            &format!("Subject: {subject}"),
        ],
    );
    text(&out)
}

fn delivered(sink: &Sink, subject: &str) -> bool {
    wait_for(|| !sink.mentioning(subject).is_empty()).is_some()
}

/// Lines of Postfix's log written by smtpd for connections from the proxy.
fn smtpd_lines(postfix: &Postfix, what: &str) -> Vec<String> {
    postfix
        .maillog()
        .lines()
        .filter(|l| l.contains("postfix/smtpd[") && l.contains(what))
        .map(str::to_string)
        .collect()
}

/// Connections the proxy opened to Postfix (the harness's port probes excluded).
fn proxy_connections(postfix: &Postfix) -> usize {
    smtpd_lines(postfix, "]: connect from localhost").len()
        - smtpd_lines(postfix, "lost connection after CONNECT").len()
}

#[test]
fn xforward_sessions_share_one_upstream_connection_and_postfix_logs_each_client() {
    let sink = Sink::start();
    let postfix = Postfix::start(sink.port(), "smtpd_authorized_xforward_hosts = 127.0.0.0/8");
    let mut proxy = Stormbreaker::proxy_with(postfix.port, "", "pass_client = \"xforward\"", "");
    for i in 0..5 {
        let out = send(
            proxy.port,
            &format!("client{i}.test"),
            &format!("reuse-{i}"),
        );
        assert!(out.contains("250 2.0.0 Ok: queued"), "{out}");
    }
    for i in 0..5 {
        assert!(
            delivered(&sink, &format!("reuse-{i}")),
            "reuse-{i} not delivered"
        );
    }
    assert_eq!(
        proxy_connections(&postfix),
        1,
        "five client sessions, one upstream connection:\n{}",
        postfix.maillog()
    );
    // XFORWARD named the real client of each message (in the log; the Received header is
    // Postfix's own, naming the proxy: that is the difference from XCLIENT).
    assert_eq!(smtpd_lines(&postfix, "orig_client=").len(), 5);
    // On SIGTERM the idle connection is closed politely.
    proxy.sigterm();
    assert!(proxy.wait_exit(Duration::from_secs(30)).is_some());
    assert!(
        wait_for(|| {
            smtpd_lines(&postfix, "disconnect from localhost")
                .iter()
                .any(|l| l.contains("mail=5") && l.contains("quit=1"))
        })
        .is_some(),
        "{}",
        postfix.maillog()
    );
}

#[test]
fn xclient_connections_serve_one_client_session_each() {
    let sink = Sink::start();
    let postfix = Postfix::start(sink.port(), "smtpd_authorized_xclient_hosts = 127.0.0.0/8");
    let proxy = Stormbreaker::proxy(postfix.port, "", "");
    for i in 0..3 {
        let out = send(proxy.port, &format!("x{i}.test"), &format!("xclient-{i}"));
        assert!(out.contains("250 2.0.0 Ok: queued"), "{out}");
    }
    for i in 0..3 {
        assert!(delivered(&sink, &format!("xclient-{i}")));
    }
    assert_eq!(proxy_connections(&postfix), 3, "{}", postfix.maillog());
}

#[test]
fn a_connection_postfix_timed_out_while_idle_is_replaced_unseen() {
    let sink = Sink::start();
    let postfix = Postfix::start(
        sink.port(),
        "smtpd_authorized_xforward_hosts = 127.0.0.0/8\nsmtpd_timeout = 2s",
    );
    let proxy = Stormbreaker::proxy_with(
        postfix.port,
        "",
        "pass_client = \"xforward\"\npool_idle_time = \"60s\"",
        "",
    );
    let out = send(proxy.port, "early.test", "before-timeout");
    assert!(out.contains("250 2.0.0 Ok: queued"), "{out}");
    assert!(wait_for(|| !smtpd_lines(&postfix, "timeout after").is_empty()).is_some());
    let out = send(proxy.port, "late.test", "after-timeout");
    assert!(out.contains("250 2.0.0 Ok: queued"), "{out}");
    assert!(delivered(&sink, "after-timeout"));
    assert_eq!(proxy_connections(&postfix), 2, "{}", postfix.maillog());
    // Nothing went wrong (the suite runs as root, which the service rightly warns about).
    let log = proxy.log();
    let troubles: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| !l.contains("running as root"))
        .collect();
    assert!(troubles.is_empty(), "{log}");
}

#[test]
fn mail_on_a_reused_connection_the_upstream_dropped_is_retried_on_a_fresh_one() {
    for mode in ["close", "421"] {
        let upstream = DropsSecondMail::start(mode);
        let proxy = Stormbreaker::proxy(upstream.port, "", "");
        // The upstream offers no XCLIENT, so the first session's connection is pooled; the
        // second session's MAIL meets the drop and must still be accepted, once.
        for i in 0..2 {
            let out = send(proxy.port, "c.test", &format!("{mode}-{i}"));
            assert!(out.contains("250 2.0.0 Ok: queued"), "{mode}: {out}");
        }
        assert_eq!(upstream.events("dropped"), 1, "{mode}");
        assert_eq!(upstream.events("queued"), 2, "{mode}");
        assert_eq!(upstream.events("session"), 2, "{mode}");
    }
}
