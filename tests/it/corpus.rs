//! Legitimate threaded mail: thread keys join real threads, and replaying the threads to a wide
//! audience at their real dates trips nothing. Two corpora:
//! - ours, always: `tests/it/data/threads/`, one folder per thread, in the header styles of
//!   Outlook/Exchange, Thunderbird, Gmail, Apple Mail, mailing lists and some odd ones; the
//!   folder is the truth of which messages form a thread, and every message after the first
//!   of a folder (by file name) is a reply;
//! - the notmuch test corpora (real list threads and broken messages) under
//!   `../shared/corpora/notmuch` or `$STORMBREAKER_CORPORA/notmuch`, when present; a thread
//!   there is what notmuch joins by Message-ID, In-Reply-To and References.

use mail_parser::{HeaderValue, MessageParser};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use stormbreaker::config::Config;
use stormbreaker::engine::Engine;
use stormbreaker::envelope::Envelope;
use stormbreaker::fingerprint::{self, ThreadKeys};
use stormbreaker::verdict::Verdict;

/// The list every replayed message goes to: wide enough to count, short of the fast trip.
const LIST: &str = "everyone@corpus.test";

struct Mail {
    path: PathBuf,
    keys: ThreadKeys,
    /// Message-ID, In-Reply-To and References as a threading mail reader reads them.
    id: Option<String>,
    links: Vec<String>,
    date_ms: Option<u64>,
    from: String,
    /// Our corpus: the thread's folder, and whether the message opens it.
    thread: Option<String>,
    first: bool,
}

struct Corpus {
    name: &'static str,
    mails: Vec<Mail>,
}

/// Ours: every `.eml` under tests/it/data/threads, grouped by folder.
fn ours() -> &'static Corpus {
    static OURS: OnceLock<Corpus> = OnceLock::new();
    OURS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/threads");
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        let mut mails = Vec::new();
        for folder in folders {
            let name = folder.file_name().unwrap().to_string_lossy().into_owned();
            let mut files = Vec::new();
            walk(&folder, &mut files);
            for (i, path) in files.into_iter().enumerate() {
                let mut mail = load(path);
                mail.thread = Some(name.clone());
                mail.first = i == 0;
                mails.push(mail);
            }
        }
        Corpus {
            name: "tests/it/data/threads",
            mails,
        }
    })
}

/// The notmuch corpora, or None (with a note) when they are not beside the checkout.
fn notmuch() -> Option<&'static Corpus> {
    static NOTMUCH: OnceLock<Option<Corpus>> = OnceLock::new();
    NOTMUCH
        .get_or_init(|| {
            let base = match std::env::var("STORMBREAKER_CORPORA") {
                Ok(dir) => PathBuf::from(dir),
                Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"),
            };
            let dir = base.join("notmuch");
            if !dir.is_dir() {
                println!(
                    "note: no notmuch corpora at {}; set STORMBREAKER_CORPORA to the folder \
                     holding notmuch/ to check them too. Checked our own threads only.",
                    dir.display()
                );
                return None;
            }
            let mut files = Vec::new();
            walk(&dir, &mut files);
            Some(Corpus {
                name: "notmuch",
                mails: files.into_iter().map(load).collect(),
            })
        })
        .as_ref()
}

/// Ours, and notmuch's when present.
fn corpora() -> Vec<&'static Corpus> {
    std::iter::once(ours()).chain(notmuch()).collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "eml") {
            out.push(p);
        }
    }
}

fn header_block(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .or_else(|| raw.windows(4).position(|w| w == b"\r\n\r\n"));
    match end {
        Some(i) => &raw[..i + 1],
        None => raw,
    }
}

fn ids(v: &HeaderValue) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn load(path: PathBuf) -> Mail {
    let raw = std::fs::read(&path).unwrap();
    let headers = header_block(&raw);
    let keys = fingerprint::parse_headers(headers);
    let full = MessageParser::new().parse_headers(headers);
    let (id, links, date_ms, from) = match &full {
        Some(m) => (
            m.message_id().map(str::to_string),
            ids(m.in_reply_to())
                .into_iter()
                .chain(ids(m.references()))
                .collect(),
            m.date().map(|d| d.to_timestamp().max(0) as u64 * 1000),
            m.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or("unknown@corpus")
                .to_string(),
        ),
        None => (None, Vec::new(), None, "unknown@corpus".into()),
    };
    Mail {
        path,
        keys,
        id,
        links,
        date_ms,
        from,
        thread: None,
        first: false,
    }
}

