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
use std::borrow::Cow;
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
    let mut command = Request::parse(&mut line.iter()).map(Request::into_owned)?;
    // smtp-proto gives `<Postmaster>` (RFC 5321 4.5.1: no domain, any case, and every server
    // MUST take it as a recipient) as an empty address, the same as `<>`: name it again, or it
    // goes upstream as `RCPT TO:<>` (refused there) or `MAIL FROM:<>` (a bounce).
    let address = match &mut command {
        Request::Rcpt { to } => &mut to.address,
        Request::Mail { from } => &mut from.address,
        _ => return Ok(command),
    };
    if address.is_empty() && names_postmaster(line) {
        *address = "postmaster".into();
    }
    Ok(command)
}

/// Whether the path in a MAIL or RCPT line (between the first `<` and the next `>`, after any source
/// route, quotes ignored) is `postmaster`.
fn names_postmaster(line: &[u8]) -> bool {
    let Some(open) = memchr::memchr(b'<', line) else {
        return false;
    };
    let rest = &line[open + 1..];
    let Some(close) = memchr::memchr(b'>', rest) else {
        return false;
    };
    let path = &rest[..close];
    let mailbox = match memchr::memrchr(b':', path) {
        Some(colon) => &path[colon + 1..],
        None => path,
    };
    let unquoted: Vec<u8> = mailbox.iter().copied().filter(|&b| b != b'"').collect();
    unquoted.eq_ignore_ascii_case(b"postmaster")
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
    /// A mailbox no MTA should be handed (a control character, a domain with characters no
    /// domain has): 501 5.1.3.
    BadPath,
}

impl ParamError {
    pub fn reply(&self) -> String {
        match self {
            ParamError::NotOffered(p) => format!("555 5.5.4 {p} parameter not supported\r\n"),
            ParamError::TooBig => crate::reply::SIZE_EXCEEDED_MAIL.to_string(),
            ParamError::PathTooLong => "501 5.1.3 Path too long\r\n".to_string(),
            ParamError::BadPath => "501 5.1.3 Bad address syntax\r\n".to_string(),
        }
    }
}

/// `MAIL FROM:<addr> params` as sent upstream, and the parameters alone for the record.
pub fn mail_line(
    from: &MailFrom<String>,
    offered: &Extensions,
    max_size: usize,
) -> Result<(String, String), ParamError> {
    check_path(&from.address)?;
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
        let _ = write!(params, " ENVID={}", xtext_again(id));
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
/// and alerts all send it from here). The local part is quoted again where it needs it.
pub fn mail_command(address: &str, params: &str) -> String {
    let path = quote_path(address);
    let params = params.trim();
    if params.is_empty() {
        format!("MAIL FROM:<{path}>\r\n")
    } else {
        format!("MAIL FROM:<{path}> {params}\r\n")
    }
}

/// `RCPT TO:<address> params` CRLF.
pub fn rcpt_command(address: &str, params: &str) -> String {
    let path = quote_path(address);
    let params = params.trim();
    if params.is_empty() {
        format!("RCPT TO:<{path}>\r\n")
    } else {
        format!("RCPT TO:<{path}> {params}\r\n")
    }
}

/// `RCPT TO:<addr> params` as sent upstream, and the parameters alone for the record.
pub fn rcpt_line(
    to: &RcptTo<String>,
    offered: &Extensions,
) -> Result<(String, String), ParamError> {
    if to.address.is_empty() {
        // `RCPT TO:<>`: there is no null recipient.
        return Err(ParamError::BadPath);
    }
    check_path(&to.address)?;
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
            let _ = write!(params, " ORCPT=rfc822;{}", xtext_again(orcpt));
        }
    }
    let params = params.trim_start().to_string();
    Ok((rcpt_command(&to.address, &params), params))
}

/// Whether a mailbox may go upstream: no control character (not even a quoted local part may
/// hold one, RFC 5321 4.1.2), a domain with nothing that could end the path or start a
/// parameter, and at most `MAX_PATH` octets once quoted.
fn check_path(address: &str) -> Result<(), ParamError> {
    if address.chars().any(char::is_control) {
        return Err(ParamError::BadPath);
    }
    if let Some(at) = address.rfind('@')
        && !is_domain(&address[at + 1..])
    {
        return Err(ParamError::BadPath);
    }
    if quote_path(address).len() > MAX_PATH {
        return Err(ParamError::PathTooLong);
    }
    Ok(())
}

