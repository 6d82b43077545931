//! The service's own log output, as the binary writes it: plain text to a file (no colour
//! escapes), syslog and journal datagrams to sockets the tests bind, typed JSON fields.

use crate::support::clients::{swaks, text};
use crate::support::stormbreaker::{Stormbreaker, command};
use crate::support::wait::wait_for;
use crate::support::{relay, scratch_dir, storm, token};
use std::os::unix::net::UnixDatagram;

/// One message straight through the proxy, delivered; returns its subject.
fn send_one(port: u16) -> String {
    let subject = token("logs");
    let out = swaks(
        port,
        &[
            "--from",
            "a@corp.test",
            "--to",
            "b@corp.test",
            "--header",
            &format!("Subject: {subject}"),
        ],
    );
    assert!(text(&out).contains(" 250 "), "{}", text(&out));
    subject
}

/// A datagram socket in a fresh folder; reading gives up after the harness's patience.
fn bind() -> (UnixDatagram, std::path::PathBuf, tempfile::TempDir) {
    let dir = scratch_dir("sb-logsock.");
    let path = dir.path().join("log.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(crate::support::wait::PATIENCE))
        .unwrap();
    (socket, path, dir)
}

/// Datagrams until one contains `needle`; returns them all.
fn receive_until(socket: &UnixDatagram, needle: &str) -> Vec<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no datagram with {needle:?} ({e}); got {seen:?}"));
        seen.push(buf[..n].to_vec());
        if String::from_utf8_lossy(&buf[..n]).contains(needle) {
            return seen;
        }
    }
}

#[test]
fn text_logs_in_a_file_have_no_colour_and_quote_values_with_spaces() {
    let proxy = Stormbreaker::proxy_logging(
        relay().postfix.port,
        "format = \"text\"\nlevel = \"info\"",
        "",
    );
    send_one(proxy.port);
    let line = wait_for(|| {
        proxy
            .log()
            .lines()
            .find(|l| l.contains(" transaction "))
            .map(str::to_string)
    })
    .expect("a transaction line");
    let log = proxy.log();
    assert!(!log.contains('\x1b'), "colour escapes in a file: {log:?}");
    // A reply with spaces stays one value.
    assert!(line.contains("reply=\"250 2.0.0 Ok: queued as "), "{line}");
    assert!(line.contains(" decision=deliver "), "{line}");
}

#[test]
fn syslog_output_sends_one_glibc_style_datagram_per_line() {
    let (socket, path, _dir) = bind();
    let proxy = Stormbreaker::proxy_logging(
        relay().postfix.port,
        &format!(
            "format = \"text\"\nlevel = \"info\"\noutput = \"syslog\"\nsocket = \"{}\"\nfacility = \"local3\"",
            path.display()
        ),
        "",
    );
    send_one(proxy.port);
    let lines: Vec<String> = receive_until(&socket, " transaction ")
        .into_iter()
        .map(|d| String::from_utf8(d).expect("UTF-8 lines"))
        .collect();
    let pid = proxy_pid(&lines);
    let transaction = lines.last().unwrap();
    // local3.info = 19 * 8 + 6.
    assert!(transaction.starts_with("<158>"), "{transaction}");
    // <PRI>Mmm dd hh:mm:ss stormbreaker[PID]: message fields
    let after_time = &transaction[5 + 15..];
    assert!(
        after_time.starts_with(&format!(" stormbreaker[{pid}]: stormbreaker::")),
        "{transaction}"
    );
    assert!(transaction.contains("decision=deliver"), "{transaction}");
    for line in &lines {
        assert!(!line.contains('\x1b') && !line.contains('\n'), "{line:?}");
    }
    // A warning has the warning severity.
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "every datagram starts with its priority: {lines:?}"
    );
    // Standard error carries nothing but what came before logging started.
    assert!(!proxy.log().contains("transaction"));
}

/// The PID in `stormbreaker[PID]:` of the first line.
fn proxy_pid(lines: &[String]) -> String {
    let first = &lines[0];
    let start = first.find("stormbreaker[").expect("tag") + "stormbreaker[".len();
    first[start..].split(']').next().unwrap().to_string()
}

#[test]
fn journald_output_sends_the_line_and_each_field() {
    let (socket, path, _dir) = bind();
    let proxy = Stormbreaker::proxy_logging(
        relay().postfix.port,
        &format!(
            "format = \"text\"\nlevel = \"info\"\noutput = \"journald\"\nsocket = \"{}\"",
            path.display()
        ),
        "",
    );
    send_one(proxy.port);
    let datagrams = receive_until(&socket, "MESSAGE=transaction");
    let last = String::from_utf8(datagrams.last().unwrap().clone()).unwrap();
    let fields: Vec<(&str, &str)> = last.lines().filter_map(|l| l.split_once('=')).collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in {last:?}"))
    };
    assert!(field("MESSAGE").starts_with("transaction "), "{last}");
    assert!(field("MESSAGE").contains(" session="), "{last}");
    assert!(field("MESSAGE").contains("reply=\"250 2.0.0 Ok"), "{last}");
    assert_eq!(field("PRIORITY"), "6");
    assert_eq!(field("SYSLOG_IDENTIFIER"), "stormbreaker");
    assert_eq!(field("SB_DECISION"), "deliver");
    assert_eq!(field("SB_RCPTS"), "1");
    assert!(field("SB_REPLY").starts_with("250 2.0.0 Ok"));
    assert!(!field("SB_SESSION").is_empty());
}

#[test]
fn json_fields_are_typed_numbers_and_arrays() {
    let proxy = Stormbreaker::proxy(
        relay().postfix.port,
        "",
        &storm::policy("quarantine", 2, ""),
    );
    let thread = token("jsonlog").replace('-', "");
    let held = storm::send(proxy.port, &thread, 3);
    assert_eq!(held.len(), 1);
    let alert = wait_for(|| proxy.log_lines("alert sent").into_iter().next())
        .unwrap_or_else(|| panic!("no alert line: {}", proxy.log()));
    assert_eq!(
        alert["to"],
        serde_json::json!(["admin@corp.test"]),
        "a list is a JSON array: {alert}"
    );
    let transactions = proxy.log_lines("transaction");
    let held_line = transactions
        .iter()
        .find(|l| l["decision"] == "quarantine")
        .unwrap_or_else(|| panic!("{transactions:?}"));
    for number in ["rcpts", "size", "ms"] {
        assert!(
            held_line[number].is_u64(),
            "{number} is a number: {held_line}"
        );
    }
    assert!(held_line["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(held_line["level"], "INFO");
}

#[test]
fn an_unreachable_log_socket_stops_check_config_and_run() {
    let dir = scratch_dir("sb-logcheck.");
    let config = dir.path().join("policy.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"127.0.0.1:1\"\n[quarantine]\ndir = \"{}\"\n[log]\noutput = \"journald\"\nsocket = \"{}\"\n",
            dir.path().join("q").display(),
            dir.path().join("no.sock").display()
        ),
    )
    .unwrap();
    for verb in ["check-config", "run"] {
        let out = command()
            .arg(verb)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{verb}: {}", text(&out));
        assert!(
            text(&out).contains("log.output") && text(&out).contains("no.sock"),
            "{verb}: {}",
            text(&out)
        );
    }
}
