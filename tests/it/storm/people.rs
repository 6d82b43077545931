//! Storms are people: through the real proxy in front of the suite's Postfix (and the milter
//! inside another Postfix), one sender's own thread is never held, a wave of new threads from
//! many people to one list is, a few announcements are not, and automatic replies to a list
//! are held from the first while those to one person pass.

use super::{LIST, admin_alerts, held, send, settle};
use crate::support::clients::{Mail, smtplib};
use crate::support::postfix::milter_main_cf;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Postfix, Sink, relay, token, wait_for};

fn policy(extra: &str) -> String {
    format!(
        "[policy]\ntrip_replies = 10\nfast_audience = 0\n{extra}\n\
         [[lists]]\naddress = \"{LIST}\"\nmembers = 91053\n\
         [notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\ninterval = \"30m\"\n"
    )
}

/// A reply to `thread` from `from` to the list.
fn reply(port: u16, thread: &str, from: &str, n: usize) -> String {
    send(
        port,
        from,
        &[LIST],
        &format!(
            "From: <{from}>\r\nTo: <{LIST}>\r\nSubject: RE: Status {thread}\r\n\
             Message-ID: <{thread}-{n}@corp.test>\r\nIn-Reply-To: <{thread}@corp.test>\r\n\
             References: <{thread}@corp.test>\r\n"
        ),
        &format!("{thread}-{n}"),
    )
}

/// A new message (no thread headers) with its own subject.
fn new_message(port: u16, tag: &str, from: &str, subject: &str, n: usize) -> String {
    send(
        port,
        from,
        &[LIST],
        &format!(
            "From: <{from}>\r\nTo: <{LIST}>\r\nSubject: {subject}\r\n\
             Message-ID: <{tag}-{n}@corp.test>\r\n"
        ),
        &format!("{tag}-{n}"),
    )
}

#[test]
fn an_operations_desk_updating_its_own_thread_is_never_held_and_people_still_trip_it() {
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(""));
    let thread = token("opsdesk").replace('-', "");
    // 15 updates from the desk to everybody, in its own thread: one person, no storm.
    for n in 0..15 {
        let answer = reply(proxy.port, &thread, "ops-desk@corp.test", n);
        assert!(
            answer.starts_with("250") && !held(&answer),
            "update {n}: {answer}"
        );
    }
    // Nine colleagues reply to all: with the desk ten people, the ninth opens the breaker.
    let answers: Vec<String> = (0..11)
        .map(|i| {
            reply(
                proxy.port,
                &thread,
                &format!("colleague{i}@corp.test"),
                100 + i,
            )
        })
        .collect();
    assert!(answers[..9].iter().all(|a| !held(a)), "{answers:?}");
    assert!(answers[9..].iter().all(|a| held(a)), "{answers:?}");
    let opened = proxy.log_lines("breaker opened");
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0]["senders"], 10);
    assert_eq!(
        opened[0]["replies"], 24,
        "the desk's updates are counted, once per person"
    );
}

#[test]
fn a_wave_of_new_threads_is_held_and_a_few_announcements_are_not() {
    let proxy = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        &policy(
            "wave_senders = 6\nwave_window = \"15m\"\nwave_exempt_senders = [\"hr@corp.test\"]",
        ),
    );
    let tag = token("wave").replace('-', "");
    // Three announcements from two senders pass.
    for (n, from) in ["comms@corp.test", "it@corp.test", "comms@corp.test"]
        .iter()
        .enumerate()
    {
        let answer = new_message(
            proxy.port,
            &tag,
            from,
            &format!("Announcement {n} {tag}"),
            n,
        );
        assert!(!held(&answer), "announcement {n}: {answer}");
    }
    // Then people write to everybody, each their own new thread: with the two announcers,
    // the fourth person is the sixth sender and opens the wave breaker; the rest are held.
    let subjects = [
        "Please remove me",
        "Why am I on this list?",
        "unsubscribe",
        "STOP",
        "Who is this for?",
        "Me too",
        "Take me off",
        "?",
    ];
    let answers: Vec<String> = subjects
        .iter()
        .enumerate()
        .map(|(i, s)| {
            new_message(
                proxy.port,
                &tag,
                &format!("person{i}@corp.test"),
                &format!("{s} {tag}"),
                10 + i,
            )
        })
        .collect();
    assert!(answers[..4].iter().all(|a| !held(a)), "{answers:?}");
    assert!(answers[4..].iter().all(|a| held(a)), "{answers:?}");
    // An exempt announcer's news still goes out during the wave.
    let hr = new_message(
        proxy.port,
        &tag,
        "hr@corp.test",
        &format!("HR news {tag}"),
        50,
    );
    assert!(!held(&hr), "{hr}");
    let listed = proxy.quarantine_list();
    let ours: Vec<_> = listed
        .iter()
        .filter(|e| e["subject"].as_str().unwrap_or("").contains(&tag))
        .collect();
    assert_eq!(ours.len(), 4);
    for e in &ours {
        assert_eq!(e["breaker"], "wave");
        assert_eq!(e["thread"], format!("wave:{LIST}"));
    }
    // One alert for the wave.
    assert!(wait_for(|| !admin_alerts(&format!("wave:{LIST}")).is_empty()).is_some());
    settle();
    assert_eq!(admin_alerts(&format!("wave:{LIST}")).len(), 1);
}