/// A mailbox as it goes between angle brackets. smtp-proto hands us the mailbox with the
/// quoting of its local part removed (`"a>b c"@d` comes as `a>b c@d`), so a local part that is
/// not a dot-string is quoted again (RFC 5321 4.1.2): sent bare it would be another address or
/// smuggle parameters past the ones we understood (`<"x@e> NOTIFY=SUCCESS"@d>`).
fn quote_path(address: &str) -> Cow<'_, str> {
    let (local, domain) = match address.rfind('@') {
        Some(at) => (&address[..at], Some(&address[at + 1..])),
        None => (address, None),
    };
    if address.is_empty() || is_dot_string(local) {
        return Cow::Borrowed(address);
    }
    let mut quoted = String::with_capacity(address.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    if let Some(domain) = domain {
        quoted.push('@');
        quoted.push_str(domain);
    }
    Cow::Owned(quoted)
}

/// RFC 5321 Dot-string, with the UTF-8 of RFC 6531 counted as atext.
fn is_dot_string(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    !local.is_empty()
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || SPECIALS.contains(c))
        })
}

/// A domain name (UTF-8 labels allowed) or an address literal such as `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]`: nothing that could end the path or start a parameter.
fn is_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        // dcontent: printable ASCII but the brackets and the backslash.
        return !literal.is_empty()
            && literal
                .bytes()
                .all(|b| (33..=126).contains(&b) && !matches!(b, b'[' | b']' | b'\\'));
    }
    // Labels are not empty: smtp-proto lets `c@\r.d` through as `c@.d` (it drops the CR).
    domain.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    })
}

