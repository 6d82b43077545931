//! Exim 4.96 as the sending MTA: mail injected into a private Exim is relayed by Exim's smtp
//! transport into the proxy, which relays it to the suite's Postfix and its sink. A tap between
//! Exim and the proxy records each segment Exim wrote, so the test shows that Exim really
//! pipelined after the final dot (`.\r\nQUIT\r\n` in one write, then a half-close), the case
//! that used to make the proxy answer 554 and Exim bounce the mail.

use crate::support::clients::{Mail, mail, smtplib};
use crate::support::peers::{Chunk, Exim, Tap};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::{relay, token, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The proxy both tests send through, in front of the suite's Postfix: started once.
fn proxy() -> &'static Stormbreaker {
    static PROXY: OnceLock<Stormbreaker> = OnceLock::new();
    PROXY.get_or_init(|| {
        let proxy = Stormbreaker::proxy(relay().postfix.port, "", "");
        proxy.kill_at_exit();
        proxy
    })
}

/// `n` messages tagged `t`: every fourth to three recipients, the others to one.
fn messages(t: &str, n: usize) -> (Vec<Mail>, BTreeMap<String, BTreeSet<String>>) {
    let mut mails = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let subject = format!("{t}-m{i}");
        let to: Vec<String> = if i % 4 == 0 {
            ["a", "b", "c"]
                .iter()
                .map(|x| format!("{x}{i}@corp.test"))
                .collect()
        } else {
            vec![format!("rcpt{i}@corp.test")]
        };
        let to_refs: Vec<&str> = to.iter().map(String::as_str).collect();
        mails.push(mail("sender@corp.test", &to_refs, &subject));
        expected.insert(subject, to.into_iter().collect());
    }
    (mails, expected)
}

/// Injects `n` messages into `exim`, waits until Exim's queue is empty, and checks that every
/// recipient of every message reached the sink behind the proxy's upstream and that Exim
/// logged no failure nor deferral.
fn send_all_through(exim: &Exim, t: &str, n: usize) {
    let (mails, expected) = messages(t, n);
    for outcome in smtplib(exim.port(), &mails) {
        assert_eq!(outcome.code, 250, "Exim refused an injection: {outcome:?}");
    }
    let emptied = wait_for(|| exim.queue() == 0).is_some();
    let mainlog = exim.mainlog();
    assert!(emptied, "Exim's queue never emptied:\n{mainlog}");
    // With queue_smtp_domains, Exim logs each message's first pass (routing only, delivery
    // left to the queue run) as `==`: that is the setting, not a deferral by the proxy.
    let failures: Vec<String> = exim
        .failures()
        .lines()
        .filter(|l| !l.contains("first-pass only routing due to"))
        .map(str::to_string)
        .collect();
    assert!(
        failures.is_empty(),
        "Exim logged bounces (**) or deferrals (==): {failures:#?}\n{mainlog}"
    );
    // What arrived, per subject: Postfix may split nothing here (at most 3 recipients).
    let arrived = || {
        let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in relay().sink.mentioning(t) {
            let text = m.text();
            if let Some(subject) = expected.keys().find(|s| text.contains(&format!("{s}\r\n"))) {
                got.entry(subject.clone())
                    .or_default()
                    .extend(m.addresses());
            }
        }
        got
    };
    let complete = wait_for(|| arrived() == expected).is_some();
    assert!(
        complete,
        "not every recipient got its message: {:#?}\nexpected {expected:#?}",
        arrived()
    );
}

/// The chunks of tap connection `conn` after index `from`, in direction `dir`, concatenated.
fn after(chunks: &[Chunk], from: usize, conn: u32, dir: &str) -> Vec<u8> {
    chunks[from..]
        .iter()
        .filter(|c| c.conn == conn && c.direction == dir)
        .flat_map(|c| c.bytes.iter().copied())
        .collect()
}

#[test]
fn exim_pipelining_quit_after_the_dot_has_every_message_delivered() {
    let tap = Tap::start(proxy().port);
    let exim = Exim::start(tap.port);
    let t = token("exim-sender");
    send_all_through(&exim, &t, 12);

    // The proof that the pipelining really happened: at least one segment Exim wrote ends
    // with the final dot and QUIT together, and the proxy then answered the message (250)
    // and the QUIT (221) on that connection.
    let chunks = tap.chunks();
    let pipelined: Vec<(usize, u32)> = chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.direction == "C>S" && c.bytes.ends_with(b"\r\n.\r\nQUIT\r\n"))
        .map(|(i, c)| (i, c.conn))
        .collect();
    assert!(
        !pipelined.is_empty(),
        "Exim never wrote `.\\r\\nQUIT\\r\\n` in one segment: {chunks:#?}"
    );
    for (_, conn) in pipelined {
        // The tap logs each direction from its own thread, so a reply may be logged before
        // the segment it answers: take the connection's replies from the start, and look at
        // the last two (the message's and the QUIT's).
        let answers = String::from_utf8_lossy(&after(&chunks, 0, conn, "S>C")).into_owned();
        let dot = answers.rfind("250 ");
        let quit = answers.rfind("221 ");
        assert!(
            matches!((dot, quit), (Some(d), Some(q)) if d < q),
            "connection {conn}: the proxy's answers after the pipelined dot and QUIT: {answers:?}"
        );
        assert!(!answers.contains("554"), "{answers:?}");
    }
}

#[test]
fn exim_queue_runs_carry_several_messages_per_connection() {
    let tap = Tap::start(proxy().port);
    // Deliveries by queue runs: the waiting messages go down a few connections.
    let exim = Exim::start_with(tap.port, &[("EXIM_QUEUE_SMTP", "1")]);
    let t = token("exim-queued");
    send_all_through(&exim, &t, 12);

    let chunks = tap.chunks();
    let mut mails_per_conn: BTreeMap<u32, usize> = BTreeMap::new();
    for c in chunks.iter().filter(|c| c.direction == "C>S") {
        let text = String::from_utf8_lossy(&c.bytes);
        *mails_per_conn.entry(c.conn).or_default() += text.matches("MAIL FROM:").count();
    }
    assert!(
        mails_per_conn.values().any(|&n| n > 1),
        "no connection carried more than one message: {mails_per_conn:?}"
    );
}
