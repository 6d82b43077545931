//! Reply-all storms: simulated through the engine with the clock passed in, and sent for real
//! through the proxy (and the milter) in front of Postfix.

mod both;
mod figures;
mod ids;
mod people;
mod proxy;
mod restart;
mod sim;
mod split;

use crate::support::clients::{send_message, swaks, text};
use crate::support::{Postfix, Sink, relay, token, wait_for};

/// Sends a marker straight to the suite's Postfix and waits for it at the sink: Postfix has
/// then relayed what came before it, so counts of what was delivered are final.
fn settle() {
    let relay = relay();
    settle_through(&relay.postfix, &relay.sink);
}

/// Sends a marker through `postfix` to `sink` and waits for it: what went before has arrived.
fn settle_through(postfix: &Postfix, sink: &Sink) {
    let marker = token("marker");
    let out = swaks(
        postfix.port,
        &[
            "--from",
            "m@corp.test",
            "--to",
            "m@corp.test",
            "--header",
            &format!("Subject: {marker}"),
        ],
    );
    assert!(text(&out).contains("250"), "{}", text(&out));
    assert!(
        wait_for(|| !sink.mentioning(&marker).is_empty()).is_some(),
        "marker not delivered"
    );
}

/// The distribution list the storm tests reply to (each declares it in its policy).
const LIST: &str = "all-staff@corp.test";

/// Person `i`'s reply-all to `list` over its own session, from `user{i}@corp.test` and tagged
/// `{thread}-r{i}` (its Message-ID, and the end of its body after `body`); `headers` are its
/// Subject and thread headers. Returns the answer to its final dot.
fn reply_all(port: u16, list: &str, thread: &str, i: usize, headers: &str, body: &str) -> String {
    let from = format!("user{i}@corp.test");
    let tag = format!("{thread}-r{i}");
    send(
        port,
        &from,
        &[list],
        &format!("From: <{from}>\r\nTo: <{list}>\r\n{headers}Message-ID: <{tag}@corp.test>\r\n"),
        &format!("{body}{tag}"),
    )
}

/// Sends one message over its own session; returns the answer to its final dot.
fn send(port: u16, mail_from: &str, to: &[&str], headers: &str, body: &str) -> String {
    send_message(port, mail_from, to, &format!("{headers}\r\n{body}\r\n"))
}

/// The answer to a final dot says the message was held.
fn held(answer: &str) -> bool {
    answer.starts_with("250") && answer.contains("held")
}

/// An Outlook Thread-Index of conversation `guid` with `replies` reply blocks.
fn thread_index(guid: u8, replies: usize) -> String {
    use base64::Engine as _;
    let mut bytes = vec![1u8, 0xd5, 0x3a, 0x11, 0x22, 0x33];
    bytes.extend(std::iter::repeat_n(guid, 16));
    for i in 0..replies {
        bytes.extend([0, 0, 0, (i % 256) as u8, 7]);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The texts of the admin alerts at the suite's sink that mention `needle`.
fn admin_alerts(needle: &str) -> Vec<String> {
    relay()
        .sink
        .mentioning(needle)
        .iter()
        .filter(|m| m.rcpts.iter().any(|r| r.contains("admin@corp.test")))
        .map(|m| m.text().to_string())
        .collect()
}
