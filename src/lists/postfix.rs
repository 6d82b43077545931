//! List sizes from Postfix's virtual aliases: every alias whose recursive expansion reaches
//! `min_members` people is a list. The maps are read with Postfix's own tools (`postconf` finds
//! `virtual_alias_maps` in a config folder, `postmap -s` lists a map of any type it can
//! iterate), so no database format is parsed here; alias files in Postfix's source format
//! (what `postmap` compiles) are read directly, for hosts without Postfix.

use super::expand::AliasGraph;
use crate::config::{ListSourceConfig, POSTFIX_LISTABLE_MAPS};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A postfix map read (or its folder's maps discovered) must not take longer than this.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct PostfixSource {
    config_dir: Option<PathBuf>,
    maps: Vec<String>,
    min_members: u64,
}

/// What one read found: the lists, and maps that were passed over (with why), which the
/// caller logs when they change.
#[derive(Debug, Default)]
pub struct PostfixLists {
    pub lists: Vec<(String, u64)>,
    pub skipped: Vec<String>,
}

impl PostfixSource {
    pub fn new(config: &ListSourceConfig) -> PostfixSource {
        PostfixSource {
            config_dir: config.config_dir.clone(),
            maps: config.maps.clone(),
            min_members: config.min_members,
        }
    }

    /// Reads every map, expands every alias. Fails when a map cannot be read, so that the
    /// caller keeps the previous lists rather than shrinking them.
    pub async fn load(&self) -> anyhow::Result<PostfixLists> {
        let mut out = PostfixLists::default();
        let maps = if self.maps.is_empty() {
            let dir = self
                .config_dir
                .as_deref()
                .unwrap_or(Path::new("/etc/postfix"));
            discover(dir).await?
        } else {
            self.maps.clone()
        };
        let mut graph = AliasGraph::new();
        for map in &maps {
            let text = match read_map(map, self.config_dir.as_deref()).await? {
                Ok(text) => text,
                Err(why) => {
                    out.skipped.push(format!("{map}: {why}"));
                    continue;
                }
            };
            add_table(&mut graph, &text, map.trim().starts_with('/'));
        }
        out.lists = graph
            .expand_all()
            .into_iter()
            .filter(|(_, n)| *n >= self.min_members)
            .map(|(name, n)| (name.to_string(), n))
            .collect();
        Ok(out)
    }
}

/// `postconf -c DIR -x -h virtual_alias_maps`: the maps, `$name`s expanded.
async fn discover(config_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut cmd = tokio::process::Command::new(tool("postconf"));
    cmd.arg("-c")
        .arg(config_dir)
        .args(["-x", "-h", "virtual_alias_maps"]);
    let out = run(cmd).await?;
    Ok(out
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect())
}

/// The map's `key<TAB>value` lines (`postmap -s`) or a source file's text; `Ok(Err(why))` for a
/// map that cannot be listed at all (an SQL or LDAP map found by discovery).
async fn read_map(map: &str, config_dir: Option<&Path>) -> anyhow::Result<Result<String, String>> {
    let map = map.trim();
    if map.starts_with('/') {
        return std::fs::read_to_string(map)
            .map(Ok)
            .with_context(|| format!("{map}: cannot read the alias file"));
    }
    let typed = map.strip_prefix("proxy:").unwrap_or(map);
    let kind = typed.split_once(':').map_or("", |(k, _)| k);
    if !POSTFIX_LISTABLE_MAPS.contains(&kind) {
        let why = if kind == "ldap" {
            "an LDAP map cannot be listed; add a [[list_sources]] kind = \"ldap\" for it".into()
        } else {
            format!("a {kind} map cannot be listed with postmap -s")
        };
        return Ok(Err(why));
    }
    let mut cmd = tokio::process::Command::new(tool("postmap"));
    if let Some(dir) = config_dir {
        cmd.arg("-c").arg(dir);
    }
    cmd.arg("-s").arg(typed);
    run(cmd).await.map(Ok)
}

