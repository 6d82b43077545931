//! Distribution lists the engine knows, and where their sizes come from. Precedence:
//! `[[lists]]` in the policy file (with its overrides), then `policy.lists_file`, then each
//! `[[list_sources]]` in the order written (Postfix's virtual aliases, LDAP groups). Sources are
//! read at start, every `refresh`, and on reload (SIGHUP); the engine reads one table snapshot
//! per decision, swapped whole, so a refresh needs no restart and never blocks mail. A source
//! that fails keeps its last good lists (logged once until it recovers); one that fails at
//! start leaves its lists unknown until it answers: mail flows meanwhile.
//!
//! One `Lists` lives as long as the process: engines rebuilt by a reload share it, and
//! `reconfigure` puts the reloaded policy's lists and sources in place, keeping what unchanged
//! sources last gave.

pub mod expand;
pub mod ldap;
pub mod postfix;

use crate::admin::metric;
use crate::config::{Config, ListSourceConfig, ListSourceKind};
use crate::fingerprint::{ListRule, ListTable};
use anyhow::Context;
use arc_swap::{ArcSwap, Guard};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// The metrics label of `[[lists]]` and of `policy.lists_file`.
pub const DECLARED: &str = "declared";
pub const LISTS_FILE: &str = "lists_file";

enum Reader {
    Postfix(postfix::PostfixSource),
    Ldap(ldap::LdapSource),
}

/// One configured source; replaced whole when a reload changes its settings.
struct Source {
    name: String,
    config: ListSourceConfig,
    reader: Reader,
}

/// A source and what it last gave.
struct SourceState {
    source: Arc<Source>,
    /// The last good lists; None before the first good read.
    lists: Option<Vec<ListRule>>,
    /// Failing now, so that a failure is logged once until the source answers.
    failing: bool,
    /// Maps passed over at the last read, logged when they change.
    skipped: Vec<String>,
    /// When the schedule reads it next.
    due: Instant,
}

struct State {
    declared: Vec<ListRule>,
    lists_file: Option<PathBuf>,
    file: Vec<ListRule>,
    sources: Vec<SourceState>,
}

/// The list table and its sources. Shared (`Arc`) by the engines and the refresh task.
pub struct Lists {
    table: ArcSwap<ListTable>,
    state: Mutex<State>,
    /// One refresh at a time: a reload during a scheduled read waits for it.
    refreshing: tokio::sync::Mutex<()>,
    /// Wakes the schedule when the sources change.
    reconfigured: tokio::sync::Notify,
}

