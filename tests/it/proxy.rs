//! The inline proxy against real peers: the suite's Postfix as the upstream, swaks and raw
//! sockets as clients, Postfix's smtp-sink for upstream failures.

use crate::support::clients::{Raw, swaks, text};
use crate::support::sink::{Delivered, SmtpSink};
use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::wait_for;
use crate::support::{Postfix, free_port, relay, token};
use std::sync::OnceLock;
use std::time::Duration;
use stormbreaker::smtp::data::SMUGGLING_SEQUENCES;

/// The proxy most tests here use, in front of the suite's Postfix: started once.
fn proxy() -> &'static Stormbreaker {
    static PROXY: OnceLock<Stormbreaker> = OnceLock::new();
    PROXY.get_or_init(|| {
        let proxy = Stormbreaker::proxy(relay().postfix.port, "max_recipients = 100", "");
        proxy.kill_at_exit();
        proxy
    })
}

/// Waits for the message carrying `token` at the sink behind Postfix.
fn delivered(token: &str) -> Option<Delivered> {
    wait_for(|| {
        relay()
            .sink
            .delivered()
            .into_iter()
            .find(|m| m.text().contains(token))
    })
}

/// Sends a canary after a test's traffic and waits for it: Postfix has then relayed what came
/// before, so absence checks mean something.
fn settle() {
    let canary = token("canary");
    let out = swaks(
        proxy().port,
        &[
            "--from",
            "c@corp.test",
            "--to",
            "canary@corp.test",
            "--header",
            &format!("Subject: {canary}"),
        ],
    );
    assert!(
        text(&out).contains("250 2.0.0 Ok: queued"),
        "{}",
        text(&out)
    );
    assert!(delivered(&canary).is_some(), "canary not delivered");
}

/// Messages at the sink whose content or recipients mention `needle`.
fn count_with(needle: &str) -> usize {
    relay().sink.mentioning(needle).len()
}

#[test]
fn relays_a_message_through_postfix_with_the_real_client_name() {
    let t = token("plain");
    let out = swaks(
        proxy().port,
        &[
            "--ehlo",
            "real-client.example",
            "--from",
            "a@corp.test",
            "--to",
            "b@corp.test",
            "--header",
            &format!("Subject: {t}"),
        ],
    );
    let out = text(&out);
    assert!(
        out.contains("250 2.0.0 Ok: queued as"),
        "Postfix's reply is relayed verbatim: {out}"
    );
    let m = delivered(&t).expect("delivered");
    assert!(m.rcpts.iter().any(|r| r.contains("<b@corp.test>")));
    let content = m.text();
    // XCLIENT passed the client's HELO: Postfix's Received header names it.
    assert!(content.contains("from real-client.example"), "{content}");
    // One structured log line for the transaction.
    assert!(
        wait_for(|| proxy().log().contains("\"decision\":\"deliver\"")).is_some(),
        "{}",
        proxy().log()
    );
}

#[test]
fn a_refused_recipient_is_refused_and_the_others_still_go_through() {
    let t = token("partial");
    let out = swaks(
        proxy().port,
        &[
            "--from",
            "a@corp.test",
            "--to",
            "ok1@corp.test,refused@corp.test,ok2@corp.test",
            "--header",
            &format!("Subject: {t}"),
        ],
    );
    let out = text(&out);
    assert!(
        out.contains("550 5.1.1 <refused@corp.test>") || out.contains("550 5.1.1"),
        "{out}"
    );
    let m = delivered(&t).expect("delivered to the others");
    assert_eq!(m.rcpts.len(), 2, "{:?}", m.rcpts);
    assert!(!m.rcpts.iter().any(|r| r.contains("refused")));
}

#[test]
fn dot_stuffed_lines_round_trip_byte_exact() {
    let t = token("dots");
    let mut c = Raw::connect(proxy().port);
    assert!(c.cmd("EHLO dots.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@corp.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!("Subject: {t}\r\n\r\n..\r\n...\r\n..x\r\nx.\r\n.. leading\r\n\r\n.\r\n").as_bytes(),
    );
    assert!(c.reply().starts_with("250"));
    let m = delivered(&t).unwrap();
    let content = m.text();
    let body = content.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body, ".\r\n..\r\n.x\r\nx.\r\n. leading\r\n\r\n");
}

