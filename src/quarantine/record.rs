//! The on-disk form of one held message: its exact bytes, then its metadata, then a trailer.
//!
//! ```text
//! [content: exact bytes received, after dot-unstuffing]
//! [metadata: one JSON object]
//! SBHELD1 <content len, 16 hex> <metadata len, 8 hex> <content crc32, 8 hex> <metadata crc32, 8 hex>\n
//! ```
//! The trailer is written last, so a file cut short anywhere has no valid trailer or lengths that
//! do not add up to the file's size: a torn file is never taken as a held message. The checksums
//! catch damage the lengths cannot see.

use crate::envelope::{Envelope, Recipient};
use crate::verdict::Hold;
use serde::{Deserialize, Serialize};
use std::fmt;

pub const TRAILER_LEN: usize = 52;
const MAGIC: &[u8] = b"SBHELD1 ";

/// Everything known about a held message besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMeta {
    pub id: String,
    /// Unix time in milliseconds when the message was committed to the quarantine.
    pub received_at_ms: u64,
    pub envelope: Envelope,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    /// The storm that held it (the key that started the storm, e.g. `mid:root@corp.test`), or
    /// `auto-reply:<sender>`.
    pub thread: String,
    /// The message's own thread keys (`quarantine --thread` matches any of them too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    pub list: Option<String>,
    pub audience: u64,
    pub breaker: String,
    pub replies: u32,
    pub senders: u32,
    pub reason: String,
    /// Bytes of content.
    pub size: u64,
}

impl HeldMeta {
    pub fn new(
        id: String,
        received_at_ms: u64,
        envelope: &Envelope,
        hold: &Hold,
        headers: &[u8],
    ) -> Self {
        let (message_id, subject) = message_id_and_subject(headers);
        HeldMeta {
            id,
            received_at_ms,
            envelope: envelope.clone(),
            message_id,
            subject,
            thread: hold.thread.clone(),
            keys: crate::fingerprint::parse_headers(headers)
                .keys
                .iter()
                .map(|k| k.label.to_string())
                .collect(),
            list: hold.list.clone(),
            audience: hold.audience,
            breaker: hold.breaker.to_string(),
            replies: hold.replies,
            senders: hold.senders,
            reason: hold.reason.clone(),
            size: 0,
        }
    }

    pub fn summary(&self) -> HeldSummary {
        HeldSummary {
            id: self.id.clone(),
            received_at: rfc3339(self.received_at_ms),
            received_at_ms: self.received_at_ms,
            mail_from: self.envelope.mail_from.clone(),
            rcpt_to: self
                .envelope
                .rcpts
                .iter()
                .map(|r: &Recipient| r.address.clone())
                .collect(),
            message_id: self.message_id.clone(),
            subject: self.subject.clone(),
            reason: self.reason.clone(),
            size: self.size,
            thread: self.thread.clone(),
            keys: self.keys.clone(),
            list: self.list.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

/// One line of `quarantine list`, and one object of `quarantine list --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldSummary {
    pub id: String,
    pub received_at: String,
    pub received_at_ms: u64,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub reason: String,
    pub size: u64,
    pub thread: String,
    pub keys: Vec<String>,
    pub list: Option<String>,
    pub breaker: String,
}

/// Why a file is not a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Torn {
    TooShort(u64),
    NoTrailer,
    LengthMismatch { file: u64, expected: u64 },
    MetadataChecksum,
    ContentChecksum,
    BadMetadata(String),
}

impl fmt::Display for Torn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Torn::TooShort(n) => write!(f, "only {n} bytes, shorter than a trailer"),
            Torn::NoTrailer => write!(f, "no valid trailer at the end"),
            Torn::LengthMismatch { file, expected } => {
                write!(f, "file has {file} bytes, trailer says {expected}")
            }
            Torn::MetadataChecksum => write!(f, "metadata checksum mismatch"),
            Torn::ContentChecksum => write!(f, "content checksum mismatch"),
            Torn::BadMetadata(e) => write!(f, "metadata is not valid: {e}"),
        }
    }
}

/// The fixed-size trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub content_len: u64,
    pub meta_len: u32,
    pub content_crc: u32,
    pub meta_crc: u32,
}

