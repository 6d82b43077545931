//! The milter wire format, no I/O: packet framing, the command table and the response table.
//!
//! A packet is a 32-bit big-endian length, then that many bytes: one command byte and its
//! payload. Strings in payloads are NUL-terminated. Codes and flag values are those of Sendmail's
//! libmilter `mfdef.h` (protocol version 6), which Postfix's `milter8.c` implements too.
//!
//! Everything a peer sends is checked here: a length of zero or above [`MAX_PACKET`], an unknown
//! command byte, or a payload that does not have the command's shape is a [`CodecError`] naming
//! what is wrong. Nothing here panics on any input (see the property tests below and `fuzz/`).
//! The MTA's side (encoding commands, parsing responses) is in `mta.rs`, for tests and fuzzing.

use std::fmt;

/// The largest packet we accept (length field, command byte included). Postfix sends each header
/// in one packet and allows headers up to `header_size_limit` (default 102400 bytes); body chunks
/// are at most 65535 bytes (MILTER_CHUNK_SIZE). 1 MiB leaves room for both and stops a peer from
/// making us allocate gigabytes.
pub const MAX_PACKET: usize = 1 << 20;

/// The milter protocol version we speak (Sendmail 8.14+, Postfix `milter_protocol = 6`).
pub const PROTOCOL_VERSION: u32 = 6;

/// Actions a filter may ask for in option negotiation (SMFIF_*).
pub mod action {
    pub const ADD_HEADERS: u32 = 0x01;
    pub const CHANGE_BODY: u32 = 0x02;
    pub const ADD_RCPT: u32 = 0x04;
    pub const DELETE_RCPT: u32 = 0x08;
    pub const CHANGE_HEADERS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHANGE_FROM: u32 = 0x40;
    pub const ADD_RCPT_WITH_ARGS: u32 = 0x80;
    pub const SET_MACRO_LIST: u32 = 0x100;
}

/// Protocol steps (SMFIP_*): steps the MTA may skip (`NO_*`) and steps we will not answer (`NR_*`).
pub mod step {
    pub const NO_CONNECT: u32 = 0x01;
    pub const NO_HELO: u32 = 0x02;
    pub const NO_MAIL: u32 = 0x04;
    pub const NO_RCPT: u32 = 0x08;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADERS: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NR_HEADER: u32 = 0x80;
    pub const NO_UNKNOWN: u32 = 0x100;
    pub const NO_DATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const RCPT_REJECTED: u32 = 0x800;
    pub const NR_CONNECT: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKNOWN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HEADER_LEADING_SPACE: u32 = 0x100000;
}

/// What a payload looks like, per command: the table below maps each command byte to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Nothing (extra bytes are ignored, as libmilter does).
    Empty,
    /// Three 32-bit words: version, actions, protocol steps (more bytes are ignored).
    OptNeg,
    /// A stage command byte, then name/value string pairs.
    Macros,
    /// Host name, address family, then (except for family `U`) port and address.
    Connect,
    /// Exactly this many NUL-terminated strings.
    Strings(usize),
    /// At least one NUL-terminated string.
    Args,
    /// Raw bytes (body chunks).
    Raw,
}

/// The command table: byte, name for logs, payload shape.
const COMMANDS: &[(u8, &str, Shape)] = &[
    (b'O', "optneg", Shape::OptNeg),
    (b'D', "macro", Shape::Macros),
    (b'C', "connect", Shape::Connect),
    (b'H', "helo", Shape::Strings(1)),
    (b'M', "mail", Shape::Args),
    (b'R', "rcpt", Shape::Args),
    (b'T', "data", Shape::Empty),
    (b'L', "header", Shape::Strings(2)),
    (b'N', "eoh", Shape::Empty),
    (b'B', "body", Shape::Raw),
    (b'E', "eom", Shape::Raw),
    (b'A', "abort", Shape::Empty),
    (b'Q', "quit", Shape::Empty),
    (b'K', "quit_nc", Shape::Empty),
    (b'U', "unknown", Shape::Strings(1)),
];

