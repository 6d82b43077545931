//! Storm simulations with realistic arrival times, run through `Engine::decide` with the clock
//! passed in: an hour of storm takes milliseconds, and no assertion depends on real time.

use super::thread_index;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::path::Path;
use stormbreaker::config::Config;
use stormbreaker::engine::Engine;
use stormbreaker::envelope::Envelope;
use stormbreaker::verdict::{Action, Verdict};

const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;

fn engine(extra: &str) -> Engine {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n{extra}\n\
         [[lists]]\naddress = \"all@atos.test\"\nmembers = 91053\n\
         [[lists]]\naddress = \"everyone@nhs.test\"\nmembers = 840000\n\
         [[lists]]\naddress = \"all@corp.test\"\nmembers = 12000\n"
    );
    Engine::new(&Config::parse(&text, Path::new("sim.toml")).unwrap()).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// The mail clients of a storm, each with the header subset it really sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Thread-Index with a reply block and Thread-Topic; no In-Reply-To/References.
    Outlook,
    /// In-Reply-To and References to the original.
    Thunderbird,
    /// Replies to an earlier reply: In-Reply-To the reply, References root and reply.
    Gmail,
    /// A phone client that only prefixes the subject (German).
    Mobile,
}

const CLIENTS: [Client; 4] = [
    Client::Outlook,
    Client::Thunderbird,
    Client::Gmail,
    Client::Mobile,
];

fn original(subject: &str) -> String {
    format!(
        "Message-ID: <root@{subject}>\r\nSubject: {subject}\r\nThread-Topic: {subject}\r\n\
         Thread-Index: {}\r\n\r\n",
        thread_index(0x5a, 0)
    )
}

fn reply(client: Client, n: usize, subject: &str) -> String {
    let id = format!("Message-ID: <r{n}@{subject}>\r\n");
    match client {
        Client::Outlook => format!(
            "{id}Subject: RE: {subject}\r\nThread-Topic: {subject}\r\nThread-Index: {}\r\n\r\n",
            thread_index(0x5a, 1 + n % 3)
        ),
        Client::Thunderbird => format!(
            "{id}In-Reply-To: <root@{subject}>\r\nReferences: <root@{subject}>\r\n\
             Subject: Re: {subject}\r\n\r\n"
        ),
        Client::Gmail => format!(
            "{id}In-Reply-To: <r{p}@{subject}>\r\nReferences: <root@{subject}> <r{p}@{subject}>\r\n\
             Subject: Re: {subject}\r\n\r\n",
            p = n / 2
        ),
        Client::Mobile => format!("{id}Subject: AW: {subject}\r\n\r\n"),
    }
}

/// Arrival times of `n` messages over `span`, accelerating like a storm (most late), sorted.
fn storm_times(rng: &mut StdRng, start: u64, n: usize, span: u64) -> Vec<u64> {
    let mut t: Vec<u64> = (0..n)
        .map(|_| {
            let x: f64 = rng.random_range(0.0..1.0);
            start + (x.sqrt() * span as f64) as u64
        })
        .collect();
    t.sort_unstable();
    t
}

struct Tally {
    delivered: usize,
    held: usize,
    opened: usize,
    verdicts: Vec<Verdict>,
}

/// Sends `n` reply-alls from distinct senders with mixed clients at `times` to `list`.
fn run_storm(
    engine: &Engine,
    list: &str,
    subject: &str,
    times: &[u64],
    sender_base: usize,
) -> Tally {
    let rt = rt();
    let mut tally = Tally {
        delivered: 0,
        held: 0,
        opened: 0,
        verdicts: Vec::new(),
    };
    for (i, &now) in times.iter().enumerate() {
        let from = format!("user{}@corp.test", sender_base + i);
        let h = reply(CLIENTS[i % 4], sender_base + i, subject);
        let v = rt.block_on(engine.decide(&Envelope::to(&from, &[list]), h.as_bytes(), now));
        if v.hold.is_some() {
            tally.held += 1;
        } else {
            tally.delivered += 1;
        }
        tally.opened += usize::from(v.opened.is_some());
        tally.verdicts.push(v);
    }
    tally
}

