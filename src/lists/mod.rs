//! Distribution lists the engine knows, and where their sizes come from. Precedence:
//! `[[lists]]` in the policy file (with its overrides), then `policy.lists_file`, then each
//! `[[list_sources]]` in the order written (Postfix's virtual aliases, LDAP groups). Sources are
//! read at start, every `refresh`, and on `reload` (SIGHUP); the engine reads one table
//! snapshot per decision, swapped whole, so a refresh needs no restart and never blocks mail.
//! A source that fails keeps its last good lists (logged once until it recovers); one that
//! fails at start leaves its lists unknown until it answers: mail flows meanwhile.

pub mod expand;
pub mod ldap;
pub mod postfix;

use crate::admin::metric;
use crate::config::{Config, ListSourceConfig, ListSourceKind};
use crate::fingerprint::{ListRule, ListTable};
use anyhow::Context;
use arc_swap::{ArcSwap, Guard};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The metrics label of `[[lists]]` and of `policy.lists_file`.
pub const DECLARED: &str = "declared";
pub const LISTS_FILE: &str = "lists_file";

enum Reader {
    Postfix(postfix::PostfixSource),
    Ldap(ldap::LdapSource),
}

struct Source {
    name: String,
    refresh: Duration,
    reader: Reader,
}

/// What each part last gave, kept to rebuild the table when one part changes.
#[derive(Default)]
struct Parts {
    file: Vec<ListRule>,
    /// Per source (same order as `sources`): its last good lists, None before the first.
    sources: Vec<Option<Vec<ListRule>>>,
    /// Per source: failing now (so the failure is logged once), and what it passed over.
    failing: Vec<bool>,
    skipped: Vec<Vec<String>>,
}

/// The list table and its sources. Shared (`Arc`) by the engine and the refresh task.
pub struct Lists {
    table: ArcSwap<ListTable>,
    declared: Vec<ListRule>,
    lists_file: Option<PathBuf>,
    sources: Vec<Source>,
    parts: Mutex<Parts>,
    /// One refresh at a time: a SIGHUP during a scheduled read waits for it.
    refreshing: tokio::sync::Mutex<()>,
}

impl Lists {
    /// `[[lists]]` and `policy.lists_file` (a file that does not load is an error naming its
    /// line, as before), sources configured but not read yet: call `refresh_all`.
    pub fn from_config(config: &Config) -> anyhow::Result<Lists> {
        let declared: Vec<ListRule> = config.lists.iter().map(declared_rule).collect();
        let file = match &config.policy.lists_file {
            Some(path) => read_lists_file(path)?,
            None => Vec::new(),
        };
        let sources: Vec<Source> = config
            .list_sources
            .iter()
            .enumerate()
            .map(|(i, c)| source(c, i))
            .collect();
        let n = sources.len();
        let lists = Lists {
            table: ArcSwap::from_pointee(ListTable::default()),
            declared,
            lists_file: config.policy.lists_file.clone(),
            sources,
            parts: Mutex::new(Parts {
                file,
                sources: vec![None; n],
                failing: vec![false; n],
                skipped: vec![Vec::new(); n],
            }),
            refreshing: tokio::sync::Mutex::new(()),
        };
        lists.rebuild();
        Ok(lists)
    }

    /// The table now: hold it for one decision (list indexes are only valid within it).
    pub fn table(&self) -> Guard<Arc<ListTable>> {
        self.table.load()
    }

