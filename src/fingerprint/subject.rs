//! Subject normalisation: strip the reply and forward prefixes people's mail clients add, in the
//! languages they use, so `Re: RE: AW: [all-staff] Quarterly results` and `Quarterly results`
//! name one thread. mail-parser's `thread_name()` knows a shorter list and no counted forms.

/// Prefixes that mark a reply, lowercased: English, German, Dutch, Scandinavian, Finnish,
/// Italian, French, Portuguese, Polish, Czech, Croatian, Hungarian, Turkish, Latvian, Indonesian,
/// Greek, Hebrew, Arabic, Chinese, Japanese, Korean.
const REPLY_PREFIXES: &[&str] = &[
    "re", "r", "aw", "antw", "antwort", "sv", "svar", "vs", "rif", "ref", "réf", "rép", "res",
    "odp", "odg", "vá", "ynt", "atb", "bls", "απ", "σχετ", "השב", "رد", "回复", "答复", "回覆",
    "答覆", "返信", "답장", "회신",
];

/// Prefixes that mark a forward, lowercased.
const FORWARD_PREFIXES: &[&str] = &[
    "fwd",
    "fw",
    "tr",
    "trs",
    "wg",
    "enc",
    "rv",
    "vl",
    "vb",
    "i",
    "pd",
    "fs",
    "doorst",
    "továbbítás",
    "yml",
    "i̇lt",
    "ilt",
    "πρθ",
    "הועבר",
    "إعادة توجيه",
    "转发",
    "轉寄",
    "転送",
    "전달",
];

/// Longest prefix word we look at (in chars); anything longer is the subject itself.
const MAX_PREFIX_CHARS: usize = 16;
/// Longest `[list]` tag stripped (in bytes).
const MAX_TAG_BYTES: usize = 64;
/// Normalised subjects are cut to this many bytes (at a char boundary).
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Which kinds of prefix were stripped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubjectPrefixes {
    pub reply: bool,
    pub forward: bool,
}

/// Spaces including the no-break spaces French typography puts before a colon and the
/// ideographic space.
fn is_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{a0}' | '\u{202f}' | '\u{2007}' | '\u{3000}')
}

fn is_colon(c: char) -> bool {
    matches!(c, ':' | '：' | '﹕')
}

/// Strips every leading reply/forward prefix (nested, counted as `Re[2]:`, `Re^3:`, `Re(4):`,
/// with spaces before the colon, full-width colons) and `[list]` tags between them.
/// Returns the rest (not trimmed at the end) and which prefixes were seen.
pub fn strip_prefixes(subject: &str) -> (&str, SubjectPrefixes) {
    let mut seen = SubjectPrefixes::default();
    let mut rest = subject;
    loop {
        rest = rest.trim_start_matches(is_space);
        if let Some(after_tag) = strip_tag(rest) {
            rest = after_tag;
            continue;
        }
        match strip_one_prefix(rest) {
            Some((after, PrefixKind::Reply)) => {
                seen.reply = true;
                rest = after;
            }
            Some((after, PrefixKind::Forward)) => {
                seen.forward = true;
                rest = after;
            }
            None => return (rest, seen),
        }
    }
}

/// `[anything]` at the start, when it closes within `MAX_TAG_BYTES`.
fn strip_tag(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('[')?;
    let close = inner.find(']')?;
    if close > MAX_TAG_BYTES || inner[..close].contains('[') {
        return None;
    }
    let after = &inner[close + 1..];
    // A subject that is only a tag keeps it: "[PATCH]" alone is the subject.
    if after.trim_start_matches(is_space).is_empty() {
        return None;
    }
    Some(after)
}

enum PrefixKind {
    Reply,
    Forward,
}

