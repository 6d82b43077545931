//! The quarantine: the store on a real folder, the administrator's commands, kill -9 while
//! holding, alerts and release against the recording sink and a real Postfix. Fixtures for a
//! held reply-all are here.

mod cli;
mod crash;
mod nodes;
mod notify;
mod release;
mod store;

use crate::support::stormbreaker::command;
use std::path::Path;
use std::process::Output;
use stormbreaker::config::HoldAction;
use stormbreaker::envelope::{Envelope, Recipient};
use stormbreaker::quarantine::Quarantine;
use stormbreaker::verdict::Hold;

const HEADERS: &[u8] = b"From: Bob <bob@corp.test>\r\nTo: all@corp.test\r\n\
Message-ID: <reply-7@corp.test>\r\nSubject: RE: Quarterly results\r\n\r\n";

fn envelope() -> Envelope {
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

fn hold(thread: &str) -> Hold {
    Hold {
        thread: thread.into(),
        list: Some("all@corp.test".into()),
        audience: 91053,
        breaker: "replies",
        replies: 12,
        senders: 9,
        reason: format!("reply-all storm on thread {thread}"),
        action: HoldAction::Quarantine,
        origin: None,
    }
}

/// Headers, then a body naming `tag`, with lines that need dot-stuffing, and 8-bit text.
fn content(tag: &str) -> Vec<u8> {
    let mut c = HEADERS.to_vec();
    c.extend_from_slice(
        format!("Please remove me ({tag}).\r\n.\r\n..\r\n.x\r\nZ\u{fc}rich\r\n").as_bytes(),
    );
    c
}

fn hold_one(q: &Quarantine, thread: &str, tag: &str) -> String {
    let mut w = q.begin().unwrap();
    w.write_all(&content(tag)).unwrap();
    w.commit(&envelope(), &hold(thread), HEADERS).unwrap().0
}

/// A policy file for the binary: quarantine in `dir`, upstream at `upstream`.
fn write_config(path: &Path, dir: &Path, upstream: &str) {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:9\"\nhostname = \"sb.corp.test\"\n\
         [upstream]\naddress = \"{upstream}\"\nconnect_timeout = \"5s\"\nreply_timeout = \"30s\"\n\
         [quarantine]\ndir = \"{}\"\n",
        dir.display()
    );
    std::fs::write(path, text).unwrap();
}

/// Runs `stormbreaker quarantine --config CONFIG ARGS...` as administrator alice.
fn quarantine_cmd(config: &Path, args: &[&str]) -> Output {
    command()
        .arg("quarantine")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