impl Trailer {
    pub fn encode(&self) -> Vec<u8> {
        let s = format!(
            "SBHELD1 {:016x} {:08x} {:08x} {:08x}\n",
            self.content_len, self.meta_len, self.content_crc, self.meta_crc
        );
        debug_assert_eq!(s.len(), TRAILER_LEN);
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Trailer, Torn> {
        if bytes.len() != TRAILER_LEN || !bytes.starts_with(MAGIC) || bytes[51] != b'\n' {
            return Err(Torn::NoTrailer);
        }
        let field = |from: usize, len: usize| -> Result<u64, Torn> {
            let text =
                std::str::from_utf8(&bytes[from..from + len]).map_err(|_| Torn::NoTrailer)?;
            if bytes.get(from + len) != Some(&b' ') && from + len != 51 {
                return Err(Torn::NoTrailer);
            }
            u64::from_str_radix(text, 16).map_err(|_| Torn::NoTrailer)
        };
        Ok(Trailer {
            content_len: field(8, 16)?,
            meta_len: field(25, 8)? as u32,
            content_crc: field(34, 8)? as u32,
            meta_crc: field(43, 8)? as u32,
        })
    }

    /// The file size this trailer promises.
    pub fn file_len(&self) -> u64 {
        self.content_len + self.meta_len as u64 + TRAILER_LEN as u64
    }
}

/// Checks a trailer against the file's size and parses and checks the metadata.
pub fn check_meta(file_len: u64, trailer_bytes: &[u8], meta: &[u8]) -> Result<HeldMeta, Torn> {
    let trailer = Trailer::decode(trailer_bytes)?;
    if trailer.file_len() != file_len {
        return Err(Torn::LengthMismatch {
            file: file_len,
            expected: trailer.file_len(),
        });
    }
    if meta.len() != trailer.meta_len as usize || crc32fast::hash(meta) != trailer.meta_crc {
        return Err(Torn::MetadataChecksum);
    }
    let parsed: HeldMeta =
        serde_json::from_slice(meta).map_err(|e| Torn::BadMetadata(e.to_string()))?;
    if parsed.size != trailer.content_len {
        return Err(Torn::BadMetadata(format!(
            "size {} differs from the trailer's {}",
            parsed.size, trailer.content_len
        )));
    }
    Ok(parsed)
}

/// Message-ID and Subject from the raw header block; a size cap keeps the parser on safe input.
fn message_id_and_subject(headers: &[u8]) -> (Option<String>, Option<String>) {
    const MAX_HEADERS: usize = 256 * 1024;
    let headers = &headers[..headers.len().min(MAX_HEADERS)];
    match mail_parser::MessageParser::new().parse_headers(headers) {
        Some(m) => (
            m.message_id().map(str::to_string),
            m.subject().map(str::to_string),
        ),
        None => (None, None),
    }
}

/// Unix milliseconds as RFC 3339 UTC with seconds, e.g. `2026-11-23T09:14:48Z`.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips() {
        let t = Trailer {
            content_len: 123_456_789,
            meta_len: 4321,
            content_crc: 0xdead_beef,
            meta_crc: 7,
        };
        let bytes = t.encode();
        assert_eq!(bytes.len(), TRAILER_LEN);
        assert_eq!(Trailer::decode(&bytes), Ok(t));
    }

    #[test]
    fn damaged_trailers_are_refused() {
        let good = Trailer {
            content_len: 1,
            meta_len: 2,
            content_crc: 3,
            meta_crc: 4,
        }
        .encode();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] = b'z';
            assert!(Trailer::decode(&bad).is_err(), "byte {i}");
        }
        assert!(Trailer::decode(&good[1..]).is_err());
    }

    #[test]
    fn headers_give_message_id_and_subject() {
        let (id, subject) =
            message_id_and_subject(b"Message-ID: <a@b.test>\r\nSubject: Re: hello\r\n\r\n");
        assert_eq!(id.as_deref(), Some("a@b.test"));
        assert_eq!(subject.as_deref(), Some("Re: hello"));
        assert_eq!(message_id_and_subject(b"\xff\xfe garbage"), (None, None));
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000_000), "2026-11-18T11:06:40Z");
    }
}
