//! The MTA's side of the milter wire format: encoding commands and parsing responses. The
//! server never needs it; the unit tests, the hostile-peer integration tests and `fuzz/` play
//! the MTA with it. Compiled for tests and with the `mta` feature only.

use super::codec::{
    CodecError, Command, Family, Fields, Response, malformed, parse_command, push_packet, push_str,
};

/// Appends `command` as one packet to `out`, as an MTA sends it.
pub fn encode_command(command: &Command, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    match command {
        Command::OptNeg {
            version,
            actions,
            protocol,
        } => {
            for word in [version, actions, protocol] {
                payload.extend_from_slice(&word.to_be_bytes());
            }
        }
        Command::Macros { stage, pairs } => {
            payload.push(*stage);
            for (k, v) in pairs {
                push_str(&mut payload, k);
                push_str(&mut payload, v);
            }
        }
        Command::Connect {
            hostname,
            family,
            port,
            address,
        } => {
            push_str(&mut payload, hostname);
            payload.push(family.byte());
            if *family != Family::Unknown {
                payload.extend_from_slice(&port.to_be_bytes());
                push_str(&mut payload, address);
            }
        }
        Command::Helo(s) | Command::Unknown(s) => push_str(&mut payload, s),
        Command::Mail(args) | Command::Rcpt(args) => {
            for a in args {
                push_str(&mut payload, a);
            }
        }
        Command::Header { name, value } => {
            payload.extend_from_slice(name);
            payload.push(0);
            payload.extend_from_slice(value);
            payload.push(0);
        }
        Command::Body(b) | Command::EndOfMessage(b) => payload.extend_from_slice(b),
        Command::Data
        | Command::EndOfHeaders
        | Command::Abort
        | Command::Quit
        | Command::QuitNewConnection => {}
    }
    push_packet(out, command.code(), &payload);
}

/// Parses one response packet body (after the length field), as an MTA reads it.
pub fn parse_response(code: u8, payload: &[u8]) -> Result<Response, CodecError> {
    let name = "response";
    let mut fields = Fields {
        name,
        rest: payload,
    };
    Ok(match code {
        b'O' => match parse_command(b'O', payload)? {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                let mut lists = Fields {
                    name,
                    rest: &payload[12..],
                };
                let mut macros = Vec::new();
                while let Some((stage, rest)) = lists.rest.split_first_chunk::<4>() {
                    lists.rest = rest;
                    macros.push((u32::from_be_bytes(*stage), lists.string()?));
                }
                lists.end()?;
                Response::OptNeg {
                    version,
                    actions,
                    protocol,
                    macros,
                }
            }
            _ => return Err(malformed(name, "bad option negotiation")),
        },
        b'c' => Response::Continue,
        b'a' => Response::Accept,
        b'r' => Response::Reject,
        b't' => Response::Tempfail,
        b'y' => Response::ReplyCode(fields.string()?),
        b'q' => Response::Quarantine(fields.string()?),
        b'd' => Response::Discard,
        b'h' => Response::AddHeader {
            name: fields.string()?,
            value: fields.string()?,
        },
        other => return Err(CodecError::UnknownCommand(other)),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::milter::codec::{FrameReader, encode, packet_length};
    use proptest::prelude::*;

    fn arb_string() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,40}"
    }

    /// Any command an MTA could send, with fields that survive the wire (no NUL in strings).
    pub(crate) fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, actions, protocol)| {
                Command::OptNeg {
                    version,
                    actions,
                    protocol,
                }
            }),
            (
                prop::sample::select(b"CHMRTLNBE".to_vec()),
                prop::collection::vec((arb_string(), arb_string()), 1..5)
            )
                .prop_map(|(stage, pairs)| Command::Macros { stage, pairs }),
            (
                arb_string(),
                prop::sample::select(vec![Family::Unix, Family::Inet, Family::Inet6]),
                any::<u16>(),
                arb_string()
            )
                .prop_map(|(hostname, family, port, address)| Command::Connect {
                    hostname,
                    family,
                    port,
                    address
                }),
            arb_string().prop_map(Command::Helo),
            prop::collection::vec(arb_string(), 1..4).prop_map(Command::Mail),
            prop::collection::vec(arb_string(), 1..4).prop_map(Command::Rcpt),
            Just(Command::Data),
            (
                prop::collection::vec(1u8..=255, 0..30),
                prop::collection::vec(1u8..=255, 0..200)
            )
                .prop_map(|(name, value)| Command::Header { name, value }),
            Just(Command::EndOfHeaders),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Command::Body),
            prop::collection::vec(any::<u8>(), 0..30).prop_map(Command::EndOfMessage),
            Just(Command::Abort),
            Just(Command::Quit),
            Just(Command::QuitNewConnection),
            arb_string().prop_map(Command::Unknown),
        ]
    }

    #[test]
    fn negotiation_reply_carries_macro_lists_after_the_three_words() {
        let reply = Response::OptNeg {
            version: 6,
            actions: 0x120,
            protocol: 0x10,
            macros: vec![(0, "{client_addr}".into()), (5, "i".into())],
        };
        let mut out = Vec::new();
        encode(&reply, &mut out);
        let mut expected = vec![0, 0, 0, 37, b'O'];
        expected.extend_from_slice(&[0, 0, 0, 6, 0, 0, 1, 0x20, 0, 0, 0, 0x10]);
        expected.extend_from_slice(b"\x00\x00\x00\x00{client_addr}\x00\x00\x00\x00\x05i\x00");
        assert_eq!(out, expected);
        assert_eq!(parse_response(b'O', &out[5..]).unwrap(), reply);
        assert!(
            parse_response(b'O', &out[5..out.len() - 1]).is_err(),
            "list without NUL"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_responses_never_panic(buf in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Some((&code, payload)) = buf.split_first() {
                let _ = parse_response(code, payload);
            }
        }

        #[test]
        fn commands_round_trip(commands in prop::collection::vec(arb_command(), 1..8)) {
            let mut buf = Vec::new();
            for c in &commands {
                encode_command(c, &mut buf);
            }
            let mut frames = FrameReader::new();
            let mut rest = &buf[..];
            for c in &commands {
                let (used, decoded) = frames.push(rest).unwrap();
                prop_assert_eq!(decoded.as_ref(), Some(c));
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
            prop_assert!(!frames.in_packet());
        }

        #[test]
        fn responses_round_trip(text in "[ -~]{0,60}", name in "[A-Za-z-]{1,20}") {
            for response in [
                Response::Continue,
                Response::Accept,
                Response::Discard,
                Response::ReplyCode(text.clone()),
                Response::Quarantine(text.clone()),
                Response::AddHeader { name: name.clone(), value: text.clone() },
            ] {
                let mut buf = Vec::new();
                encode(&response, &mut buf);
                let len = packet_length([buf[0], buf[1], buf[2], buf[3]]).unwrap();
                prop_assert_eq!(len, buf.len() - 4);
                prop_assert_eq!(parse_response(buf[4], &buf[5..]).unwrap(), response);
            }
        }
    }
}
