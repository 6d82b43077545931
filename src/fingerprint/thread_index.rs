//! Outlook's Thread-Index header: base64 of byte 0 = 1, bytes 1-5 a FILETIME fragment, bytes 6-21
//! the conversation GUID, then one 5-byte block per reply. The GUID names the conversation.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The 22-byte header block every Thread-Index starts with.
pub const HEADER_LEN: usize = 22;
/// Longest Thread-Index we decode (bytes of base64 text); about 1,600 reply blocks.
const MAX_TEXT_LEN: usize = 11_000;

const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A decoded Thread-Index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadIndex {
    /// The conversation GUID (bytes 6-21).
    pub guid: [u8; 16],
    /// Reply blocks after the header block; more than 0 means the message is a reply.
    pub replies: usize,
}

impl ThreadIndex {
    /// The GUID as 32 lowercase hex digits, the form used in thread keys.
    pub fn guid_hex(&self) -> String {
        use std::fmt::Write;
        let mut s = String::with_capacity(32);
        for b in self.guid {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

/// Decodes a Thread-Index header value. Folding whitespace is ignored. `None` for anything that
/// is not a Thread-Index: bad base64, shorter than 22 bytes, byte 0 not 1, or absurdly long.
/// Trailing bytes that do not make a whole 5-byte block are tolerated (clients differ).
pub fn decode_thread_index(value: &str) -> Option<ThreadIndex> {
    if value.len() > MAX_TEXT_LEN {
        return None;
    }
    let compact: Vec<u8> = value.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = LENIENT.decode(&compact).ok()?;
    if bytes.len() < HEADER_LEN || bytes[0] != 1 {
        return None;
    }
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&bytes[6..HEADER_LEN]);
    Some(ThreadIndex {
        guid,
        replies: (bytes.len() - HEADER_LEN) / 5,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn header(guid_byte: u8) -> Vec<u8> {
        let mut v = vec![1u8, 0xd5, 0x3a, 0x11, 0x22, 0x33];
        v.extend(std::iter::repeat_n(guid_byte, 16));
        v
    }

    #[test]
    fn original_message_has_no_reply_blocks() {
        let ti = decode_thread_index(&encode(&header(0xab))).unwrap();
        assert_eq!(ti.guid, [0xab; 16]);
        assert_eq!(ti.replies, 0);
        assert_eq!(ti.guid_hex(), "ab".repeat(16));
    }

    #[test]
    fn replies_add_five_byte_blocks_and_keep_the_guid() {
        let mut v = header(0x42);
        v.extend([0, 0, 0, 1, 2]);
        v.extend([0, 0, 0, 3, 4]);
        let ti = decode_thread_index(&encode(&v)).unwrap();
        assert_eq!(ti.guid, [0x42; 16]);
        assert_eq!(ti.replies, 2);
    }

    #[test]
    fn real_outlook_value_decodes() {
        // An Outlook original (22 bytes) and the same conversation one reply later (27 bytes).
        let original = decode_thread_index("AcPSUdfY5IUO+ol7QBiAGd3YKGvV8w==").unwrap();
        assert_eq!(original.replies, 0);
        let reply = decode_thread_index("AcPSUdfY5IUO+ol7QBiAGd3YKGvV8wAAAEMQ").unwrap();
        assert_eq!(reply.replies, 1);
        assert_eq!(reply.guid, original.guid);
    }

    #[test]
    fn folded_and_unpadded_values_decode() {
        let v = encode(&header(7));
        let folded = format!("{}\r\n\t{}", &v[..10], &v[10..]);
        assert_eq!(decode_thread_index(&folded).unwrap().guid, [7; 16]);
        let unpadded = v.trim_end_matches('=');
        assert_eq!(decode_thread_index(unpadded).unwrap().guid, [7; 16]);
    }

    #[test]
    fn malformed_values_are_none_not_panics() {
        for bad in [
            "",
            "=",
            "!!!!",
            "AQ",
            "not base64 at all ###",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQV%%",
            "AdTBQMfG2bLA",                     // too short
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", // byte 0 is 0
            "\u{1F600}\u{1F600}\u{1F600}",
        ] {
            assert_eq!(decode_thread_index(bad), None, "{bad:?}");
        }
        assert_eq!(decode_thread_index(&"A".repeat(MAX_TEXT_LEN + 1)), None);
    }

    #[test]
    fn partial_trailing_block_is_tolerated() {
        let mut v = header(9);
        v.extend([1, 2, 3]);
        let ti = decode_thread_index(&encode(&v)).unwrap();
        assert_eq!(ti.replies, 0);
        assert_eq!(ti.guid, [9; 16]);
    }
}
