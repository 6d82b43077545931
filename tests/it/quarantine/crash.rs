//! kill -9 a process while it holds messages: after restart, every message it reported as
//! committed (the proxy's "250") is complete in the quarantine, and nothing else is there.

use super::{envelope, hold};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use stormbreaker::quarantine::{ListFilter, Quarantine};

const CHILD_ENV: &str = "SBQ_CRASH_CHILD_DIR";

/// Message `n`: distinct bytes of varying size, so a torn one cannot pass for another.
fn message(n: u64) -> Vec<u8> {
    let mut m =
        format!("Message-ID: <crash-{n}@corp.test>\r\nSubject: crash {n}\r\n\r\n").into_bytes();
    for line in 0..(n % 97) * 11 {
        m.extend_from_slice(format!("line {line} of message {n}\r\n").as_bytes());
    }
    m
}

/// In the child: hold messages forever, printing each id once `commit` returned.
#[test]
#[ignore = "the child process of kill_9_while_holding_leaves_only_complete_messages"]
fn crash_child() {
    let dir = std::env::var(CHILD_ENV).expect("started by the test below, which sets it");
    let q = Quarantine::open(std::path::Path::new(&dir)).unwrap();
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        let m = message(n);
        let mut w = q.begin().unwrap();
        // Several writes, as the proxy streams DATA.
        for chunk in m.chunks(500) {
            w.write_all(chunk).unwrap();
        }
        let mut h = hold("tidx:crash");
        h.reason = format!("crash {n}");
        let id = w.commit(&envelope(), &h, &m).unwrap();
        writeln!(out, "HELD {id} {n} END").unwrap();
        out.flush().unwrap();
    }
}

/// `HELD <id> <n> END`; anything else (the test harness's own output) is not an ack. With
/// `--nocapture` the harness writes `test crash_child ... ` without a line end first, so the
/// first ack shares its line: look for it anywhere in the line.
fn parse(line: &str) -> Option<(String, u64)> {
    let mut parts = line[line.find("HELD ")?..].split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("HELD"), Some(id), Some(n), Some("END")) => Some((id.to_string(), n.parse().ok()?)),
        _ => None,
    }
}

#[test]
fn kill_9_while_holding_leaves_only_complete_messages() {
    for round in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "quarantine::crash::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a number of messages that varies with the round, then kill it mid-stream.
        let mut acked = Vec::new();
        while acked.len() < 20 + round * 13 {
            let line = lines.next().expect("child output").unwrap();
            acked.extend(parse(&line));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Anything printed after our last read was also committed.
        for line in lines.map_while(Result::ok) {
            acked.extend(parse(&line));
        }

        let q = Quarantine::open(tmp.path()).unwrap();
        let scan = q.scan().unwrap();
        assert!(scan.torn.is_empty(), "round {round}: {:?}", scan.torn);
        let held = q.list(&ListFilter::default()).unwrap();
        // At most one message was committed but not yet printed when the kill landed.
        assert!(
            held.len() == acked.len() || held.len() == acked.len() + 1,
            "round {round}: {} held, {} acknowledged",
            held.len(),
            acked.len()
        );
        for (id, n) in &acked {
            let m = q
                .get(id)
                .unwrap_or_else(|e| panic!("round {round}: {id}: {e}"));
            assert_eq!(m.content, message(*n), "round {round}: {id}");
            assert_eq!(m.meta.reason, format!("crash {n}"));
        }
        // An unfinished write is gone. A kill between creating a temporary folder and its
        // (locked) message file leaves the empty folder, which open() removes after a grace
        // period, since a live writer may be in that same window.
        let unfinished: Vec<_> = std::fs::read_dir(tmp.path().join("tmp"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().join("message").exists())
            .collect();
        assert!(
            unfinished.is_empty(),
            "round {round}: unfinished writes left: {unfinished:?}"
        );
    }
}