#[test]
fn utf8_and_8bit_headers_pass_intact() {
    let t = token("utf8");
    let mut c = Raw::connect(proxy().port);
    let ehlo = c.cmd("EHLO utf8.test");
    assert!(
        ehlo.contains("SMTPUTF8") && ehlo.contains("8BITMIME"),
        "{ehlo}"
    );
    assert!(
        c.cmd("MAIL FROM:<jörg@corp.test> SMTPUTF8 BODY=8BITMIME")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<zoë@corp.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!(
            "Subject: Grüße {t} 回复\r\nFrom: Jörg <jörg@corp.test>\r\n\r\nÄÖÜ 8-bit body\r\n.\r\n"
        )
        .as_bytes(),
    );
    assert!(c.reply().starts_with("250"));
    let m = delivered(&t).unwrap();
    let content = String::from_utf8(m.content.clone()).expect("valid UTF-8 kept");
    assert!(content.contains(&format!("Subject: Grüße {t} 回复")));
    assert!(content.contains("ÄÖÜ 8-bit body"));
    assert!(m.mail_from.contains("jörg@corp.test") && m.mail_from.contains("SMTPUTF8"));
}

#[test]
fn a_pipelined_client_gets_its_replies_in_order() {
    let t = token("pipe");
    let mut c = Raw::connect(proxy().port);
    assert!(c.cmd("EHLO pipe.test").contains("PIPELINING"));
    let mut batch = String::from("MAIL FROM:<a@corp.test>\r\n");
    for i in 0..5 {
        batch.push_str(&format!("RCPT TO:<p{i}@corp.test>\r\n"));
    }
    batch.push_str("DATA\r\n");
    c.send(batch.as_bytes());
    for i in 0..6 {
        let r = c.reply();
        assert!(r.starts_with("250"), "reply {i}: {r}");
    }
    assert!(c.reply().starts_with("354"));
    // RFC 2920 3.1: the content may be the first "command" of a group, so the next commands
    // may follow the final dot in the same write (Postfix's and Exim's smtp clients do).
    // The message is answered first, then the commands, in order.
    c.send(
        format!(
            "Subject: {t}\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@corp.test>\r\nRCPT TO:<p@corp.test>\r\nDATA\r\n"
        )
        .as_bytes(),
    );
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    assert!(c.reply().starts_with("250"), "MAIL after the dot");
    assert!(c.reply().starts_with("250"), "RCPT after the dot");
    assert!(c.reply().starts_with("354"), "DATA after the dot");
    c.send(format!("Subject: {t}-second\r\n\r\nbody\r\n.\r\nQUIT\r\n").as_bytes());
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued"));
    assert!(c.reply().starts_with("221"), "QUIT after the dot");
    assert!(c.closed());
    assert!(delivered(&format!("Subject: {t}\r\n")).is_some());
    assert!(delivered(&format!("{t}-second")).is_some());
}