#[test]
fn atos_storm_delivers_at_most_trip_replies() {
    let engine = engine("");
    let rt = rt();
    let subject = "Atos Origin - new office opening";
    let first = rt.block_on(engine.decide(
        &Envelope::to("comms@atos.test", &["all@atos.test"]),
        original(subject).as_bytes(),
        T0,
    ));
    assert_eq!(first, Verdict::DELIVER, "the original is never held");
    let mut rng = StdRng::seed_from_u64(2012);
    let times = storm_times(&mut rng, T0 + MIN, 419, 30 * MIN);
    let tally = run_storm(&engine, "all@atos.test", subject, &times, 0);
    eprintln!("atos: {} delivered, {} held", tally.delivered, tally.held);
    assert!(
        tally.delivered <= 10,
        "{} replies delivered",
        tally.delivered
    );
    assert_eq!(tally.delivered + tally.held, 419);
    assert_eq!(tally.opened, 1, "the alert goes out once");
    for v in tally.verdicts.iter().filter(|v| v.hold.is_some()) {
        assert_eq!(v.action, Action::Quarantine);
        let hold = v.hold.as_ref().unwrap();
        assert_eq!(hold.list.as_deref(), Some("all@atos.test"));
        assert_eq!(hold.audience, 91053);
    }
    let open = rt.block_on(engine.open_breakers(T0 + 31 * MIN));
    // One storm for every client's replies: the subject is one of its keys.
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(
        open[0]
            .keys
            .iter()
            .chain([&open[0].key])
            .any(|k| k == "subj:atos origin - new office opening"),
        "{open:?}"
    );
}

#[test]
fn atos_storm_without_the_fast_trip_still_stops_at_ten() {
    let engine = engine("[policy]\nfast_audience = 0");
    let mut rng = StdRng::seed_from_u64(7);
    let times = storm_times(&mut rng, T0, 419, 30 * MIN);
    let tally = run_storm(&engine, "all@atos.test", "Office move", &times, 0);
    assert_eq!(tally.delivered, 10);
    assert_eq!(tally.held, 409);
    assert_eq!(
        tally.verdicts[9].opened.as_ref().unwrap().breaker,
        "replies"
    );
}

#[test]
fn nhs_storm_with_me_too_messages() {
    let engine = engine("");
    let rt = rt();
    let mut rng = StdRng::seed_from_u64(2016);
    let times = storm_times(&mut rng, T0, 1000, 20 * MIN);
    let tally = run_storm(&engine, "everyone@nhs.test", "Test email", &times, 0);
    eprintln!("nhs: {} delivered, {} held", tally.delivered, tally.held);
    assert!(
        tally.delivered <= 10,
        "{} replies delivered",
        tally.delivered
    );
    assert_eq!(tally.opened, 1);
    // People also write new messages "please remove me" to everyone: a me-too storm.
    let mut delivered = 0;
    for i in 0..50u64 {
        let h = format!(
            "Message-ID: <new{i}@nhs.test>\r\nSubject: Please remove me from this list\r\n\r\n"
        );
        let v = rt.block_on(engine.decide(
            &Envelope::to(&format!("nurse{i}@nhs.test"), &["everyone@nhs.test"]),
            h.as_bytes(),
            T0 + i * 20 * SEC,
        ));
        match &v.hold {
            None => delivered += 1,
            Some(hold) => assert_eq!(hold.breaker, "me-too"),
        }
    }
    assert_eq!(delivered, 10);
}

#[test]
fn three_person_thread_with_200_replies_never_trips() {
    let engine = engine("");
    let rt = rt();
    let people = ["ann@corp.test", "bob@corp.test", "cat@corp.test"];
    for i in 0..200usize {
        let from = people[i % 3];
        let to: Vec<&str> = people.iter().copied().filter(|p| *p != from).collect();
        let h = reply(CLIENTS[i % 4], i, "Budget spreadsheet");
        let v = rt.block_on(engine.decide(
            &Envelope::to(from, &to),
            h.as_bytes(),
            T0 + i as u64 * 30 * SEC,
        ));
        assert_eq!(v, Verdict::DELIVER, "reply {i}");
    }
    assert!(rt.block_on(engine.open_breakers(T0 + 2 * HOUR)).is_empty());
}

#[test]
fn broadcast_announcement_is_never_held() {
    let engine = engine("");
    let rt = rt();
    let v = rt.block_on(engine.decide(
        &Envelope::to("ceo@corp.test", &["all@corp.test"]),
        original("Company results Q3").as_bytes(),
        T0,
    ));
    assert_eq!(v, Verdict::DELIVER);
    // The same announcement to each region's people (different audiences) within minutes.
    for region in 0..9u64 {
        let rcpts: Vec<String> = (0..3000)
            .map(|i| format!("p{i}@region{region}.test"))
            .collect();
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let h = format!("Message-ID: <a{region}@corp.test>\r\nSubject: Company results Q3\r\n\r\n");
        let v = rt.block_on(engine.decide(
            &Envelope::to("ceo@corp.test", &rcpts),
            h.as_bytes(),
            T0 + region * MIN,
        ));
        assert_eq!(v, Verdict::DELIVER, "region {region}");
    }
    // Thanks go to the CEO only.
    for i in 0..50u64 {
        let h = reply(Client::Thunderbird, i as usize, "Company results Q3");
        let v = rt.block_on(engine.decide(
            &Envelope::to(&format!("u{i}@corp.test"), &["ceo@corp.test"]),
            h.as_bytes(),
            T0 + 10 * MIN + i * SEC,
        ));
        assert_eq!(v, Verdict::DELIVER);
    }
}

