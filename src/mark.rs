//! The signed mark of a decision already made: `X-Stormbreaker-Mark`.
//!
//! A message can meet stormbreaker twice: the proxy relays it to a Postfix whose smtpd also runs
//! stormbreaker's milter, or `quarantine release` re-injects a held message into a Postfix with
//! the milter. Counted twice, a storm trips at half its threshold; held again, a released message
//! never arrives. So the proxy adds a mark to the mail it relays after deciding on it, release
//! adds one to what it re-injects, and the engine delivers a message with a valid mark without
//! counting it.
//!
//! The mark is an HMAC-SHA256, under a secret of this installation, of the time it was made, why
//! (`relayed`, `released`), the message's Message-ID and its envelope sender. Without the secret
//! nobody can make one; a mark copied from a delivered message onto another one fails unless that
//! message has the same Message-ID and envelope sender, and it stops working `VALID_FOR_S` after
//! it was made. The secret is 32 random bytes in a file (by default `mark.key` in the quarantine
//! folder; `[mark] key_file` to share one between hosts), made at first start.

use ring::hmac;
use std::io::{self, Write};
use std::path::Path;

/// The header's name.
pub const HEADER: &str = "X-Stormbreaker-Mark";
/// How long a mark is honoured after it was made: the queue time between a proxy and a milter
/// further on, or a release and its re-injection, is seconds to minutes.
pub const VALID_FOR_S: u64 = 3600;
/// Marks from a clock this far ahead are still honoured (hosts' clocks differ a little).
const SKEW_S: u64 = 300;
const VERSION: &str = "1";

/// Why a message was marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The proxy decided on it and relayed it.
    Relayed,
    /// An administrator released it from the quarantine.
    Released,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Relayed => "relayed",
            Reason::Released => "released",
        }
    }

    fn parse(s: &str) -> Option<Reason> {
        match s {
            "relayed" => Some(Reason::Relayed),
            "released" => Some(Reason::Released),
            _ => None,
        }
    }
}

/// The installation's secret.
#[derive(Clone)]
pub struct MarkKey(hmac::Key);

impl std::fmt::Debug for MarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkKey(..)")
    }
}

impl MarkKey {
    pub fn from_bytes(secret: &[u8]) -> MarkKey {
        MarkKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Reads the secret from `path`, or makes one there when the file does not exist (written
    /// to a temporary file, fsynced, then linked into place, so two processes starting at once
    /// agree on one secret). Errors name the file.
    pub fn load_or_create(path: &Path) -> io::Result<MarkKey> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => return Self::parse_file(&text).map_err(named),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(named(e)),
            Err(_) => {}
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(named)?;
        }
        let secret: [u8; 32] = rand::random();
        let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let written = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(format!("{text}\n").as_bytes())?;
            file.sync_all()?;
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {}
                // Another process made it first: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if let Some(dir) = dir {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(named)?;
        let text = std::fs::read_to_string(path).map_err(named)?;
        Self::parse_file(&text).map_err(named)
    }

