//! Real MTAs on both sides of the proxy and around the milter (scripts/peers/): Exim 4 as the
//! sending MTA and as the upstream, Sendmail 8.17 as a milter client, the submission path
//! (STARTTLS or implicit TLS, AUTH relayed to a Postfix with Cyrus SASL), and the per-client
//! connection limit. Postfix as the sending MTA is in `proxy.rs`.

mod exim_sender;
mod exim_upstream;
mod per_client_limit;
mod sendmail_milter;
mod submission;

use std::collections::HashSet;

/// The list every storm here replies to.
pub const LIST: &str = "all-staff@corp.test";

/// A policy under which a storm to [`LIST`] trips after `trip_replies` replies: the list is
/// wide (91,053 members), fast trip off, so the reply count rule is what trips; `extra` goes
/// into `[policy]`.
pub fn storm_policy(action: &str, trip_replies: u32, extra: &str) -> String {
    format!(
        "[policy]\naction = \"{action}\"\ntrip_replies = {trip_replies}\nfast_audience = 0\n{extra}\n\
         [[lists]]\naddress = \"{LIST}\"\nmembers = 91053\n"
    )
}

/// The announcement that starts a storm: `thread` is its Message-ID's local part.
pub fn original(thread: &str) -> String {
    format!(
        "From: <hr@corp.test>\r\nTo: <{LIST}>\r\nSubject: Welcome {thread}\r\n\
         Message-ID: <{thread}@corp.test>\r\n\r\nWelcome, all.\r\n"
    )
}

/// Reply-all `i` of `thread` from `from`; its tag (`THREAD-rI`) is in its body and Message-ID.
pub fn reply_all(thread: &str, i: usize, from: &str) -> String {
    let tag = format!("{thread}-r{i}");
    format!(
        "From: <{from}>\r\nTo: <{LIST}>\r\nSubject: RE: Welcome {thread}\r\n\
         In-Reply-To: <{thread}@corp.test>\r\nReferences: <{thread}@corp.test>\r\n\
         Message-ID: <{tag}@corp.test>\r\n\r\nPlease remove me. {tag}\r\n"
    )
}

/// The reply tags of `thread` in `texts` (delivered messages).
pub fn tags<'a>(thread: &str, texts: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let marker = format!("{thread}-r");
    texts
        .into_iter()
        .filter_map(|text| {
            let at = text.find(&marker)?;
            Some(
                text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect(),
            )
        })
        .collect()
}