/// Checklist line 1: each sequence followed by a hidden transaction yields at most one
/// message upstream and never the hidden one.
#[test]
fn smuggling_attempts_never_yield_a_second_message() {
    let normalizing = Stormbreaker::proxy(relay().postfix.port, "bare_newline = \"normalize\"", "");
    for (i, seq) in SMUGGLING_SEQUENCES.iter().enumerate() {
        for port in [proxy().port, normalizing.port] {
            let t = token(&format!("smuggle{i}"));
            let mut c = Raw::connect(port);
            c.cmd("EHLO evil.test");
            assert!(c.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
            assert!(c.cmd("RCPT TO:<b@corp.test>").starts_with("250"));
            assert!(c.cmd("DATA").starts_with("354"));
            let mut data = format!("Subject: {t}\r\n\r\nvisible").into_bytes();
            data.extend_from_slice(seq);
            data.extend_from_slice(
                format!("MAIL FROM:<evil@corp.test>\r\nRCPT TO:<hidden-{t}@corp.test>\r\nDATA\r\nSubject: hidden {t}\r\n\r\nhidden\r\n").as_bytes(),
            );
            data.extend_from_slice(b"\r\n.\r\n");
            c.send(&data);
            let r = c.reply();
            assert!(
                r.starts_with("250") || r.starts_with("550 5.5.2"),
                "{seq:?}: {r}"
            );
        }
    }
    settle();
    let all = relay().sink.delivered();
    for m in &all {
        assert!(
            !m.rcpts.iter().any(|r| r.contains("hidden-")),
            "a hidden transaction reached the upstream: {:?}",
            m.rcpts
        );
        assert!(
            !m.text().starts_with("Subject: hidden"),
            "hidden message delivered"
        );
    }
    for i in 0..SMUGGLING_SEQUENCES.len() {
        let n = all
            .iter()
            .filter(|m| m.text().contains(&format!("smuggle{i}-")))
            .count();
        assert!(
            n <= 2,
            "sequence {i}: at most one message per attempt (two proxies), got {n}"
        );
    }
}

#[test]
fn bare_newlines_are_rejected_by_default() {
    let t = token("barelf");
    let mut c = Raw::connect(proxy().port);
    c.cmd("EHLO bare.test");
    c.cmd("MAIL FROM:<a@corp.test>");
    c.cmd("RCPT TO:<b@corp.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: {t}\r\n\r\nline\nbare\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("550 5.5.2"), "{r}");
    // The session goes on.
    assert!(c.cmd("NOOP").starts_with("250"));
    settle();
    assert_eq!(count_with(&t), 0);
}

#[test]
fn oversized_messages_get_552_at_mail_or_after_data() {
    let small = Stormbreaker::proxy(relay().postfix.port, "max_message_size = 10000", "");
    let mut c = Raw::connect(small.port);
    assert!(c.cmd("EHLO big.test").contains("SIZE 10000"));
    assert!(
        c.cmd("MAIL FROM:<a@corp.test> SIZE=20000")
            .starts_with("552 5.3.4")
    );
    assert!(
        c.cmd("MAIL FROM:<a@corp.test> SIZE=9000")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<b@corp.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let t = token("big");
    let mut data = format!("Subject: {t}\r\n\r\n").into_bytes();
    for _ in 0..300 {
        data.extend_from_slice(&[b'x'; 98]);
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    c.send(&data);
    assert!(c.reply().starts_with("552 5.3.4"));
    assert!(c.cmd("RSET").starts_with("250"), "session still usable");
    settle();
    assert_eq!(count_with(&t), 0);
}

#[test]
fn text_lines_over_1000_octets_are_refused_and_1000_pass() {
    for (len, ok) in [(998usize, true), (999, false)] {
        let t = token("line");
        let mut c = Raw::connect(proxy().port);
        c.cmd("EHLO line.test");
        c.cmd("MAIL FROM:<a@corp.test>");
        c.cmd("RCPT TO:<b@corp.test>");
        assert!(c.cmd("DATA").starts_with("354"));
        let line = "y".repeat(len);
        c.send(format!("Subject: {t}\r\n\r\n{line}\r\n.\r\n").as_bytes());
        let r = c.reply();
        if ok {
            assert!(r.starts_with("250"), "{len}+2 octets: {r}");
            assert!(delivered(&t).is_some());
        } else {
            assert!(r.starts_with("550 5.5.2"), "{len}+2 octets: {r}");
        }
    }
}

#[test]
fn command_lines_and_recipient_counts_have_limits() {
    let mut c = Raw::connect(proxy().port);
    c.cmd("EHLO limits.test");
    let ok = format!("NOOP {}", "x".repeat(505)); // 510 + CRLF = 512
    assert!(c.cmd(&ok).starts_with("250"));
    let long = format!("NOOP {}", "x".repeat(506));
    assert!(c.cmd(&long).starts_with("500 5.5.2"));
    assert!(c.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
    for i in 0..100 {
        let r = c.cmd(&format!("RCPT TO:<r{i}@corp.test>"));
        assert!(r.starts_with("250"), "rcpt {i}: {r}");
    }
    // Past the limit: 452 for each, not counted as errors (max_errors is 20 here), and the
    // transaction goes on with the accepted recipients (RFC 5321 4.5.3.1.10).
    for i in 100..150 {
        let r = c.cmd(&format!("RCPT TO:<r{i}@corp.test>"));
        assert!(r.starts_with("452 4.5.3"), "rcpt {i}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    let t = token("overshoot");
    c.send(format!("Subject: {t}\r\n\r\nbody\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued"));
    // Postfix relays it to the sink in batches of 50 recipients: count them all.
    let rcpts = || -> usize {
        relay()
            .sink
            .mentioning(&t)
            .iter()
            .map(|m| m.rcpts.len())
            .sum()
    };
    assert!(
        wait_for(|| rcpts() >= 100).is_some(),
        "the first 100 recipients get the message"
    );
    assert_eq!(rcpts(), 100);
    // A command line far over the limit costs one 500; the commands after it run.
    c.send(format!("NOOP {}\r\nNOOP\r\nNOOP\r\n", "y".repeat(100_000)).as_bytes());
    assert!(c.reply().starts_with("500 5.5.2"));
    assert!(
        c.reply().starts_with("250"),
        "the command after a long line runs"
    );
    assert!(c.reply().starts_with("250"));
    // Control bytes in EHLO are refused, never echoed; a SIZE past any integer is 552.
    assert!(c.cmd("EHLO a\x00b").starts_with("501"));
    assert!(c.cmd("EHLO limits.test").starts_with("250"));
    let huge = "MAIL FROM:<a@corp.test> SIZE=100000000000000000000000";
    assert!(c.cmd(huge).starts_with("552 5.3.4"));
    assert!(c.cmd("DATA").starts_with("503 5.5.1 Need MAIL before DATA"));
    assert!(c.cmd("VRFY root").starts_with("252"));
    assert!(c.cmd("EXPN staff").starts_with("502"));
    assert!(c.cmd("STARTTLS").starts_with("502"));
    assert!(c.cmd("BDAT 10 LAST").starts_with("502"));
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn a_client_that_disconnects_mid_data_delivers_nothing() {
    let t = token("cut");
    {
        let mut c = Raw::connect(proxy().port);
        c.cmd("EHLO cut.test");
        c.cmd("MAIL FROM:<a@corp.test>");
        c.cmd("RCPT TO:<b@corp.test>");
        assert!(c.cmd("DATA").starts_with("354"));
        c.send(format!("Subject: {t}\r\n\r\nhalf a message\r\n").as_bytes());
        std::thread::sleep(Duration::from_millis(200));
    }
    settle();
    assert_eq!(count_with(&t), 0);
}

#[test]
fn upstream_down_means_421_and_nothing_accepted() {
    let closed = free_port();
    let proxy = Stormbreaker::proxy(closed, "", "");
    // The upstream is opened at EHLO, not at accept (idle clients tie up no MTA process):
    // the greeting is ours, and EHLO is answered 421 when the upstream cannot be reached.
    let mut c = Raw::connect(proxy.port);
    let r = c.cmd("EHLO down.test");
    assert!(r.starts_with("421 4.4.1"), "{r}");
    assert!(c.closed());
}

#[test]
fn upstream_failures_at_end_of_data_reach_the_client_never_as_250() {
    for (flag, expect) in [("-q", "451 4.4.2"), ("-r", "4"), ("-f", "5")] {
        let up = SmtpSink::start(&[flag, "."]);
        let proxy = Stormbreaker::proxy(up.port, "", "");
        let out = text(&swaks(
            proxy.port,
            &["--from", "a@corp.test", "--to", "b@corp.test"],
        ));
        let after_dot = out.split("\n -> .\n").nth(1).unwrap_or("");
        let reply = after_dot.lines().next().unwrap_or("");
        assert!(
            reply.contains(&format!("<** {expect}")),
            "smtp-sink {flag} .: {reply}\n{out}"
        );
    }
}

#[test]
fn upstream_dropping_at_data_gives_451() {
    let up = SmtpSink::start(&["-q", "data"]);
    let proxy = Stormbreaker::proxy(up.port, "", "");
    let out = text(&swaks(
        proxy.port,
        &["--from", "a@corp.test", "--to", "b@corp.test"],
    ));
    assert!(out.contains("451 4.4.2"), "{out}");
    assert!(!out.contains("<-  250 2.0.0"), "{out}");
}

#[test]
fn ehlo_offers_only_what_the_upstream_has() {
    let up = SmtpSink::start(&["-8", "-p", "-E"]);
    let proxy = Stormbreaker::proxy(up.port, "", "");
    let mut c = Raw::connect(proxy.port);
    let ehlo = c.cmd("EHLO ext.test");
    assert!(
        !ehlo.contains("8BITMIME") && !ehlo.contains("PIPELINING"),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("CHUNKING") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(ehlo.contains("SIZE"), "{ehlo}");
    assert!(
        c.cmd("MAIL FROM:<a@corp.test> BODY=8BITMIME")
            .starts_with("555 5.5.4")
    );
}

#[test]
fn connection_limit_answers_421() {
    let limited = Stormbreaker::proxy(relay().postfix.port, "max_connections = 2", "");
    // The start-up probe's session may still hold a slot for a moment: retry until greeted.
    let greeted = || {
        let mut held = None;
        wait_for(|| {
            let s = std::net::TcpStream::connect(("127.0.0.1", limited.port)).unwrap();
            let mut r = std::io::BufReader::new(s);
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut r, &mut line);
            let ok = line.starts_with("220");
            if ok {
                held = Some(r);
            }
            ok
        });
        held.expect("a free slot")
    };
    let _a = greeted();
    let _b = greeted();
    let mut c =
        std::io::BufReader::new(std::net::TcpStream::connect(("127.0.0.1", limited.port)).unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c, &mut line).unwrap();
    assert!(line.starts_with("421 4.7.0"), "{line}");
}

#[test]
fn too_many_errors_and_idle_clients_are_disconnected() {
    let strict = Stormbreaker::proxy(
        relay().postfix.port,
        "max_errors = 3\ncommand_timeout = \"2s\"",
        "",
    );
    let mut c = Raw::connect(strict.port);
    c.cmd("EHLO err.test");
    assert!(c.cmd("BOGUS").starts_with("500"));
    assert!(c.cmd("BOGUS").starts_with("500"));
    assert!(c.cmd("BOGUS").starts_with("500"));
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.closed());
    // A client that says nothing is cut off at the command timeout.
    let mut idle = Raw::connect(strict.port);
    let r = idle.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
}

#[test]
fn sigterm_lets_transactions_finish_then_stops() {
    let mut proxy = Stormbreaker::proxy(relay().postfix.port, "shutdown_grace = \"20s\"", "");
    let t = token("term");
    let mut busy = Raw::connect(proxy.port);
    busy.cmd("EHLO term.test");
    assert!(busy.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
    assert!(busy.cmd("RCPT TO:<b@corp.test>").starts_with("250"));
    let mut idle = Raw::connect(proxy.port);
    let hello = idle.cmd("EHLO idle.test");
    assert!(hello.starts_with("250"), "{hello}");
    proxy.sigterm();
    // The idle session is told to come back later.
    let told = idle.reply();
    assert!(told.starts_with("421 4.3.2"), "idle session got {told:?}");
    // No new sessions.
    assert!(
        wait_for(|| std::net::TcpStream::connect(("127.0.0.1", proxy.port)).is_err()).is_some()
    );
    // The transaction in flight completes.
    assert!(busy.cmd("DATA").starts_with("354"));
    busy.send(format!("Subject: {t}\r\n\r\nfinishing during shutdown\r\n.\r\n").as_bytes());
    assert!(busy.reply().starts_with("250"));
    assert!(busy.cmd("MAIL FROM:<a@corp.test>").starts_with("421 4.3.2"));
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .expect("proxy exits");
    assert!(status.success(), "{status:?}");
    assert!(delivered(&t).is_some());
}

#[test]
fn sigterm_grace_over_gives_421_mid_transaction() {
    let mut proxy = Stormbreaker::proxy(relay().postfix.port, "shutdown_grace = \"1s\"", "");
    let mut slow = Raw::connect(proxy.port);
    slow.cmd("EHLO slow.test");
    assert!(slow.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
    proxy.sigterm();
    let r = slow.reply();
    assert!(r.starts_with("421"), "{r}");
    assert!(proxy.wait_exit(Duration::from_secs(30)).is_some());
}

/// Checklist line 18: deadlines, not idle timers. A client trickling bytes is cut off.
#[test]
fn a_client_trickling_bytes_is_cut_off() {
    use std::io::Write;
    let strict = Stormbreaker::proxy(
        relay().postfix.port,
        "command_timeout = \"2s\"\ndata_timeout = \"2s\"\nmin_data_rate = 500",
        "",
    );
    // A command, one byte every 300 ms: 12 bytes would take 3.6 s.
    let mut c = Raw::connect(strict.port);
    let mut cut = false;
    for b in b"NOOP trickle\r\n" {
        if c.reader.get_mut().write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = c.reply();
    assert!(cut || r.starts_with("421 4.4.2"), "command trickle: {r}");
    // DATA, one byte every 300 ms: far below 500 bytes per second.
    let mut c = Raw::connect(strict.port);
    c.cmd("EHLO trickle.test");
    assert!(c.cmd("MAIL FROM:<a@corp.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@corp.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let mut cut = false;
    for b in b"Subject: slow\r\n\r\nso slow\r\n".iter().cycle().take(40) {
        if c.reader.get_mut().write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = c.reply();
    assert!(cut || r.starts_with("421 4.4.2"), "data trickle: {r}");
}

/// The deployment the proxy exists for: an MTA on the internet sends through it. Postfix's
/// smtp client pipelines after the final dot (`.\r\nQUIT\r\n` in one write, or the next MAIL
/// when it keeps the connection): every message must be delivered, none bounced or deferred.
#[test]
fn postfix_as_the_sending_mta_delivers_every_message() {
    for (name, extra) in [
        ("plain", ""),
        (
            "cached",
            "smtp_connection_cache_destinations = $relayhost\nsmtp_connection_cache_time_limit = 10s",
        ),
    ] {
        let sender = Postfix::start(proxy().port, extra);
        let t = token(&format!("postfix-sender-{name}"));
        let out = std::process::Command::new("smtp-source")
            .args([
                "-s",
                "4",
                "-m",
                "20",
                "-f",
                "a@corp.test",
                "-t",
                "b@corp.test",
            ])
            .args(["-S", &t])
            .arg(format!("127.0.0.1:{}", sender.port))
            .output()
            .expect("run smtp-source");
        assert!(out.status.success(), "{}", text(&out));
        let sent = |log: &str| log.matches("status=sent").count();
        let done = wait_for(|| sent(&sender.maillog()) >= 20).is_some();
        let log = sender.maillog();
        assert!(
            done,
            "{name}: Postfix did not send all 20 through the proxy:\n{log}"
        );
        assert!(!log.contains("status=bounced"), "{name}: bounced:\n{log}");
        assert!(!log.contains("status=deferred"), "{name}: deferred:\n{log}");
        assert!(
            wait_for(|| count_with(&t) >= 20).is_some(),
            "{name}: only {} of 20 reached the upstream's sink",
            count_with(&t)
        );
        if name == "cached" {
            // The cache really was used: some messages shared one connection to the proxy.
            assert!(
                log.contains("conn_use="),
                "{name}: no connection reuse seen:\n{log}"
            );
        }
    }
}

/// Once the upstream has offered XCLIENT, a new upstream connection says XCLIENT right after
/// the greeting (Postfix takes it before EHLO), and Postfix still records each real client.
#[test]
fn a_known_xclient_upstream_is_told_the_client_before_any_ehlo() {
    let tap = crate::support::peers::Tap::start(relay().postfix.port);
    let sb = Stormbreaker::proxy(tap.port, "", "");
    let tokens = [token("xfirst-a"), token("xfirst-b")];
    for (helo, t) in ["first.example", "second.example"].iter().zip(&tokens) {
        let out = swaks(
            sb.port,
            &[
                "--ehlo",
                helo,
                "--from",
                "a@corp.test",
                "--to",
                "b@corp.test",
                "--header",
                &format!("Subject: {t}"),
            ],
        );
        assert!(
            text(&out).contains("250 2.0.0 Ok: queued as"),
            "{}",
            text(&out)
        );
        let m = delivered(t).expect("delivered");
        assert!(m.text().contains(&format!("from {helo}")), "{}", m.text());
    }
    // What the proxy wrote first on each upstream connection (the tap's own probe wrote
    // nothing): EHLO on the first, which learned the offer, XCLIENT on the second.
    let chunks = tap.chunks();
    let mut first_writes: Vec<(u32, String)> = Vec::new();
    for c in chunks.iter().filter(|c| c.direction == "C>S") {
        if !first_writes.iter().any(|(conn, _)| *conn == c.conn) {
            first_writes.push((c.conn, String::from_utf8_lossy(&c.bytes).into_owned()));
        }
    }
    first_writes.sort();
    let verbs: Vec<&str> = first_writes
        .iter()
        .map(|(_, w)| w.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(verbs, ["EHLO", "XCLIENT"], "{first_writes:?}");
}
