//! What the engine reads from a message's headers: its thread keys (Thread-Index GUID, the
//! thread's root message id (first of References, else In-Reply-To), the parent (In-Reply-To),
//! the normalised subject), its To/Cc audience, whether it is an automatic reply, and the marks
//! of an earlier decision.

use super::subject::{normalize_subject, strip_prefixes};
use super::thread_index::decode_thread_index;
use super::{hash_bytes, hash_lowercase};
use mail_parser::{HeaderName, HeaderValue, Message, MessageParser};
use std::sync::OnceLock;

/// Header blocks are cut to this many bytes before parsing (at a line end): a thread key is
/// never worth parsing megabytes, and it bounds the parser's work on hostile input.
pub const MAX_HEADER_BYTES: usize = 512 * 1024;

/// Longest message id used as a key (RFC 5322 lines are at most 998 octets).
const MAX_MSG_ID: usize = 998;
/// Thread key labels are cut to this many bytes (they are logged and shown to admins).
const MAX_LABEL: usize = 200;

/// One key a message is counted under. `label` names it for people (`tidx:<guid hex>`,
/// `mid:<message id>`, `subj:<normalised subject>`); `id` is the hash of the label and is what
/// state stores index by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThreadKey {
    pub id: u64,
    pub label: Box<str>,
}

impl ThreadKey {
    /// A key from its label; `ThreadKey::new("subj:quarterly results")` is the key manual
    /// trip/reset use.
    pub fn new(label: &str) -> ThreadKey {
        let mut cut = label.len().min(MAX_LABEL);
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        let label = &label[..cut];
        ThreadKey {
            id: hash_bytes(label.as_bytes()),
            label: label.into(),
        }
    }
}

/// What the engine needs to know of a message's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadKeys {
    /// Distinct keys, most specific first: Thread-Index, root id, parent id, subject.
    pub keys: Vec<ThreadKey>,
    /// In-Reply-To or References present, a Thread-Index with reply blocks, or a reply prefix.
    pub reply: bool,
    /// Normalised subject (from Thread-Topic when present); may be empty.
    pub subject: String,
    /// The subject as people wrote it (decoded, reply prefixes removed), for alerts.
    pub display_subject: String,
    /// The message's own Message-ID, without angle brackets.
    pub message_id: Option<String>,
    /// The header From address, for messages with a null envelope sender.
    pub from: Option<String>,
    /// Hashes (`hash_lowercase`) of the distinct To and Cc addresses, sorted: the audience the
    /// message names, whichever transaction carries it.
    pub to_cc: Vec<u64>,
    /// An automatic reply (RFC 3834): `Auto-Submitted` other than `no`, `X-Autoreply`,
    /// `X-Autorespond`, or `Precedence: auto_reply`, `bulk` or `junk`.
    pub auto_reply: bool,
    /// Values of `X-Stormbreaker-Mark` headers (an earlier decision's signed mark), at most a few.
    pub marks: Vec<String>,
}

/// Marks read per message: more are someone's noise.
const MAX_MARKS: usize = 4;

/// The parser the engine uses: only the headers thread keys need are parsed, every other header
/// (notably To/Cc with thousands of addresses) is skipped.
pub fn parser() -> &'static MessageParser {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    PARSER.get_or_init(|| {
        MessageParser::new()
            .header_id(HeaderName::MessageId)
            .header_id(HeaderName::InReplyTo)
            .header_id(HeaderName::References)
            .header_text(HeaderName::Subject)
            .header_address(HeaderName::From)
            .header_text(HeaderName::Other("Thread-Topic".into()))
            .header_raw(HeaderName::Other("Thread-Index".into()))
            .header_address(HeaderName::To)
            .header_address(HeaderName::Cc)
            // From<&str> gives the names mail-parser knows (Auto-Submitted) their own variant.
            .header_raw(HeaderName::from("Auto-Submitted"))
            .header_raw(HeaderName::from("X-Autoreply"))
            .header_raw(HeaderName::from("X-Autorespond"))
            .header_raw(HeaderName::from("Precedence"))
            .header_raw(HeaderName::from(crate::mark::HEADER))
            .default_header_ignore()
    })
}

/// Parses a raw header block (cut to `MAX_HEADER_BYTES`) and fingerprints it. Unparseable input
/// gives empty keys, never a panic.
pub fn parse_headers(raw: &[u8]) -> ThreadKeys {
    let raw = cap_headers(raw);
    // The parser drops a last header line that has no line end: give it one.
    let terminated;
    let raw = if raw.ends_with(b"\n") {
        raw
    } else {
        terminated = [raw, b"\r\n"].concat();
        &terminated[..]
    };
    match parser().parse_headers(raw) {
        Some(message) => thread_keys(&message),
        None => ThreadKeys::default(),
    }
}

