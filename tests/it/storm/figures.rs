//! Figures, not a test of the suite (ignored; BENCHMARKS.md shows how to run it): storms of
//! every shape the issue names, with ordinary mail in between, through the proxy in front of
//! Postfix, through Postfix with the milter, and through two proxies on one Redis. Prints, per
//! shape and front end, how many storm messages were held and how many ordinary ones were, and
//! checks the targets (at least 97% of storm messages held, no ordinary one, no split reply
//! held in part).
//!
//! `cargo test --test it storm::figures -- --ignored --nocapture`

use super::thread_index;
use crate::support::clients::{Mail, smtplib};
use crate::support::postfix::milter_main_cf;
use crate::support::redis::RedisServer;
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{Postfix, Sink, relay, token, wait_for};
use std::collections::BTreeMap;

/// Messages per storm: with `trip_replies = 10` and `wave_senders = 10`, the ten that open a
/// breaker pass, so a storm of 400 can at best be 97.5% held.
const STORM: usize = 400;
const OOF: usize = 50;
const BATCH: usize = 20;

fn policy() -> String {
    // wide_audience 120 makes the scaled split shape (150 people as 100 + 50) wide.
    "[policy]\nwide_audience = 120\ntrip_replies = 10\nwave_senders = 10\nfast_audience = 50000\n\
     [[lists]]\naddress = \"atos@corp.test\"\nmembers = 91053\n\
     [[lists]]\naddress = \"wave@corp.test\"\nmembers = 12000\n\
     [[lists]]\naddress = \"oof@corp.test\"\nmembers = 5000\n\
     [[lists]]\naddress = \"ops@corp.test\"\nmembers = 5000\n\
     [[lists]]\naddress = \"news@corp.test\"\nmembers = 12000\n\
     [[lists]]\naddress = \"team@corp.test\"\nmembers = 3000\n\
     [notify]\nfrom = \"stormbreaker@corp.test\"\n"
        .to_string()
}

fn mail(from: &str, to: &[String], headers: &str, body: &str) -> Mail {
    Mail {
        from: from.into(),
        to: to.to_vec(),
        data: format!(
            "From: <{from}>\r\nTo: {}\r\n{headers}\r\n{body}\r\n",
            to.join(",\r\n ")
        ),
        rset: false,
    }
}

fn list(name: &str) -> Vec<String> {
    vec![format!("{name}@corp.test")]
}

/// Reply `i` of the Atos-shaped storm, from one of four mail clients.
fn atos(tag: &str, i: usize) -> Mail {
    let threading = match i % 4 {
        0 => format!(
            "Thread-Topic: Office {tag}\r\nThread-Index: {}\r\n",
            thread_index(0x5a, 1 + i % 5)
        ),
        1 => format!("In-Reply-To: <{tag}@corp.test>\r\nReferences: <{tag}@corp.test>\r\n"),
        2 => format!(
            "In-Reply-To: <{tag}-atos-{}@corp.test>\r\nReferences: <{tag}@corp.test> <{tag}-atos-{}@corp.test>\r\n",
            i / 2,
            i / 2
        ),
        _ => String::new(),
    };
    let prefix = ["RE", "Re", "Re", "AW"][i % 4];
    mail(
        &format!("atos-{i}@corp.test"),
        &list("atos"),
        &format!(
            "Subject: {prefix}: Office {tag}\r\n{threading}Message-ID: <{tag}-atos-{i}@corp.test>\r\n"
        ),
        "Please remove me from this list.",
    )
}

/// New message `i` of a wave: its own subject, no thread headers.
fn wave(tag: &str, i: usize) -> Mail {
    mail(
        &format!("wave-{i}@corp.test"),
        &list("wave"),
        &format!("Subject: Question {i} {tag}\r\nMessage-ID: <{tag}-wave-{i}@corp.test>\r\n"),
        "Why am I getting these?",
    )
}

fn oof(tag: &str, i: usize) -> Mail {
    mail(
        &format!("oof-{i}@corp.test"),
        &list("oof"),
        &format!(
            "Subject: Automatic reply: Office {tag}\r\nAuto-Submitted: auto-replied\r\n\
             In-Reply-To: <{tag}@corp.test>\r\nMessage-ID: <{tag}-oof-{i}@corp.test>\r\n"
        ),
        "I am out of the office.",
    )
}

fn people(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("p{i}@corp.test")).collect()
}

/// Reply `i` to 150 explicit addresses (sent through a Postfix that splits it as 100 + 50).
fn split(tag: &str, i: usize) -> Mail {
    mail(
        &format!("split-{i}@corp.test"),
        &people(150),
        &format!(
            "Subject: RE: Offsite {tag}\r\nIn-Reply-To: <{tag}-offsite@corp.test>\r\n\
             Message-ID: <{tag}-split-{i}@corp.test>\r\n"
        ),
        "Count me in.",
    )
}

