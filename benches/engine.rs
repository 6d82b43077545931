//! Storm engine speed and memory.
//! `cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3`
//!
//! - decide/*: decisions per second on the in-process store, with pre-parsed headers (counting
//!   path, held path, and another copy of a message already decided) and with the raw header
//!   block parsed each time (a reply to a list, and one part of a reply to 150 people split by
//!   its sending MTA, decided by its headers' audience).
//! - parse/*: header parse + fingerprint of a 4 KB message against a plain mail-parser parse of
//!   the same message and against the fingerprint without To/Cc (what header-audience counting
//!   costs), and header blocks with 150 and 5,000 addresses in To/Cc.
//! - Before the benches (only under `cargo bench`): bytes per tracked thread, from the RSS
//!   growth of a store that tracks 1,000,000 threads.

use criterion::{BenchmarkId, Criterion, Throughput};
use mail_parser::MessageParser;
use std::hint::black_box;
use std::path::Path;
use stormbreaker::breaker::{Limits, Rule};
use stormbreaker::config::Config;
use stormbreaker::engine::Engine;
use stormbreaker::envelope::{Envelope, Recipient};
use stormbreaker::fingerprint::{self, ThreadKey, ThreadKeys};
use stormbreaker::store::{Counter, MemoryStore, ObserveRequest, StateStore};

const T0: u64 = 1_700_000_000_000;
const THREADS: usize = 10_000;

fn engine(policy: &str) -> Engine {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n[policy]\n{policy}\n\
         [[lists]]\naddress = \"all@corp.test\"\nmembers = 91053\n"
    );
    Engine::new(&Config::parse(&text, Path::new("bench.toml")).unwrap()).unwrap()
}

fn envelope() -> Envelope {
    Envelope::to("someone@corp.test", &["all@corp.test"])
}

fn reply_headers(thread: usize) -> String {
    format!(
        "Message-ID: <r{thread}x@corp.test>\r\nIn-Reply-To: <root{thread}@corp.test>\r\n\
         References: <root{thread}@corp.test>\r\nSubject: RE: Thread number {thread}\r\n\
         Thread-Topic: Thread number {thread}\r\n\
         Thread-Index: AcPSUdfY5IUO+ol7QBiAGd3YKGvV8wAAAEMQ\r\n\r\n"
    )
}

/// A realistic 4 KB message: Received chain, DKIM, list headers, a short body.
fn message_4k() -> (String, usize) {
    let mut h = String::new();
    for i in 0..6 {
        h.push_str(&format!(
            "Received: from mx{i}.corp.test (mx{i}.corp.test [10.0.0.{i}])\r\n\tby relay{i}.corp.test \
             (Postfix) with ESMTPS id 4Zx{i}Qk1234\r\n\tfor <all@corp.test>; Mon, 23 Nov 2026 09:0{i}:00 +0000\r\n"
        ));
    }
    h.push_str(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=corp.test; s=sel1;\r\n\
         \th=from:to:cc:subject:date:message-id:in-reply-to:references;\r\n\
         \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
         \tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgbG9va3MgbGlrZSBvbmUgYW5kIGl0\r\n\
         \t IGlzIGxvbmcgZW5vdWdoIHRvIGNvdW50IGZvciB0aGUgYmVuY2htYXJrIG9mIGhlYWRlcnM=\r\n",
    );
    h.push_str("From: \"Some One\" <someone@corp.test>\r\nTo: All Staff <all@corp.test>\r\n");
    h.push_str("Cc: \"Boss\" <boss@corp.test>, \"Team\" <team@corp.test>\r\n");
    h.push_str("Date: Mon, 23 Nov 2026 09:07:00 +0000\r\nMIME-Version: 1.0\r\n");
    h.push_str(
        "Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 8bit\r\n",
    );
    h.push_str("X-MS-Exchange-Organization-SCL: -1\r\nX-Mailer: Microsoft Outlook 16.0\r\n");
    h.push_str("Accept-Language: en-GB, en-US\r\nContent-Language: en-GB\r\n");
    h.push_str(&reply_headers(1));
    let header_len = h.len();
    while h.len() < 4096 {
        h.push_str("Please remove me from this list. I do not know why I am getting these.\r\n");
    }
    (h, header_len)
}