fn cap_headers(raw: &[u8]) -> &[u8] {
    if raw.len() <= MAX_HEADER_BYTES {
        return raw;
    }
    let head = &raw[..MAX_HEADER_BYTES];
    match head.iter().rposition(|&b| b == b'\n') {
        Some(end) => &raw[..=end],
        None => head,
    }
}

/// Thread keys of a parsed message (any `MessageParser` configuration).
pub fn thread_keys(message: &Message) -> ThreadKeys {
    let message_id = message
        .message_id()
        .and_then(clean_msg_id)
        .map(str::to_string);
    let own = message_id.as_deref();
    let references = ids(message.references());
    let in_reply_to = ids(message.in_reply_to());
    let root = references.iter().copied().find(|id| Some(*id) != own);
    let parent = in_reply_to.iter().copied().find(|id| Some(*id) != own);

    let thread_index = message
        .header("Thread-Index")
        .and_then(HeaderValue::as_text)
        .and_then(decode_thread_index);

    let raw_subject = message.subject().unwrap_or("");
    let topic = message
        .header("Thread-Topic")
        .and_then(HeaderValue::as_text)
        .filter(|t| !t.trim().is_empty());
    let subject = normalize_subject(topic.unwrap_or(raw_subject));
    let display_subject = strip_prefixes(topic.unwrap_or(raw_subject))
        .0
        .trim()
        .to_string();
    let reply_prefix = strip_prefixes(raw_subject).1.reply;

    let mut keys = Vec::with_capacity(4);
    let mut push = |label: String| {
        let key = ThreadKey::new(&label);
        if !keys.contains(&key) {
            keys.push(key);
        }
    };
    if let Some(ti) = &thread_index {
        push(format!("tidx:{}", ti.guid_hex()));
    }
    if let Some(id) = root.or(parent) {
        push(format!("mid:{id}"));
    }
    if let Some(id) = parent {
        push(format!("mid:{id}"));
    }
    if !subject.is_empty() {
        push(format!("subj:{subject}"));
    }

    let reply = root.is_some()
        || parent.is_some()
        || thread_index.is_some_and(|ti| ti.replies > 0)
        || reply_prefix;
    let from = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_ascii_lowercase);
    ThreadKeys {
        keys,
        reply,
        subject,
        display_subject,
        message_id,
        from,
        to_cc: to_cc(message),
        auto_reply: is_auto_reply(message),
        marks: message
            .header_values(crate::mark::HEADER)
            .filter_map(HeaderValue::as_text)
            .take(MAX_MARKS)
            .map(|v| v.trim().to_string())
            .collect(),
    }
}

/// The distinct addresses of every To and Cc header (groups included), hashed.
fn to_cc(message: &Message) -> Vec<u64> {
    let mut out: Vec<u64> = message
        .header_values(HeaderName::To)
        .chain(message.header_values(HeaderName::Cc))
        .filter_map(HeaderValue::as_address)
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(hash_lowercase)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// RFC 3834 and the headers older responders set instead.
fn is_auto_reply(message: &Message) -> bool {
    let value = |name: &'static str| {
        message
            .header_values(name)
            .filter_map(HeaderValue::as_text)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    value("Auto-Submitted").any(|v| {
        let token = v.split([';', ' ', '(']).next().unwrap_or("");
        !token.is_empty() && token != "no"
    }) || message.header("X-Autoreply").is_some()
        || message.header("X-Autorespond").is_some()
        || value("Precedence").any(|v| matches!(v.as_str(), "auto_reply" | "bulk" | "junk"))
}

/// A message is a reply when it has In-Reply-To or References, a Thread-Index longer than the
/// 22-byte header block, or a reply prefix in its subject.
pub fn is_reply(message: &Message) -> bool {
    !ids(message.in_reply_to()).is_empty()
        || !ids(message.references()).is_empty()
        || message
            .header("Thread-Index")
            .and_then(HeaderValue::as_text)
            .and_then(decode_thread_index)
            .is_some_and(|ti| ti.replies > 0)
        || message.subject().is_some_and(|s| strip_prefixes(s).1.reply)
}

/// Valid message ids of an id header, in order, duplicates kept.
fn ids<'a>(value: &'a HeaderValue) -> Vec<&'a str> {
    match value {
        HeaderValue::Text(t) => clean_msg_id(t).into_iter().collect(),
        HeaderValue::TextList(list) => list.iter().filter_map(|t| clean_msg_id(t)).collect(),
        _ => Vec::new(),
    }
}

