//! How many people an alias or a group reaches: its members, expanded recursively through the
//! aliases (groups) it names, each person counted once, cycles cut. Postfix's
//! `virtual_alias_maps` and LDAP groups both come down to this graph.

use std::collections::HashMap;

/// Names (addresses, DNs) and what each alias expands to. A name that is never given members
/// is a person: a leaf of the expansion.
#[derive(Debug, Default)]
pub struct AliasGraph {
    ids: HashMap<String, u32>,
    /// The members of each name that is an alias; None for people.
    members: Vec<Option<Vec<u32>>>,
}

impl AliasGraph {
    pub fn new() -> AliasGraph {
        AliasGraph::default()
    }

    /// The id of `name`, compared case-insensitively (addresses and DNs both are, in practice).
    fn id(&mut self, name: &str) -> u32 {
        let key = name.to_ascii_lowercase();
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = self.members.len() as u32;
        self.ids.insert(key, id);
        self.members.push(None);
        id
    }

    /// Makes `alias` expand to `members`. An alias defined twice keeps its first definition
    /// (Postfix searches its maps in order and stops at the first match); returns false then.
    pub fn define<'a>(&mut self, alias: &str, members: impl IntoIterator<Item = &'a str>) -> bool {
        let id = self.id(alias);
        if self.members[id as usize].is_some() {
            return false;
        }
        let mut ids: Vec<u32> = members.into_iter().map(|m| self.id(m)).collect();
        ids.sort_unstable();
        ids.dedup();
        self.members[id as usize] = Some(ids);
        true
    }

    pub fn is_alias(&self, name: &str) -> bool {
        self.ids
            .get(&name.to_ascii_lowercase())
            .is_some_and(|&id| self.members[id as usize].is_some())
    }

    /// The aliases, each with the number of distinct people it reaches. An alias reached again
    /// on its own path (a cycle) adds nothing more; a name listed twice counts once.
    pub fn expand_all(&self) -> Vec<(&str, u64)> {
        let names = self.names_by_id();
        // One stamp per name and per expansion instead of a fresh set each time: the cost of
        // an alias is the part of the graph it reaches.
        let mut stamp = vec![u32::MAX; self.members.len()];
        let mut stack = Vec::new();
        let mut out = Vec::new();
        for (id, members) in self.members.iter().enumerate() {
            if members.is_none() {
                continue;
            }
            let mark = id as u32;
            let mut people = 0u64;
            stamp[id] = mark;
            stack.push(id as u32);
            while let Some(node) = stack.pop() {
                for &m in self.members[node as usize].as_deref().unwrap_or(&[]) {
                    if stamp[m as usize] == mark {
                        continue;
                    }
                    stamp[m as usize] = mark;
                    match &self.members[m as usize] {
                        Some(_) => stack.push(m),
                        None => people += 1,
                    }
                }
            }
            out.push((names[id], people));
        }
        out
    }

    fn names_by_id(&self) -> Vec<&str> {
        let mut names = vec![""; self.members.len()];
        for (name, &id) in &self.ids {
            names[id as usize] = name;
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(g: &AliasGraph) -> HashMap<String, u64> {
        g.expand_all()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect()
    }

    #[test]
    fn nested_aliases_count_their_people() {
        let mut g = AliasGraph::new();
        g.define("all@x", ["eng@x", "ops@x", "boss@x"]);
        g.define("eng@x", ["a@x", "b@x"]);
        g.define("ops@x", ["c@x", "oncall@x"]);
        g.define("oncall@x", ["d@x", "e@x"]);
        let c = counts(&g);
        assert_eq!(c["all@x"], 6);
        assert_eq!(c["eng@x"], 2);
        assert_eq!(c["ops@x"], 3);
        assert_eq!(c["oncall@x"], 2);
        assert_eq!(c.len(), 4, "people are not lists");
    }

    #[test]
    fn a_person_in_two_nested_aliases_counts_once() {
        let mut g = AliasGraph::new();
        g.define("all@x", ["eng@x", "ops@x", "A@X", "a@x"]);
        g.define("eng@x", ["a@x", "b@x"]);
        g.define("ops@x", ["b@x", "c@x"]);
        assert_eq!(counts(&g)["all@x"], 3);
    }

    #[test]
    fn cycles_end_and_count_everyone_reached() {
        let mut g = AliasGraph::new();
        g.define("a@x", ["b@x", "p1@x"]);
        g.define("b@x", ["c@x", "p2@x"]);
        g.define("c@x", ["a@x", "p3@x"]);
        g.define("self@x", ["self@x"]);
        let c = counts(&g);
        assert_eq!(c["a@x"], 3);
        assert_eq!(c["b@x"], 3);
        assert_eq!(c["c@x"], 3);
        assert_eq!(c["self@x"], 0);
    }

    #[test]
    fn the_first_definition_wins() {
        let mut g = AliasGraph::new();
        assert!(g.define("l@x", ["a@x", "b@x"]));
        assert!(!g.define("L@X", ["c@x"]));
        assert_eq!(counts(&g)["l@x"], 2);
        assert!(g.is_alias("l@X"));
        assert!(!g.is_alias("a@x"));
    }

    #[test]
    fn a_deep_chain_is_expanded_without_recursion() {
        // 5,000 levels would overflow a recursive walk's stack in a debug build.
        let mut g = AliasGraph::new();
        let names: Vec<String> = (0..5_000).map(|i| format!("l{i}@x")).collect();
        for i in 0..names.len() - 1 {
            g.define(&names[i], [names[i + 1].as_str(), "p@x"]);
        }
        g.define(&names[names.len() - 1], ["q@x"]);
        assert_eq!(counts(&g)["l0@x"], 2);
    }
}
