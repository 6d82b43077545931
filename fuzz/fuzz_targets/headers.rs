//! Header fingerprinting as the engine runs it: `fingerprint::parse_headers` on the header
//! block of a message (the proxy's as received, the milter's as rebuilt from Postfix's header
//! packets). Input is raw bytes, or mapped onto header-shaped tokens (the headers thread keys
//! come from, message ids, reply prefixes, encoded words, folding). (Blocks past the 512 KiB
//! cut are left to the unit tests: a few milliseconds each, they took the fuzzer's throughput
//! from ~30,000 to ~800 inputs a second.)
//!
//! Checks: no panic, and keys fit for a store and a log: distinct, labelled `tidx:`, `mid:` or
//! `subj:`, at most 200 bytes, id the hash of the label; a message id with an `@` and no
//! spaces or controls; a lowercase From address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stormbreaker::fingerprint::subject::MAX_SUBJECT_BYTES;
use stormbreaker::fingerprint::{ThreadKey, parse_headers};
use stormbreaker_fuzz::tokens;

const HEADER_TOKENS: &[&[u8]] = &[
    b"Message-ID: ",
    b"In-Reply-To: ",
    b"References: ",
    b"Subject: ",
    b"Thread-Topic: ",
    b"Thread-Index: ",
    b"From: ",
    b"To: ",
    b"Cc: ",
    b"message-id:",
    b"SUBJECT:",
    b"X-Other: ",
    b"Re: ",
    b"RE: ",
    b"AW: ",
    b"Fwd: ",
    b"FW: ",
    b"Re[2]: ",
    b"Re^3:",
    b"Re(4) :",
    b"[all] ",
    b"(fwd)",
    b"\xe5\x9b\x9e\xe5\xa4\x8d\xef\xbc\x9a",
    b"R\xc3\x89F : ",
    b"\xc2\xa0",
    b"<",
    b">",
    b"@",
    b".",
    b",",
    b";",
    b":",
    b"\"",
    b"(",
    b")",
    b"[",
    b"]",
    b"\\",
    b" ",
    b"\t",
    b"\r\n",
    b"\n",
    b"\r\n ",
    b"\r\n\t",
    b"\r\n\r\n",
    b"=?utf-8?B?",
    b"=?iso-8859-1?Q?",
    b"=?UTF-8?q?",
    b"?=",
    b"=C3=A9",
    b"_",
    b"AQHZ",
    b"AdQ",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZab",
    b"cdefghijklmnopqrstuvwxyz012345",
    b"==",
    b"+/",
    b"a",
    b"b",
    b"x",
    b"1",
    b"9",
    b"id",
    b"example.com",
    b"quarterly results",
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"\xc3",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let raw = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        tokens(rest, HEADER_TOKENS)
    };
    let keys = parse_headers(&raw);
    for (i, key) in keys.keys.iter().enumerate() {
        assert!(!keys.keys[..i].contains(key), "distinct keys");
        assert!(key.label.len() <= 200, "{}", key.label.len());
        assert!(
            ["tidx:", "mid:", "subj:"]
                .iter()
                .any(|p| key.label.starts_with(p)),
            "{:?}",
            key.label
        );
        assert_eq!(key, &ThreadKey::new(&key.label));
    }
    if let Some(id) = &keys.message_id {
        assert!(id.contains('@') && id.len() <= 998, "{id:?}");
        assert!(
            !id.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{id:?}"
        );
    }
    if let Some(from) = &keys.from {
        assert_eq!(from, &from.to_ascii_lowercase());
    }
    assert!(keys.subject.len() <= MAX_SUBJECT_BYTES);
});
