//! DATA framing: strict end-of-data detection and dot-unstuffing on the way in, dot-stuffing on
//! the way out.
//!
//! Why not smtp-proto's `DataReceiver`: it ends data at `\r\n.\r\r\n` and does not see bare CR or
//! LF, both of which let a client make two MTAs disagree on where a message ends (SMTP smuggling,
//! CVE-2023-51764). Here the only end of data is a line that is exactly "." and is both preceded
//! and terminated by a real CRLF (the DATA command's own CRLF counts for the first line).

/// What to do with a bare CR or LF inside DATA (RFC 5321 2.3.8 forbids them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Read to the end of data, then 550 5.5.2.
    #[default]
    Reject,
    /// Turn each bare CR or LF into CRLF before relaying.
    Normalize,
}

/// What is wrong with a message's framing, found while reading it; the message is read to its
/// real end anyway so the session stays in step.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DataFlaws {
    /// A bare CR or LF (only flagged in `reject` mode; `normalize` turns them into CRLF).
    pub bare_newline: bool,
    /// A line longer than the limit (CRLF and any stuffing dot included).
    pub long_line: bool,
    /// More content than the size limit; content past the limit is not emitted.
    pub too_big: bool,
}

impl DataFlaws {
    pub fn any(&self) -> bool {
        self.bare_newline || self.long_line || self.too_big
    }
}

/// The SMTP smuggling probes (SMTP-CHECKLIST line 1, CVE-2023-51764): none of these may end
/// a message's data, so a transaction hidden after one is content, never a second message.
pub const SMUGGLING_SEQUENCES: [&[u8]; 11] = [
    b"\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
];

/// Decodes the bytes a client sends after `354` into message content with CRLF line ends.
#[derive(Debug)]
pub struct DataDecoder {
    mode: BareNewline,
    max_line: usize,
    max_size: usize,
    /// Content bytes emitted so far.
    size: usize,
    /// Bytes consumed from the wire so far.
    wire: usize,
    /// Wire bytes in the current line so far, dot and CR included.
    line_len: usize,
    at_line_start: bool,
    /// The previous line ended with a real CRLF (or this is the first line).
    prev_crlf: bool,
    /// The current line began with a dot, which was dropped; no content followed yet.
    dot_pending: bool,
    /// The previous byte was a CR whose meaning depends on the next byte.
    cr_pending: bool,
    pub flaws: DataFlaws,
}

impl DataDecoder {
    pub fn new(mode: BareNewline, max_line: usize, max_size: usize) -> Self {
        Self {
            mode,
            max_line,
            max_size,
            size: 0,
            wire: 0,
            line_len: 0,
            at_line_start: true,
            prev_crlf: true,
            dot_pending: false,
            cr_pending: false,
            flaws: DataFlaws::default(),
        }
    }

    /// Content bytes decoded so far (counting those past the size limit).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Bytes read off the wire so far (for the minimum data rate).
    pub fn wire_bytes(&self) -> usize {
        self.wire
    }

