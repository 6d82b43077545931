//! One milter connection as a state machine, no I/O: commands in, responses out.
//!
//! The connection state (client, HELO, connection macros) lives as long as the MTA's SMTP
//! session; the message state (envelope, headers, message macros such as the queue id `i`) is
//! cleared by MAIL, ABORT and the end of each message, so one SMTP session may carry many
//! messages. At the end of the headers the session hands a [`Pending`] message out; the caller
//! asks the engine and gives the disposition back to [`Session::after_decision`]. A message to
//! hold goes on to its end (its body is what we keep), where [`Session::at_end`] says what to
//! answer: discard (we have our own copy, durably) or, for a delivered message with the trace
//! header, add it.

use super::codec::{Command, Family, Response, action, step};
use crate::envelope::{Envelope, Recipient};
use crate::frontend::Disposition;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Steps we ask the MTA to leave out or not wait for. Each is requested only if the MTA offers
/// it (a flag it did not offer would fail negotiation). DATA is answered: with all recipients
/// known, a message that cannot be held is accepted there, and the MTA skips its content for
/// us. The end of the headers is answered too: the engine decides there, and only a message
/// to hold goes on, so only held messages send us their body (in chunks we do not answer).
pub const WANTED_STEPS: u32 = step::NO_UNKNOWN
    | step::NR_CONNECT
    | step::NR_HELO
    | step::NR_MAIL
    | step::NR_RCPT
    | step::NR_HEADER
    | step::NR_BODY;

/// The only macros we read, per stage (SMFIM_CONNECT .. SMFIM_EOH), asked for with
/// SMFIR_SETSYMLIST when the MTA offers it: Postfix then looks up and sends these few instead of
/// its default lists (about 20 per message). An empty list would mean "the defaults" to
/// Postfix, so every stage names one.
pub const MACRO_LISTS: [(u32, &str); 7] = [
    (0, "{client_addr} {client_port}"),
    (1, "s"),
    (2, "i {mail_addr}"),
    (3, "i"),
    (4, "i"),
    (5, "i"),
    (6, "i"),
];

/// [`MACRO_LISTS`] as the negotiation reply carries them.
pub fn macro_lists() -> Vec<(u32, String)> {
    MACRO_LISTS
        .iter()
        .map(|&(stage, names)| (stage, names.to_string()))
        .collect()
}

/// Which commands expect an answer, and which no-reply step lets us stay silent.
const NO_REPLY_STEP: &[(u8, u32)] = &[
    (b'C', step::NR_CONNECT),
    (b'H', step::NR_HELO),
    (b'M', step::NR_MAIL),
    (b'R', step::NR_RCPT),
    (b'T', step::NR_DATA),
    (b'L', step::NR_HEADER),
    (b'N', step::NR_EOH),
    (b'B', step::NR_BODY),
    (b'U', step::NR_UNKNOWN),
];

/// The header block handed to the engine is cut here; headers past it are not collected.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Distinct macro names kept per scope (connection or message); Postfix sends about 20.
pub const MAX_MACROS: usize = 256;

/// The trace header added when `[milter] trace_header` is on.
pub const TRACE_HEADER: &str = "X-Stormbreaker";

/// A peer that breaks the protocol's rules (beyond the wire format, which the codec checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("{0} command before option negotiation")]
    NotNegotiated(&'static str),
    #[error("MTA offers milter protocol version {0}; version 2 or later is needed")]
    OldVersion(u32),
    #[error("more than {MAX_MACROS} distinct macro names")]
    TooManyMacros,
}

/// What the I/O loop does after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these responses (possibly none) and read on.
    Reply(Vec<Response>),
    /// DATA: the envelope is complete. Answer continue if the engine could hold it, else
    /// [`Session::accept_message`].
    AtData(Pending),
    /// End of headers: ask the engine about this message, then [`Session::after_decision`].
    Decide(Pending),
    /// A body chunk of a message being held; answer with [`Session::body_reply`].
    Body(Vec<u8>),
    /// End of message: answer with [`Session::at_end`]. Carries the message when the MTA never
    /// sent its end of headers, so the decision is still to take.
    EndOfMessage(Option<Pending>),
    /// The MTA said QUIT: close the connection.
    Close,
}