    fn parse_file(text: &str) -> io::Result<MarkKey> {
        let hex = text.trim();
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        match bytes {
            Some(b) if b.len() >= 16 => Ok(MarkKey::from_bytes(&b)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a mark secret (at least 32 hex digits expected)",
            )),
        }
    }

    fn tag(&self, t: u64, reason: Reason, message_id: &str, sender: &str) -> hmac::Tag {
        let data = signed_data(t, reason, message_id, sender);
        hmac::sign(&self.0, data.as_bytes())
    }

    /// The whole header line (CRLF included) marking a message `message_id` (without angle
    /// brackets; empty when it has none) from envelope sender `sender` at `now_s`.
    pub fn stamp(&self, reason: Reason, message_id: &str, sender: &str, now_s: u64) -> String {
        let tag = self.tag(now_s, reason, message_id, sender);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{HEADER}: v={VERSION}; t={now_s}; r={}; m={hex}\r\n",
            reason.as_str()
        )
    }

    /// Why the message was marked, when `value` (a header value) is a valid mark of this
    /// message made within `VALID_FOR_S` before `now_s`.
    pub fn verify(
        &self,
        value: &str,
        message_id: &str,
        sender: &str,
        now_s: u64,
    ) -> Option<Reason> {
        let mut version = None;
        let mut t = None;
        let mut reason = None;
        let mut mac = None;
        for field in value.split(';') {
            let (k, v) = field.trim().split_once('=')?;
            match k.trim() {
                "v" => version = Some(v.trim()),
                "t" => t = v.trim().parse::<u64>().ok(),
                "r" => reason = Reason::parse(v.trim()),
                "m" => mac = Some(v.trim()),
                _ => {}
            }
        }
        let (t, reason, mac) = (t?, reason?, mac?);
        if version != Some(VERSION)
            || t > now_s.saturating_add(SKEW_S)
            || now_s.saturating_sub(t) > VALID_FOR_S
            || mac.len() != 64
        {
            return None;
        }
        let tag: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&mac[i..i + 2], 16).ok())
            .collect::<Option<_>>()?;
        let data = signed_data(t, reason, message_id, sender);
        hmac::verify(&self.0, data.as_bytes(), &tag)
            .ok()
            .map(|()| reason)
    }

    /// `stamp` for a message's raw content: its Message-ID is read the way the engine reads it.
    pub fn stamp_content(
        &self,
        reason: Reason,
        content: &[u8],
        sender: &str,
        now_s: u64,
    ) -> String {
        let end = memchr::memmem::find(content, b"\r\n\r\n").map_or(content.len(), |i| i + 4);
        let keys = crate::fingerprint::parse_headers(&content[..end]);
        self.stamp(
            reason,
            keys.message_id.as_deref().unwrap_or(""),
            sender,
            now_s,
        )
    }
}

fn signed_data(t: u64, reason: Reason, message_id: &str, sender: &str) -> String {
    format!(
        "v={VERSION};t={t};r={};{message_id}\n{}",
        reason.as_str(),
        sender.trim().to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn value(line: &str) -> &str {
        line.trim_end()
            .strip_prefix(&format!("{HEADER}: "))
            .expect("a mark header line")
    }

    #[test]
    fn a_mark_verifies_for_its_message_only() {
        let key = MarkKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let line = key.stamp(Reason::Released, "a@corp.test", "Ann@Corp.Test", NOW);
        assert!(line.ends_with("\r\n") && line.len() < 200, "{line}");
        let v = value(&line);
        assert_eq!(
            key.verify(v, "a@corp.test", "ann@corp.test", NOW + 10),
            Some(Reason::Released)
        );
        // Another message, another sender, another secret, too old, from the future, tampered.
        assert_eq!(key.verify(v, "b@corp.test", "ann@corp.test", NOW), None);
        assert_eq!(key.verify(v, "a@corp.test", "bob@corp.test", NOW), None);
        let other = MarkKey::from_bytes(b"another secret of 32 bytes......");
        assert_eq!(other.verify(v, "a@corp.test", "ann@corp.test", NOW), None);
        assert_eq!(
            key.verify(v, "a@corp.test", "ann@corp.test", NOW + VALID_FOR_S + 1),
            None
        );
        assert_eq!(
            key.verify(v, "a@corp.test", "ann@corp.test", NOW - 1000),
            None
        );
        let tampered = v.replace("r=released", "r=relayed");
        assert_eq!(
            key.verify(&tampered, "a@corp.test", "ann@corp.test", NOW),
            None
        );
        for garbage in [
            "",
            "v=1",
            "v=1; t=x; r=relayed; m=00",
            "no equals sign",
            "m=zz",
        ] {
            assert_eq!(
                key.verify(garbage, "a@corp.test", "ann@corp.test", NOW),
                None
            );
        }
    }

    #[test]
    fn the_secret_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/mark.key");
        let a = MarkKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = MarkKey::load_or_create(&path).unwrap();
        let line = a.stamp(Reason::Relayed, "x@y", "s@y", NOW);
        assert_eq!(
            b.verify(value(&line), "x@y", "s@y", NOW),
            Some(Reason::Relayed)
        );
        std::fs::write(&path, "short\n").unwrap();
        let err = MarkKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("mark.key"), "{err}");
    }

    #[test]
    fn content_stamps_read_the_message_id_as_the_engine_does() {
        let key = MarkKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let content = b"Subject: x\r\nMessage-ID: <m1@corp.test>\r\n\r\nbody\r\n";
        let line = key.stamp_content(Reason::Released, content, "s@corp.test", NOW);
        assert_eq!(
            key.verify(value(&line), "m1@corp.test", "s@corp.test", NOW),
            Some(Reason::Released)
        );
    }
}