/// One prefix word, an optional counter, optional spaces, a colon.
fn strip_one_prefix(s: &str) -> Option<(&str, PrefixKind)> {
    let word_end = s
        .char_indices()
        .take(MAX_PREFIX_CHARS + 1)
        .find(|&(_, c)| is_colon(c) || is_space(c) || matches!(c, '[' | '(' | '^'))
        .map(|(i, _)| i)?;
    let word = &s[..word_end];
    if word.is_empty() || word.chars().count() > MAX_PREFIX_CHARS {
        return None;
    }
    let after_count = skip_counter(&s[word_end..]);
    let after_spaces = after_count.trim_start_matches(is_space);
    let colon = after_spaces.chars().next().filter(|&c| is_colon(c))?;
    let after = &after_spaces[colon.len_utf8()..];
    let lower = word.to_lowercase();
    if REPLY_PREFIXES.contains(&lower.as_str()) {
        Some((after, PrefixKind::Reply))
    } else if FORWARD_PREFIXES.contains(&lower.as_str()) {
        Some((after, PrefixKind::Forward))
    } else {
        None
    }
}

/// `[2]`, `(2)`, `^2`, possibly after spaces; returns the text after it (or `s` unchanged).
fn skip_counter(s: &str) -> &str {
    let t = s.trim_start_matches(is_space);
    let (open, close) = match t.chars().next() {
        Some('[') => ('[', Some(']')),
        Some('(') => ('(', Some(')')),
        Some('^') => ('^', None),
        _ => return s,
    };
    let digits = &t[open.len_utf8()..];
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 || n > 6 {
        return s;
    }
    match close {
        Some(c) => digits[n..].strip_prefix(c).unwrap_or(s),
        None => &digits[n..],
    }
}

/// True when the subject starts with a reply prefix (`Re:`, `AW:`, `回复：` ...).
pub fn is_reply_subject(subject: &str) -> bool {
    strip_prefixes(subject).1.reply
}