#[test]
fn breaker_reopens_with_a_longer_block_when_the_storm_resumes() {
    let engine = engine("[policy]\nfast_audience = 0");
    let rt = rt();
    let subject = "Parking changes";
    let times: Vec<u64> = (0..30).map(|i| T0 + i * MIN).collect();
    let first = run_storm(&engine, "all@corp.test", subject, &times, 0);
    assert_eq!(first.delivered, 10);
    let open = rt.block_on(engine.open_breakers(T0 + 30 * MIN));
    let block = open
        .iter()
        .find(|b| {
            b.key == "subj:parking changes" || b.keys.iter().any(|k| k == "subj:parking changes")
        })
        .unwrap();
    assert_eq!(block.until_ms - block.opened_at_ms, 6 * HOUR);

    // The storm resumes ten minutes after the block: half the rope, then a 12 h block.
    let resume = block.until_ms + 10 * MIN;
    let times: Vec<u64> = (0..20).map(|i| resume + i * MIN).collect();
    let second = run_storm(&engine, "all@corp.test", subject, &times, 100);
    assert_eq!(second.delivered, 5);
    assert_eq!(second.opened, 1);
    assert!(second.verdicts[4].opened.is_some());
    let open = rt.block_on(engine.open_breakers(resume + 20 * MIN));
    let block = open
        .iter()
        .find(|b| {
            b.key == "subj:parking changes" || b.keys.iter().any(|k| k == "subj:parking changes")
        })
        .unwrap();
    assert_eq!(block.until_ms - block.opened_at_ms, 12 * HOUR);

    // Long after, the thread has gone quiet: a reply passes and opens nothing.
    let quiet = block.until_ms + 3 * HOUR;
    let late = run_storm(&engine, "all@corp.test", subject, &[quiet], 500);
    assert_eq!(late.delivered, 1);
    assert_eq!(late.opened, 0);
}

#[test]
fn mixed_clients_land_in_one_thread() {
    let engine = engine("[policy]\nfast_audience = 0");
    let subject = "Christmas party";
    let times: Vec<u64> = (0..20).map(|i| T0 + i * MIN).collect();
    let tally = run_storm(&engine, "all@corp.test", subject, &times, 0);
    // Ten replies from four clients with four different header subsets trip one breaker...
    assert_eq!(tally.delivered, 10);
    assert!(tally.verdicts[9].opened.is_some());
    // ...and after it every client's reply is held.
    for (i, v) in tally.verdicts.iter().enumerate().skip(10) {
        assert!(v.hold.is_some(), "{:?} reply {i} passed", CLIENTS[i % 4]);
    }
    // Each client alone carries a key the others share: the subject (and for Outlook the GUID,
    // for Thunderbird and Gmail the root id).
    let rt = rt();
    for (n, client) in CLIENTS.into_iter().enumerate() {
        let h = reply(client, 1000 + n, subject);
        let v = rt.block_on(engine.decide(
            &Envelope::to("late@corp.test", &["all@corp.test"]),
            h.as_bytes(),
            T0 + 30 * MIN,
        ));
        assert!(v.hold.is_some(), "{client:?}");
    }
}

#[test]
fn a_flood_of_unique_threads_stays_under_the_cap() {
    let engine = engine("[policy]\nmax_threads = 1000\nfast_audience = 0");
    let rt = rt();
    let times: Vec<u64> = (0..12).map(|i| T0 + i * SEC).collect();
    let storm = run_storm(&engine, "all@corp.test", "Storm under flood", &times, 0);
    assert_eq!(storm.held, 2);
    for i in 0..20_000u64 {
        let h = format!(
            "Message-ID: <f{i}@x>\r\nIn-Reply-To: <root{i}@x>\r\nSubject: Re: unique {i}\r\n\r\n"
        );
        rt.block_on(engine.decide(
            &Envelope::to(&format!("bot{i}@x"), &["all@corp.test"]),
            h.as_bytes(),
            T0 + MIN + i * 10,
        ));
    }
    let tracked = rt.block_on(engine.tracked_threads()).unwrap();
    assert!(tracked <= 1000, "{tracked} threads tracked");
    // The open breaker survived the flood.
    let late = run_storm(
        &engine,
        "all@corp.test",
        "Storm under flood",
        &[T0 + 20 * MIN],
        900,
    );
    assert_eq!(late.held, 1);
}
