//! Client commands: line limits, parsing (smtp-proto), and the canonical form we send upstream.
//!
//! MAIL and RCPT are re-serialised from the parsed form rather than passed through, so the
//! upstream only ever sees parameters we understood and advertised.

use crate::smtp::extensions::Extensions;
use smtp_proto::{
    MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_RET_FULL, MAIL_RET_HDRS,
    MAIL_SMTPUTF8, MailFrom, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER,
    RCPT_NOTIFY_SUCCESS, RcptTo, Request,
};
use std::fmt::Write;

/// Longest forward- or reverse-path (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// One complete line from the client's buffer, or why there is none.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line of `len` bytes including its line end.
    Complete(usize),
    /// No line end yet and the buffer is still within the limit.
    Incomplete,
    /// The line is over the limit; discard up to and including the next LF.
    TooLong,
}

/// Finds the next command line in `buf` (ended by LF; a CR before it is stripped later).
pub fn next_line(buf: &[u8], max: usize) -> Line {
    match memchr::memchr(b'\n', buf) {
        Some(pos) if pos < max => Line::Complete(pos + 1),
        Some(_) => Line::TooLong,
        None if buf.len() >= max => Line::TooLong,
        None => Line::Incomplete,
    }
}

/// A parsed client command, owned.
pub type Command = Request<String>;

/// Parses one command line (with its line end).
pub fn parse(line: &[u8]) -> Result<Command, smtp_proto::Error> {
    Request::parse(&mut line.iter()).map(Request::into_owned)
}