/// The name of a command byte for logs, or None if it is not a milter command.
pub fn command_name(code: u8) -> Option<&'static str> {
    COMMANDS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map(|(_, name, _)| *name)
}

/// How the MTA reached the client (SMFIA_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Unknown,
    Unix,
    Inet,
    Inet6,
}

impl Family {
    fn from_byte(b: u8) -> Option<Family> {
        match b {
            b'U' => Some(Family::Unknown),
            b'L' => Some(Family::Unix),
            b'4' => Some(Family::Inet),
            b'6' => Some(Family::Inet6),
            _ => None,
        }
    }

    #[cfg(any(test, feature = "mta"))]
    pub(super) fn byte(self) -> u8 {
        match self {
            Family::Unknown => b'U',
            Family::Unix => b'L',
            Family::Inet => b'4',
            Family::Inet6 => b'6',
        }
    }
}

/// One command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// Macros defined for the stage named by `stage` (a command byte, e.g. `b'M'`).
    Macros {
        stage: u8,
        pairs: Vec<(String, String)>,
    },
    Connect {
        hostname: String,
        family: Family,
        port: u16,
        address: String,
    },
    Helo(String),
    /// `args[0]` is the reverse-path as sent (usually in angle brackets), then ESMTP parameters.
    Mail(Vec<String>),
    /// `args[0]` is the forward-path as sent, then ESMTP parameters.
    Rcpt(Vec<String>),
    Data,
    /// Header name and value as raw bytes (8-bit headers exist); the value has no leading space
    /// unless SMFIP_HDR_LEADSPC was negotiated, and folded lines are separated by LF or CRLF.
    Header {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    EndOfHeaders,
    Body(Vec<u8>),
    /// End of message, with an optional last body chunk.
    EndOfMessage(Vec<u8>),
    Abort,
    Quit,
    /// Quit this SMTP connection but keep the milter connection for a new one.
    QuitNewConnection,
    Unknown(String),
}

impl Command {
    /// The command byte on the wire.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => b'O',
            Command::Macros { .. } => b'D',
            Command::Connect { .. } => b'C',
            Command::Helo(_) => b'H',
            Command::Mail(_) => b'M',
            Command::Rcpt(_) => b'R',
            Command::Data => b'T',
            Command::Header { .. } => b'L',
            Command::EndOfHeaders => b'N',
            Command::Body(_) => b'B',
            Command::EndOfMessage(_) => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
            Command::QuitNewConnection => b'K',
            Command::Unknown(_) => b'U',
        }
    }

    /// The command's name for logs.
    pub fn name(&self) -> &'static str {
        command_name(self.code()).unwrap_or("?")
    }
}

/// What is wrong with what a peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("packet length 0: a packet needs at least a command byte")]
    EmptyPacket,
    #[error("packet length {0} is over the limit of {MAX_PACKET} bytes")]
    TooLong(u64),
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("{command} packet is malformed: {what}")]
    Malformed {
        command: &'static str,
        what: &'static str,
    },
}

pub(super) fn malformed(command: &'static str, what: &'static str) -> CodecError {
    CodecError::Malformed { command, what }
}

/// Checks the 4-byte length header; returns the length of what follows (command byte + payload).
pub fn packet_length(header: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as u64;
    if len == 0 {
        return Err(CodecError::EmptyPacket);
    }
    if len > MAX_PACKET as u64 {
        return Err(CodecError::TooLong(len));
    }
    Ok(len as usize)
}