/// xtext again for a value smtp-proto decoded from xtext (ENVID, ORCPT): the octets the client
/// sent, not a second encoding of them. smtp-proto decodes each `+HH` to the char U+00HH, so a
/// char up to U+00FF stands for one octet and goes back as that octet: a client's
/// `ORCPT=rfc822;j+C3+B6e@x` goes on as it came, not as `j+C3+83+C2+B6e@x`. Only a char above
/// U+00FF (raw UTF-8, which xtext does not allow) goes as its UTF-8 octets.
fn xtext_again(decoded: &str) -> String {
    let mut out = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        match u8::try_from(c) {
            Ok(b) if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' => out.push(c),
            Ok(b) => {
                let _ = write!(out, "+{b:02X}");
            }
            Err(_) => {
                for b in c.encode_utf8(&mut [0; 4]).bytes() {
                    let _ = write!(out, "+{b:02X}");
                }
            }
        }
    }
    out
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

    /// Found by fuzz/smtp_command: smtp-proto unquotes a quoted local part, and the bare form
    /// went upstream, where it named another mailbox or carried parameters we never offered.
    #[test]
    fn quoted_local_parts_stay_quoted_upstream() {
        for (sent, upstream) in [
            ("<\"a b\"@c.test>", "<\"a b\"@c.test>"),
            ("<\"a>b\"@c.test>", "<\"a>b\"@c.test>"),
            (
                "<\"x@e.test> NOTIFY=SUCCESS\"@c.test>",
                "<\"x@e.test> NOTIFY=SUCCESS\"@c.test>",
            ),
            ("<\"a\\\"b\\\\c\"@c.test>", "<\"a\\\"b\\\\c\"@c.test>"),
            ("<\"plain\"@c.test>", "<plain@c.test>"),
            ("<j\u{f6}e.x+tag@c.test>", "<j\u{f6}e.x+tag@c.test>"),
            ("<a.@c.test>", "<\"a.\"@c.test>"),
        ] {
            let (line, _) = rcpt_line(&rcpt(&format!("RCPT TO:{sent}\r\n")), &all()).unwrap();
            assert_eq!(line, format!("RCPT TO:{upstream}\r\n"), "{sent}");
            // What we send means the same mailbox to us as what the client sent.
            assert_eq!(
                rcpt(&line).address,
                rcpt(&format!("RCPT TO:{sent}\r\n")).address
            );
            let (line, _) = mail_line(&mail(&format!("MAIL FROM:{sent}\r\n")), &all(), 10).unwrap();
            assert_eq!(line, format!("MAIL FROM:{upstream}\r\n"), "{sent}");
        }
        // Release and alerts write their lines from stored, unquoted addresses the same way.
        assert_eq!(
            rcpt_command("a b@c.test", "NOTIFY=NEVER"),
            "RCPT TO:<\"a b\"@c.test> NOTIFY=NEVER\r\n"
        );
        assert_eq!(mail_command("", ""), "MAIL FROM:<>\r\n");
    }

    /// `RCPT TO:<Postmaster>` must be taken (RFC 5321 4.5.1); smtp-proto gives it as an empty
    /// address, which went upstream as `RCPT TO:<>`.
    #[test]
    fn postmaster_without_a_domain_goes_upstream_as_postmaster_not_as_null() {
        for sent in [
            "<postmaster>",
            "<PostMaster>",
            "<@relay.test:postmaster>",
            " <Postmaster> NOTIFY=NEVER",
        ] {
            let to = rcpt(&format!("RCPT TO:{sent}\r\n"));
            assert_eq!(to.address, "postmaster", "{sent}");
            let (line, _) = rcpt_line(&to, &all()).unwrap();
            assert!(line.starts_with("RCPT TO:<postmaster>"), "{line}");
        }
        assert_eq!(
            rcpt_line(&rcpt("RCPT TO:<>\r\n"), &all()),
            Err(ParamError::BadPath)
        );
        // Not a bounce either.
        let (line, _) = mail_line(&mail("MAIL FROM:<Postmaster>\r\n"), &all(), 10).unwrap();
        assert_eq!(line, "MAIL FROM:<postmaster>\r\n");
        let (line, _) = mail_line(&mail("MAIL FROM:<>\r\n"), &all(), 10).unwrap();
        assert_eq!(line, "MAIL FROM:<>\r\n");
    }

    fn to_domain_is_refused(domain: &str) {
        let mut to = rcpt("RCPT TO:<a@c.test>\r\n");
        to.address = format!("a@{domain}");
        assert_eq!(rcpt_line(&to, &all()), Err(ParamError::BadPath), "{domain}");
    }

    #[test]
    fn mailboxes_with_controls_or_bad_domains_are_refused() {
        let from = mail("MAIL FROM:<\"a\0b\"@c.test>\r\n");
        assert_eq!(mail_line(&from, &all(), 10), Err(ParamError::BadPath));
        let mut to = rcpt("RCPT TO:<a@c.test>\r\n");
        to.address = "a@c.test> NOTIFY=NEVER".into();
        assert_eq!(rcpt_line(&to, &all()), Err(ParamError::BadPath));
        // Found by fuzz/smtp_command: smtp-proto drops a CR inside a path, so `c@<CR>.d.test`
        // came as `c@.d.test` and went upstream. An empty label is refused.
        let to = rcpt("RCPT TO:<c@\r.d.test>\r\n");
        assert_eq!(to.address, "c@.d.test");
        assert_eq!(rcpt_line(&to, &all()), Err(ParamError::BadPath));
        for domain in ["d..test", "d.test.", "."] {
            to_domain_is_refused(domain);
        }
        assert!(ParamError::BadPath.reply().starts_with("501 5.1.3 "));
    }

    /// Found by fuzz/smtp_command: an ENVID or ORCPT octet above 0x7F, xtext-encoded as xtext
    /// requires, was encoded a second time on its way upstream (`+C3+B6` became
    /// `+C3+83+C2+B6`), so the DSN named a mangled original recipient.
    #[test]
    fn envid_and_orcpt_octets_go_upstream_as_the_client_sent_them() {
        let to = rcpt("RCPT TO:<j@d.test> ORCPT=rfc822;j+C3+B6e+2B1@d.test\r\n");
        let (line, _) = rcpt_line(&to, &all()).unwrap();
        assert_eq!(
            line,
            "RCPT TO:<j@d.test> ORCPT=rfc822;j+C3+B6e+2B1@d.test\r\n"
        );
        let from = mail("MAIL FROM:<a@b.test> ENVID=id+FF+00x\r\n");
        let (line, params) = mail_line(&from, &all(), 10).unwrap();
        assert_eq!(line, "MAIL FROM:<a@b.test> ENVID=id+FF+00x\r\n");
        // And what we send is canonical: parsed again, it gives the same line.
        assert_eq!(mail_line(&mail(&line), &all(), 10).unwrap().1, params);
    }
}
