//! SMTP wire syntax and the client, no policy: what both the proxy and the tools that send
//! mail (release, alerts) share.
//!
//! - `command`: client command lines (smtp-proto) and the canonical MAIL/RCPT sent upstream.
//! - `data`: DATA framing, strict end of data, dot-(un)stuffing.
//! - `extensions`: EHLO keywords, the upstream's and ours.
//! - `client`: the SMTP client to an MTA (greeting, EHLO, STARTTLS, replies, XCLIENT/XFORWARD).

pub mod client;
pub mod command;
pub mod data;
pub mod extensions;
