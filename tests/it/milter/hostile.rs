//! Broken and hostile milter peers against the real stormbreaker binary: each gets its
//! connection closed with a log line, and the server goes on serving everyone else.

use crate::support::stormbreaker::Stormbreaker;
use crate::support::wait::{PATIENCE, wait_for};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;
use stormbreaker::milter::codec::{Command, Family, Response, action, packet_length};
use stormbreaker::milter::mta::{encode_command, parse_response};
use stormbreaker::milter::session::{WANTED_STEPS, macro_lists};

fn connect(sb: &Stormbreaker) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", sb.port)).unwrap();
    // A liveness bound so a broken server fails the test instead of hanging it.
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

fn send(s: &mut TcpStream, commands: &[Command]) {
    let mut buf = Vec::new();
    for c in commands {
        encode_command(c, &mut buf);
    }
    s.write_all(&buf).unwrap();
}

fn read_response(s: &mut TcpStream) -> Response {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).unwrap();
    let len = packet_length(header).unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    parse_response(body[0], &body[1..]).unwrap()
}

/// True when the server has closed the connection (EOF or reset), after reading what is left.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn postfix_optneg() -> Command {
    Command::OptNeg {
        version: 6,
        actions: 0x1ff,
        protocol: 0x1fffff,
    }
}

