//! Reply-all storms through the real proxy in front of the suite's Postfix: what is delivered,
//! held, refused; alerts; release; the admin API; and kill -9 in the middle of a storm.

use super::{LIST, reply_all, settle};
use crate::support::clients::{Raw, swaks, text};
use crate::support::postfix::milter_main_cf;
use crate::support::sink::Delivered;
use crate::support::stormbreaker::{Stormbreaker, assert_held_entry_fields};
use crate::support::wait::{wait_for, wait_port};
use crate::support::{Postfix, free_port, relay, token};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Policy for a storm test: one list of 91,053, the given action, fast trip off so the
/// reply count rule is what trips, and alerts to an admin.
fn policy(action: &str, list: &str, admin_port: Option<u16>) -> String {
    let admin = admin_port
        .map(|p| format!("[admin]\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[policy]\naction = \"{action}\"\ntrip_replies = 10\nfast_audience = 0\n\
[[lists]]\naddress = \"{list}\"\nmembers = 91053\n\
[notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\ninterval = \"30m\"\n{admin}"
    )
}

/// One reply-all in the style of client `i % 3`; returns the message's unique tag.
fn reply(port: u16, thread: &str, i: usize, list: &str) -> (String, String) {
    let tag = format!("{thread}-r{i}");
    let threading = match i % 3 {
        0 => format!("In-Reply-To: <{thread}@corp.test>\r\nReferences: <{thread}@corp.test>\r\n"),
        1 => format!("References: <{thread}@corp.test>\r\n"),
        _ => String::new(),
    };
    let headers = format!("Subject: RE: Welcome {thread}\r\n{threading}");
    let answer = reply_all(port, list, thread, i, &headers, "Please remove me. ");
    (tag, answer)
}

fn original(port: u16, thread: &str, list: &str) {
    let out = swaks(
        port,
        &[
            "--from",
            "hr@corp.test",
            "--to",
            list,
            "--header",
            &format!("Subject: Welcome {thread}"),
            "--header",
            &format!("Message-ID: <{thread}@corp.test>"),
        ],
    );
    assert!(
        text(&out).contains("250 2.0.0 Ok: queued"),
        "{}",
        text(&out)
    );
}

/// Tags of the replies of `thread` at the sink behind Postfix.
fn delivered_tags(thread: &str) -> HashSet<String> {
    relay()
        .sink
        .delivered()
        .iter()
        .filter_map(|m| {
            let c = m.text();
            let at = c.find(&format!("{thread}-r"))?;
            let tag: String = c[at..]
                .chars()
                .take_while(|ch| !ch.is_whitespace() && *ch != '@')
                .collect();
            Some(tag)
        })
        .collect()
}

#[test]
fn an_atos_storm_is_held_after_trip_replies_then_released_by_thread() {
    let admin = free_port();
    let proxy = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        &policy("quarantine", LIST, Some(admin)),
    );
    let thread = token("atos").replace('-', "");
    original(proxy.port, &thread, LIST);
    let mut held = 0;
    for i in 0..40 {
        let (_, answer) = reply(proxy.port, &thread, i, LIST);
        assert!(answer.starts_with("250"), "reply {i}: {answer}");
        if answer.contains("held") {
            held += 1;
        }
    }
    assert_eq!(held, 30, "trip_replies = 10: replies 11..40 are held");
    let hold_log = proxy.log();
    assert!(
        hold_log.contains("message held in quarantine"),
        "{hold_log}"
    );
    // The first ten replies went through Postfix to the sink, no more.
    assert!(wait_for(|| delivered_tags(&thread).len() >= 10).is_some());
    settle();
    assert_eq!(delivered_tags(&thread).len(), 10);
    // Exactly one alert for the breaker opening, with the release command.
    let alerts: Vec<Delivered> = relay()
        .sink
        .mentioning(&thread)
        .into_iter()
        .filter(|m| m.rcpts.iter().any(|r| r.contains("admin@corp.test")))
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "one alert per breaker opening: {:#?}",
        alerts.iter().map(|m| m.text()).collect::<Vec<_>>()
    );
    let alert = alerts[0].text();
    assert!(
        alert.contains("quarantine") && alert.contains("release"),
        "{alert}"
    );

    // The quarantine lists them with the documented fields.
    let listed = proxy.quarantine_list();
    let ours: Vec<_> = listed
        .iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .collect();
    assert_eq!(ours.len(), 30);
    for e in &ours {
        assert_held_entry_fields(e);
        assert_eq!(e["rcpt_to"][0], LIST);
    }
    let key = ours[0]["thread"].as_str().unwrap().to_string();

    // The admin API sees the open breaker, and metrics count the holds.
    let breakers = http_get(admin, "/breakers");
    assert!(
        breakers.contains(&thread.to_lowercase()) || breakers.contains(&key),
        "{breakers}"
    );
    let metrics = http_get(admin, "/metrics");
    assert!(
        metrics.contains("stormbreaker_quarantine_held_total 30"),
        "{metrics}"
    );

    // Release the whole thread: everything arrives, to the original recipient.
    let out = proxy.admin(&["quarantine", "release", "--thread", &key]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_for(|| delivered_tags(&thread).len() >= 40).is_some());
    assert_eq!(delivered_tags(&thread).len(), 40);
    assert!(
        proxy
            .quarantine_list()
            .iter()
            .all(|e| !e["subject"].as_str().unwrap_or("").contains(&thread))
    );
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A loopback Host: without [admin] token_file the API answers no other name.
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn reject_and_tempfail_actions_answer_with_the_policy_codes() {
    for (action, code) in [("reject", "550 5.7.1"), ("tempfail", "451 4.7.1")] {
        let proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(action, LIST, None));
        let thread = token(action).replace('-', "");
        original(proxy.port, &thread, LIST);
        let answers: Vec<String> = (0..14)
            .map(|i| reply(proxy.port, &thread, i, LIST).1)
            .collect();
        assert!(
            answers[..10].iter().all(|a| a.starts_with("250")),
            "{answers:?}"
        );
        for a in &answers[10..] {
            assert!(a.starts_with(code), "{action}: {a}");
            assert!(
                a.to_lowercase().contains("reply"),
                "the text says what to do: {a}"
            );
        }
        settle();
        assert_eq!(delivered_tags(&thread).len(), 10);
    }
}