/// Adds the aliases of a table to the graph. `source_format`: Postfix's source syntax (leading
/// whitespace continues a line, `#` lines are comments) rather than `postmap -s` output.
fn add_table(graph: &mut AliasGraph, text: &str, source_format: bool) {
    let mut entries: Vec<String> = Vec::new();
    for line in text.lines() {
        if source_format {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                if let Some(last) = entries.last_mut() {
                    last.push(' ');
                    last.push_str(trimmed);
                }
                continue;
            }
        }
        entries.push(line.to_string());
    }
    for entry in &entries {
        let mut parts = entry.trim().splitn(2, char::is_whitespace);
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        // Only whole addresses are lists: `@domain` catch-alls and bare names (virtual alias
        // domains, local users) are not something a client can write to as one recipient.
        if !key.contains('@') || key.starts_with('@') {
            continue;
        }
        let members = value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|m| !m.is_empty())
            .map(|m| {
                // `a@x -> a@x, b@x` delivers to the mailbox a@x too (virtual(5)): a person,
                // not the alias again.
                if m.eq_ignore_ascii_case(key) {
                    format!("{m}\u{0}mailbox")
                } else {
                    m.to_string()
                }
            })
            .collect::<Vec<_>>();
        graph.define(key, members.iter().map(String::as_str));
    }
}

/// Runs a Postfix tool; its stderr (Postfix says "postmap: fatal: ...") is the error.
async fn run(mut cmd: tokio::process::Command) -> anyhow::Result<String> {
    let shown = format!("{:?}", cmd.as_std());
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(TOOL_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("{shown}: no answer in {}s", TOOL_TIMEOUT.as_secs()))?
        .with_context(|| format!("{shown}: cannot run it (is Postfix installed?)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown}: output is not UTF-8"))
}

/// A Postfix tool by name: on the PATH, else in /usr/sbin (where Debian and RHEL put them, and
/// which a service's PATH may lack).
pub fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| Path::new("/usr/sbin").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lists(text: &str, source_format: bool, min: u64) -> HashMap<String, u64> {
        let mut g = AliasGraph::new();
        add_table(&mut g, text, source_format);
        g.expand_all()
            .into_iter()
            .filter(|(_, n)| *n >= min)
            .map(|(k, n)| (k.to_string(), n))
            .collect()
    }

    #[test]
    fn source_files_continue_lines_and_skip_comments_domains_and_catch_alls() {
        let text = "# staff\nall@corp.test  eng@corp.test, ops@corp.test,\n\tboss@corp.test\n\
                    \n   # indented comment\neng@corp.test a@corp.test b@corp.test\n\
                    ops@corp.test c@corp.test,a@corp.test\ncorp.test anything\n\
                    @corp.test catchall@corp.test\nlocaluser x@corp.test\n";
        let l = lists(text, true, 1);
        assert_eq!(l["all@corp.test"], 4);
        assert_eq!(l["eng@corp.test"], 2);
        assert_eq!(l["ops@corp.test"], 2);
        assert_eq!(l.len(), 3, "{l:?}");
    }

    #[test]
    fn postmap_output_is_one_entry_per_line() {
        // `postmap -s` prints key TAB value, values as written; a value line that starts with
        // whitespace is not a continuation there.
        let text = "all@corp.test\teng@corp.test, ops@corp.test,   boss@corp.test\n\
                    eng@corp.test\ta@x b@x\nops@corp.test\tc@x\n";
        assert_eq!(lists(text, false, 1)["all@corp.test"], 4);
    }

    #[test]
    fn a_self_reference_is_the_mailbox_and_min_members_filters() {
        let text = "keep@x keep@x, a@x\nbig@x keep@x, b@x, c@x\n";
        let l = lists(text, true, 3);
        assert_eq!(l.get("big@x"), Some(&4));
        assert!(!l.contains_key("keep@x"), "2 people is under min_members");
    }
}