/// The subject as a thread key: prefixes and tags stripped, a trailing `(fwd)` dropped,
/// whitespace collapsed, lowercased, cut to `MAX_SUBJECT_BYTES`.
pub fn normalize_subject(subject: &str) -> String {
    let (rest, _) = strip_prefixes(subject);
    let mut rest = rest.trim_end_matches(is_space);
    loop {
        let lower_tail = rest.len().checked_sub(5).and_then(|i| rest.get(i..));
        match lower_tail {
            Some(tail) if tail.eq_ignore_ascii_case("(fwd)") => {
                rest = rest[..rest.len() - 5].trim_end_matches(is_space);
            }
            _ => break,
        }
    }
    let mut out = String::with_capacity(rest.len().min(MAX_SUBJECT_BYTES));
    for word in rest.split(is_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
        if out.len() >= MAX_SUBJECT_BYTES {
            break;
        }
    }
    if out.len() > MAX_SUBJECT_BYTES {
        let mut cut = MAX_SUBJECT_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize_subject(s)
    }

    #[test]
    fn plain_subject_is_lowercased_and_collapsed() {
        assert_eq!(n("Quarterly  Results\t Q3 "), "quarterly results q3");
        assert_eq!(n(""), "");
        assert_eq!(n("   "), "");
    }

    #[test]
    fn every_reply_prefix_is_stripped() {
        for p in [
            "Re", "RE", "re", "R", "Aw", "AW", "Antw", "Antwort", "SV", "Svar", "VS", "Rif", "RIF",
            "Réf", "RÉF", "Ref", "Rép", "RES", "Odp", "Odg", "Vá", "YNT", "Atb", "Bls", "ΑΠ", "Απ",
            "ΣΧΕΤ", "השב", "رد", "回复", "答复", "回覆", "答覆", "返信", "답장", "회신",
        ] {
            let s = format!("{p}: Quarterly results");
            assert_eq!(n(&s), "quarterly results", "{s}");
            assert!(is_reply_subject(&s), "{s}");
        }
    }

    #[test]
    fn every_forward_prefix_is_stripped_and_is_not_a_reply() {
        for p in [
            "Fwd",
            "FWD",
            "Fw",
            "FW",
            "TR",
            "Trs",
            "WG",
            "Enc",
            "RV",
            "VL",
            "VB",
            "I",
            "PD",
            "FS",
            "Doorst",
            "Továbbítás",
            "YML",
            "İlt",
            "ΠΡΘ",
            "הועבר",
            "转发",
            "轉寄",
            "転送",
            "전달",
        ] {
            let s = format!("{p}: Quarterly results");
            assert_eq!(n(&s), "quarterly results", "{s}");
            assert!(!is_reply_subject(&s), "{s}");
            assert!(strip_prefixes(&s).1.forward, "{s}");
        }
    }

    #[test]
    fn nested_prefixes_are_all_stripped() {
        assert_eq!(n("Re: RE: AW: Quarterly results"), "quarterly results");
        assert_eq!(n("RE:RE:RE:Quarterly results"), "quarterly results");
        assert_eq!(n("Fwd: Re: FW: re: Quarterly results"), "quarterly results");
        assert_eq!(n("Re: Fwd: Quarterly results"), "quarterly results");
    }

    #[test]
    fn counted_prefixes_are_stripped() {
        for s in [
            "Re[2]: Quarterly results",
            "RE[12]: Quarterly results",
            "Re^3: Quarterly results",
            "Re(4): Quarterly results",
            "Re [2]: Quarterly results",
            "Re[2] : Quarterly results",
            "AW[3]: RE^2: Quarterly results",
        ] {
            assert_eq!(n(s), "quarterly results", "{s}");
            assert!(is_reply_subject(s), "{s}");
        }
    }

    #[test]
    fn french_space_before_colon_is_allowed() {
        assert_eq!(n("Re : Quarterly results"), "quarterly results");
        assert_eq!(n("RE\u{a0}: Quarterly results"), "quarterly results");
        assert_eq!(
            n("TR\u{202f}: Réf : Quarterly results"),
            "quarterly results"
        );
    }

    #[test]
    fn full_width_colon_and_cjk() {
        assert_eq!(n("回复：季度业绩"), "季度业绩");
        assert_eq!(n("答复: 回复：季度业绩"), "季度业绩");
        assert_eq!(n("転送：四半期決算"), "四半期決算");
        assert_eq!(n("RE：Quarterly results"), "quarterly results");
    }

    #[test]
    fn list_tags_are_stripped_anywhere_among_prefixes() {
        assert_eq!(n("[all-staff] Quarterly results"), "quarterly results");
        assert_eq!(n("Re: [all-staff] Quarterly results"), "quarterly results");
        assert_eq!(
            n("[all-staff] Re: [EXTERNAL] RE: Quarterly results"),
            "quarterly results"
        );
        assert_eq!(
            n("[notmuch] [PATCH] count_files: sort directory"),
            "count_files: sort directory"
        );
        // A subject that is only a tag keeps it.
        assert_eq!(n("[PATCH]"), "[patch]");
        // An unclosed bracket is text.
        assert_eq!(n("[oops Re: x"), "[oops re: x");
    }

    #[test]
    fn trailing_fwd_is_dropped() {
        assert_eq!(n("Quarterly results (fwd)"), "quarterly results");
        assert_eq!(n("Quarterly results (FWD) (fwd)"), "quarterly results");
    }

    #[test]
    fn words_with_colons_that_are_not_prefixes_stay() {
        assert_eq!(n("RE: Meeting: Tuesday"), "meeting: tuesday");
        assert_eq!(n("Reminder: lunch"), "reminder: lunch");
        assert_eq!(n("Subject without colon Re"), "subject without colon re");
        assert!(!is_reply_subject("Reminder: lunch"));
        assert!(!is_reply_subject("Release notes"));
        assert_eq!(n("Re:"), "");
        assert_eq!(n("Re: "), "");
    }

    #[test]
    fn long_subjects_are_cut_at_a_char_boundary() {
        let long = "é".repeat(1000);
        let out = n(&long);
        assert!(out.len() <= MAX_SUBJECT_BYTES);
        assert!(out.chars().all(|c| c == 'é'));
    }

    #[test]
    fn odd_counters_do_not_panic() {
        for s in [
            "Re[: x",
            "Re^: x",
            "Re(99999999): x",
            "Re[2",
            "Re^",
            "^",
            "[",
            "]",
            ":",
        ] {
            let _ = n(s);
        }
        assert_eq!(n("Re(99999999): x"), "re(99999999): x");
    }
}