/// The value of a MAIL command's `SIZE=` parameter, read without overflow (saturating), or
/// None when the line is not MAIL or has no SIZE with digits.
pub fn declared_size(line: &[u8]) -> Option<u128> {
    if !line.get(..5)?.eq_ignore_ascii_case(b"MAIL ") {
        return None;
    }
    let upper = line.to_ascii_uppercase();
    let at = memchr::memmem::find(&upper, b" SIZE=")? + 6;
    let digits: Vec<u8> = line[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    if digits.is_empty() {
        return None;
    }
    Some(digits.iter().fold(0u128, |n, d| {
        n.saturating_mul(10).saturating_add(u128::from(d - b'0'))
    }))
}

/// Why a MAIL or RCPT cannot be sent upstream as asked.
#[derive(Debug, PartialEq, Eq)]
pub enum ParamError {
    /// A parameter of an extension we did not offer: 555 5.5.4.
    NotOffered(&'static str),
    /// SIZE larger than our limit: 552 5.3.4.
    TooBig,
    /// Path longer than 256 octets: 501 5.1.3.
    PathTooLong,
}

impl ParamError {
    pub fn reply(&self) -> String {
        match self {
            ParamError::NotOffered(p) => format!("555 5.5.4 {p} parameter not supported\r\n"),
            ParamError::TooBig => crate::reply::SIZE_EXCEEDED_MAIL.to_string(),
            ParamError::PathTooLong => "501 5.1.3 Path too long\r\n".to_string(),
        }
    }
}

/// `MAIL FROM:<addr> params` as sent upstream, and the parameters alone for the record.
pub fn mail_line(
    from: &MailFrom<String>,
    offered: &Extensions,
    max_size: usize,
) -> Result<(String, String), ParamError> {
    if from.address.len() > MAX_PATH {
        return Err(ParamError::PathTooLong);
    }
    let mut params = String::new();
    if from.size > 0 {
        if !offered.size {
            return Err(ParamError::NotOffered("SIZE"));
        }
        if from.size > max_size {
            return Err(ParamError::TooBig);
        }
        let _ = write!(params, " SIZE={}", from.size);
    }
    if from.flags & MAIL_BODY_BINARYMIME != 0 {
        return Err(ParamError::NotOffered("BODY=BINARYMIME"));
    }
    if from.flags & MAIL_BODY_8BITMIME != 0 {
        if !offered.eight_bit_mime {
            return Err(ParamError::NotOffered("BODY=8BITMIME"));
        }
        params.push_str(" BODY=8BITMIME");
    } else if from.flags & MAIL_BODY_7BIT != 0 {
        params.push_str(" BODY=7BIT");
    }
    if from.flags & MAIL_SMTPUTF8 != 0 {
        if !offered.smtputf8 {
            return Err(ParamError::NotOffered("SMTPUTF8"));
        }
        params.push_str(" SMTPUTF8");
    }
    let dsn = from.flags & (MAIL_RET_FULL | MAIL_RET_HDRS) != 0 || from.env_id.is_some();
    if dsn && !offered.dsn {
        return Err(ParamError::NotOffered("RET/ENVID"));
    }
    if from.flags & MAIL_RET_FULL != 0 {
        params.push_str(" RET=FULL");
    } else if from.flags & MAIL_RET_HDRS != 0 {
        params.push_str(" RET=HDRS");
    }
    if let Some(id) = &from.env_id {
        let _ = write!(params, " ENVID={}", xtext(id));
    }
    let unsupported = from.auth.is_some()
        || from.trans_id.is_some()
        || from.mtrk.is_some()
        || from.solicit.is_some()
        || from.by != 0
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
        || from.flags
            & !(MAIL_BODY_7BIT
                | MAIL_BODY_8BITMIME
                | MAIL_SMTPUTF8
                | MAIL_RET_FULL
                | MAIL_RET_HDRS)
            != 0;
    if unsupported {
        return Err(ParamError::NotOffered("MAIL FROM"));
    }
    let params = params.trim_start().to_string();
    Ok((mail_command(&from.address, &params), params))
}

/// `MAIL FROM:<address> params` CRLF, the one place the line is written (the proxy, release
/// and alerts all send it from here).
pub fn mail_command(address: &str, params: &str) -> String {
    let params = params.trim();
    if params.is_empty() {
        format!("MAIL FROM:<{address}>\r\n")
    } else {
        format!("MAIL FROM:<{address}> {params}\r\n")
    }
}

/// `RCPT TO:<address> params` CRLF.
pub fn rcpt_command(address: &str, params: &str) -> String {
    let params = params.trim();
    if params.is_empty() {
        format!("RCPT TO:<{address}>\r\n")
    } else {
        format!("RCPT TO:<{address}> {params}\r\n")
    }
}

/// `RCPT TO:<addr> params` as sent upstream, and the parameters alone for the record.
pub fn rcpt_line(
    to: &RcptTo<String>,
    offered: &Extensions,
) -> Result<(String, String), ParamError> {
    if to.address.len() > MAX_PATH {
        return Err(ParamError::PathTooLong);
    }
    let notify = [
        (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (RCPT_NOTIFY_FAILURE, "FAILURE"),
        (RCPT_NOTIFY_DELAY, "DELAY"),
        (RCPT_NOTIFY_NEVER, "NEVER"),
    ];
    let known = notify.iter().fold(0, |acc, (bit, _)| acc | bit);
    if to.flags & !known != 0 || to.rrvs != 0 {
        return Err(ParamError::NotOffered("RCPT TO"));
    }
    let mut params = String::new();
    if to.flags & known != 0 || to.orcpt.is_some() {
        if !offered.dsn {
            return Err(ParamError::NotOffered("NOTIFY/ORCPT"));
        }
        let words: Vec<&str> = notify
            .iter()
            .filter(|(bit, _)| to.flags & bit != 0)
            .map(|(_, w)| *w)
            .collect();
        if !words.is_empty() {
            let _ = write!(params, " NOTIFY={}", words.join(","));
        }
        if let Some(orcpt) = &to.orcpt {
            let _ = write!(params, " ORCPT=rfc822;{}", xtext(orcpt));
        }
    }
    let params = params.trim_start().to_string();
    Ok((rcpt_command(&to.address, &params), params))
}

/// xtext (RFC 3461 4): printable ASCII except "+" and "=" as is, everything else as +HH.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Extensions {
        Extensions {
            pipelining: true,
            size: true,
            size_limit: 0,
            eight_bit_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            dsn: true,
            xclient: Vec::new(),
            xforward: Vec::new(),
            starttls: false,
            auth: Vec::new(),
        }
    }

    fn mail(line: &str) -> MailFrom<String> {
        match parse(line.as_bytes()).unwrap() {
            Request::Mail { from } => from,
            other => panic!("not MAIL: {other:?}"),
        }
    }

    fn rcpt(line: &str) -> RcptTo<String> {
        match parse(line.as_bytes()).unwrap() {
            Request::Rcpt { to } => to,
            other => panic!("not RCPT: {other:?}"),
        }
    }

    #[test]
    fn command_lines_respect_the_limit() {
        assert_eq!(next_line(b"NOOP\r\nQUIT", 512), Line::Complete(6));
        assert_eq!(next_line(b"NOOP", 512), Line::Incomplete);
        let at_limit = [vec![b'x'; 510], b"\r\n".to_vec()].concat();
        assert_eq!(next_line(&at_limit, 512), Line::Complete(512));
        let over = [vec![b'x'; 511], b"\r\n".to_vec()].concat();
        assert_eq!(next_line(&over, 512), Line::TooLong);
        assert_eq!(next_line(&[b'x'; 600], 512), Line::TooLong);
    }

    #[test]
    fn mail_params_round_trip_canonically() {
        let from =
            mail("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bx\r\n");
        let (line, params) = mail_line(&from, &all(), 10_000).unwrap();
        assert_eq!(
            line,
            "MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bx\r\n"
        );
        assert_eq!(
            params,
            "SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bx"
        );
        let (line, params) = mail_line(&mail("MAIL FROM:<>\r\n"), &all(), 10).unwrap();
        assert_eq!((line.as_str(), params.as_str()), ("MAIL FROM:<>\r\n", ""));
    }

    #[test]
    fn mail_refuses_what_was_not_offered_or_too_big() {
        let from = mail("MAIL FROM:<a@b.test> SIZE=1000\r\n");
        assert_eq!(mail_line(&from, &all(), 999), Err(ParamError::TooBig));
        let mut none = all();
        none.eight_bit_mime = false;
        none.smtputf8 = false;
        none.dsn = false;
        let from = mail("MAIL FROM:<a@b.test> BODY=8BITMIME\r\n");
        assert!(matches!(
            mail_line(&from, &none, 10),
            Err(ParamError::NotOffered(_))
        ));
        let from = mail("MAIL FROM:<a@b.test> SMTPUTF8\r\n");
        assert!(matches!(
            mail_line(&from, &none, 10),
            Err(ParamError::NotOffered(_))
        ));
        let from = mail("MAIL FROM:<a@b.test> RET=FULL\r\n");
        assert!(matches!(
            mail_line(&from, &none, 10),
            Err(ParamError::NotOffered(_))
        ));
    }

    #[test]
    fn long_paths_are_refused() {
        // smtp-proto refuses over-long addresses itself; mail_line checks again for paths
        // built elsewhere.
        let addr = format!("{}@b.test", "a".repeat(250));
        assert!(parse(format!("MAIL FROM:<{addr}>\r\n").as_bytes()).is_err());
        let mut from = mail("MAIL FROM:<a@b.test>\r\n");
        from.address = addr;
        assert_eq!(mail_line(&from, &all(), 10), Err(ParamError::PathTooLong));
    }

    #[test]
    fn rcpt_dsn_params_round_trip() {
        let to = rcpt("RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+2Bx@d.test\r\n");
        let (line, params) = rcpt_line(&to, &all()).unwrap();
        assert_eq!(
            line,
            "RCPT TO:<c@d.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+2Bx@d.test\r\n"
        );
        assert_eq!(params, "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+2Bx@d.test");
        let mut no_dsn = all();
        no_dsn.dsn = false;
        assert!(rcpt_line(&to, &no_dsn).is_err());
        let (line, _) = rcpt_line(&rcpt("RCPT TO:<c@d.test>\r\n"), &no_dsn).unwrap();
        assert_eq!(line, "RCPT TO:<c@d.test>\r\n");
    }

    #[test]
    fn declared_size_reads_any_length_without_overflow() {
        assert_eq!(declared_size(b"MAIL FROM:<a@b> SIZE=1000\r\n"), Some(1000));
        assert_eq!(
            declared_size(b"mail from:<a@b> size=7 BODY=8BITMIME\r\n"),
            Some(7)
        );
        let huge = declared_size(b"MAIL FROM:<a@b> SIZE=100000000000000000000000\r\n");
        assert_eq!(huge, Some(100_000_000_000_000_000_000_000));
        let absurd = format!("MAIL FROM:<a@b> SIZE={}\r\n", "9".repeat(60));
        assert_eq!(declared_size(absurd.as_bytes()), Some(u128::MAX));
        assert_eq!(declared_size(b"MAIL FROM:<a@b>\r\n"), None);
        assert_eq!(declared_size(b"MAIL FROM:<a@b> SIZE=abc\r\n"), None);
        assert_eq!(declared_size(b"RCPT TO:<a@b> SIZE=5\r\n"), None);
    }

    #[test]
    fn xtext_encodes_specials() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