    /// Decodes `input` into `out`. Returns `Some(n)` when the end of data was found after `n`
    /// bytes of input (the rest belongs to whatever follows), `None` when all of it was consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let end = self.decode_inner(input, out);
        self.wire += end.unwrap_or(input.len());
        end
    }

    fn decode_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.cr_pending {
                self.cr_pending = false;
                if input[i] == b'\n' {
                    i += 1;
                    if self.end_line_crlf(out) {
                        return Some(i);
                    }
                    continue;
                }
                // The CR was not followed by LF; the current byte is looked at again.
                self.bare(b'\r', out);
                continue;
            }
            if self.at_line_start {
                self.at_line_start = false;
                if input[i] == b'.' {
                    self.dot_pending = true;
                    self.line_len = 1;
                    i += 1;
                    continue;
                }
            }
            // Fast path: copy the run of ordinary bytes up to the next CR or LF.
            let rest = &input[i..];
            let run = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
            if run > 0 {
                self.content(&rest[..run], out);
                i += run;
                continue;
            }
            match input[i] {
                b'\r' => {
                    self.line_len += 1;
                    self.cr_pending = true;
                }
                _ => self.bare(b'\n', out),
            }
            i += 1;
        }
        None
    }

    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.dot_pending = false;
        self.line_len += bytes.len();
        if self.line_len + 2 > self.max_line {
            self.flaws.long_line = true;
        }
        self.emit(bytes, out);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len();
        if self.size > self.max_size {
            self.flaws.too_big = true;
            return;
        }
        out.extend_from_slice(bytes);
    }

    /// A real CRLF ended the line. Returns true if that line was the end-of-data dot.
    fn end_line_crlf(&mut self, out: &mut Vec<u8>) -> bool {
        if self.dot_pending && self.prev_crlf {
            return true;
        }
        if self.line_len + 1 > self.max_line {
            self.flaws.long_line = true;
        }
        self.emit(b"\r\n", out);
        self.new_line(true);
        false
    }

    /// A CR not followed by LF, or an LF not preceded by CR (the LF or the byte after the CR
    /// has not been consumed for a bare CR).
    fn bare(&mut self, byte: u8, out: &mut Vec<u8>) {
        match self.mode {
            BareNewline::Reject => {
                // The line goes on; the message is refused at its end anyway.
                self.flaws.bare_newline = true;
                self.dot_pending = false;
                if byte == b'\n' {
                    self.line_len += 1;
                }
                self.emit(&[byte], out);
            }
            BareNewline::Normalize => {
                // A line ended, but not by a real CRLF: a dot line after it is content, never
                // the end of data (so `\n.\r\n` cannot end a message).
                self.emit(b"\r\n", out);
                self.new_line(false);
            }
        }
    }

    fn new_line(&mut self, by_crlf: bool) {
        self.at_line_start = true;
        self.prev_crlf = by_crlf;
        self.dot_pending = false;
        self.line_len = 0;
    }
}

/// Dot-stuffs message content for the wire: a line that begins with "." gets a second one.
/// `at_line_start` carries the state between chunks; start it at true.
pub fn stuff(content: &[u8], at_line_start: &mut bool, out: &mut Vec<u8>) {
    let mut rest = content;
    while !rest.is_empty() {
        if *at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(pos) => {
                out.extend_from_slice(&rest[..=pos]);
                rest = &rest[pos + 1..];
                *at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                *at_line_start = false;
                return;
            }
        }
    }
}

