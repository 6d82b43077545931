//! Helpers for the quarantine tests: fixtures, the binary, and (in postfix.rs) real peers.
#![allow(dead_code)]

pub mod postfix;

use std::path::Path;
use std::process::Output;
use stormbreaker::config::HoldAction;
use stormbreaker::envelope::{Envelope, Recipient};
use stormbreaker::quarantine::Quarantine;
use stormbreaker::verdict::Hold;

pub const HEADERS: &[u8] = b"From: Bob <bob@corp.test>\r\nTo: all@corp.test\r\n\
Message-ID: <reply-7@corp.test>\r\nSubject: RE: Quarterly results\r\n\r\n";

pub fn envelope() -> Envelope {
    Envelope {
        client_addr: Some("192.0.2.7:40000".parse().unwrap()),
        helo: "client.corp.test".into(),
        mail_from: "bob@corp.test".into(),
        mail_params: String::new(),
        rcpts: vec![
            Recipient {
                address: "all@corp.test".into(),
                params: "NOTIFY=FAILURE ORCPT=rfc822;all@corp.test".into(),
            },
            Recipient {
                address: "carol@corp.test".into(),
                params: String::new(),
            },
            // Bcc: in the envelope only, never in the headers.
            Recipient {
                address: "hidden@corp.test".into(),
                params: String::new(),
            },
        ],
        auth: None,
    }
}

pub fn hold(thread: &str) -> Hold {
    Hold {
        thread: thread.into(),
        list: Some("all@corp.test".into()),
        audience: 91053,
        breaker: "replies",
        replies: 12,
        senders: 9,
        reason: format!("reply-all storm on thread {thread}"),
        action: HoldAction::Quarantine,
    }
}

/// Headers, then a body with lines that need dot-stuffing, and 8-bit text.
pub fn content(tag: &str) -> Vec<u8> {
    let mut c = HEADERS.to_vec();
    c.extend_from_slice(
        format!("Please remove me ({tag}).\r\n.\r\n..\r\n.x\r\nZ\u{fc}rich\r\n").as_bytes(),
    );
    c
}

pub fn hold_one(q: &Quarantine, thread: &str, tag: &str) -> String {
    let mut w = q.begin().unwrap();
    w.write_all(&content(tag)).unwrap();
    w.commit(&envelope(), &hold(thread), HEADERS).unwrap().0
}

/// A policy file for the binary: quarantine in `dir`, upstream at `upstream`.
pub fn write_config(path: &Path, dir: &Path, upstream: &str) {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:9\"\nhostname = \"sb.corp.test\"\n\
         [upstream]\naddress = \"{upstream}\"\nconnect_timeout = \"5s\"\nreply_timeout = \"30s\"\n\
         [quarantine]\ndir = \"{}\"\n",
        dir.display()
    );
    std::fs::write(path, text).unwrap();
}

/// Runs `stormbreaker quarantine --config CONFIG ARGS...`.
pub fn quarantine_cmd(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stormbreaker"))
        .arg("quarantine")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "alice")
        .env_remove("SUDO_USER")
        .output()
        .unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
