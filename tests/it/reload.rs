//! `kill -HUP` reloads the whole policy file: a session open across the reload goes on, new
//! sessions get the new policy and lists, a broken file keeps the running one, and settings
//! that need a restart are named.

use crate::support::clients::Raw;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::wait_for;
use crate::support::{relay, token};

/// One wide reply on `thread` from `from` to `list`; the proxy's answer to the final dot.
fn reply(c: &mut Raw, thread: &str, from: &str, list: &str) -> String {
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{list}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!(
            "From: <{from}>\r\nTo: <{list}>\r\nSubject: RE: {thread}\r\n\
             In-Reply-To: <{thread}@corp.test>\r\n\r\nreply from {from}\r\n.\r\n"
        )
        .as_bytes(),
    );
    c.reply()
}

fn policy(port: u16, trip: u32, lists: &str, max_connections: u32) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"sb.test\"\nmax_connections = {max_connections}\n\
         [upstream]\naddress = \"{}\"\n\
         [policy]\ntrip_replies = {trip}\nfast_audience = 0\n{lists}",
        relay().postfix.address()
    )
}

fn hup(sb: &Stormbreaker) {
    sb.signal("-HUP");
}

#[test]
fn sighup_reloads_the_policy_and_keeps_it_when_the_new_file_is_broken() {
    let list = format!("{}@corp.test", token("reload-list"));
    let declared = format!("[[lists]]\naddress = \"{list}\"\nmembers = 5000\n");
    let sb = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        "[policy]\ntrip_replies = 5\nfast_audience = 0\n",
    );
    let port = sb.port;
    // The harness's [quarantine] and [log] sections stay as they were.
    let first = std::fs::read_to_string(&sb.config).unwrap();
    let tail = first[first.find("[quarantine]").unwrap()..]
        .split("[policy]")
        .next()
        .unwrap()
        .to_string();
    let keep = |text: &str| std::fs::write(&sb.config, format!("{text}\n{tail}")).unwrap();

    // A session opened before the reload and kept open across it.
    let mut open = Raw::connect(port);
    assert!(open.cmd("EHLO before.test").starts_with("250"));

    // trip_replies 5 -> 2, and the list becomes known (before, mail to it was narrow).
    keep(&policy(port, 2, &declared, 1000));
    hup(&sb);
    assert!(
        wait_for(|| !sb.log_lines("configuration reloaded").is_empty()).is_some(),
        "no reload logged: {}",
        sb.log()
    );

    let thread = token("reload-thread");
    let mut answers = Vec::new();
    for i in 0..4 {
        let mut c = Raw::connect(port);
        c.cmd("EHLO after.test");
        answers.push(reply(&mut c, &thread, &format!("user{i}@corp.test"), &list));
    }
    assert!(answers[0].starts_with("250 2.0.0 Ok"), "{answers:?}");
    assert!(
        answers[1].starts_with("250 2.0.0 Ok"),
        "the second reply trips: {answers:?}"
    );
    assert!(
        answers[2].contains("held"),
        "the new policy holds the third: {answers:?}"
    );
    assert!(answers[3].contains("held"), "{answers:?}");

    // The session from before the reload is still served.
    assert!(open.cmd("NOOP").starts_with("250"));
    let r = reply(
        &mut open,
        &token("old-session"),
        "old@corp.test",
        "someone@corp.test",
    );
    assert!(r.starts_with("250 2.0.0 Ok"), "{r}");

    // A broken file: logged, and the running policy stays (trip at 2, the list known).
    std::fs::write(
        &sb.config,
        "[proxy]\nlisten = \"127.0.0.1:1\"\n[policy]\ntrip_replies = 0\n",
    )
    .unwrap();
    hup(&sb);
    assert!(
        wait_for(|| !sb.log_lines("does not validate").is_empty()).is_some(),
        "{}",
        sb.log()
    );
    let thread = token("reload-kept");
    let mut answers = Vec::new();
    for i in 0..3 {
        let mut c = Raw::connect(port);
        c.cmd("EHLO after.test");
        answers.push(reply(&mut c, &thread, &format!("user{i}@corp.test"), &list));
    }
    assert!(answers[2].contains("held"), "still trips at 2: {answers:?}");

    // A setting only a restart changes is named.
    keep(&policy(port, 2, &declared, 999));
    hup(&sb);
    let named = wait_for(|| {
        sb.log_lines("take effect only after a restart")
            .into_iter()
            .find(|l| {
                l["restart_needed"]
                    .as_str()
                    .is_some_and(|r| r.contains("proxy.max_connections"))
            })
    });
    assert!(named.is_some(), "{}", sb.log());
}