/// A message id fit to be a key: angle brackets stripped, an `@`, no spaces or controls.
/// Garbage (`References: see above`) is dropped rather than keyed.
fn clean_msg_id(raw: &str) -> Option<&str> {
    let id = raw.trim().trim_start_matches('<').trim_end_matches('>');
    let valid = !id.is_empty()
        && id.len() <= MAX_MSG_ID
        && id.contains('@')
        && !id.starts_with('@')
        && !id.ends_with('@')
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    valid.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(headers: &str) -> ThreadKeys {
        parse_headers(headers.as_bytes())
    }

    fn labels(k: &ThreadKeys) -> Vec<&str> {
        k.keys.iter().map(|k| &*k.label).collect()
    }

    #[test]
    fn original_message_has_subject_key_and_is_not_a_reply() {
        let k = keys("Message-ID: <a1@corp.test>\r\nSubject: Quarterly results\r\n\r\n");
        assert!(!k.reply);
        assert_eq!(labels(&k), ["subj:quarterly results"]);
        assert_eq!(k.message_id.as_deref(), Some("a1@corp.test"));
    }

    #[test]
    fn thunderbird_reply_keys_on_references_root_and_parent() {
        let k = keys(
            "Message-ID: <r2@corp.test>\r\nIn-Reply-To: <r1@corp.test>\r\n\
             References: <a1@corp.test> <r1@corp.test>\r\nSubject: Re: Quarterly results\r\n\r\n",
        );
        assert!(k.reply);
        assert_eq!(
            labels(&k),
            [
                "mid:a1@corp.test",
                "mid:r1@corp.test",
                "subj:quarterly results"
            ]
        );
    }

    #[test]
    fn gmail_reply_with_only_in_reply_to_shares_the_root_key() {
        let k = keys("In-Reply-To: <a1@corp.test>\r\nSubject: Re: Quarterly results\r\n\r\n");
        assert!(k.reply);
        assert_eq!(labels(&k), ["mid:a1@corp.test", "subj:quarterly results"]);
    }

    #[test]
    fn outlook_reply_keys_on_guid_and_thread_topic() {
        let k = keys(
            "Subject: AW: Quartalszahlen\r\nThread-Topic: Quarterly results\r\n\
             Thread-Index: AcPSUdfY5IUO+ol7QBiAGd3YKGvV8wAAAEMQ\r\n\r\n",
        );
        assert!(k.reply);
        assert_eq!(k.keys.len(), 2);
        assert!(k.keys[0].label.starts_with("tidx:"));
        assert_eq!(&*k.keys[1].label, "subj:quarterly results");
    }

    #[test]
    fn thread_index_without_reply_blocks_is_not_a_reply() {
        let k = keys(
            "Subject: Quarterly results\r\nThread-Index: AcPSUdfY5IUO+ol7QBiAGd3YKGvV8w==\r\n\r\n",
        );
        assert!(!k.reply);
        assert_eq!(k.keys.len(), 2);
    }

    #[test]
    fn malformed_thread_index_is_ignored() {
        let k = keys("Subject: Re: x\r\nThread-Index: %%%not-base64%%%\r\n\r\n");
        assert!(k.reply);
        assert_eq!(labels(&k), ["subj:x"]);
    }

    #[test]
    fn reply_prefix_alone_makes_a_reply() {
        let k = keys("Subject: RE: Quarterly results\r\n\r\n");
        assert!(k.reply);
        let k = keys("Subject: FW: Quarterly results\r\n\r\n");
        assert!(!k.reply);
    }

    #[test]
    fn references_loop_to_own_id_is_skipped() {
        let k = keys(
            "Message-ID: <me@corp.test>\r\nReferences: <me@corp.test> <a1@corp.test>\r\n\
             In-Reply-To: <me@corp.test>\r\nSubject: x\r\n\r\n",
        );
        assert_eq!(labels(&k), ["mid:a1@corp.test", "subj:x"]);
        let k = keys("Message-ID: <me@corp.test>\r\nReferences: <me@corp.test>\r\n\r\n");
        assert!(k.keys.is_empty());
        assert!(!k.reply);
    }

    #[test]
    fn garbage_references_are_dropped() {
        for garbage in [
            "References: see above\r\n",
            "References: <>\r\n",
            "References: <no-at-sign>\r\n",
            "References: <@>\r\n",
            "References: <<<<\r\n",
            "References: \r\n",
        ] {
            let k = keys(&format!("{garbage}Subject: hello\r\n\r\n"));
            assert_eq!(labels(&k), ["subj:hello"], "{garbage:?}");
            assert!(!k.reply, "{garbage:?}");
        }
        // Garbage around a valid id keeps the id.
        let k = keys("References: junk <a1@corp.test> more junk\r\n\r\n");
        assert_eq!(labels(&k), ["mid:a1@corp.test"]);
    }

    #[test]
    fn in_reply_to_with_comment_text_keeps_the_id() {
        let k =
            keys("In-Reply-To: Message from John of \"Mon, 1 Jan 2024\" <a1@corp.test>\r\n\r\n");
        assert_eq!(labels(&k), ["mid:a1@corp.test"]);
    }

    #[test]
    fn empty_and_binary_input_give_no_keys() {
        assert_eq!(parse_headers(b""), ThreadKeys::default());
        assert!(parse_headers(b"\r\n\r\n").keys.is_empty());
        let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = parse_headers(&noise);
    }

    #[test]
    fn header_block_without_final_empty_line_still_parses() {
        let k = keys("In-Reply-To: <a1@corp.test>\r\nSubject: Re: x");
        assert_eq!(labels(&k), ["mid:a1@corp.test", "subj:x"]);
    }

    #[test]
    fn oversized_header_block_is_cut_not_parsed_whole() {
        let mut h = String::from("In-Reply-To: <a1@corp.test>\r\n");
        while h.len() < MAX_HEADER_BYTES + 1000 {
            h.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        h.push_str("Subject: beyond the cap\r\n\r\n");
        let k = keys(&h);
        assert_eq!(labels(&k), ["mid:a1@corp.test"]);
    }

    #[test]
    fn encoded_subject_is_decoded_before_normalising() {
        let k = keys("Subject: =?UTF-8?B?5Zue5aSN77ya5a2j5bqm5Lia57up?=\r\n\r\n");
        assert!(k.reply);
        assert_eq!(k.subject, "季度业绩");
    }

    #[test]
    fn from_address_is_lowercased() {
        let k = keys("From: \"Ann\" <Ann@Corp.Test>\r\n\r\n");
        assert_eq!(k.from.as_deref(), Some("ann@corp.test"));
    }

    #[test]
    fn is_reply_agrees_with_thread_keys_on_the_default_parser() {
        for h in [
            "Subject: hello\r\n\r\n",
            "Subject: Re: hello\r\n\r\n",
            "In-Reply-To: <a@b>\r\n\r\n",
            "References: <a@b>\r\n\r\n",
        ] {
            let m = MessageParser::new().parse_headers(h.as_bytes()).unwrap();
            assert_eq!(is_reply(&m), thread_keys(&m).reply, "{h:?}");
        }
    }

    #[test]
    fn to_and_cc_addresses_are_counted_once_whatever_their_case() {
        let k = keys(
            "To: \"Ann\" <Ann@Corp.Test>, bob@corp.test,\r\n Team: cat@corp.test, dan@corp.test;\r\n\
             Cc: ann@corp.test, <eve@corp.test>\r\nCc: fay@corp.test\r\nBcc: hidden@corp.test\r\n\r\n",
        );
        assert_eq!(k.to_cc.len(), 6, "{:?}", k.to_cc);
        assert!(k.to_cc.contains(&hash_lowercase("ann@corp.test")));
        assert!(!k.to_cc.contains(&hash_lowercase("hidden@corp.test")));
        assert!(
            keys("To: undisclosed-recipients:;\r\n\r\n")
                .to_cc
                .is_empty()
        );
        let mut many = String::from("To: ");
        for i in 0..150 {
            many.push_str(&format!("p{i}@corp.test,\r\n "));
        }
        many.push_str("last@corp.test\r\n\r\n");
        assert_eq!(keys(&many).to_cc.len(), 151);
    }

    #[test]
    fn automatic_replies_are_recognised() {
        for h in [
            "Auto-Submitted: auto-replied\r\n",
            "Auto-Submitted: auto-generated; owner-email=\"x@y\"\r\n",
            "AUTO-SUBMITTED: Auto-Replied (vacation)\r\n",
            "X-Autoreply: yes\r\n",
            "X-Autorespond: Out of office\r\n",
            "Precedence: bulk\r\n",
            "Precedence: junk\r\n",
            "Precedence: auto_reply\r\n",
        ] {
            assert!(
                keys(&format!("Subject: Away\r\n{h}\r\n")).auto_reply,
                "{h:?}"
            );
        }
        for h in [
            "Auto-Submitted: no\r\n",
            "Auto-Submitted: No (a person wrote this)\r\n",
            "Precedence: list\r\n",
            "Precedence: first-class\r\n",
            "",
        ] {
            assert!(
                !keys(&format!("Subject: Hi\r\n{h}\r\n")).auto_reply,
                "{h:?}"
            );
        }
    }

    #[test]
    fn marks_are_collected() {
        let k = keys("X-Stormbreaker-Mark: v=1; t=1; r=relayed; m=abc\r\nSubject: x\r\n\r\n");
        assert_eq!(k.marks, ["v=1; t=1; r=relayed; m=abc"]);
        assert!(keys("Subject: x\r\n\r\n").marks.is_empty());
    }

    #[test]
    fn label_is_cut_at_a_char_boundary() {
        let k = ThreadKey::new(&format!("subj:{}", "é".repeat(300)));
        assert!(k.label.len() <= MAX_LABEL);
    }
}