/// A whole well-behaved conversation, as Postfix has it, checking every answer.
fn good_conversation(sb: &Stormbreaker, queue_id: &str) {
    let mut s = connect(sb);
    send(&mut s, &[postfix_optneg()]);
    assert_eq!(
        read_response(&mut s),
        Response::OptNeg {
            version: 6,
            actions: action::ADD_HEADERS | action::SET_MACRO_LIST,
            protocol: WANTED_STEPS,
            macros: macro_lists(),
        }
    );
    let macros = |stage: u8, pairs: &[(&str, &str)]| Command::Macros {
        stage,
        pairs: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    send(
        &mut s,
        &[
            macros(
                b'C',
                &[("j", "mx.corp.test"), ("{client_addr}", "192.0.2.1")],
            ),
            Command::Connect {
                hostname: "client.test".into(),
                family: Family::Inet,
                port: 50000,
                address: "192.0.2.1".into(),
            },
            Command::Helo("client.test".into()),
            macros(b'M', &[("i", queue_id), ("{mail_addr}", "a@corp.test")]),
            Command::Mail(vec!["<a@corp.test>".into(), "SIZE=100".into()]),
            Command::Rcpt(vec!["<b@corp.test>".into()]),
            Command::Header {
                name: b"Subject".to_vec(),
                value: b"hello".to_vec(),
            },
            macros(b'E', &[("i", queue_id)]),
            Command::EndOfMessage(vec![]),
        ],
    );
    // No answers to the no-reply steps: the first answer is the one to end of message.
    assert_eq!(
        read_response(&mut s),
        Response::AddHeader {
            name: "X-Stormbreaker".into(),
            value: "deliver".into()
        }
    );
    assert_eq!(read_response(&mut s), Response::Continue);
    send(&mut s, &[Command::Quit]);
    assert!(closed_by_server(&mut s), "QUIT closes the connection");
    let logged = wait_for(|| {
        sb.log_lines("transaction")
            .into_iter()
            .find(|l| l["queue_id"] == queue_id)
    })
    .expect("gave up waiting for the message's log line");
    assert_eq!(logged["from"], "a@corp.test");
    assert_eq!(logged["client"], "192.0.2.1");
}

/// Waits for a "closing connection" log line whose error mentions `what`.
fn logged_close(sb: &Stormbreaker, what: &str) -> serde_json::Value {
    wait_for(|| {
        sb.log_lines("closing connection")
            .into_iter()
            .find(|l| l["error"].as_str().is_some_and(|e| e.contains(what)))
    })
    .unwrap_or_else(|| panic!("gave up waiting for a log line about {what}"))
}

#[test]
fn hostile_peers_are_cut_off_and_others_are_served() {
    let sb = Stormbreaker::milter("");
    good_conversation(&sb, "GOOD1");

    // A peer that sits on a half-sent packet: the others are served meanwhile.
    let mut stuck = connect(&sb);
    stuck.write_all(&[0, 0, 0, 100, b'M', b'<']).unwrap();

    // Absurd length: refused from the length field alone.
    let mut s = connect(&sb);
    s.write_all(&[0xff, 0xff, 0xff, 0xf0, b'O']).unwrap();
    assert!(closed_by_server(&mut s));
    logged_close(&sb, "over the limit");

    // Zero length.
    let mut s = connect(&sb);
    s.write_all(&[0, 0, 0, 0]).unwrap();
    assert!(closed_by_server(&mut s));
    logged_close(&sb, "packet length 0");

    // Unknown command byte, after a proper negotiation.
    let mut s = connect(&sb);
    send(&mut s, &[postfix_optneg()]);
    read_response(&mut s);
    s.write_all(&[0, 0, 0, 1, b'Z']).unwrap();
    assert!(closed_by_server(&mut s));
    logged_close(&sb, "unknown command byte 0x5a");

    // Truncated packet: the peer goes away in the middle of it.
    let mut s = connect(&sb);
    let mut buf = Vec::new();
    encode_command(&Command::Helo("client.example".into()), &mut buf);
    s.write_all(&buf[..buf.len() - 4]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_by_server(&mut s));
    logged_close(&sb, "truncated packet");

    // A malformed payload (header without its value).
    let mut s = connect(&sb);
    send(&mut s, &[postfix_optneg()]);
    read_response(&mut s);
    s.write_all(&[
        0, 0, 0, 9, b'L', b'S', b'u', b'b', b'j', b'e', b'c', b't', 0,
    ])
    .unwrap();
    assert!(closed_by_server(&mut s));
    logged_close(&sb, "header packet is malformed");

    // Commands before option negotiation.
    let mut s = connect(&sb);
    send(&mut s, &[Command::Helo("early".into())]);
    assert!(closed_by_server(&mut s));
    logged_close(&sb, "before option negotiation");

    // Random garbage.
    let mut s = connect(&sb);
    s.write_all(b"EHLO I am not a milter client\r\n").unwrap();
    assert!(closed_by_server(&mut s));

    // Still serving, with the stuck peer still connected.
    good_conversation(&sb, "GOOD2");
    stuck
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut probe = [0u8; 1];
    assert!(
        matches!(stuck.read(&mut probe), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the stuck peer is still connected, waiting for the rest of its packet"
    );
    drop(stuck);

    // Nothing panicked.
    assert!(!sb.log().contains("panicked"), "{}", sb.log());
}

#[test]
fn many_messages_per_connection_and_abort_over_raw_protocol() {
    let sb = Stormbreaker::milter("");
    let mut s = connect(&sb);
    send(&mut s, &[postfix_optneg()]);
    read_response(&mut s);
    for i in 0..20 {
        let qid = format!("Q{i}");
        send(
            &mut s,
            &[
                Command::Macros {
                    stage: b'M',
                    pairs: vec![("i".into(), qid.clone())],
                },
                Command::Mail(vec![format!("<s{i}@corp.test>")]),
                Command::Rcpt(vec!["<b@corp.test>".into()]),
            ],
        );
        if i % 5 == 4 {
            // Aborted transactions get no answer and no decision.
            send(&mut s, &[Command::Abort]);
            continue;
        }
        send(&mut s, &[Command::EndOfMessage(vec![])]);
        assert!(matches!(read_response(&mut s), Response::AddHeader { .. }));
        assert_eq!(read_response(&mut s), Response::Continue);
    }
    send(&mut s, &[Command::Quit]);
    assert!(closed_by_server(&mut s));
    let lines = wait_for(|| {
        let l = sb.log_lines("transaction");
        (l.len() >= 16).then_some(l)
    })
    .expect("gave up waiting for 16 log lines");
    assert_eq!(lines.len(), 16);
    assert!(!lines.iter().any(|l| l["queue_id"] == "Q4"), "aborted");
}