/// A header block with `n` addresses in To and Cc.
fn header_with_addresses(n: usize) -> String {
    let addrs = |n: std::ops::Range<usize>| {
        n.map(|i| format!("\"Person {i}\" <person{i}@corp.test>"))
            .collect::<Vec<_>>()
            .join(",\r\n ")
    };
    format!(
        "From: someone@corp.test\r\nTo: {}\r\nCc: {}\r\n{}",
        addrs(0..n / 2),
        addrs(n / 2..n),
        reply_headers(2)
    )
}

/// The engine's parser as it was before headers counted for the audience: the thread headers
/// only, To and Cc skipped.
fn parser_without_audience() -> MessageParser {
    use mail_parser::HeaderName;
    MessageParser::new()
        .header_id(HeaderName::MessageId)
        .header_id(HeaderName::InReplyTo)
        .header_id(HeaderName::References)
        .header_text(HeaderName::Subject)
        .header_address(HeaderName::From)
        .header_text(HeaderName::Other("Thread-Topic".into()))
        .header_raw(HeaderName::Other("Thread-Index".into()))
        .default_header_ignore()
}

fn bench_decide(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let env = envelope();
    let keys: Vec<ThreadKeys> = (0..THREADS)
        .map(|t| fingerprint::parse_headers(reply_headers(t).as_bytes()))
        .collect();
    let raw: Vec<String> = (0..THREADS).map(reply_headers).collect();
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));

    // Counting path: wide replies spread over 10,000 threads, none trips. The clock moves
    // 100 ms per decision, so a thread's message comes round again after 1,000 s, past the
    // copies window: every decision counts a new message (and records it for its copies).
    let counting = engine("trip_replies = 100\nfast_audience = 0");
    let mut i = 0u64;
    g.bench_function("preparsed_counting", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let k = &keys[i as usize % THREADS];
            counting.decide_keys(&env, k, T0 + i * 100)
        })
    });
    // Another copy of a message just decided (a split message's next transaction).
    let copies = engine("trip_replies = 100\nfast_audience = 0");
    for (t, k) in keys.iter().enumerate() {
        rt.block_on(copies.decide_keys(&env, k, T0 + t as u64));
    }
    let mut i = 0u64;
    g.bench_function("preparsed_copy", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let k = &keys[i as usize % THREADS];
            copies.decide_keys(&env, k, T0 + 20_000)
        })
    });
    // Held path: every thread tripped by hand first.
    let held = engine("");
    for t in 0..THREADS {
        rt.block_on(held.trip(&format!("subj:thread number {t}"), T0));
    }
    let mut i = 0u64;
    g.bench_function("preparsed_held", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let k = &keys[i as usize % THREADS];
            held.decide_keys(&env, k, T0 + i * 10)
        })
    });
    // Narrow audience: the common case, decided without parsing.
    let narrow = Envelope {
        rcpts: vec![Recipient::plain("friend@corp.test")],
        ..env.clone()
    };
    g.bench_function("narrow_raw", |b| {
        b.to_async(&rt)
            .iter(|| counting.decide(&narrow, raw[0].as_bytes(), T0))
    });
    // Full path: raw header block parsed and fingerprinted every time.
    let mut i = 0u64;
    g.bench_function("raw_headers_counting", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let h = &raw[i as usize % THREADS];
            counting.decide(&env, h.as_bytes(), T0 + 2_000_000_000 + i * 100)
        })
    });
    // One part (50 of 150 people) of a split reply: wide by the To/Cc its headers name.
    let split = engine("wide_audience = 120\ntrip_replies = 100\nfast_audience = 0");
    let heads: Vec<String> = (0..1000)
        .map(|t| header_with_addresses(150).replace("r2x@", &format!("s{t}@")))
        .collect();
    let part = Envelope {
        rcpts: (100..150)
            .map(|i| Recipient::plain(&format!("person{i}@corp.test")))
            .collect(),
        ..env.clone()
    };
    assert_eq!(
        rt.block_on(split.decide(&part, heads[0].as_bytes(), T0))
            .hold,
        None
    );
    let mut i = 0u64;
    g.bench_function("raw_split_part_150_to_cc", |b| {
        b.to_async(&rt).iter(|| {
            i += 1;
            let h = &heads[i as usize % heads.len()];
            split.decide(&part, h.as_bytes(), T0 + i * 1000)
        })
    });
    g.finish();
}

