//! Where storms started, for the people told about them: the thread's subject as it was
//! written and its original sender.
//!
//! The state store counts hashes only (a storm is 237 bytes), so the words come from here: a
//! bounded table in the engine, shared by the engines a reload builds. A wide new message that
//! passes leaves its sender and subject under its own `mid:` key (and its Thread-Index and
//! subject keys), which is what its replies' storm is named by; a storm whose first message
//! never passed this node (it came before the start, or through another node on Redis) gets
//! the sender of the reply that opened or first met the breaker, marked as such.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How many origins are kept: the oldest go first. A storm's alert is sent when its breaker
/// opens, within minutes of its first message, so the table need not be large.
pub const MAX_ORIGINS: usize = 4096;

/// Longest subject kept, in characters.
const MAX_SUBJECT_CHARS: usize = 200;

/// Where a storm started, as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The thread's subject as people wrote it: decoded, reply prefixes removed.
    pub subject: String,
    /// The envelope (or, for a null sender, header From) address.
    pub sender: String,
    /// True when `sender` wrote the thread's first message; false when it is the first sender
    /// this node saw in the storm.
    pub started_thread: bool,
}

impl Origin {
    pub fn new(subject: &str, sender: &str, started_thread: bool) -> Origin {
        Origin {
            subject: subject.trim().chars().take(MAX_SUBJECT_CHARS).collect(),
            sender: sender.trim().to_ascii_lowercase(),
            started_thread,
        }
    }
}

/// The bounded table of origins by key label (`mid:...`, `tidx:...`, `subj:...`).
#[derive(Debug, Default)]
pub struct Origins {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_label: HashMap<String, Arc<Origin>>,
    /// Labels in the order they came, for eviction; a label written again is not moved.
    order: VecDeque<String>,
}

impl Origins {
    /// A wide new message passed: its keys name the storm its replies may raise.
    pub fn started(&self, labels: impl IntoIterator<Item = String>, origin: Origin) {
        let origin = Arc::new(origin);
        let mut t = self.lock();
        for label in labels {
            t.put(label, origin.clone(), true);
        }
    }

    /// The origin of a storm named `storm` whose message has the keys `labels`: the first one
    /// known; else `fallback`, kept under `storm` so the storm's later holds name the same.
    pub fn of<'a>(
        &self,
        storm: &str,
        labels: impl IntoIterator<Item = &'a str>,
        fallback: impl FnOnce() -> Origin,
    ) -> Arc<Origin> {
        let mut t = self.lock();
        if let Some(o) = t.by_label.get(storm) {
            return o.clone();
        }
        for label in labels {
            if let Some(o) = t.by_label.get(label) {
                let o = o.clone();
                t.put(storm.to_string(), o.clone(), false);
                return o;
            }
        }
        let o = Arc::new(fallback());
        t.put(storm.to_string(), o.clone(), false);
        o
    }

    pub fn len(&self) -> usize {
        self.lock().by_label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Table {
    fn put(&mut self, label: String, origin: Arc<Origin>, replace: bool) {
        use std::collections::hash_map::Entry;
        match self.by_label.entry(label) {
            Entry::Occupied(mut e) => {
                if replace {
                    e.insert(origin);
                }
            }
            Entry::Vacant(e) => {
                self.order.push_back(e.key().clone());
                e.insert(origin);
            }
        }
        while self.order.len() > MAX_ORIGINS {
            if let Some(old) = self.order.pop_front() {
                self.by_label.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_named_by_its_first_message_else_by_its_first_sender_seen() {
        let o = Origins::default();
        o.started(
            ["mid:root@corp.test".to_string()],
            Origin::new("Réunion trimestrielle", "Alice@Corp.test", true),
        );
        let got = o.of("mid:root@corp.test", [], || unreachable!());
        assert_eq!(got.sender, "alice@corp.test");
        assert!(got.started_thread);
        // A storm named by another key of the same message finds it through its keys, and
        // keeps it under its own name.
        let got = o.of(
            "tidx:ab",
            ["tidx:ab", "mid:root@corp.test"],
            || unreachable!(),
        );
        assert_eq!(got.subject, "Réunion trimestrielle");
        // Unknown: the fallback, the same for every later hold.
        let first = o.of("subj:x", ["subj:x"], || {
            Origin::new("X", "bob@corp.test", false)
        });
        let again = o.of("subj:x", ["subj:x"], || {
            Origin::new("X", "carol@corp.test", false)
        });
        assert_eq!(again.sender, "bob@corp.test");
        assert_eq!(first, again);
    }

    #[test]
    fn the_table_is_bounded() {
        let o = Origins::default();
        for i in 0..MAX_ORIGINS + 10 {
            o.started([format!("mid:{i}")], Origin::new("s", "a@b", true));
        }
        assert_eq!(o.len(), MAX_ORIGINS);
        // The oldest went first.
        let got = o.of("mid:0", [], || Origin::new("other", "c@d", false));
        assert_eq!(got.sender, "c@d");
    }
}
