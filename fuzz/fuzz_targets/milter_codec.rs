//! The milter server's read path: bytes from the MTA, in reads split any way, through
//! `codec::FrameReader` (the framing `milter/mod.rs` uses) into `session::Session`, and the
//! session's answers through `codec::encode`.
//!
//! Checks: no panic; the same commands and the same error whatever the split; every decoded
//! command re-encodes (as an MTA would) to a packet that decodes to itself; every answer parses
//! back as an MTA reads it; and framing holds memory in proportion to the bytes that arrived,
//! never to what a length field claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormbreaker::config::HoldAction;
use stormbreaker::milter::codec::{CodecError, Command, FrameReader, Response, encode};
use stormbreaker::milter::mta::{encode_command, parse_response};
use stormbreaker::milter::session::{Session, Step};
use stormbreaker::verdict::{Action, Hold, Verdict};
use stormbreaker_fuzz::{chunks, peak_bytes};

/// How a stream of packets ended: an error, or the part of a packet left unfinished.
type End = Result<Option<(usize, usize)>, CodecError>;

/// Pushes `reads` through a frame reader as the connection loop does: every command, then how
/// the stream ended.
fn frame(reads: &[&[u8]]) -> (Vec<Command>, End) {
    let mut frames = FrameReader::new();
    let mut commands = Vec::new();
    for read in reads {
        let mut rest = *read;
        while !rest.is_empty() {
            match frames.push(rest) {
                Ok((used, command)) => {
                    assert!(used > 0 && used <= rest.len(), "progress on every push");
                    assert!(
                        command.is_some() || used == rest.len(),
                        "all used or a command"
                    );
                    commands.extend(command);
                    rest = &rest[used..];
                }
                Err(e) => return (commands, Err(e)),
            }
        }
    }
    (commands, Ok(frames.partial()))
}

fn verdict(choice: u8, reason: &[u8]) -> Verdict {
    let action = match choice % 4 {
        0 => return Verdict::DELIVER,
        1 => Action::Quarantine,
        2 => Action::Reject,
        _ => Action::Tempfail,
    };
    let hold = Hold {
        thread: "subj:fuzz".into(),
        list: None,
        audience: 1,
        breaker: "replies",
        replies: 1,
        senders: 1,
        reason: String::from_utf8_lossy(reason).into_owned(),
        action: HoldAction::Quarantine,
        origin: None,
    };
    Verdict {
        action,
        hold: Some(hold.clone()),
        opened: Some(hold),
    }
}

fn check_answers(responses: &[Response]) {
    let mut wire = Vec::new();
    for r in responses {
        wire.clear();
        encode(r, &mut wire);
        let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
        assert_eq!(len, wire.len() - 4);
        assert_eq!(
            &parse_response(wire[4], &wire[5..]).expect("answer parses"),
            r
        );
        if let Response::ReplyCode(text) = r {
            assert!(text.starts_with("4") || text.starts_with("5"), "{text:?}");
            assert!(
                !text.bytes().any(|b| b < b' '),
                "one printable line: {text:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let ((commands, end), peak) = peak_bytes(|| frame(&[wire]));
    // The commands own copies of their payloads plus the vectors and strings around them (a
    // 2-byte macro pair becomes two Strings): tens of times the input at worst, but nowhere near
    // the megabyte a length field may claim (inputs stay under -max_len, 4 KiB by default).
    assert!(
        peak <= 64 * 1024 + 64 * wire.len(),
        "{peak} bytes for {} input",
        wire.len()
    );
    let split = chunks(wire, seed);
    let (split_commands, split_end) = frame(&split);
    assert_eq!(split_commands, commands, "split-independent commands");
    assert_eq!(split_end, end, "split-independent end");

    let mut session = Session::new(seed & 1 == 0);
    for (i, command) in commands.into_iter().enumerate() {
        let mut again = Vec::new();
        encode_command(&command, &mut again);
        let (round_trip, end) = frame(&[&again]);
        assert_eq!(end, Ok(None));
        assert_eq!(
            round_trip,
            std::slice::from_ref(&command),
            "re-encoded packet decodes to itself"
        );
        let responses = match session.handle(command) {
            Ok(Step::Reply(responses)) => responses,
            Ok(Step::AtData(_)) if seed & 2 == 0 => vec![Response::Continue],
            Ok(Step::AtData(_)) => session.accept_message(),
            Ok(Step::Decide(pending)) => {
                assert!(pending.headers.is_empty() || pending.headers.ends_with(b"\r\n"));
                session.verdict(&verdict(seed.wrapping_add(i as u8) >> 2, wire))
            }
            Ok(Step::Close) | Err(_) => break,
        };
        check_answers(&responses);
    }
});