    /// Source names, in precedence order.
    pub fn source_names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.name.as_str()).collect()
    }

    /// Reads the lists file and every source again, now (SIGHUP; and once at start). Returns
    /// how many sources failed.
    pub async fn refresh_all(&self) -> usize {
        let _one_at_a_time = self.refreshing.lock().await;
        self.reread_lists_file();
        let mut failed = 0;
        for i in 0..self.sources.len() {
            if !self.refresh_source(i).await {
                failed += 1;
            }
        }
        failed
    }

    /// Reads one source and swaps the table; false when it failed (its last lists stay).
    async fn refresh_source(&self, i: usize) -> bool {
        let source = &self.sources[i];
        let loaded = match &source.reader {
            Reader::Postfix(p) => p.load().await.map(|found| {
                (
                    found
                        .lists
                        .into_iter()
                        .map(|(a, n)| discovered(a, n))
                        .collect::<Vec<_>>(),
                    found.skipped,
                )
            }),
            Reader::Ldap(l) => l.load().await.map(|found| {
                (
                    found.into_iter().map(|(a, n)| discovered(a, n)).collect(),
                    Vec::new(),
                )
            }),
        };
        let labels = [("source", source.name.clone())];
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        match loaded {
            Ok((lists, skipped)) => {
                if parts.failing[i] {
                    tracing::info!(source = %source.name, lists = lists.len(), "list source answers again");
                    parts.failing[i] = false;
                } else {
                    tracing::info!(source = %source.name, lists = lists.len(), "list source read");
                }
                if skipped != parts.skipped[i] {
                    for why in &skipped {
                        tracing::warn!(source = %source.name, map = %why, "map passed over");
                    }
                    parts.skipped[i] = skipped;
                }
                metrics::gauge!(metric::LISTS_KNOWN, &labels).set(lists.len() as f64);
                metrics::gauge!(metric::LISTS_REFRESHED, &labels)
                    .set(crate::now_ms() as f64 / 1000.0);
                parts.sources[i] = Some(lists);
                drop(parts);
                self.rebuild();
                true
            }
            Err(error) => {
                metrics::counter!(metric::LISTS_REFRESH_FAILURES, &labels).increment(1);
                let kept = parts.sources[i].as_ref().map_or(0, Vec::len);
                if parts.failing[i] {
                    tracing::debug!(source = %source.name, error = %format!("{error:#}"), "list source still failing");
                } else {
                    parts.failing[i] = true;
                    tracing::error!(
                        source = %source.name,
                        error = %format!("{error:#}"),
                        kept,
                        "list source not read; keeping its last lists (logged once until it answers)"
                    );
                }
                false
            }
        }
    }

    /// The lists file again; one that no longer loads keeps the last good one.
    fn reread_lists_file(&self) {
        let Some(path) = &self.lists_file else {
            return;
        };
        match read_lists_file(path) {
            Ok(file) => {
                self.parts.lock().unwrap_or_else(|p| p.into_inner()).file = file;
                self.rebuild();
            }
            Err(error) => tracing::error!(
                error = %format!("{error:#}"),
                "lists file not reloaded; keeping the last one"
            ),
        }
    }

    /// Composes the table in precedence order and swaps it in.
    fn rebuild(&self) {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = ListTable::default();
        let count = |name: &str, rules: &[ListRule], table: &mut ListTable| {
            let added = rules.iter().filter(|r| table.insert((*r).clone())).count();
            metrics::gauge!(metric::LISTS_IN_USE, "source" => name.to_string()).set(added as f64);
        };
        count(DECLARED, &self.declared, &mut table);
        count(LISTS_FILE, &parts.file, &mut table);
        for (source, lists) in self.sources.iter().zip(&parts.sources) {
            count(&source.name, lists.as_deref().unwrap_or(&[]), &mut table);
        }
        metrics::gauge!(metric::LISTS_KNOWN, "source" => DECLARED).set(self.declared.len() as f64);
        metrics::gauge!(metric::LISTS_KNOWN, "source" => LISTS_FILE).set(parts.file.len() as f64);
        self.table.store(Arc::new(table));
    }

    /// Refreshes each source on its own schedule until shutdown (the first read is
    /// `refresh_all`'s, at start).
    pub async fn run(self: Arc<Self>, mut shutdown: crate::service::Shutdown) {
        if self.sources.is_empty() {
            return;
        }
        let mut next: Vec<tokio::time::Instant> = self
            .sources
            .iter()
            .map(|s| tokio::time::Instant::now() + s.refresh)
            .collect();
        loop {
            let (i, at) = next
                .iter()
                .enumerate()
                .min_by_key(|(_, at)| **at)
                .map(|(i, at)| (i, *at))
                .expect("at least one source");
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = shutdown.changed() => return,
            }
            {
                let _one_at_a_time = self.refreshing.lock().await;
                self.refresh_source(i).await;
            }
            next[i] = tokio::time::Instant::now() + self.sources[i].refresh;
        }
    }

    /// SIGHUP: reads the lists file and every source again in the background; the table is
    /// swapped as each answers.
    pub fn reload(self: &Arc<Self>) {
        let lists = self.clone();
        tokio::spawn(async move {
            let failed = lists.refresh_all().await;
            tracing::info!(
                sources = lists.sources.len(),
                failed,
                lists = lists.table().len(),
                "lists reloaded"
            );
        });
    }
}

fn source(config: &ListSourceConfig, index: usize) -> Source {
    Source {
        name: config.label(index),
        refresh: config.refresh,
        reader: match config.kind {
            ListSourceKind::Postfix => Reader::Postfix(postfix::PostfixSource::new(config)),
            ListSourceKind::Ldap => Reader::Ldap(ldap::LdapSource::new(config)),
        },
    }
}

fn read_lists_file(path: &std::path::Path) -> anyhow::Result<Vec<ListRule>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read lists file", path.display()))?;
    ListTable::parse_file_text(&text)
        .map_err(|(line, msg)| anyhow::anyhow!("{}:{line}: {msg}", path.display()))
}