fn out_of_office(from: &str, to: &[&str], tag: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: Automatic reply: Status {tag}\r\n\
         Message-ID: <{tag}-{}@corp.test>\r\nIn-Reply-To: <{tag}@corp.test>\r\n\
         Auto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\n",
        to.join(", "),
        to.len()
    )
}

#[test]
fn automatic_replies_to_the_list_are_held_from_the_first_through_the_proxy() {
    let proxy = Stormbreaker::proxy(relay().postfix.port, "", &policy(""));
    let tag = token("oof").replace('-', "");
    // RFC 3834: the null envelope sender; the header From names the responder.
    let wide = send(
        proxy.port,
        "",
        &[LIST],
        &out_of_office("away@corp.test", &[LIST], &tag),
        &format!("{tag} I am away"),
    );
    assert!(held(&wide), "{wide}");
    let entry = proxy
        .quarantine_list()
        .into_iter()
        .find(|e| e["subject"].as_str().unwrap_or("").contains(&tag))
        .expect("listed");
    assert_eq!(entry["breaker"], "auto-reply");
    assert_eq!(entry["thread"], "auto-reply:away@corp.test");
    // To the sender alone (and a colleague), it passes.
    let narrow = send(
        proxy.port,
        "",
        &["boss@corp.test", "colleague@corp.test"],
        &out_of_office(
            "away@corp.test",
            &["boss@corp.test", "colleague@corp.test"],
            &tag,
        ),
        &format!("{tag} I am away"),
    );
    assert!(narrow.starts_with("250") && !held(&narrow), "{narrow}");
    settle();
    let delivered = relay().sink.mentioning(&format!("{tag} I am away"));
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].addresses(),
        ["boss@corp.test", "colleague@corp.test"]
    );
}

#[test]
fn automatic_replies_to_the_list_are_held_from_the_first_by_the_milter() {
    let sink = Sink::start();
    let sb = Stormbreaker::milter_without_trace_header(&policy(""));
    let postfix = Postfix::start(sink.port(), &milter_main_cf(&sb.milter_address()));
    let tag = token("moof").replace('-', "");
    let mail = |to: &[&str]| Mail {
        from: String::new(),
        to: to.iter().map(|s| s.to_string()).collect(),
        data: format!(
            "{}\r\n{tag} I am away\r\n",
            out_of_office("away@corp.test", to, &tag)
        ),
        rset: false,
    };
    let out = smtplib(postfix.port, &[mail(&[LIST]), mail(&["boss@corp.test"])]);
    assert!(out.iter().all(|o| o.code == 250), "{out:?}");
    // The one to the list is held in the quarantine (Postfix discards it); the one to the
    // boss arrives.
    assert!(
        wait_for(|| sb.quarantine_list().len() == 1 && postfix.queue().is_empty()).is_some(),
        "{:?}\n{}",
        postfix.queue(),
        sb.log()
    );
    assert_eq!(sb.quarantine_list()[0]["breaker"], "auto-reply");
    let delivered = sink.mentioning(&format!("{tag} I am away"));
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].addresses(), ["boss@corp.test"]);
    let line = sb.log_lines("message held in quarantine");
    assert_eq!(line.len(), 1, "{}", sb.log());
    assert_eq!(line[0]["breaker"], "auto-reply");
}
