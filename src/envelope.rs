//! What a front end (proxy or milter) knows of a transaction when it asks for a decision.

use std::net::SocketAddr;

/// The SMTP envelope of one transaction, with the client it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// The connecting client, when known (a milter may be told only a name).
    pub client_addr: Option<SocketAddr>,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Reverse-path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// MAIL FROM parameters as sent upstream, e.g. `SIZE=2048 BODY=8BITMIME`.
    pub mail_params: String,
    pub rcpts: Vec<Recipient>,
    /// The name the client authenticated as (SMTP AUTH), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

impl Envelope {
    /// An envelope from `mail_from` to plain recipients (no parameters, client or HELO), as
    /// simulations, benchmarks and tests build them.
    pub fn to(mail_from: &str, rcpts: &[&str]) -> Envelope {
        Envelope {
            mail_from: mail_from.into(),
            rcpts: rcpts.iter().map(|r| Recipient::plain(r)).collect(),
            ..Envelope::default()
        }
    }
}

/// One accepted RCPT TO.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recipient {
    /// Forward-path without angle brackets.
    pub address: String,
    /// RCPT TO parameters as sent upstream, e.g. `NOTIFY=FAILURE ORCPT=rfc822;a@b`.
    pub params: String,
}

impl Recipient {
    /// A recipient without parameters.
    pub fn plain(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            params: String::new(),
        }
    }
}
