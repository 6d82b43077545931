//! Keys as administrators type them (`breaker trip|reset KEY`, `quarantine --thread KEY`):
//! checked and brought to the form messages give them, so a typed key names the same storm as
//! the messages' keys, or is refused with the forms that exist.

use super::subject::normalize_subject;
use super::thread::ThreadKey;

/// The forms a key can take, for error messages and `--help`.
pub const KEY_FORMS: &str = "subj:SUBJECT (e.g. 'subj:Quarterly results', reply prefixes are \
     stripped), mid:MESSAGE-ID (e.g. mid:budget-2027@corp.test, angle brackets optional), \
     tidx:GUID (32 hex digits of an Outlook Thread-Index), wave:LIST (e.g. wave:all@corp.test); a \
     storm's id is the key that started it, as `breaker list` shows";

/// The key a typed text names, or why it names none.
pub fn parse_key(text: &str) -> Result<ThreadKey, String> {
    let text = text.trim();
    let unknown = || format!("{text:?} is not a key; keys are {KEY_FORMS}");
    let (prefix, rest) = text.split_once(':').ok_or_else(unknown)?;
    let label = match prefix {
        "subj" => {
            let subject = normalize_subject(rest);
            if subject.is_empty() {
                return Err(format!("{text:?}: the subject is empty after normalising"));
            }
            format!("subj:{subject}")
        }
        "mid" => {
            let id = rest.trim().trim_start_matches('<').trim_end_matches('>');
            let valid = id.contains('@')
                && !id.starts_with('@')
                && !id.ends_with('@')
                && !id
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if !valid {
                return Err(format!(
                    "{text:?}: a message id looks like mid:local-part@domain"
                ));
            }
            format!("mid:{id}")
        }
        "tidx" => {
            let guid = rest.trim().to_ascii_lowercase();
            if guid.len() != 32 || !guid.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "{text:?}: a Thread-Index GUID is 32 hex digits (tidx:6f1c…)"
                ));
            }
            format!("tidx:{guid}")
        }
        "wave" | "metoo" => {
            let rest = rest.trim();
            if rest.is_empty() {
                return Err(format!("{text:?}: {prefix}: needs what follows it"));
            }
            let rest = if prefix == "wave" && rest.contains('@') {
                rest.to_ascii_lowercase()
            } else {
                rest.to_string()
            };
            format!("{prefix}:{rest}")
        }
        _ => return Err(unknown()),
    };
    Ok(ThreadKey::new(&label))
}

/// A typed thread filter in the form held messages record it: a key's label when it parses,
/// else the text itself (trimmed), e.g. `auto-reply:ann@corp.test`.
pub fn normalize_key(text: &str) -> String {
    match parse_key(text) {
        Ok(key) => key.label.to_string(),
        Err(_) => text.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> String {
        parse_key(text)
            .map(|k| k.label.to_string())
            .unwrap_or_else(|e| e)
    }

    #[test]
    fn typed_keys_take_the_form_messages_give_them() {
        assert_eq!(
            label("subj:RE: AW: Quarterly Results "),
            "subj:quarterly results"
        );
        assert_eq!(
            label("mid:<budget-2027@corp.test>"),
            "mid:budget-2027@corp.test"
        );
        assert_eq!(
            label(" mid:budget-2027@corp.test"),
            "mid:budget-2027@corp.test"
        );
        assert_eq!(
            label("tidx:6F1C0000000000000000000000ABCDEF"),
            "tidx:6f1c0000000000000000000000abcdef"
        );
        assert_eq!(label("wave:All@Corp.Test"), "wave:all@corp.test");
        assert_eq!(
            parse_key("subj:quarterly results").unwrap(),
            ThreadKey::new("subj:quarterly results")
        );
    }

    #[test]
    fn unknown_and_malformed_keys_are_refused_with_the_forms() {
        for bad in [
            "ref:<id@host>",
            "garbage without prefix",
            "",
            "subj:RE:",
            "mid:no-at-sign",
            "mid:<a b@c>",
            "tidx:xyz",
            "wave:",
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?}");
        }
        assert!(
            parse_key("ref:<id@host>")
                .unwrap_err()
                .contains("subj:SUBJECT")
        );
    }

    #[test]
    fn filters_normalise_keys_and_keep_other_text() {
        assert_eq!(
            normalize_key("subj:AW: Ausschüttung 2027"),
            "subj:ausschüttung 2027"
        );
        assert_eq!(
            normalize_key(" auto-reply:ann@corp.test "),
            "auto-reply:ann@corp.test"
        );
    }
}
