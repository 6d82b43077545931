//! The proxy and the milter on one Postfix, from one process: the proxy relays into a Postfix
//! whose smtpd runs stormbreaker's milter (the README's two recipes combined without
//! `-o smtpd_milters=`). The proxy marks what it relays, so the milter does not count it a
//! second time (the breaker trips at the tenth person, not the fifth), and release marks what
//! it re-injects, so the milter does not hold it again.

use super::{LIST, reply_all};
use crate::support::postfix::milter_main_cf;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::wait_port;
use crate::support::{Postfix, Sink, free_port, token, wait_for};

fn reply(port: u16, thread: &str, i: usize) -> String {
    let headers = format!(
        "Subject: RE: Both {thread}\r\n\
         In-Reply-To: <{thread}@corp.test>\r\nReferences: <{thread}@corp.test>\r\n"
    );
    reply_all(port, LIST, thread, i, &headers, "")
}

fn delivered(sink: &Sink, thread: &str) -> usize {
    sink.delivered()
        .iter()
        .filter(|m| m.text().contains(&format!("{thread}-r")))
        .count()
}

#[test]
fn proxy_and_milter_on_one_postfix_count_once_and_released_mail_is_not_held_again() {
    let sink = Sink::start();
    let milter_port = free_port();
    let postfix = Postfix::start(
        sink.port(),
        &format!(
            "{}smtpd_authorized_xclient_hosts = 127.0.0.0/8\n",
            milter_main_cf(&format!("inet:127.0.0.1:{milter_port}"))
        ),
    );
    let proxy = Stormbreaker::proxy(
        postfix.port,
        "",
        &format!(
            "[policy]\ntrip_replies = 10\nfast_audience = 0\n\
             [[lists]]\naddress = \"{LIST}\"\nmembers = 91053\n\
             [milter]\nlisten = \"127.0.0.1:{milter_port}\"\n"
        ),
    );
    assert!(wait_port(milter_port));
    let thread = token("both").replace('-', "");
    let answers: Vec<String> = (0..14).map(|i| reply(proxy.port, &thread, i)).collect();
    let held: Vec<usize> = (0..14).filter(|&i| answers[i].contains("held")).collect();
    assert_eq!(
        held,
        [10, 11, 12, 13],
        "the tenth person opens: {answers:?}"
    );
    // The ten the proxy let through pass the milter too (marked), none waits in hold.
    assert!(
        wait_for(|| delivered(&sink, &thread) >= 10).is_some(),
        "{:?}\n{}",
        postfix.queue(),
        proxy.log()
    );
    assert!(
        wait_for(|| postfix.queue().is_empty()).is_some(),
        "{:?}",
        postfix.queue()
    );
    assert_eq!(delivered(&sink, &thread), 10);
    // The milter saw each relayed reply (one transaction line each) and let it pass.
    let milter_lines: Vec<_> = proxy
        .log_lines("transaction")
        .into_iter()
        .filter(|l| l["mode"] == "milter")
        .collect();
    assert!(
        milter_lines.len() >= 10 && milter_lines.iter().all(|l| l["decision"] == "deliver"),
        "the milter saw the relayed replies: {}",
        proxy.log()
    );
    let opened = proxy.log_lines("breaker opened");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["senders"], 10);
    // Counted once: ten replies, not twenty.
    assert_eq!(opened[0]["replies"], 10);

    assert_eq!(proxy.quarantine_list().len(), 4);
    // Release everything held: re-injected into the same Postfix, whose milter lets it pass.
    let id = opened[0]["thread"].as_str().unwrap().to_string();
    let out = proxy.admin(&["quarantine", "release", "--thread", &id]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(|| delivered(&sink, &thread) >= 14).is_some(),
        "released mail not delivered; queue {:?}\n{}",
        postfix.queue(),
        proxy.log()
    );
    assert!(wait_for(|| postfix.queue().is_empty()).is_some());
    // Had the milter held a released message again, it would sit in the quarantine as a new
    // entry and never reach the sink.
    assert_eq!(delivered(&sink, &thread), 14);
    // `quarantine list` shows what is held: the four left, and nothing came back.
    let entries = proxy.quarantine_list();
    assert!(
        entries.is_empty(),
        "the milter held released mail again: {entries:?}"
    );
}