fn discovered(address: String, members: u64) -> ListRule {
    ListRule {
        address,
        members,
        ..ListRule::default()
    }
}

fn declared_rule(list: &crate::config::ListConfig) -> ListRule {
    ListRule {
        address: list.address.trim().to_string(),
        members: list.members,
        exempt: list.exempt,
        wide_audience: list.wide_audience,
        trip_replies: list.trip_replies,
        window: list.window,
        block_for: list.block_for,
        action: list.action,
        fast_senders: list.fast_senders,
        me_too_messages: list.me_too_messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;
    use std::path::Path;

    /// An alias file in Postfix's source format: `team@x` of `n` people, `all@x` of the team and
    /// the `declared@x` alias.
    fn alias_file(dir: &Path, n: usize) -> PathBuf {
        let mut text =
            String::from("all@corp.test team@corp.test, declared@corp.test\nteam@corp.test");
        for i in 0..n {
            write!(text, " p{i}@corp.test").unwrap();
        }
        text.push_str("\ndeclared@corp.test q1@corp.test q2@corp.test\n");
        let path = dir.join("virtual");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!(
            "[milter]\nlisten = \"127.0.0.1:8891\"\n\
             [policy]\nlists_file = \"{dir}/lists.txt\"\n\
             [[lists]]\naddress = \"declared@corp.test\"\nmembers = 91053\ntrip_replies = 3\n\
             [[list_sources]]\nkind = \"postfix\"\nmaps = [\"{dir}/virtual\"]\nmin_members = 50\n{extra}",
            dir = dir.display()
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[tokio::test]
    async fn declared_lists_win_then_the_lists_file_then_sources() {
        let dir = tempfile::tempdir().unwrap();
        alias_file(dir.path(), 60);
        std::fs::write(
            dir.path().join("lists.txt"),
            "team@corp.test 7\nfile@corp.test 9\n",
        )
        .unwrap();
        let lists = Lists::from_config(&config(dir.path(), "")).unwrap();
        assert!(
            lists.table().get("all@corp.test").is_none(),
            "sources are read by refresh_all"
        );
        assert_eq!(lists.refresh_all().await, 0);
        let t = lists.table();
        let declared = t.get("declared@corp.test").unwrap();
        assert_eq!((declared.members, declared.trip_replies), (91053, Some(3)));
        assert_eq!(t.get("team@corp.test").unwrap().members, 7);
        assert_eq!(t.get("file@corp.test").unwrap().members, 9);
        // 60 people, and the declared alias's own 2 (the MTA's expansion, not the size
        // declared for its breaker).
        assert_eq!(t.get("ALL@corp.test").unwrap().members, 62);
        assert_eq!(lists.source_names(), ["postfix-1"]);
    }

    #[tokio::test]
    async fn a_failing_source_keeps_its_last_lists_and_a_refresh_swaps_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = alias_file(dir.path(), 60);
        std::fs::write(dir.path().join("lists.txt"), "").unwrap();
        let lists = Lists::from_config(&config(dir.path(), "")).unwrap();
        assert_eq!(lists.refresh_all().await, 0);
        let before = lists.table();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(lists.refresh_all().await, 1);
        assert_eq!(lists.table().get("all@corp.test").unwrap().members, 62);
        alias_file(dir.path(), 80);
        assert_eq!(lists.refresh_all().await, 0);
        assert_eq!(lists.table().get("all@corp.test").unwrap().members, 82);
        // A snapshot taken before stays whole while the table is swapped under it.
        assert_eq!(before.get("all@corp.test").unwrap().members, 62);
    }

    #[tokio::test]
    async fn a_source_failing_at_start_is_not_fatal_and_a_bad_lists_file_on_reload_keeps_the_last()
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lists.txt"), "file@corp.test 9\n").unwrap();
        let lists = Lists::from_config(&config(dir.path(), "")).unwrap();
        assert_eq!(lists.refresh_all().await, 1, "no alias file yet");
        assert_eq!(lists.table().get("file@corp.test").unwrap().members, 9);
        std::fs::write(dir.path().join("lists.txt"), "file@corp.test nine\n").unwrap();
        lists.refresh_all().await;
        assert_eq!(lists.table().get("file@corp.test").unwrap().members, 9);
    }

    #[test]
    fn a_bad_lists_file_at_start_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lists.txt"), "ok@corp.test 5\nbad\n").unwrap();
        let err = Lists::from_config(&config(dir.path(), "")).err().unwrap();
        assert!(err.to_string().contains("lists.txt:2:"), "{err}");
    }
}