/// How a message that went on to its end came out, for [`Session::at_end`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It goes on; with the trace header it gets `X-Stormbreaker: label`.
    Deliver { label: &'static str },
    /// It is in our quarantine, durably: the MTA may throw it away.
    Held,
    /// Answer with this reply (a hold that failed, a refusal decided at the end).
    Refuse(String),
}

/// A whole message waiting for the engine's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub envelope: Envelope,
    /// `Name: value\r\n` lines and the empty line, rebuilt from the header commands.
    pub headers: Vec<u8>,
    /// The MTA's queue id (macro `i`): what `postsuper -H` releases.
    pub queue_id: Option<String>,
    /// Headers past [`MAX_HEADER_BLOCK`] were left out.
    pub headers_truncated: bool,
    /// The client's host name as the MTA resolved it (`unknown` if it did not).
    pub client_name: String,
}

/// What was negotiated with the MTA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub steps: u32,
}

#[derive(Debug, Default)]
struct Connection {
    client: Option<SocketAddr>,
    hostname: String,
    helo: String,
    macros: HashMap<String, String>,
}

#[derive(Debug, Default, Clone)]
struct Message {
    /// The engine decided at the end of the headers.
    decided: bool,
    mail_from: Option<Vec<String>>,
    rcpts: Vec<Vec<String>>,
    headers: Vec<u8>,
    headers_truncated: bool,
    macros: HashMap<String, String>,
}

/// One milter connection.
#[derive(Debug)]
pub struct Session {
    trace_header: bool,
    negotiated: Option<Negotiated>,
    connection: Connection,
    message: Message,
}