/// Packet framing for bytes as they arrive: the connection pushes what it read, whole commands
/// come out. This is the only framing the milter server has (and what `fuzz/` drives).
///
/// The limits hold however the bytes are split: the length field is checked before anything is
/// allocated for the packet, the command byte as soon as it arrives (garbage is refused without
/// waiting for a megabyte of payload), and a packet that arrives in pieces takes memory in
/// proportion to what has arrived, not to what its length field promises. After an error the
/// stream cannot be resynchronised: close the connection.
#[derive(Debug, Default)]
pub struct FrameReader {
    header: [u8; 4],
    /// Bytes of the current packet's length field received (0 between packets).
    header_len: usize,
    /// Length of the current packet after its length field (command byte and payload), once
    /// the field is whole and checked; 0 before.
    len: usize,
    /// Command byte and payload received so far, for a packet that came in several pushes.
    body: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Takes bytes off the front of `input`, never past the end of one packet. Returns how many
    /// were used and the command if they completed a packet; all of `input` is used unless a
    /// packet was completed, so push the rest again until it is empty.
    pub fn push(&mut self, input: &[u8]) -> Result<(usize, Option<Command>), CodecError> {
        let mut used = 0;
        if self.len == 0 {
            let take = (4 - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            self.header_len += take;
            used = take;
            if self.header_len < 4 {
                return Ok((used, None));
            }
            self.len = packet_length(self.header)?;
        }
        let rest = &input[used..];
        if self.body.is_empty() && rest.len() >= self.len {
            // The whole packet is in this input: parse it in place, no copy.
            let command = parse_command(rest[0], &rest[1..self.len])?;
            used += self.len;
            self.reset();
            return Ok((used, Some(command)));
        }
        let take = (self.len - self.body.len()).min(rest.len());
        if take == 0 {
            return Ok((used, None));
        }
        if self.body.is_empty() {
            command_name(rest[0]).ok_or(CodecError::UnknownCommand(rest[0]))?;
        }
        if self.body.capacity() - self.body.len() < take {
            // Grow by doubling, with what has arrived and never past the packet's end.
            let want = (self.body.len() + take)
                .max(2 * self.body.capacity())
                .min(self.len);
            self.body.reserve_exact(want - self.body.len());
        }
        self.body.extend_from_slice(&rest[..take]);
        used += take;
        if self.body.len() < self.len {
            return Ok((used, None));
        }
        let body = std::mem::take(&mut self.body);
        self.reset();
        Ok((used, Some(parse_command(body[0], &body[1..])?)))
    }

    /// Whether part of a packet has been received (its deadline has begun).
    pub fn in_packet(&self) -> bool {
        self.header_len > 0
    }

    /// For a packet cut short: the bytes of it received (length field included) and the bytes
    /// it should have had (4 while the length field itself is incomplete). None between packets.
    pub fn partial(&self) -> Option<(usize, usize)> {
        match (self.header_len, self.len) {
            (0, _) => None,
            (got, 0) => Some((got, 4)),
            (_, len) => Some((4 + self.body.len(), 4 + len)),
        }
    }

    fn reset(&mut self) {
        self.header_len = 0;
        self.len = 0;
        self.body = Vec::new();
    }
}

/// Parses one packet body (after the length): command byte `code` and its `payload`.
pub fn parse_command(code: u8, payload: &[u8]) -> Result<Command, CodecError> {
    let &(_, name, shape) = COMMANDS
        .iter()
        .find(|(c, _, _)| *c == code)
        .ok_or(CodecError::UnknownCommand(code))?;
    let fields = Fields {
        name,
        rest: payload,
    };
    match shape {
        Shape::Empty => Ok(match code {
            b'T' => Command::Data,
            b'N' => Command::EndOfHeaders,
            b'A' => Command::Abort,
            b'Q' => Command::Quit,
            _ => Command::QuitNewConnection,
        }),
        Shape::Raw => Ok(match code {
            b'B' => Command::Body(payload.to_vec()),
            _ => Command::EndOfMessage(payload.to_vec()),
        }),
        Shape::OptNeg => {
            if payload.len() < 12 {
                return Err(malformed(name, "needs 12 bytes (version, actions, steps)"));
            }
            let word = |i: usize| {
                u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
            };
            Ok(Command::OptNeg {
                version: word(0),
                actions: word(4),
                protocol: word(8),
            })
        }
        Shape::Macros => {
            let (&stage, rest) = payload
                .split_first()
                .ok_or_else(|| malformed(name, "no stage byte"))?;
            let mut fields = Fields { name, rest };
            let mut pairs = Vec::new();
            while !fields.rest.is_empty() {
                let key = fields.string()?;
                let value = fields
                    .string()
                    .map_err(|_| malformed(name, "macro name without a value"))?;
                pairs.push((key, value));
            }
            Ok(Command::Macros { stage, pairs })
        }
        Shape::Connect => {
            let mut fields = fields;
            let hostname = fields.string()?;
            let (&family_byte, rest) = fields
                .rest
                .split_first()
                .ok_or_else(|| malformed(name, "no address family"))?;
            let family =
                Family::from_byte(family_byte).ok_or_else(|| malformed(name, "unknown family"))?;
            fields.rest = rest;
            if family == Family::Unknown {
                return Ok(Command::Connect {
                    hostname,
                    family,
                    port: 0,
                    address: String::new(),
                });
            }
            let port = match fields.rest {
                [hi, lo, rest @ ..] => {
                    fields.rest = rest;
                    u16::from_be_bytes([*hi, *lo])
                }
                _ => return Err(malformed(name, "no port")),
            };
            let address = fields.string()?;
            fields.end()?;
            Ok(Command::Connect {
                hostname,
                family,
                port,
                address,
            })
        }
        Shape::Strings(count) => {
            let mut fields = fields;
            let mut strings = Vec::with_capacity(count);
            for _ in 0..count {
                strings.push(fields.bytes()?);
            }
            fields.end()?;
            let mut strings = strings.into_iter();
            let mut next = || strings.next().unwrap_or_default();
            Ok(match code {
                b'H' => Command::Helo(lossy(next())),
                b'U' => Command::Unknown(lossy(next())),
                _ => Command::Header {
                    name: next(),
                    value: next(),
                },
            })
        }
        Shape::Args => {
            let mut fields = fields;
            let mut args = vec![fields.string()?];
            while !fields.rest.is_empty() {
                args.push(fields.string()?);
            }
            Ok(if code == b'M' {
                Command::Mail(args)
            } else {
                Command::Rcpt(args)
            })
        }
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A cursor over NUL-terminated strings in a payload.
pub(super) struct Fields<'a> {
    pub(super) name: &'static str,
    pub(super) rest: &'a [u8],
}

impl Fields<'_> {
    pub(super) fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let nul =
            self.rest.iter().position(|&b| b == 0).ok_or_else(|| {
                malformed(self.name, "string without its NUL terminator (truncated)")
            })?;
        let value = self.rest[..nul].to_vec();
        self.rest = &self.rest[nul + 1..];
        Ok(value)
    }

