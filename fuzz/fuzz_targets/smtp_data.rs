//! The proxy's DATA path: `smtp::data::DataDecoder` on what a client sends after 354, and
//! `stuff` + `end_of_data` on the way to the upstream. The invariant behind SMTP smuggling
//! (CVE-2023-51764): what we relay has exactly one end of data, at its last byte, so the
//! upstream cannot see a second message where we saw one.
//!
//! Checks, for the input as wire bytes: decoding in one piece and in any split agree (content,
//! end, flaws); the end is where the input first has CRLF "." CRLF after a real CRLF. For content
//! that decoded cleanly, re-stuffed: a fresh decoder ends exactly at its last byte and gives the
//! same content back. And for the input taken as content (what a release or an alert relays):
//! stuffed, it ends exactly at its last byte in both modes and splits, and decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormbreaker::smtp::data::{BareNewline, DataDecoder, DataFlaws, end_of_data, stuff};
use stormbreaker_fuzz::{chunks, peak_bytes};

const MODES: [BareNewline; 2] = [BareNewline::Reject, BareNewline::Normalize];

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    content: Vec<u8>,
    end: Option<usize>,
    flaws: DataFlaws,
    size: usize,
    wire: usize,
}

fn decode(mode: BareNewline, limits: (usize, usize), reads: &[&[u8]]) -> Decoded {
    let mut d = DataDecoder::new(mode, limits.0, limits.1);
    let mut content = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for read in reads {
        if let Some(n) = d.decode(read, &mut content) {
            assert!(n <= read.len());
            end = Some(offset + n);
            break;
        }
        offset += read.len();
    }
    Decoded {
        content,
        end,
        flaws: d.flaws,
        size: d.size(),
        wire: d.wire_bytes(),
    }
}

/// Stuffs `content` for the wire in the pieces `chunks` gives, as the proxy relays it.
fn restuff(content: &[u8], seed: u8) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut at_line_start = true;
    for piece in chunks(content, seed) {
        stuff(piece, &mut at_line_start, &mut wire);
    }
    let mut one_piece = Vec::new();
    stuff(content, &mut true, &mut one_piece);
    assert_eq!(wire, one_piece, "stuffing is split-independent");
    wire.extend_from_slice(end_of_data(
        content.is_empty() || content.ends_with(b"\r\n"),
    ));
    wire
}

/// Every CR is followed by LF and every LF preceded by CR.
fn crlf_only(content: &[u8]) -> bool {
    content.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => content.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && content[i - 1] == b'\r',
        _ => true,
    })
}

/// `wire` must end exactly at its last byte, in every mode and split; content with CRLF line
/// ends only (all that the proxy relays) must come back as it was, with CRLF added when it did
/// not end with one. (With bare line ends it need not: `stuff` treats a bare LF as a line end,
/// as Postfix reads it, while our strict decoder does not, and refuses such data anyway.)
fn ends_only_at_the_end(wire: &[u8], content: &[u8], seed: u8) {
    let mut expected = content.to_vec();
    if !(content.is_empty() || content.ends_with(b"\r\n")) {
        expected.extend_from_slice(b"\r\n");
    }
    for mode in MODES {
        let limits = (1 << 20, 1 << 20);
        for reads in [vec![wire], chunks(wire, seed)] {
            let back = decode(mode, limits, &reads);
            assert_eq!(
                back.end,
                Some(wire.len()),
                "{mode:?}: the only end is the last byte"
            );
            if crlf_only(&expected) {
                assert_eq!(back.content, expected, "decodes back to itself");
                assert!(!back.flaws.bare_newline);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let seed = control >> 2;
    let mode = MODES[usize::from(control & 1)];
    // Ample limits, or small ones so that the long-line and size flags come often.
    let limits = if control & 2 == 0 {
        (1000, 1 << 20)
    } else {
        (12, 40)
    };

    // The input as what a client sends after 354.
    let (whole, peak) = peak_bytes(|| decode(mode, limits, &[input]));
    // Normalize mode may double the input (bare LF -> CRLF), and a vector grows by doubling.
    assert!(
        peak <= 64 + 8 * input.len(),
        "{peak} bytes for {} input",
        input.len()
    );
    assert!(whole.content.len() <= limits.1 && whole.content.len() <= 2 * input.len());
    let mut split = decode(mode, limits, &chunks(input, seed));
    if whole.flaws.too_big {
        // Past the size limit the decoder drops whole runs of bytes, so how much of the content
        // before it comes out depends on the reads; the proxy throws flawed content away
        // anyway. Both must be prefixes of the same content.
        let common = whole.content.len().min(split.content.len());
        assert_eq!(whole.content[..common], split.content[..common]);
        split.content = whole.content.clone();
    }
    assert_eq!(whole, split, "split-independent framing");
    assert_eq!(whole.wire, whole.end.unwrap_or(input.len()));
    if let Some(end) = whole.end {
        assert!(input[..end].ends_with(b"\r\n.\r\n") || input[..end] == *b".\r\n");
        // Nothing after the first end was read: a prefix up to it gives the same result.
        assert_eq!(decode(mode, limits, &[&input[..end]]), whole);
    }
    if whole.end.is_some() && !whole.flaws.too_big && !whole.flaws.bare_newline {
        // Clean content (in normalize mode: bare line ends already made CRLF) as relayed.
        let wire = restuff(&whole.content, seed);
        ends_only_at_the_end(&wire, &whole.content, seed);
        let again = decode(BareNewline::Reject, (1 << 20, 1 << 20), &[&wire]);
        assert!(
            !again.flaws.bare_newline,
            "relayed content has no bare CR or LF"
        );
    }

    // The input as content to relay (a release from the quarantine, an alert): whatever it
    // holds, its wire form has one end.
    let wire = restuff(input, seed);
    ends_only_at_the_end(&wire, input, seed);
});