impl Lists {
    /// `[[lists]]` and `policy.lists_file` (a file that does not load is an error naming its
    /// line), sources configured but not read yet: call `refresh_all`.
    pub fn from_config(config: &Config) -> anyhow::Result<Lists> {
        let file = match &config.policy.lists_file {
            Some(path) => read_lists_file(path)?,
            None => Vec::new(),
        };
        let lists = Lists {
            table: ArcSwap::from_pointee(ListTable::default()),
            state: Mutex::new(State {
                declared: config.lists.iter().map(declared_rule).collect(),
                lists_file: config.policy.lists_file.clone(),
                file,
                sources: sources(config, Vec::new()),
            }),
            refreshing: tokio::sync::Mutex::new(()),
            reconfigured: tokio::sync::Notify::new(),
        };
        lists.rebuild(&lists.state());
        Ok(lists)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table now: hold it for one decision (list indexes are only valid within it).
    pub fn table(&self) -> Guard<Arc<ListTable>> {
        self.table.load()
    }

    /// Source names, in precedence order.
    pub fn source_names(&self) -> Vec<String> {
        self.state()
            .sources
            .iter()
            .map(|s| s.source.name.clone())
            .collect()
    }

    /// A reloaded policy: its `[[lists]]`, `lists_file` and sources replace the running ones.
    /// Sources whose settings did not change keep their lists until they are read again; new
    /// ones are unknown until then. Call `reload` to read them now.
    pub fn reconfigure(&self, config: &Config) {
        {
            let mut state = self.state();
            state.declared = config.lists.iter().map(declared_rule).collect();
            state.lists_file = config.policy.lists_file.clone();
            let old = std::mem::take(&mut state.sources);
            state.sources = sources(config, old);
            self.rebuild(&state);
        }
        self.reconfigured.notify_one();
    }

    /// Reads the lists file and every source again, now (at start, and on reload). Returns how
    /// many sources failed.
    pub async fn refresh_all(&self) -> usize {
        let _one_at_a_time = self.refreshing.lock().await;
        self.reread_lists_file();
        let sources: Vec<Arc<Source>> = self
            .state()
            .sources
            .iter()
            .map(|s| s.source.clone())
            .collect();
        let mut failed = 0;
        for source in sources {
            if !self.refresh_source(&source).await {
                failed += 1;
            }
        }
        failed
    }

    /// Reads one source and swaps the table; false when it failed (its last lists stay).
    async fn refresh_source(&self, source: &Arc<Source>) -> bool {
        let loaded = match &source.reader {
            Reader::Postfix(p) => p.load().await.map(|found| {
                let lists = found.lists.into_iter().map(discovered).collect::<Vec<_>>();
                (lists, found.skipped)
            }),
            Reader::Ldap(l) => l
                .load()
                .await
                .map(|found| (found.into_iter().map(discovered).collect(), Vec::new())),
        };
        let ok = loaded.is_ok();
        let labels = [("source", source.name.clone())];
        let mut state = self.state();
        // A reload may have replaced or removed the source while it was being read.
        let Some(entry) = state
            .sources
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.source, source))
        else {
            return ok;
        };
        entry.due = Instant::now() + source.config.refresh;
        match loaded {
            Ok((lists, skipped)) => {
                if entry.failing {
                    entry.failing = false;
                    tracing::info!(source = %source.name, lists = lists.len(), "list source answers again");
                } else {
                    tracing::info!(source = %source.name, lists = lists.len(), "list source read");
                }
                if skipped != entry.skipped {
                    for why in &skipped {
                        tracing::warn!(source = %source.name, map = %why, "map passed over");
                    }
                    entry.skipped = skipped;
                }
                metrics::gauge!(metric::LISTS_KNOWN, &labels).set(lists.len() as f64);
                metrics::gauge!(metric::LISTS_REFRESHED, &labels)
                    .set(crate::now_ms() as f64 / 1000.0);
                entry.lists = Some(lists);
                self.rebuild(&state);
            }
            Err(error) => {
                metrics::counter!(metric::LISTS_REFRESH_FAILURES, &labels).increment(1);
                let kept = entry.lists.as_ref().map_or(0, Vec::len);
                if entry.failing {
                    tracing::debug!(source = %source.name, error = %format!("{error:#}"), "list source still failing");
                } else {
                    entry.failing = true;
                    tracing::error!(
                        source = %source.name,
                        error = %format!("{error:#}"),
                        kept,
                        "list source not read; keeping its last lists (logged once until it answers)"
                    );
                }
            }
        }
        ok
    }

    /// The lists file again; one that no longer loads keeps the last good one.
    fn reread_lists_file(&self) {
        let Some(path) = self.state().lists_file.clone() else {
            return;
        };
        match read_lists_file(&path) {
            Ok(file) => {
                let mut state = self.state();
                state.file = file;
                self.rebuild(&state);
            }
            Err(error) => tracing::error!(
                error = %format!("{error:#}"),
                "lists file not read again; keeping the last one"
            ),
        }
    }

    /// Composes the table in precedence order and swaps it in.
    fn rebuild(&self, state: &State) {
        let mut table = ListTable::default();
        let mut add = |name: &str, rules: &[ListRule]| {
            let added = rules.iter().filter(|r| table.insert((*r).clone())).count();
            metrics::gauge!(metric::LISTS_IN_USE, "source" => name.to_string()).set(added as f64);
        };
        add(DECLARED, &state.declared);
        add(LISTS_FILE, &state.file);
        for s in &state.sources {
            add(&s.source.name, s.lists.as_deref().unwrap_or(&[]));
        }
        metrics::gauge!(metric::LISTS_KNOWN, "source" => DECLARED).set(state.declared.len() as f64);
        metrics::gauge!(metric::LISTS_KNOWN, "source" => LISTS_FILE).set(state.file.len() as f64);
        self.table.store(Arc::new(table));
    }

    /// Reads each source again when its `refresh` has passed since its last read, until
    /// shutdown. The first read is `refresh_all`'s, at start.
    pub async fn run(self: Arc<Self>, mut shutdown: crate::service::Shutdown) {
        loop {
            let next = self
                .state()
                .sources
                .iter()
                .min_by_key(|s| s.due)
                .map(|s| (s.source.clone(), s.due));
            let wait = async {
                match &next {
                    Some((_, due)) => tokio::time::sleep_until(*due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.reconfigured.notified() => continue,
                _ = shutdown.changed() => return,
            }
            if let Some((source, _)) = next {
                let _one_at_a_time = self.refreshing.lock().await;
                self.refresh_source(&source).await;
            }
        }
    }

    /// Reads the lists file and every source again in the background (SIGHUP); the table is
    /// swapped as each answers.
    pub fn reload(self: &Arc<Self>) {
        let lists = self.clone();
        tokio::spawn(async move {
            let failed = lists.refresh_all().await;
            tracing::info!(
                sources = lists.state().sources.len(),
                failed,
                lists = lists.table().len(),
                "lists reloaded"
            );
        });
    }
}

/// The sources of `config`, in order; an entry whose settings equal a running one's takes over
/// its state (lists, schedule).
fn sources(config: &Config, mut running: Vec<SourceState>) -> Vec<SourceState> {
    config
        .list_sources
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let name = c.label(i);
            if let Some(at) = running
                .iter()
                .position(|s| s.source.name == name && s.source.config == *c)
            {
                return running.swap_remove(at);
            }
            let reader = match c.kind {
                ListSourceKind::Postfix => Reader::Postfix(postfix::PostfixSource::new(c)),
                ListSourceKind::Ldap => Reader::Ldap(ldap::LdapSource::new(c)),
            };
            SourceState {
                source: Arc::new(Source {
                    name,
                    config: c.clone(),
                    reader,
                }),
                lists: None,
                failing: false,
                skipped: Vec::new(),
                due: Instant::now() + c.refresh,
            }
        })
        .collect()
}