    pub(super) fn string(&mut self) -> Result<String, CodecError> {
        self.bytes().map(lossy)
    }

    pub(super) fn end(&self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.name, "bytes after the last field"))
        }
    }
}

/// One response to the MTA (SMFIR_*). Only those the engine's verdicts need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        /// Macro names wanted per stage (SMFIM_*), with `action::SET_MACRO_LIST`; stages not
        /// listed keep the MTA's defaults.
        macros: Vec<(u32, String)>,
    },
    Continue,
    Accept,
    Reject,
    Tempfail,
    /// A full SMTP reply, e.g. `550 5.7.1 reason`: 4xx means tempfail, 5xx reject.
    ReplyCode(String),
    /// Put the message on hold (Postfix: the hold queue) with a reason.
    Quarantine(String),
    /// Accept the message and throw it away (we kept our own copy): the client hears 250.
    Discard,
    AddHeader {
        name: String,
        value: String,
    },
}

/// The response table: each response's byte on the wire.
impl Response {
    pub fn code(&self) -> u8 {
        match self {
            Response::OptNeg { .. } => b'O',
            Response::Continue => b'c',
            Response::Accept => b'a',
            Response::Reject => b'r',
            Response::Tempfail => b't',
            Response::ReplyCode(_) => b'y',
            Response::Quarantine(_) => b'q',
            Response::Discard => b'd',
            Response::AddHeader { .. } => b'h',
        }
    }
}