/// Union-find over message indices.
struct Groups(Vec<usize>);

impl Groups {
    fn new(n: usize) -> Self {
        Groups((0..n).collect())
    }
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }
    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        self.0[a] = b;
    }
    /// Joins every pair of messages that share a name.
    fn join_by_names(&mut self, names: &[Vec<String>]) {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, ns) in names.iter().enumerate() {
            for n in ns {
                match first.get(n.as_str()) {
                    Some(&j) => self.join(i, j),
                    None => {
                        first.insert(n, i);
                    }
                }
            }
        }
    }
    /// The groups, each a list of message indices.
    fn groups(&mut self) -> Vec<Vec<usize>> {
        let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in 0..self.0.len() {
            out.entry(self.find(i)).or_default().push(i);
        }
        out.into_values().collect()
    }
}

/// Messages joined as a threading mail reader (notmuch) joins them: by Message-ID,
/// In-Reply-To and References.
fn by_links(mails: &[Mail]) -> Groups {
    let mut g = Groups::new(mails.len());
    g.join_by_names(
        &mails
            .iter()
            .map(|m| m.id.iter().chain(&m.links).cloned().collect())
            .collect::<Vec<_>>(),
    );
    g
}

/// Messages joined by our thread keys (a root is found by its own id, `mid:<id>`).
fn by_keys(mails: &[Mail]) -> Groups {
    let mut g = Groups::new(mails.len());
    g.join_by_names(
        &mails
            .iter()
            .map(|m| {
                let own = m.keys.message_id.iter().map(|id| format!("mid:{id}"));
                m.keys
                    .keys
                    .iter()
                    .map(|k| k.label.to_string())
                    .chain(own)
                    .collect()
            })
            .collect::<Vec<_>>(),
    );
    g
}

/// Asserts that every thread (a list of message indices) lies within one group of `ours`.
fn assert_joined(corpus: &Corpus, threads: &[Vec<usize>], ours: &mut Groups) {
    let mails = &corpus.mails;
    for members in threads {
        let group = ours.find(members[0]);
        for &m in members {
            assert_eq!(
                ours.find(m),
                group,
                "{}: {} and {} are one thread but share no thread key",
                corpus.name,
                mails[members[0]].path.display(),
                mails[m].path.display()
            );
        }
    }
}

/// Asserts that every reply shares a key with some other message of its thread (not only
/// transitively through its own id), so replies in a storm are counted together.
fn assert_replies_share_a_key(corpus: &Corpus, threads: &[Vec<usize>]) {
    let mails = &corpus.mails;
    for members in threads.iter().filter(|t| t.len() > 1) {
        for &m in members {
            if !mails[m].keys.reply {
                continue;
            }
            let shares = members.iter().any(|&o| {
                o != m
                    && mails[m].keys.keys.iter().any(|k| {
                        mails[o].keys.keys.contains(k)
                            || mails[o]
                                .keys
                                .message_id
                                .as_ref()
                                .is_some_and(|id| *k.label == format!("mid:{id}"))
                    })
            });
            assert!(
                shares,
                "{}: {} shares no key with its thread",
                corpus.name,
                mails[m].path.display()
            );
        }
    }
}

#[test]
fn thread_keys_join_each_of_our_threads_and_nothing_else() {
    let corpus = ours();
    let mails = &corpus.mails;
    let mut folders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, m) in mails.iter().enumerate() {
        folders
            .entry(m.thread.as_deref().unwrap())
            .or_default()
            .push(i);
    }
    let threads: Vec<Vec<usize>> = folders.values().cloned().collect();
    assert!(
        threads.len() >= 20 && mails.len() >= 100,
        "expected our corpus of 20+ threads and 100+ messages: {} threads, {} messages",
        threads.len(),
        mails.len()
    );
    let mut ours = by_keys(mails);
    assert_joined(corpus, &threads, &mut ours);
    assert_replies_share_a_key(corpus, &threads);
    // What a threading reader joins by links, the keys join too; links never cross folders
    // (the corpus is consistent).
    let linked = by_links(mails).groups();
    for group in &linked {
        let folder = |i: usize| mails[i].thread.as_deref();
        assert!(
            group.iter().all(|&i| folder(i) == folder(group[0])),
            "linked across threads: {:?}",
            group.iter().map(|&i| &mails[i].path).collect::<Vec<_>>()
        );
    }
    assert_joined(corpus, &linked, &mut ours);
    // And the keys join nothing more: different threads (distinct subjects, ids and
    // conversations) stay apart, so one thread's storm never holds another's replies.
    for group in ours.groups() {
        let names: HashSet<&str> = group
            .iter()
            .map(|&i| mails[i].thread.as_deref().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "threads joined by their keys: {names:?}");
    }
}

