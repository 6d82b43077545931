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

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

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