/// Ordinary mail, `round` of many: a desk's updates to its own thread, announcements, a team
/// discussion below the threshold, one-to-one mail, and a reply to 150 people split by Postfix.
fn ordinary(tag: &str, round: usize) -> Vec<Mail> {
    let mut out = vec![mail(
        "ord-desk@corp.test",
        &list("ops"),
        &format!(
            "Subject: RE: Incident {tag}\r\nIn-Reply-To: <{tag}-incident@corp.test>\r\n\
             Message-ID: <{tag}-desk-{round}@corp.test>\r\n"
        ),
        "Update: still investigating.",
    )];
    if round.is_multiple_of(4) {
        let who = ["ord-comms", "ord-it", "ord-hr"][round / 4 % 3];
        out.push(mail(
            &format!("{who}@corp.test"),
            &list("news"),
            &format!("Subject: Announcement {round} {tag}\r\nMessage-ID: <{tag}-news-{round}@corp.test>\r\n"),
            "Please read.",
        ));
    }
    // Eight people, each replying now and then: never ten in the window.
    out.push(mail(
        &format!("ord-team{}@corp.test", round % 8),
        &list("team"),
        &format!(
            "Subject: Re: Planning {tag}\r\nIn-Reply-To: <{tag}-planning@corp.test>\r\n\
             Message-ID: <{tag}-team-{round}@corp.test>\r\n"
        ),
        "Sounds good.",
    ));
    out.push(mail(
        &format!("ord-friend{round}@corp.test"),
        &[format!("colleague{round}@corp.test"), "boss@corp.test".into()],
        &format!("Subject: RE: Lunch {tag}\r\nMessage-ID: <{tag}-lunch-{round}@corp.test>\r\nIn-Reply-To: <{tag}-lunch@corp.test>\r\n"),
        "Yes.",
    ));
    out
}

/// Where the figures' mail goes and how held mail is found there.
enum FrontEnd {
    Proxy(Stormbreaker),
    Milter {
        sb: Stormbreaker,
        postfix: Postfix,
        _sink: Sink,
    },
    TwoProxies([Stormbreaker; 2]),
}

impl FrontEnd {
    fn name(&self) -> &'static str {
        match self {
            FrontEnd::Proxy(_) => "proxy",
            FrontEnd::Milter { .. } => "milter",
            FrontEnd::TwoProxies(_) => "2 proxies, Redis",
        }
    }

    /// SMTP ports to send to, used in turn batch by batch.
    fn ports(&self) -> Vec<u16> {
        match self {
            FrontEnd::Proxy(p) => vec![p.port],
            FrontEnd::Milter { postfix, .. } => vec![postfix.port],
            FrontEnd::TwoProxies(p) => vec![p[0].port, p[1].port],
        }
    }

    /// Held transactions: (envelope sender, recipients).
    fn held(&self) -> Vec<(String, usize)> {
        let from_quarantine = |sb: &Stormbreaker| {
            sb.quarantine_list()
                .into_iter()
                .map(|e| {
                    (
                        e["mail_from"].as_str().unwrap_or("").to_string(),
                        e["rcpt_to"].as_array().map_or(0, |r| r.len()),
                    )
                })
                .collect::<Vec<_>>()
        };
        match self {
            FrontEnd::Proxy(p) => from_quarantine(p),
            FrontEnd::TwoProxies(p) => [from_quarantine(&p[0]), from_quarantine(&p[1])].concat(),
            // The milter keeps what it holds in its quarantine; Postfix discards its copy.
            FrontEnd::Milter { sb, .. } => from_quarantine(sb),
        }
    }
}

fn send_batches(ports: &[u16], mails: Vec<Mail>) {
    for (n, batch) in mails.chunks(BATCH).enumerate() {
        let port = ports[n % ports.len()];
        let out = smtplib(port, batch);
        assert!(out.iter().all(|o| o.code == 250), "{out:?}");
    }
}