impl Session {
    /// `trace_header`: add `X-Stormbreaker: <decision>` to messages that go on.
    pub fn new(trace_header: bool) -> Self {
        Session {
            trace_header,
            negotiated: None,
            connection: Connection::default(),
            message: Message::default(),
        }
    }

    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// Takes one command; says what to answer.
    pub fn handle(&mut self, command: Command) -> Result<Step, SessionError> {
        let code = command.code();
        let negotiated = match (&command, self.negotiated) {
            (Command::OptNeg { .. }, _) => None,
            (_, Some(n)) => Some(n),
            (_, None) => return Err(SessionError::NotNegotiated(command.name())),
        };
        match command {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => return self.negotiate(version, actions, protocol),
            Command::Macros { stage, pairs } => {
                self.define_macros(stage, pairs)?;
                return Ok(Step::Reply(Vec::new()));
            }
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                self.connection = Connection {
                    client: socket_addr(family, &address, port),
                    hostname,
                    helo: String::new(),
                    macros: std::mem::take(&mut self.connection.macros),
                };
            }
            Command::Helo(name) => self.connection.helo = name,
            Command::Mail(args) => {
                // A new transaction: whatever an earlier one left is gone (the MTA may skip ABORT).
                let macros = std::mem::take(&mut self.message.macros);
                self.message = Message {
                    mail_from: Some(args),
                    macros,
                    ..Message::default()
                };
            }
            Command::Rcpt(args) => self.message.rcpts.push(args),
            Command::Header { name, value } => self.add_header(&name, &value),
            // With the trace header every message needs its end of message (to add it).
            Command::Data if !self.trace_header => {
                return Ok(Step::AtData(self.pending(self.message.clone())));
            }
            Command::EndOfHeaders => {
                self.message.decided = true;
                return Ok(Step::Decide(self.pending(self.message.clone())));
            }
            Command::Body(chunk) => return Ok(Step::Body(chunk)),
            Command::Data | Command::Unknown(_) => {}
            Command::EndOfMessage(_) => {
                let message = std::mem::take(&mut self.message);
                let undecided = (!message.decided).then(|| self.pending(message));
                return Ok(Step::EndOfMessage(undecided));
            }
            Command::Abort => {
                self.message = Message::default();
                return Ok(Step::Reply(Vec::new()));
            }
            Command::QuitNewConnection => {
                self.connection = Connection::default();
                self.message = Message::default();
                return Ok(Step::Reply(Vec::new()));
            }
            Command::Quit => return Ok(Step::Close),
        }
        let silent = negotiated.is_some_and(|n| {
            NO_REPLY_STEP
                .iter()
                .any(|&(c, flag)| c == code && n.steps & flag != 0)
        });
        Ok(Step::Reply(if silent {
            Vec::new()
        } else {
            vec![Response::Continue]
        }))
    }

    fn negotiate(&mut self, version: u32, actions: u32, steps: u32) -> Result<Step, SessionError> {
        if version < 2 {
            return Err(SessionError::OldVersion(version));
        }
        let mut wanted_actions = 0;
        if self.trace_header {
            wanted_actions |= action::ADD_HEADERS;
        }
        wanted_actions |= action::SET_MACRO_LIST;
        let negotiated = Negotiated {
            version: version.min(super::codec::PROTOCOL_VERSION),
            actions: wanted_actions & actions,
            steps: WANTED_STEPS & steps,
        };
        self.negotiated = Some(negotiated);
        let macros = if negotiated.actions & action::SET_MACRO_LIST != 0 {
            macro_lists()
        } else {
            Vec::new()
        };
        Ok(Step::Reply(vec![Response::OptNeg {
            version: negotiated.version,
            actions: negotiated.actions,
            protocol: negotiated.steps,
            macros,
        }]))
    }

    fn define_macros(
        &mut self,
        stage: u8,
        pairs: Vec<(String, String)>,
    ) -> Result<(), SessionError> {
        let macros = match stage {
            b'C' | b'H' => &mut self.connection.macros,
            _ => &mut self.message.macros,
        };
        for (name, value) in pairs {
            if macros.len() >= MAX_MACROS && !macros.contains_key(&name) {
                return Err(SessionError::TooManyMacros);
            }
            macros.insert(name, value);
        }
        Ok(())
    }

    fn add_header(&mut self, name: &[u8], value: &[u8]) {
        let headers = &mut self.message.headers;
        if self.message.headers_truncated
            || headers.len() + name.len() + value.len() + 4 > MAX_HEADER_BLOCK
        {
            self.message.headers_truncated = true;
            return;
        }
        headers.extend_from_slice(name);
        headers.extend_from_slice(b": ");
        // Folded lines come with LF (Postfix) or CRLF: the block handed on uses CRLF throughout.
        let mut previous = 0u8;
        for &b in value {
            if b == b'\n' && previous != b'\r' {
                headers.push(b'\r');
            }
            headers.push(b);
            previous = b;
        }
        headers.extend_from_slice(b"\r\n");
    }

    /// A macro's value: the message's (`message`) first, then the connection's.
    fn macro_value<'a>(&'a self, message: &'a Message, name: &str) -> Option<&'a str> {
        message
            .macros
            .get(name)
            .or_else(|| self.connection.macros.get(name))
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Accepts the message at DATA: the MTA sends nothing more of it.
    pub fn accept_message(&mut self) -> Vec<Response> {
        self.message = Message::default();
        vec![Response::Accept]
    }

    /// The envelope and headers of `message`, with what the macros add.
    fn pending(&self, message: Message) -> Pending {
        let client = self.connection.client.or_else(|| {
            let ip: IpAddr = strip_ipv6_tag(self.macro_value(&message, "{client_addr}")?)
                .parse()
                .ok()?;
            let port = self
                .macro_value(&message, "{client_port}")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            Some(SocketAddr::new(ip, port))
        });
        let helo = if self.connection.helo.is_empty() {
            self.macro_value(&message, "s")
                .unwrap_or_default()
                .to_string()
        } else {
            self.connection.helo.clone()
        };
        let queue_id = self.macro_value(&message, "i").map(str::to_string);
        let mail_addr = self
            .macro_value(&message, "{mail_addr}")
            .map(str::to_string);
        let (mail_from, mail_params) = match message.mail_from {
            Some(args) => split_args(args),
            None => (mail_addr.unwrap_or_default(), String::new()),
        };
        let rcpts = message
            .rcpts
            .into_iter()
            .map(|args| {
                let (address, params) = split_args(args);
                Recipient { address, params }
            })
            .collect();
        let mut headers = message.headers;
        headers.extend_from_slice(b"\r\n");
        Pending {
            envelope: Envelope {
                client_addr: client,
                helo,
                mail_from,
                mail_params,
                rcpts,
                auth: None,
            },
            headers,
            queue_id,
            headers_truncated: message.headers_truncated,
            client_name: self.connection.hostname.clone(),
        }
    }

    /// The answer at the end of the headers. Deliver: accept (the MTA skips the body for us),
    /// or, with the trace header, continue to the end of message to add it. Hold: continue;
    /// the body follows and the message is committed at its end. Refuse: the reply.
    pub fn after_decision(&mut self, disposition: &Disposition) -> Vec<Response> {
        match disposition {
            Disposition::Deliver if self.adds_trace_header() => vec![Response::Continue],
            Disposition::Deliver => {
                self.message = Message::default();
                vec![Response::Accept]
            }
            Disposition::Hold => vec![Response::Continue],
            Disposition::Refuse(text) => {
                self.message = Message::default();
                vec![Response::ReplyCode(text.trim_end().to_string())]
            }
        }
    }

    /// The answer to a body chunk: none when the MTA does not wait for one.
    pub fn body_reply(&self) -> Vec<Response> {
        let silent = self
            .negotiated
            .is_some_and(|n| n.steps & step::NR_BODY != 0);
        if silent {
            Vec::new()
        } else {
            vec![Response::Continue]
        }
    }

    /// The answer at the end of message.
    pub fn at_end(&self, ending: &Ending) -> Vec<Response> {
        match ending {
            Ending::Deliver { label } if self.adds_trace_header() => vec![
                Response::AddHeader {
                    name: TRACE_HEADER.into(),
                    value: (*label).into(),
                },
                Response::Continue,
            ],
            Ending::Deliver { .. } => vec![Response::Continue],
            // Our copy is on disk (fsynced): the MTA's may go; its client hears 250.
            Ending::Held => vec![Response::Discard],
            Ending::Refuse(text) => vec![Response::ReplyCode(text.trim_end().to_string())],
        }
    }

    /// The trace header is on and the MTA lets us add headers.
    fn adds_trace_header(&self) -> bool {
        let actions = self.negotiated.map_or(0, |n| n.actions);
        self.trace_header && actions & action::ADD_HEADERS != 0
    }
}