#[test]
fn thread_keys_group_the_notmuch_corpus_as_notmuch_does() {
    let Some(corpus) = notmuch() else { return };
    let mails = &corpus.mails;
    assert!(
        mails.len() >= 70,
        "expected the notmuch corpora, found {} files",
        mails.len()
    );
    let threads = by_links(mails).groups();
    let multi = threads.iter().filter(|t| t.len() > 1).count();
    assert!(
        multi >= 5,
        "expected several multi-message threads, found {multi}"
    );
    // Threads that notmuch joins only because one Message-ID was reused for different
    // messages (`duplicate/`) are not reply threads: they are left out of the reply check.
    let reused_id = |members: &Vec<usize>| {
        let mut seen = HashSet::new();
        members
            .iter()
            .filter_map(|&m| mails[m].id.as_deref())
            .any(|id| !seen.insert(id))
    };
    let mut ours = by_keys(mails);
    assert_joined(corpus, &threads, &mut ours);
    let reply_threads: Vec<Vec<usize>> = threads.into_iter().filter(|t| !reused_id(t)).collect();
    assert_replies_share_a_key(corpus, &reply_threads);
}

#[test]
fn every_reply_is_recognised_as_a_reply() {
    for corpus in corpora() {
        for m in &corpus.mails {
            if !m.links.is_empty() {
                assert!(
                    m.keys.reply,
                    "{} has In-Reply-To/References",
                    m.path.display()
                );
            }
        }
    }
    // Ours, by the folder: every message after a thread's first is a reply (some only by a
    // Thread-Index block or a subject prefix), and a first one is not, unless it answers a
    // message we never saw (list-ghost-root).
    for m in &ours().mails {
        let reply = !m.first || !m.links.is_empty();
        assert_eq!(m.keys.reply, reply, "{}", m.path.display());
    }
}

/// Replays a corpus at its real dates to a list of 5,000; returns the verdicts.
fn replay(corpus: &Corpus, policy: &str) -> Vec<(PathBuf, Verdict)> {
    let config = Config::parse(
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n[policy]\n{policy}\n\
             [[lists]]\naddress = \"{LIST}\"\nmembers = 5000\n"
        ),
        Path::new("corpus.toml"),
    )
    .unwrap();
    let engine = Engine::new(&config).unwrap();
    let mut mails: Vec<&Mail> = corpus.mails.iter().collect();
    // Real arrival order; undated messages last.
    mails.sort_by_key(|m| m.date_ms.unwrap_or(u64::MAX));
    let last = mails.iter().filter_map(|m| m.date_ms).max().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut replies = 0;
    let mut out = Vec::new();
    for (i, m) in mails.iter().enumerate() {
        let now = m.date_ms.unwrap_or(last + i as u64 * 1000);
        let envelope = Envelope::to(&m.from, &[LIST]);
        let raw = std::fs::read(&m.path).unwrap();
        let verdict = rt.block_on(engine.decide(&envelope, header_block(&raw), now));
        out.push((m.path.clone(), verdict));
        replies += usize::from(m.keys.reply);
    }
    assert!(
        replies >= 30,
        "{}: expected a corpus with replies, found {replies}",
        corpus.name
    );
    out
}

#[test]
fn replaying_legitimate_threads_to_a_wide_audience_trips_nothing() {
    for corpus in corpora() {
        for (path, verdict) in replay(corpus, "") {
            assert_eq!(verdict, Verdict::DELIVER, "{}", path.display());
        }
    }
}

#[test]
fn the_replay_is_not_trivially_quiet() {
    // Control: with a hair trigger the same replay does trip, so the default policy's silence
    // above is a margin, not an artefact of the replay.
    for corpus in corpora() {
        let verdicts = replay(corpus, "trip_replies = 2");
        assert!(
            verdicts.iter().any(|(_, v)| v.opened.is_some()),
            "{}",
            corpus.name
        );
    }
}
