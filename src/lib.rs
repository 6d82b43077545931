//! stormbreaker: an SMTP proxy and milter that stops reply-all storms.
//!
//! Where things are:
//! - `smtp/`: the wire (client commands, DATA framing, EHLO extensions) and the SMTP client.
//! - `proxy/`: the SMTP proxy: listener, session loop, DATA phase, upstream link.
//! - `milter/`: the milter codec and session, for Postfix's `smtpd_milters`.
//! - `fingerprint/`: thread and audience keys of a message (pure functions).
//! - `lists/`: distribution list sizes: declared, Postfix's virtual aliases, LDAP groups.
//! - `breaker/`: sliding windows and circuit breakers (pure, time passed in).
//! - `store/`: where breaker state lives (in process, or Redis).
//! - `engine`: the decision point: envelope + headers + now -> `verdict::Verdict`.
//! - `quarantine/`: durable hold, list, release, delete, purge.
//! - `config`: the TOML policy file.
//! - `replay`: the policy over past mail (mbox, Maildir): what would have tripped.
//! - `cli`: the command line (the binary and its man pages); `service`: `stormbreaker run`.

pub mod admin;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod envelope;
pub mod fingerprint;
pub mod frontend;
pub mod lists;
pub mod logging;
pub mod mark;
pub mod milter;
pub mod notify;
pub mod origins;
pub mod proxy;
pub mod quarantine;
pub mod replay;
pub mod reply;
pub mod service;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod verdict;

/// Unix time in milliseconds: the clock the engine is given.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