fn read_lists_file(path: &std::path::Path) -> anyhow::Result<Vec<ListRule>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read lists file", path.display()))?;
    ListTable::parse_file_text(&text)
        .map_err(|(line, msg)| anyhow::anyhow!("{}:{line}: {msg}", path.display()))
}

fn discovered((address, members): (String, u64)) -> ListRule {
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
        wave_senders: list.wave_senders,
        wave_window: list.wave_window,
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

    #[tokio::test]
    async fn a_reconfigure_keeps_what_unchanged_sources_read_and_drops_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = alias_file(dir.path(), 60);
        std::fs::write(dir.path().join("lists.txt"), "").unwrap();
        let lists = Lists::from_config(&config(dir.path(), "")).unwrap();
        assert_eq!(lists.refresh_all().await, 0);
        // Unreadable now: a source that kept its settings is not read by a reconfigure.
        std::fs::remove_file(&file).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, format!("new@corp.test {}\n", people(70))).unwrap();
        let two = config(
            dir.path(),
            &format!(
                "[[list_sources]]\nkind = \"postfix\"\nmaps = [\"{}\"]\n",
                other.display()
            ),
        );
        lists.reconfigure(&two);
        assert_eq!(lists.source_names(), ["postfix-1", "postfix-2"]);
        assert_eq!(lists.table().get("all@corp.test").unwrap().members, 62);
        assert!(lists.table().get("new@corp.test").is_none(), "not read yet");
        assert_eq!(lists.refresh_all().await, 1, "postfix-1's file is gone");
        assert_eq!(lists.table().get("all@corp.test").unwrap().members, 62);
        assert_eq!(lists.table().get("new@corp.test").unwrap().members, 70);
        // Declared lists come from the new policy; a removed source's lists go with it.
        let text = "[milter]\nlisten = \"127.0.0.1:8891\"\n[[lists]]\naddress = \"all@corp.test\"\nmembers = 5\n";
        lists.reconfigure(&Config::parse(text, Path::new("t.toml")).unwrap());
        assert_eq!(lists.table().get("all@corp.test").unwrap().members, 5);
        assert!(lists.table().get("new@corp.test").is_none());
        assert!(lists.table().get("declared@corp.test").is_none());
    }

    fn people(n: usize) -> String {
        (0..n).map(|i| format!("p{i}@corp.test ")).collect()
    }

    #[test]
    fn a_bad_lists_file_at_start_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lists.txt"), "ok@corp.test 5\nbad\n").unwrap();
        let err = Lists::from_config(&config(dir.path(), "")).err().unwrap();
        assert!(err.to_string().contains("lists.txt:2:"), "{err}");
    }
}
