//! A reply-all storm sent for real: an original to a big list, then wide replies from
//! distinct senders, each over its own SMTP session (as people's clients send them).

use super::clients::{Raw, swaks, text};

/// The list every storm goes to; declared with 91,053 members by [`policy`].
pub const LIST: &str = "all-staff@corp.test";

/// A policy file's storm part: `action` for held replies, a breaker after `trip_replies`
/// wide replies (the fast trip off, so the count rule is what trips), the big list, and
/// alerts to admin@corp.test. `admin` goes in as it is (an `[admin]` section or nothing).
pub fn policy(action: &str, trip_replies: u32, admin: &str) -> String {
    format!(
        "[policy]\naction = \"{action}\"\ntrip_replies = {trip_replies}\nfast_audience = 0\n\
[[lists]]\naddress = \"{LIST}\"\nmembers = 91053\n\
[notify]\nadmins = [\"admin@corp.test\"]\nfrom = \"stormbreaker@corp.test\"\ninterval = \"30m\"\n{admin}"
    )
}

/// The thread's first message, through 127.0.0.1:`port`; it must be accepted.
pub fn original(port: u16, thread: &str) {
    let out = swaks(
        port,
        &[
            "--from",
            "hr@corp.test",
            "--to",
            LIST,
            "--header",
            &format!("Subject: Welcome {thread}"),
            "--header",
            &format!("Message-ID: <{thread}@corp.test>"),
        ],
    );
    assert!(text(&out).contains(" 250 "), "{}", text(&out));
}

/// Reply `i` to the thread from user`i`@corp.test; returns its tag (in its body and its
/// Message-ID, `<TAG@corp.test>`) and the proxy's answer to its final dot.
pub fn reply(port: u16, thread: &str, i: usize) -> (String, String) {
    let tag = format!("{thread}-r{i}");
    let mut c = Raw::connect(port);
    c.cmd("EHLO client.test");
    let r = c.cmd(&format!("MAIL FROM:<user{i}@corp.test>"));
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd(&format!("RCPT TO:<{LIST}>"));
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        format!(
            "From: <user{i}@corp.test>\r\nTo: <{LIST}>\r\nSubject: RE: Welcome {thread}\r\n\
In-Reply-To: <{thread}@corp.test>\r\nReferences: <{thread}@corp.test>\r\n\
Message-ID: <{tag}@corp.test>\r\n\r\nPlease remove me. {tag}\r\n.\r\n"
        )
        .as_bytes(),
    );
    let answer = c.reply();
    c.cmd("QUIT");
    (tag, answer)
}

/// The original and `replies` replies; returns the tags of the replies the proxy held.
pub fn send(port: u16, thread: &str, replies: usize) -> Vec<String> {
    original(port, thread);
    (0..replies)
        .filter_map(|i| {
            let (tag, answer) = reply(port, thread, i);
            assert!(answer.starts_with("250"), "reply {i}: {answer}");
            answer.contains("held").then_some(tag)
        })
        .collect()
}