#[test]
fn log_action_delivers_everything_and_logs_would_hold() {
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy("log", LIST, None));
    let thread = token("dry").replace('-', "");
    original(proxy.port, &thread, LIST);
    for i in 0..14 {
        assert!(reply(proxy.port, &thread, i, LIST).1.starts_with("250"));
    }
    assert!(wait_for(|| delivered_tags(&thread).len() >= 14).is_some());
    assert!(
        wait_for(|| proxy.log().contains("would-hold")).is_some(),
        "{}",
        proxy.log()
    );
}

#[test]
fn breaker_commands_trip_and_reset_a_running_proxy() {
    let admin = free_port();
    let proxy = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        &policy("reject", LIST, Some(admin)),
    );
    let thread = token("manual").replace('-', "");
    let key = format!("subj:welcome {thread}");
    let run = |args: &[&str]| proxy.admin(&[&["breaker"], args].concat());
    assert!(run(&["trip", &key]).status.success());
    let (_, answer) = reply(proxy.port, &thread, 0, LIST);
    assert!(answer.starts_with("550 5.7.1"), "tripped by hand: {answer}");
    let listed = String::from_utf8_lossy(&run(&["list"]).stdout).to_string();
    assert!(listed.contains(&key), "{listed}");
    assert!(run(&["reset", &key]).status.success());
    let (_, answer) = reply(proxy.port, &thread, 1, LIST);
    assert!(answer.starts_with("250"), "reset: {answer}");
}