fn bench_parse(c: &mut Criterion) {
    let (message, header_len) = message_4k();
    let heavy = header_with_addresses(5000);
    let medium = header_with_addresses(150);
    let without = parser_without_audience();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("mail_parser_full", "4k"), |b| {
        let parser = MessageParser::default();
        b.iter(|| {
            parser
                .parse(black_box(message.as_bytes()))
                .map(|m| m.parts.len())
        })
    });
    g.bench_function(BenchmarkId::new("mail_parser_headers", "4k"), |b| {
        let parser = MessageParser::default();
        b.iter(|| {
            parser
                .parse_headers(black_box(&message.as_bytes()[..header_len]))
                .map(|m| m.headers().len())
        })
    });
    g.bench_function(BenchmarkId::new("fingerprint", "4k"), |b| {
        b.iter(|| fingerprint::parse_headers(black_box(&message.as_bytes()[..header_len])))
    });
    g.bench_function(BenchmarkId::new("fingerprint_without_to_cc", "4k"), |b| {
        b.iter(|| {
            without
                .parse_headers(black_box(&message.as_bytes()[..header_len]))
                .map(|m| fingerprint::thread_keys(&m))
        })
    });
    g.bench_function(BenchmarkId::new("fingerprint", "150_addresses"), |b| {
        b.iter(|| fingerprint::parse_headers(black_box(medium.as_bytes())))
    });
    g.bench_function(
        BenchmarkId::new("fingerprint_without_to_cc", "150_addresses"),
        |b| {
            b.iter(|| {
                without
                    .parse_headers(black_box(medium.as_bytes()))
                    .map(|m| fingerprint::thread_keys(&m))
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("mail_parser_headers", "5000_addresses"),
        |b| {
            let parser = MessageParser::default();
            b.iter(|| {
                parser
                    .parse_headers(black_box(heavy.as_bytes()))
                    .map(|m| m.headers().len())
            })
        },
    );
    g.bench_function(BenchmarkId::new("fingerprint", "5000_addresses"), |b| {
        b.iter(|| fingerprint::parse_headers(black_box(heavy.as_bytes())))
    });
    g.bench_function(
        BenchmarkId::new("fingerprint_without_to_cc", "5000_addresses"),
        |b| {
            b.iter(|| {
                without
                    .parse_headers(black_box(heavy.as_bytes()))
                    .map(|m| fingerprint::thread_keys(&m))
            })
        },
    );
    g.finish();
    let heavy_keys = fingerprint::parse_headers(heavy.as_bytes());
    assert_eq!(
        heavy_keys.keys.len(),
        3,
        "the heavy message still fingerprints (GUID, root id, subject)"
    );
    assert_eq!(heavy_keys.to_cc.len(), 5000, "and counts its audience");
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Bytes per tracked thread: RSS growth of a store tracking 1,000,000 thread keys.
fn measure_memory() {
    const N: usize = 1_000_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = MemoryStore::new(N);
    let limits = Limits {
        trip: 10,
        window_s: 3600,
        block_s: 6 * 3600,
        max_block_s: 48 * 3600,
        fast_senders: 5,
        fast_window_s: 300,
    };
    // Warm the allocator so its own bookkeeping is not counted.
    let labels: Vec<ThreadKey> = (0..1000)
        .map(|i| ThreadKey::new(&format!("w{i}")))
        .collect();
    drop(labels);
    let before = rss_bytes();
    for i in 0..N {
        let key = [ThreadKey::new(&format!("mid:{i}@flood.test"))];
        let counters = [Counter {
            keys: &key,
            rule: Rule::Replies,
            limits,
        }];
        let req = ObserveRequest {
            counters: &counters,
            sender: i as u32,
            fast: false,
            sender_cap: 10,
            message: None,
            now_ms: T0 + i as u64,
        };
        rt.block_on(store.observe(&req)).unwrap();
    }
    let after = rss_bytes();
    assert_eq!(store.len(), N);
    println!(
        "memory: {} threads tracked, RSS +{:.1} MiB, {:.0} bytes per tracked thread \
         (StormState {} bytes, plus its label, one sender and the table)",
        store.len(),
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / N as f64,
        std::mem::size_of::<stormbreaker::breaker::StormState>()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--bench") {
        measure_memory();
    }
    let mut c = Criterion::default().configure_from_args();
    bench_decide(&mut c);
    bench_parse(&mut c);
    c.final_summary();
}