/// Appends `response` as one packet to `out`. Text fields must not contain NUL (the session
/// cleans them with `crate::frontend::reply_text`); a NUL would cut the field short on the MTA's side.
pub fn encode(response: &Response, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    match response {
        Response::OptNeg {
            version,
            actions,
            protocol,
            macros,
        } => {
            for word in [version, actions, protocol] {
                payload.extend_from_slice(&word.to_be_bytes());
            }
            for (stage, names) in macros {
                payload.extend_from_slice(&stage.to_be_bytes());
                push_str(&mut payload, names);
            }
        }
        Response::Continue
        | Response::Accept
        | Response::Reject
        | Response::Tempfail
        | Response::Discard => {}
        Response::ReplyCode(text) | Response::Quarantine(text) => push_str(&mut payload, text),
        Response::AddHeader { name, value } => {
            push_str(&mut payload, name);
            push_str(&mut payload, value);
        }
    }
    push_packet(out, response.code(), &payload);
}

pub(super) fn push_str(payload: &mut Vec<u8>, s: &str) {
    payload.extend(s.bytes().filter(|&b| b != 0));
    payload.push(0);
}

pub(super) fn push_packet(out: &mut Vec<u8>, code: u8, payload: &[u8]) {
    let len = (payload.len() + 1) as u32;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(code);
    out.extend_from_slice(payload);
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Unknown => "unknown",
            Family::Unix => "unix",
            Family::Inet => "inet",
            Family::Inet6 => "inet6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::mta::encode_command;
    use crate::milter::mta::tests::arb_command;
    use proptest::prelude::*;

    fn packet(code: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_packet(&mut out, code, payload);
        out
    }

    /// One packet off the front of `buf`, pushed in one piece: `Ok(None)` if it is incomplete.
    fn decode(buf: &[u8]) -> Result<Option<(Command, usize)>, CodecError> {
        let (used, command) = FrameReader::new().push(buf)?;
        Ok(command.map(|c| (c, used)))
    }

    #[test]
    fn a_length_field_alone_allocates_nothing() {
        // A peer announcing a megabyte and sending a few bytes costs a few bytes.
        let mut frames = FrameReader::new();
        assert_eq!(
            frames.push(&(MAX_PACKET as u32).to_be_bytes()),
            Ok((4, None))
        );
        assert_eq!(frames.body.capacity(), 0);
        assert_eq!(frames.push(b"B0123"), Ok((5, None)));
        assert!(frames.body.capacity() < 64, "{}", frames.body.capacity());
        assert_eq!(frames.partial(), Some((9, 4 + MAX_PACKET)));
        // Arriving in pieces, it grows with what came and ends at exactly the packet.
        let mut sent = 5;
        while sent < MAX_PACKET {
            let chunk = vec![b'x'; (MAX_PACKET - sent).min(7000)];
            let (used, command) = frames.push(&chunk).unwrap();
            assert_eq!(used, chunk.len());
            sent += used;
            if sent < MAX_PACKET {
                assert!(command.is_none());
                assert!(frames.body.capacity() <= MAX_PACKET);
            } else {
                let Some(Command::Body(body)) = command else {
                    panic!("the body packet");
                };
                assert_eq!(body.len(), MAX_PACKET - 1);
            }
        }
        assert_eq!(frames.partial(), None);
    }

    #[test]
    fn unknown_command_is_refused_when_it_arrives_alone() {
        let mut frames = FrameReader::new();
        assert_eq!(frames.push(&[0, 0, 0x10]), Ok((3, None)));
        assert_eq!(frames.push(&[0]), Ok((1, None)));
        assert!(frames.in_packet());
        assert_eq!(frames.partial(), Some((4, 4 + 0x1000)));
        assert_eq!(frames.push(b"Z"), Err(CodecError::UnknownCommand(b'Z')));
    }

    #[test]
    fn decodes_postfix_optneg() {
        let mut payload = Vec::new();
        for w in [6u32, 0x1ff, 0x1fffff] {
            payload.extend_from_slice(&w.to_be_bytes());
        }
        let buf = packet(b'O', &payload);
        assert_eq!(
            decode(&buf).unwrap(),
            Some((
                Command::OptNeg {
                    version: 6,
                    actions: 0x1ff,
                    protocol: 0x1fffff
                },
                buf.len()
            ))
        );
    }

    #[test]
    fn optneg_shorter_than_12_bytes_is_malformed() {
        let buf = packet(b'O', &[0, 0, 0, 6, 0, 0]);
        assert!(matches!(
            decode(&buf),
            Err(CodecError::Malformed {
                command: "optneg",
                ..
            })
        ));
    }

    #[test]
    fn decodes_connect_inet_and_unknown() {
        let buf = packet(b'C', b"mx.example\x004\x00\x19192.0.2.1\x00");
        let (cmd, _) = decode(&buf).unwrap().unwrap();
        assert_eq!(
            cmd,
            Command::Connect {
                hostname: "mx.example".into(),
                family: Family::Inet,
                port: 25,
                address: "192.0.2.1".into()
            }
        );
        let buf = packet(b'C', b"unknown\x00U");
        let (cmd, _) = decode(&buf).unwrap().unwrap();
        assert!(matches!(
            cmd,
            Command::Connect {
                family: Family::Unknown,
                port: 0,
                ..
            }
        ));
    }

    #[test]
    fn connect_without_port_or_family_is_malformed() {
        for payload in [
            &b"host\x00"[..],
            b"host\x004",
            b"host\x004\x00",
            b"host\x00X",
        ] {
            assert!(
                matches!(
                    parse_command(b'C', payload),
                    Err(CodecError::Malformed { .. })
                ),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn decodes_macros_mail_rcpt_header() {
        let (cmd, _) = decode(&packet(b'D', b"Mi\x00ABC123\x00{mail_addr}\x00a@b\x00"))
            .unwrap()
            .unwrap();
        assert_eq!(
            cmd,
            Command::Macros {
                stage: b'M',
                pairs: vec![
                    ("i".into(), "ABC123".into()),
                    ("{mail_addr}".into(), "a@b".into())
                ]
            }
        );
        let (cmd, _) = decode(&packet(b'M', b"<a@b>\x00SIZE=10\x00BODY=8BITMIME\x00"))
            .unwrap()
            .unwrap();
        assert_eq!(
            cmd,
            Command::Mail(vec![
                "<a@b>".into(),
                "SIZE=10".into(),
                "BODY=8BITMIME".into()
            ])
        );
        let (cmd, _) = decode(&packet(b'R', b"<c@d>\x00")).unwrap().unwrap();
        assert_eq!(cmd, Command::Rcpt(vec!["<c@d>".into()]));
        let (cmd, _) = decode(&packet(b'L', b"Subject\x00hello\n\tworld\x00"))
            .unwrap()
            .unwrap();
        assert_eq!(
            cmd,
            Command::Header {
                name: b"Subject".to_vec(),
                value: b"hello\n\tworld".to_vec()
            }
        );
    }

    #[test]
    fn macro_name_without_value_is_malformed() {
        assert!(matches!(
            parse_command(b'D', b"Ci\x00"),
            Err(CodecError::Malformed { .. })
        ));
        assert!(matches!(
            parse_command(b'D', b""),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn header_needs_exactly_two_strings() {
        for payload in [&b"Subject\x00"[..], b"Subject", b"S\x00v\x00extra\x00"] {
            assert!(
                matches!(
                    parse_command(b'L', payload),
                    Err(CodecError::Malformed { .. })
                ),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn mail_without_sender_is_malformed() {
        assert!(parse_command(b'M', b"").is_err());
        assert!(parse_command(b'M', b"<a@b>").is_err());
    }

    #[test]
    fn zero_and_absurd_lengths_are_refused_before_reading_on() {
        assert_eq!(packet_length([0, 0, 0, 0]), Err(CodecError::EmptyPacket));
        assert_eq!(
            packet_length([0xff, 0xff, 0xff, 0xff]),
            Err(CodecError::TooLong(0xffff_ffff))
        );
        assert_eq!(
            packet_length(((MAX_PACKET) as u32).to_be_bytes()),
            Ok(MAX_PACKET)
        );
        assert!(packet_length(((MAX_PACKET + 1) as u32).to_be_bytes()).is_err());
        // The header alone is enough to refuse.
        assert!(decode(&[0x7f, 0, 0, 0]).is_err());
    }

    #[test]
    fn unknown_command_is_refused_even_before_the_rest_arrives() {
        assert_eq!(
            decode(&[0, 0, 0, 10, b'Z']),
            Err(CodecError::UnknownCommand(b'Z'))
        );
        assert_eq!(decode(&[0, 0, 0, 10, b'M']), Ok(None));
    }

    #[test]
    fn partial_packets_need_more_bytes() {
        let buf = packet(b'H', b"client.example\x00");
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(decode(&buf).unwrap().is_some());
    }

    #[test]
    fn encodes_responses_as_libmilter_does() {
        let mut out = Vec::new();
        encode(&Response::Continue, &mut out);
        assert_eq!(out, [0, 0, 0, 1, b'c']);
        out.clear();
        encode(&Response::ReplyCode("550 5.7.1 no".into()), &mut out);
        assert_eq!(out, b"\x00\x00\x00\x0ey550 5.7.1 no\x00");
        out.clear();
        encode(
            &Response::AddHeader {
                name: "X-Stormbreaker".into(),
                value: "deliver".into(),
            },
            &mut out,
        );
        assert_eq!(out, b"\x00\x00\x00\x18hX-Stormbreaker\x00deliver\x00");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&buf);
            if let Some((&code, payload)) = buf.split_first() {
                let _ = parse_command(code, payload);
            }
        }

        #[test]
        fn arbitrary_payloads_of_every_command_never_panic(
            code in prop::sample::select(COMMANDS.iter().map(|c| c.0).collect::<Vec<_>>()),
            payload in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..64),
        ) {
            let _ = parse_command(code, &payload);
        }

        /// However reads split a stream, the same commands come out, and a read never holds
        /// more than one packet's bytes back.
        #[test]
        fn framing_is_split_independent(
            commands in prop::collection::vec(arb_command(), 1..8),
            cuts in prop::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = Vec::new();
            for c in &commands {
                encode_command(c, &mut wire);
            }
            let mut frames = FrameReader::new();
            let mut decoded = Vec::new();
            let mut rest = &wire[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let mut chunk = &rest[..(*cut).min(rest.len())];
                rest = &rest[chunk.len()..];
                while !chunk.is_empty() {
                    let (used, command) = frames.push(chunk).unwrap();
                    prop_assert!(used > 0 && used <= chunk.len());
                    prop_assert!(command.is_some() || used == chunk.len());
                    decoded.extend(command);
                    chunk = &chunk[used..];
                }
            }
            prop_assert_eq!(decoded, commands);
            prop_assert_eq!(frames.partial(), None);
        }

        #[test]
        fn truncated_streams_never_decode_a_wrong_command(
            command in arb_command(),
            cut in 0usize..1000,
        ) {
            let mut buf = Vec::new();
            encode_command(&command, &mut buf);
            let cut = cut % buf.len();
            prop_assert_eq!(decode(&buf[..cut]), Ok(None));
            let mut frames = FrameReader::new();
            frames.push(&buf[..cut]).unwrap();
            let expected = if cut < 4 { 4 } else { buf.len() };
            prop_assert_eq!(frames.partial(), (cut > 0).then_some((cut, expected)));
        }
    }
}