/// `<a@b>` and ESMTP parameters -> (`a@b`, `PARAM PARAM`).
fn split_args(args: Vec<String>) -> (String, String) {
    let mut args = args.into_iter();
    let path = args.next().unwrap_or_default();
    let path = path.trim();
    let path = path.strip_prefix('<').unwrap_or(path);
    let path = path.strip_suffix('>').unwrap_or(path);
    (path.to_string(), args.collect::<Vec<_>>().join(" "))
}

fn strip_ipv6_tag(address: &str) -> &str {
    let address = address.trim_start_matches('[').trim_end_matches(']');
    address
        .strip_prefix("IPv6:")
        .or_else(|| address.strip_prefix("ipv6:"))
        .unwrap_or(address)
}

fn socket_addr(family: Family, address: &str, port: u16) -> Option<SocketAddr> {
    match family {
        Family::Inet | Family::Inet6 => {
            let ip: IpAddr = strip_ipv6_tag(address).parse().ok()?;
            Some(SocketAddr::new(ip, port))
        }
        Family::Unix | Family::Unknown => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX_ACTIONS: u32 = 0x1ff;
    const POSTFIX_STEPS: u32 = 0x1fffff;

    fn negotiated(trace: bool) -> Session {
        let mut s = Session::new(trace);
        let step = s
            .handle(Command::OptNeg {
                version: 6,
                actions: POSTFIX_ACTIONS,
                protocol: POSTFIX_STEPS,
            })
            .unwrap();
        assert!(matches!(step, Step::Reply(ref r) if r.len() == 1));
        s
    }

    fn macros(stage: u8, pairs: &[(&str, &str)]) -> Command {
        Command::Macros {
            stage,
            pairs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn header(name: &str, value: &str) -> Command {
        Command::Header {
            name: name.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn silent(s: &mut Session, c: Command) {
        assert_eq!(s.handle(c).unwrap(), Step::Reply(vec![]));
    }

    /// The end of the headers: the message goes to the engine.
    fn decide(s: &mut Session) -> Pending {
        match s.handle(Command::EndOfHeaders).unwrap() {
            Step::Decide(p) => p,
            other => panic!("expected a decision, got {other:?}"),
        }
    }

    fn message(s: &mut Session, queue_id: &str, from: &str, rcpts: &[&str], subject: &str) {
        silent(s, macros(b'M', &[("i", queue_id), ("{mail_addr}", from)]));
        silent(
            s,
            Command::Mail(vec![format!("<{from}>"), "SIZE=100".into()]),
        );
        for r in rcpts {
            silent(s, macros(b'R', &[("{rcpt_addr}", r)]));
            silent(s, Command::Rcpt(vec![format!("<{r}>")]));
        }
        silent(s, header("Subject", subject));
    }

    #[test]
    fn data_hands_over_the_whole_envelope_and_may_accept_the_message_there() {
        let mut s = negotiated(false);
        silent(&mut s, macros(b'M', &[("{mail_addr}", "a@x")]));
        silent(&mut s, Command::Mail(vec!["<a@x>".into()]));
        silent(&mut s, Command::Rcpt(vec!["<b@y>".into()]));
        silent(&mut s, Command::Rcpt(vec!["<c@y>".into()]));
        silent(&mut s, macros(b'T', &[("i", "Q9")]));
        let at_data = match s.handle(Command::Data).unwrap() {
            Step::AtData(p) => p,
            other => panic!("expected the envelope at DATA, got {other:?}"),
        };
        assert_eq!(at_data.envelope.mail_from, "a@x");
        assert_eq!(at_data.envelope.rcpts.len(), 2);
        assert_eq!(at_data.queue_id.as_deref(), Some("Q9"));
        // Not accepted (could be held): the message goes on to its end as before.
        silent(&mut s, header("Subject", "hello"));
        let p = decide(&mut s);
        assert_eq!(p.envelope.rcpts.len(), 2);
        assert_eq!(p.queue_id.as_deref(), Some("Q9"));
        // Accepted at DATA: the next message starts clean.
        silent(&mut s, Command::Mail(vec!["<d@x>".into()]));
        silent(&mut s, Command::Rcpt(vec!["<e@y>".into()]));
        assert!(matches!(s.handle(Command::Data).unwrap(), Step::AtData(_)));
        assert_eq!(s.accept_message(), vec![Response::Accept]);
        silent(&mut s, Command::Mail(vec!["<f@x>".into()]));
        assert_eq!(decide(&mut s).envelope.rcpts.len(), 0);
    }

    #[test]
    fn with_the_trace_header_data_just_continues() {
        let mut s = negotiated(true);
        silent(&mut s, Command::Mail(vec!["<a@x>".into()]));
        assert_eq!(
            s.handle(Command::Data).unwrap(),
            Step::Reply(vec![Response::Continue])
        );
    }

    #[test]
    fn negotiates_only_offered_steps_and_actions() {
        let mut s = Session::new(false);
        let step = s
            .handle(Command::OptNeg {
                version: 6,
                actions: POSTFIX_ACTIONS,
                protocol: POSTFIX_STEPS,
            })
            .unwrap();
        assert_eq!(
            step,
            Step::Reply(vec![Response::OptNeg {
                version: 6,
                actions: action::SET_MACRO_LIST,
                protocol: WANTED_STEPS,
                macros: macro_lists(),
            }])
        );
        // A version 2 MTA offers no no-reply steps: we ask for none and answer every step.
        let mut s = Session::new(true);
        s.handle(Command::OptNeg {
            version: 2,
            actions: 0x3f,
            protocol: 0x7f,
        })
        .unwrap();
        let n = s.negotiated().unwrap();
        assert_eq!(n.version, 2);
        assert_eq!(n.actions, action::ADD_HEADERS);
        assert_eq!(n.steps, step::NO_UNKNOWN & 0x7f, "only what was offered");
        assert_eq!(
            s.handle(Command::Helo("x".into())).unwrap(),
            Step::Reply(vec![Response::Continue])
        );
        assert_eq!(
            s.handle(header("A", "b")).unwrap(),
            Step::Reply(vec![Response::Continue])
        );
        // A newer MTA gets version 6.
        let mut s = Session::new(false);
        s.handle(Command::OptNeg {
            version: 9,
            actions: 0,
            protocol: 0,
        })
        .unwrap();
        assert_eq!(s.negotiated().unwrap().version, 6);
    }

    #[test]
    fn refuses_old_versions_and_commands_before_negotiation() {
        let mut s = Session::new(false);
        assert_eq!(
            s.handle(Command::Helo("x".into())),
            Err(SessionError::NotNegotiated("helo"))
        );
        assert_eq!(
            s.handle(Command::OptNeg {
                version: 1,
                actions: 0,
                protocol: 0
            }),
            Err(SessionError::OldVersion(1))
        );
    }

    #[test]
    fn collects_envelope_headers_and_queue_id() {
        let mut s = negotiated(false);
        silent(
            &mut s,
            macros(b'C', &[("j", "mx.test"), ("_", "client [10.0.0.9]")]),
        );
        silent(
            &mut s,
            Command::Connect {
                hostname: "client.test".into(),
                family: Family::Inet,
                port: 40000,
                address: "10.0.0.9".into(),
            },
        );
        silent(&mut s, Command::Helo("client.test".into()));
        silent(
            &mut s,
            macros(b'M', &[("i", "4Q1"), ("{mail_addr}", "a@x")]),
        );
        silent(
            &mut s,
            Command::Mail(vec![
                "<a@x>".into(),
                "SIZE=2048".into(),
                "BODY=8BITMIME".into(),
            ]),
        );
        silent(
            &mut s,
            Command::Rcpt(vec!["<b@y>".into(), "NOTIFY=NEVER".into()]),
        );
        silent(&mut s, Command::Rcpt(vec!["<c@y>".into()]));
        silent(&mut s, header("Subject", "Re: hello"));
        silent(&mut s, header("References", "<1@x>\n\t<2@x>"));
        let p = decide(&mut s);
        assert_eq!(p.queue_id.as_deref(), Some("4Q1"));
        assert_eq!(
            p.envelope.client_addr,
            Some("10.0.0.9:40000".parse().unwrap())
        );
        assert_eq!(p.envelope.helo, "client.test");
        assert_eq!(p.envelope.mail_from, "a@x");
        assert_eq!(p.envelope.mail_params, "SIZE=2048 BODY=8BITMIME");
        assert_eq!(p.envelope.rcpts.len(), 2);
        assert_eq!(p.envelope.rcpts[0].address, "b@y");
        assert_eq!(p.envelope.rcpts[0].params, "NOTIFY=NEVER");
        assert_eq!(p.envelope.rcpts[1].params, "");
        assert_eq!(
            p.headers,
            b"Subject: Re: hello\r\nReferences: <1@x>\r\n\t<2@x>\r\n\r\n".to_vec()
        );
        assert!(!p.headers_truncated);
    }

    #[test]
    fn several_messages_per_connection_start_fresh() {
        let mut s = negotiated(false);
        silent(
            &mut s,
            Command::Connect {
                hostname: "c".into(),
                family: Family::Inet6,
                port: 1,
                address: "IPv6:::1".into(),
            },
        );
        message(&mut s, "Q1", "a@x", &["b@y", "c@y"], "one");
        let first = decide(&mut s);
        assert_eq!(first.envelope.rcpts.len(), 2);
        assert_eq!(
            s.after_decision(&Disposition::Deliver),
            vec![Response::Accept]
        );

        // The second message: its own queue id, sender, recipients and headers.
        message(&mut s, "Q2", "d@x", &["e@y"], "two");
        let second = decide(&mut s);
        assert_eq!(second.queue_id.as_deref(), Some("Q2"));
        assert_eq!(second.envelope.mail_from, "d@x");
        assert_eq!(second.envelope.rcpts.len(), 1);
        assert_eq!(second.headers, b"Subject: two\r\n\r\n".to_vec());
        assert_eq!(
            second.envelope.client_addr,
            Some("[::1]:1".parse().unwrap())
        );
    }

    #[test]
    fn abort_clears_the_message_but_not_the_connection() {
        let mut s = negotiated(false);
        silent(&mut s, Command::Helo("h.test".into()));
        message(&mut s, "Q1", "a@x", &["b@y"], "aborted");
        silent(&mut s, Command::Abort);
        // The MTA may send headers-free EOM for the next message only after a new MAIL;
        // after ABORT nothing of the old message may leak into the next one.
        silent(&mut s, Command::Mail(vec!["<>".into()]));
        let p = decide(&mut s);
        assert_eq!(p.queue_id, None, "queue id of the aborted message is gone");
        assert_eq!(p.envelope.mail_from, "");
        assert!(p.envelope.rcpts.is_empty());
        assert_eq!(p.headers, b"\r\n".to_vec());
        assert_eq!(p.envelope.helo, "h.test");
    }

    #[test]
    fn quit_nc_clears_the_connection_and_quit_closes() {
        let mut s = negotiated(false);
        silent(&mut s, Command::Helo("h.test".into()));
        silent(&mut s, Command::QuitNewConnection);
        let p = decide(&mut s);
        assert_eq!(p.envelope.helo, "");
        assert_eq!(s.handle(Command::Quit).unwrap(), Step::Close);
    }

    #[test]
    fn macros_fill_in_what_commands_did_not_say() {
        let mut s = negotiated(false);
        silent(
            &mut s,
            macros(
                b'C',
                &[
                    ("{client_addr}", "192.0.2.7"),
                    ("{client_port}", "2525"),
                    ("s", "helo.test"),
                ],
            ),
        );
        silent(
            &mut s,
            Command::Connect {
                hostname: "x".into(),
                family: Family::Unknown,
                port: 0,
                address: String::new(),
            },
        );
        silent(
            &mut s,
            macros(b'E', &[("i", "QEOM"), ("{mail_addr}", "m@x")]),
        );
        let p = decide(&mut s);
        assert_eq!(
            p.envelope.client_addr,
            Some("192.0.2.7:2525".parse().unwrap())
        );
        assert_eq!(p.envelope.helo, "helo.test");
        assert_eq!(p.envelope.mail_from, "m@x");
        assert_eq!(p.queue_id.as_deref(), Some("QEOM"));
    }

    #[test]
    fn too_many_macro_names_is_an_error() {
        let mut s = negotiated(false);
        let pairs: Vec<(String, String)> = (0..=MAX_MACROS)
            .map(|i| (format!("m{i}"), "v".into()))
            .collect();
        assert_eq!(
            s.handle(Command::Macros { stage: b'M', pairs }),
            Err(SessionError::TooManyMacros)
        );
    }

    #[test]
    fn header_block_is_capped() {
        let mut s = negotiated(false);
        silent(&mut s, Command::Mail(vec!["<a@x>".into()]));
        let big = "x".repeat(100_000);
        for _ in 0..20 {
            silent(&mut s, header("X-Big", &big));
        }
        let p = decide(&mut s);
        assert!(p.headers_truncated);
        assert!(p.headers.len() <= MAX_HEADER_BLOCK + 2);
        assert!(p.headers.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn dispositions_map_to_milter_answers() {
        // Without the trace header a delivered message is accepted at the end of its headers:
        // the MTA sends us none of its body.
        let mut s = negotiated(false);
        assert_eq!(
            s.after_decision(&Disposition::Deliver),
            vec![Response::Accept]
        );
        // A message to hold goes on: its body is what we keep; at its end, once our copy is
        // durable, the MTA discards its own.
        assert_eq!(
            s.after_decision(&Disposition::Hold),
            vec![Response::Continue]
        );
        assert_eq!(s.at_end(&Ending::Held), vec![Response::Discard]);
        // Refusals carry the reply the front ends share.
        let refusal = "550 5.7.1 Reply-all storm\r\n".to_string();
        assert_eq!(
            s.after_decision(&Disposition::Refuse(refusal)),
            vec![Response::ReplyCode("550 5.7.1 Reply-all storm".into())]
        );
        assert_eq!(
            s.at_end(&Ending::Refuse("451 4.3.0 Local error\r\n".into())),
            vec![Response::ReplyCode("451 4.3.0 Local error".into())]
        );
        // With the trace header, delivered mail goes on to its end for the header.
        let mut s = negotiated(true);
        assert_eq!(
            s.after_decision(&Disposition::Deliver),
            vec![Response::Continue]
        );
        assert_eq!(
            s.at_end(&Ending::Deliver {
                label: "would-hold"
            }),
            vec![
                Response::AddHeader {
                    name: TRACE_HEADER.into(),
                    value: "would-hold".into()
                },
                Response::Continue
            ]
        );
    }

    #[test]
    fn body_chunks_reach_the_driver_and_are_answered_only_when_the_mta_waits() {
        let mut s = negotiated(false);
        message(&mut s, "Q1", "a@x", &["b@y"], "held");
        decide(&mut s);
        assert_eq!(
            s.handle(Command::Body(b"line\r\n".to_vec())).unwrap(),
            Step::Body(b"line\r\n".to_vec())
        );
        assert!(s.body_reply().is_empty(), "Postfix offers NR_BODY");
        // Decided at the end of headers: the end of message carries nothing to decide.
        assert_eq!(
            s.handle(Command::EndOfMessage(vec![])).unwrap(),
            Step::EndOfMessage(None)
        );
        // An MTA that sends no end of headers: the end of message brings the decision.
        message(&mut s, "Q2", "a@x", &["b@y"], "late");
        match s.handle(Command::EndOfMessage(vec![])).unwrap() {
            Step::EndOfMessage(Some(p)) => assert_eq!(p.queue_id.as_deref(), Some("Q2")),
            other => panic!("{other:?}"),
        }
        // A version 2 MTA waits for an answer to each chunk.
        let mut old = Session::new(false);
        old.handle(Command::OptNeg {
            version: 2,
            actions: 0,
            protocol: 0,
        })
        .unwrap();
        assert_eq!(old.body_reply(), vec![Response::Continue]);
    }

    proptest::proptest! {
        /// Any stream of well-framed commands, in any order, never panics the session
        /// (the cargo-fuzz target in fuzz/ does the same with raw bytes).
        #[test]
        fn any_command_sequence_is_handled_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            codes in proptest::collection::vec(
                proptest::sample::select(b"ODCHMRTLNBEAQKU".to_vec()), 0..40),
        ) {
            let mut s = Session::new(true);
            // Frame slices of the random bytes as each chosen command.
            let mut chunks = bytes.chunks(15);
            for code in codes {
                let payload = chunks.next().unwrap_or(&[]);
                let Ok(command) = super::super::codec::parse_command(code, payload) else {
                    continue;
                };
                if let Ok(Step::Decide(p)) = s.handle(command) {
                    proptest::prop_assert!(p.headers.ends_with(b"\r\n"));
                    let _ = s.after_decision(&Disposition::Hold);
                }
            }
        }
    }
}