/// Sends every shape through one front end; returns rows (shape, messages, held, split).
fn run(front: &FrontEnd, senders: &[Postfix]) -> Vec<(String, usize, usize, usize)> {
    let tag = token("fig").replace('-', "");
    let ports = front.ports();
    let (mut round, mut ordinary_sent) = (0, 0);
    let mut ordinary_mail = |mails: &mut Vec<Mail>| {
        for _ in 0..2 {
            let more = ordinary(&tag, round);
            ordinary_sent += more.len();
            mails.extend(more);
            round += 1;
        }
    };
    for shape in ["atos", "wave", "oof"] {
        let n = if shape == "oof" { OOF } else { STORM };
        let mut mails = Vec::new();
        for i in 0..n {
            mails.push(match shape {
                "atos" => atos(&tag, i),
                "wave" => wave(&tag, i),
                _ => oof(&tag, i),
            });
            if i % 10 == 9 {
                ordinary_mail(&mut mails);
            }
        }
        send_batches(&ports, mails);
    }
    // The split shape goes through the sending MTAs, which split each reply as 100 + 50.
    for (n, i) in (0..STORM).step_by(BATCH).enumerate() {
        let sender = &senders[n % senders.len()];
        let mut batch: Vec<Mail> = (i..(i + BATCH).min(STORM))
            .map(|i| split(&tag, i))
            .collect();
        ordinary_mail(&mut batch);
        let out = smtplib(sender.port, &batch);
        assert!(out.iter().all(|o| o.code == 250), "{out:?}");
        assert!(
            wait_for(|| sender.queue().is_empty()).is_some(),
            "{:?}",
            sender.queue()
        );
    }
    // Everything decided: count what is held, by envelope sender.
    let held = front.held();
    let mut by_sender: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (sender, rcpts) in held {
        by_sender.entry(sender).or_default().push(rcpts);
    }
    let mut rows = Vec::new();
    for (shape, n) in [
        ("atos", STORM),
        ("wave", STORM),
        ("oof", OOF),
        ("split", STORM),
    ] {
        let mine: Vec<&Vec<usize>> = by_sender
            .iter()
            .filter(|(s, _)| s.starts_with(&format!("{shape}-")))
            .map(|(_, v)| v)
            .collect();
        let partly = if shape == "split" {
            mine.iter()
                .filter(|v| v.iter().sum::<usize>() != 150)
                .count()
        } else {
            0
        };
        rows.push((shape.to_string(), n, mine.len(), partly));
    }
    let ordinary_held = by_sender
        .iter()
        .filter(|(s, _)| s.starts_with("ord-"))
        .count();
    rows.push(("ordinary".into(), ordinary_sent, ordinary_held, 0));
    rows
}

#[test]
#[ignore = "figures for BENCHMARKS.md; run with --ignored --nocapture"]
fn storm_figures() {
    let milter_sink = Sink::start();
    let mut table = Vec::new();
    let fronts: Vec<Box<MakeFront>> = vec![
        Box::new(|| {
            let p = Stormbreaker::proxy(relay().postfix.port, "", &policy());
            let s = split_sender(p.port);
            (FrontEnd::Proxy(p), vec![s])
        }),
        Box::new(move || {
            let sb = Stormbreaker::milter_without_trace_header(&policy());
            let postfix = Postfix::start(milter_sink.port(), &milter_main_cf(&sb.milter_address()));
            let s = split_sender(postfix.port);
            (
                FrontEnd::Milter {
                    sb,
                    postfix,
                    _sink: milter_sink.clone(),
                },
                vec![s],
            )
        }),
        Box::new(|| {
            let redis = RedisServer::shared();
            let extra = format!(
                "{}[state]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{}:\"\n",
                policy(),
                redis.url(),
                token("fig")
            );
            let a = Stormbreaker::proxy(relay().postfix.port, "", &extra);
            let b = Stormbreaker::proxy(relay().postfix.port, "", &extra);
            let senders = vec![split_sender(a.port), split_sender(b.port)];
            (FrontEnd::TwoProxies([a, b]), senders)
        }),
    ];
    for make in &fronts {
        let (front, senders) = make();
        let started = std::time::Instant::now();
        for (shape, n, held, partly) in run(&front, &senders) {
            table.push((front.name(), shape, n, held, partly));
        }
        eprintln!("{}: {:.0} s", front.name(), started.elapsed().as_secs_f64());
    }
    println!("| front end | shape | messages | held | held % | held in part |");
    println!("|---|---|---|---|---|---|");
    for (front, shape, n, held, partly) in &table {
        println!(
            "| {front} | {shape} | {n} | {held} | {:.1}% | {partly} |",
            100.0 * *held as f64 / *n as f64
        );
    }
    for (front, shape, n, held, partly) in &table {
        assert_eq!(*partly, 0, "{front} {shape}: a split reply held in part");
        if shape == "ordinary" {
            assert_eq!(*held, 0, "{front}: ordinary mail held");
        } else {
            assert!(
                *held as f64 >= 0.97 * *n as f64,
                "{front} {shape}: {held} of {n} held"
            );
        }
    }
}

/// Starts a front end and the sending MTAs that split replies into it.
type MakeFront = dyn Fn() -> (FrontEnd, Vec<Postfix>);

fn split_sender(next: u16) -> Postfix {
    Postfix::start(
        next,
        "default_destination_recipient_limit = 100\nsmtp_destination_recipient_limit = 100\n",
    )
}