/// The wire end of data for content already ended by CRLF (or empty), else CRLF first.
pub fn end_of_data(content_ends_with_crlf: bool) -> &'static [u8] {
    if content_ends_with_crlf {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(mode: BareNewline, input: &[u8]) -> (Vec<u8>, Option<usize>, DataFlaws) {
        let mut d = DataDecoder::new(mode, 1000, 1 << 20);
        let mut out = Vec::new();
        let end = d.decode(input, &mut out);
        (out, end, d.flaws)
    }

    /// Feeds the input one byte at a time: framing must not depend on how reads split it.
    fn decode_bytewise(mode: BareNewline, input: &[u8]) -> (Vec<u8>, Option<usize>, DataFlaws) {
        let mut d = DataDecoder::new(mode, 1000, 1 << 20);
        let mut out = Vec::new();
        for (i, b) in input.iter().enumerate() {
            if d.decode(std::slice::from_ref(b), &mut out).is_some() {
                return (out, Some(i + 1), d.flaws);
            }
        }
        (out, None, d.flaws)
    }

    #[test]
    fn plain_message_ends_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (out, end, flaws) = decode_all(BareNewline::Reject, input);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(end, Some(input.len() - 6));
        assert!(!flaws.any());
    }

    #[test]
    fn empty_message_is_just_the_dot() {
        let (out, end, _) = decode_all(BareNewline::Reject, b".\r\n");
        assert_eq!(out, b"");
        assert_eq!(end, Some(3));
    }

    #[test]
    fn dots_are_unstuffed_and_restuffed_byte_exact() {
        let wire = b"..\r\n...\r\n..x\r\nx.\r\n\r\n.\r\n";
        let (content, end, _) = decode_all(BareNewline::Reject, wire);
        assert_eq!(content, b".\r\n..\r\n.x\r\nx.\r\n\r\n");
        assert_eq!(end, Some(wire.len()));
        let mut again = Vec::new();
        let mut start = true;
        stuff(&content, &mut start, &mut again);
        again.extend_from_slice(end_of_data(true));
        assert_eq!(again, wire);
    }

    #[test]
    fn single_dot_first_line_of_unstuffed_client_is_content() {
        // ".x" from a client that forgot to stuff: RFC 5321 4.5.2 says drop the first dot.
        let (out, _, _) = decode_all(BareNewline::Reject, b".x\r\n.\r\n");
        assert_eq!(out, b"x\r\n");
    }

    /// Checklist line 1: none of these may end the data; the hidden transaction is content.
    #[test]
    fn smuggling_sequences_never_end_data() {
        let hidden = b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\nhidden\r\n";
        for seq in SMUGGLING_SEQUENCES {
            for mode in [BareNewline::Reject, BareNewline::Normalize] {
                let mut input = b"Subject: s\r\n\r\nbody".to_vec();
                input.extend_from_slice(seq);
                input.extend_from_slice(hidden);
                let real_end = input.len();
                input.extend_from_slice(b"\r\n.\r\n");
                for (out, end, flaws) in [decode_all(mode, &input), decode_bytewise(mode, &input)] {
                    assert_eq!(end, Some(input.len()), "{seq:?} {mode:?}");
                    assert!(out.len() >= real_end - 4, "{seq:?}");
                    if mode == BareNewline::Reject && seq != b"\r\n\x00.\r\n" {
                        assert!(flaws.bare_newline, "{seq:?} must be flagged");
                    }
                    if mode == BareNewline::Normalize {
                        // Every line of the normalised content re-stuffs safely: no line of
                        // the wire form is a lone dot before the real end.
                        let mut wire = Vec::new();
                        stuff(&out, &mut true, &mut wire);
                        assert!(
                            !wire.windows(5).any(|w| w == b"\r\n.\r\n"),
                            "{seq:?} re-encodes to an early end"
                        );
                        assert!(!wire.starts_with(b".\r\n"));
                    }
                }
            }
        }
    }

    #[test]
    fn normalize_turns_bare_newlines_into_crlf() {
        let (out, end, flaws) = decode_all(BareNewline::Normalize, b"a\nb\rc\r\n.\r\n");
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
        assert!(end.is_some());
        assert!(!flaws.bare_newline);
    }

    #[test]
    fn line_length_limit_counts_crlf() {
        let ok = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(!decode_all(BareNewline::Reject, &ok).2.long_line);
        let long = [vec![b'a'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert!(decode_all(BareNewline::Reject, &long).2.long_line);
        // The stuffing dot counts on the wire.
        let stuffed = [b".".to_vec(), vec![b'.'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(decode_all(BareNewline::Reject, &stuffed).2.long_line);
    }

    #[test]
    fn size_limit_flags_and_stops_emitting_but_reads_to_end() {
        let mut d = DataDecoder::new(BareNewline::Reject, 1000, 10);
        let mut out = Vec::new();
        let input = b"0123456789abcdef\r\n.\r\n";
        assert_eq!(d.decode(input, &mut out), Some(input.len()));
        assert!(d.flaws.too_big);
        assert!(out.len() <= 10);
    }

    proptest! {
        /// Any mix of CR, LF, dots and letters: decoding in one piece and byte by byte agree,
        /// and the normalised content re-stuffs to a wire form whose only end is the last one.
        #[test]
        fn framing_is_split_independent(body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(0u8)], 0..64)) {
            for mode in [BareNewline::Reject, BareNewline::Normalize] {
                let mut input = body.clone();
                input.extend_from_slice(b"\r\n.\r\n");
                let whole = decode_all(mode, &input);
                let bytewise = decode_bytewise(mode, &input);
                prop_assert_eq!(&whole, &bytewise);
                let end = whole.1.expect("the real end is always found");
                prop_assert!(end <= input.len());
                if mode == BareNewline::Normalize && end == input.len() {
                    let mut wire = Vec::new();
                    stuff(&whole.0, &mut true, &mut wire);
                    let ends_crlf = whole.0.is_empty() || whole.0.ends_with(b"\r\n");
                    wire.extend_from_slice(end_of_data(ends_crlf));
                    let mut again = DataDecoder::new(BareNewline::Reject, 1 << 20, 1 << 20);
                    let mut back = Vec::new();
                    prop_assert_eq!(again.decode(&wire, &mut back), Some(wire.len()));
                    prop_assert!(!again.flaws.bare_newline);
                }
            }
        }
    }
}
