//! Thread and audience fingerprints of a message: pure functions, no I/O, no state.
//!
//! A message carries up to three thread keys (Thread-Index GUID, a message id of its thread,
//! its normalised subject); replies from different mail clients carry different subsets, so the
//! engine counts a message under every key it has and holds it when any of them is tripped.

pub mod audience;
pub mod key;
pub mod subject;
pub mod thread;
pub mod thread_index;

pub use audience::{Audience, ListRule, ListTable, audience, header_audience};
pub use key::{KEY_FORMS, normalize_key, parse_key};
pub use subject::{SubjectPrefixes, is_reply_subject, normalize_subject, strip_prefixes};
pub use thread::{
    MAX_HEADER_BYTES, ThreadKey, ThreadKeys, is_reply, parse_headers, parser, thread_keys,
};
pub use thread_index::{ThreadIndex, decode_thread_index};

/// Stable 64-bit hash of bytes (FNV-1a, then a splitmix64 finaliser so every bit is mixed:
/// the in-process store uses it directly as a hash-table hash and a shard selector).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The same hash of an ASCII-lowercased string, without allocating: e-mail addresses are
/// compared case-insensitively.
pub fn hash_lowercase(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in text.as_bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// The identity of one message for its copies: its Message-ID and its envelope sender
/// (lowercased), hashed without allocating, eight bytes at a time (it is computed for every
/// wide message and kept no longer than `copies_window`, so it need match no other hash).
pub fn hash_message(message_id: &str, sender: &str) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 =
        0x6d73_6700_0000_0000 ^ ((message_id.len() as u64) << 16) ^ sender.len() as u64;
    let mut eat = |bytes: &[u8], lower: bool| {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (w, &b) in word.iter_mut().zip(chunk) {
                *w = if lower { b.to_ascii_lowercase() } else { b };
            }
            h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(K);
        }
    };
    eat(message_id.as_bytes(), false);
    eat(sender.as_bytes(), true);
    mix64(h)
}

/// `hash_bytes` of the little-endian bytes of `values`, without allocating them.
pub fn hash_u64s(values: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_hashes_equal_the_hash_of_the_bytes() {
        let values = [1u64, 0xdead_beef, u64::MAX];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(hash_u64s(&values), hash_bytes(&bytes));
        assert_eq!(
            hash_message("a@b", "Ann@Corp.Test"),
            hash_message("a@b", "ann@corp.test")
        );
        assert_ne!(hash_message("a@b", "x@y"), hash_message("a@b", "z@y"));
        // Where the Message-ID ends and the sender begins counts.
        assert_ne!(hash_message("ab@c", "d"), hash_message("ab@", "cd"));
        assert_ne!(hash_message("a@b", ""), hash_message("a@b", "\0"));
    }

    #[test]
    fn hashes_are_stable_and_case_insensitive_for_addresses() {
        assert_eq!(hash_bytes(b"abc"), hash_bytes(b"abc"));
        assert_ne!(hash_bytes(b"abc"), hash_bytes(b"abd"));
        assert_eq!(
            hash_lowercase("All@Corp.Test"),
            hash_bytes(b"all@corp.test")
        );
    }
}
