//! The release journal of one held message: which recipients the upstream has accepted.
//!
//! One JSON object per line, appended and fsynced at each step of a release:
//! - `sending` before the final dot goes upstream, naming the recipients of that attempt;
//! - `accepted` after the upstream's 250 to that dot;
//! - `failed` after any other reply to it.
//!
//! A `sending` with neither after it means the release was cut off while the upstream may have
//! taken the message: those recipients are "in doubt", and a new release refuses to send to them
//! again without `--force`. A torn last line (a crash while appending) is ignored, which can only
//! turn an `accepted` into "in doubt", never the other way.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Sending { rcpts: Vec<String> },
    Accepted { rcpts: Vec<String>, reply: String },
    Failed { reply: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at_ms: u64,
    pub by: String,
    /// Ties a `sending` to its `accepted` or `failed`.
    pub attempt: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// Recipients sent to in an attempt whose outcome was never recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    pub attempt: u64,
    pub at_ms: u64,
    pub by: String,
    pub rcpts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub entries: Vec<Entry>,
}

impl Journal {
    /// Reads a journal; a missing file is an empty journal; unreadable lines are skipped.
    pub fn load(path: &Path) -> io::Result<Journal> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Journal::default()),
            Err(e) => return Err(e),
        };
        Ok(Journal::parse(&text))
    }

    pub fn parse(text: &[u8]) -> Journal {
        let entries = text
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| match serde_json::from_slice::<Entry>(line) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "release journal: skipping an unreadable line");
                    None
                }
            })
            .collect();
        Journal { entries }
    }

    /// Appends one entry and fsyncs it before returning.
    pub fn append(path: &Path, entry: &Entry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = crate::quarantine::store::private_file()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(&line)?;
        file.sync_all()
    }

    /// Recipients the upstream accepted with a 250 to the final dot.
    pub fn delivered(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter_map(|e| match &e.event {
                Event::Accepted { rcpts, .. } => Some(rcpts.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Attempts cut off between the final dot and the upstream's reply being recorded.
    pub fn in_doubt(&self) -> Vec<InDoubt> {
        let resolved: BTreeSet<u64> = self
            .entries
            .iter()
            .filter(|e| !matches!(e.event, Event::Sending { .. }))
            .map(|e| e.attempt)
            .collect();
        self.entries
            .iter()
            .filter_map(|e| match &e.event {
                Event::Sending { rcpts } if !resolved.contains(&e.attempt) => Some(InDoubt {
                    attempt: e.attempt,
                    at_ms: e.at_ms,
                    by: e.by.clone(),
                    rcpts: rcpts.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// A number for the next attempt.
    pub fn next_attempt(&self) -> u64 {
        self.entries.iter().map(|e| e.attempt).max().unwrap_or(0) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attempt: u64, event: Event) -> Entry {
        Entry {
            at_ms: attempt * 1000,
            by: "alice".into(),
            attempt,
            event,
        }
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepted_recipients_are_delivered_and_not_in_doubt() {
        let j = Journal {
            entries: vec![
                entry(
                    1,
                    Event::Sending {
                        rcpts: rcpts(&["a", "b"]),
                    },
                ),
                entry(
                    1,
                    Event::Accepted {
                        rcpts: rcpts(&["a", "b"]),
                        reply: "250 ok".into(),
                    },
                ),
            ],
        };
        assert_eq!(j.delivered(), ["a", "b"].map(String::from).into());
        assert!(j.in_doubt().is_empty());
        assert_eq!(j.next_attempt(), 2);
    }

    #[test]
    fn unresolved_sending_is_in_doubt_and_failed_is_not() {
        let j = Journal {
            entries: vec![
                entry(
                    1,
                    Event::Sending {
                        rcpts: rcpts(&["a"]),
                    },
                ),
                entry(
                    1,
                    Event::Failed {
                        reply: "451 later".into(),
                    },
                ),
                entry(
                    2,
                    Event::Sending {
                        rcpts: rcpts(&["a"]),
                    },
                ),
            ],
        };
        assert!(j.delivered().is_empty());
        let doubt = j.in_doubt();
        assert_eq!(doubt.len(), 1);
        assert_eq!(doubt[0].attempt, 2);
        assert_eq!(doubt[0].rcpts, rcpts(&["a"]));
    }

    #[test]
    fn torn_last_line_is_ignored_and_leaves_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        Journal::append(
            &path,
            &entry(
                1,
                Event::Sending {
                    rcpts: rcpts(&["a"]),
                },
            ),
        )
        .unwrap();
        let mut text = std::fs::read(&path).unwrap();
        let accepted = serde_json::to_vec(&entry(
            1,
            Event::Accepted {
                rcpts: rcpts(&["a"]),
                reply: "250 ok".into(),
            },
        ))
        .unwrap();
        text.extend_from_slice(&accepted[..accepted.len() - 3]);
        let j = Journal::parse(&text);
        assert!(j.delivered().is_empty());
        assert_eq!(j.in_doubt().len(), 1);
    }
}