/// Issue 4: kill -9 while 50 clients send a storm; after restart every message a client got
/// 250 for is at the upstream or complete in the quarantine, and nothing torn is there.
#[test]
fn kill_9_mid_storm_loses_no_acknowledged_message() {
    let mut proxy =
        Stormbreaker::proxy(relay().postfix.port, "", &policy("quarantine", LIST, None));
    let port = proxy.port;
    let thread = token("crash").replace('-', "");
    original(port, &thread, LIST);
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..50 {
        let acked = acked.clone();
        let thread = thread.clone();
        clients.push(std::thread::spawn(move || {
            for n in 0..20 {
                let i = c * 100 + n;
                let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
                let mut raw = Raw::over(stream);
                if !raw.reply().starts_with("220") {
                    return;
                }
                let steps = [
                    "EHLO crash.test".to_string(),
                    format!("MAIL FROM:<user{i}@corp.test>"),
                    format!("RCPT TO:<{LIST}>"),
                    "DATA".to_string(),
                ];
                for s in &steps {
                    let r = raw.cmd(s);
                    if !(r.starts_with('2') || r.starts_with('3')) {
                        return;
                    }
                }
                let tag = format!("{thread}-r{i}");
                raw.send(
                    format!("Subject: RE: Welcome {thread}\r\nIn-Reply-To: <{thread}@corp.test>\r\nMessage-ID: <{tag}@corp.test>\r\n\r\n{tag}\r\n.\r\n").as_bytes(),
                );
                if raw.reply().starts_with("250") {
                    acked.lock().unwrap().push(tag);
                }
            }
        }));
    }
    // Kill once the storm is under way.
    assert!(wait_for(|| acked.lock().unwrap().len() >= 100).is_some());
    proxy.kill();
    for c in clients {
        let _ = c.join();
    }
    let _ = proxy.wait_exit(Duration::from_secs(10));
    let acked: Vec<String> = acked.lock().unwrap().clone();

    // Restart on the same quarantine: the store cleans what a dead writer left.
    let restarted = proxy.admin(&["quarantine", "list", "--json"]);
    assert!(restarted.status.success());
    let stderr = String::from_utf8_lossy(&restarted.stderr);
    assert!(
        !stderr.contains("damaged"),
        "a torn message was left: {stderr}"
    );
    let held: Vec<serde_json::Value> = serde_json::from_slice(&restarted.stdout).unwrap();
    let held_tags: HashSet<String> = held
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .map(|id| {
            id.trim_matches(['<', '>'])
                .trim_end_matches("@corp.test")
                .to_string()
        })
        .collect();
    settle();
    let delivered = delivered_tags(&thread);
    for tag in &acked {
        assert!(
            delivered.contains(tag) || held_tags.contains(tag),
            "{tag} got 250 but is neither delivered nor held"
        );
    }
    // Unfinished writes of the dead proxy are cleaned (an empty temporary folder, from a kill
    // between its creation and its message file's, is removed after a grace period).
    let tmp = proxy.dir.path().join("quarantine/tmp");
    let unfinished = std::fs::read_dir(&tmp)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join("message").exists())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(unfinished, 0, "temporary files of dead writers are cleaned");
}

/// Issue 5: one process, proxy and milter on one engine. Replies alternate between the proxy
/// (in front of one Postfix) and a second Postfix that asks the milter: one storm, one count.
#[test]
fn a_storm_split_between_proxy_and_milter_is_one_storm() {
    let milter_port = free_port();
    let with_milter = Postfix::start(
        relay().sink.port(),
        &milter_main_cf(&format!("inet:127.0.0.1:{milter_port}")),
    );
    let extra = format!(
        "{}[milter]\nlisten = \"127.0.0.1:{milter_port}\"\n",
        policy("quarantine", LIST, None)
    );
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &extra);
    assert!(wait_port(milter_port));
    let thread = token("split").replace('-', "");
    original(proxy.port, &thread, LIST);
    for i in 0..30 {
        let port = if i % 2 == 0 {
            proxy.port
        } else {
            with_milter.port
        };
        let (_, answer) = reply(port, &thread, i, LIST);
        assert!(answer.starts_with("250"), "reply {i}: {answer}");
    }
    settle();
    let delivered = delivered_tags(&thread);
    assert_eq!(
        delivered.len(),
        10,
        "one count across both front ends: {delivered:?}"
    );
    // Held through either front end: in the one quarantine, 10 from each.
    let held = proxy
        .quarantine_list()
        .into_iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&thread))
        .count();
    assert_eq!(held, 20);
    let modes: Vec<String> = proxy
        .log_lines("transaction")
        .iter()
        .filter(|l| l["decision"] == "quarantine")
        .filter_map(|l| l["mode"].as_str().map(str::to_string))
        .collect();
    assert_eq!(modes.iter().filter(|m| *m == "milter").count(), 10);
    assert_eq!(modes.iter().filter(|m| *m == "proxy").count(), 10);
    assert!(
        with_milter.held().is_empty(),
        "Postfix discarded its copies"
    );
}
