//! Audience: the weighted fan-out of a message. Each recipient counts 1, except a known
//! distribution list, which counts its members: the proxy sees one RCPT before the MTA expands it
//! into 91,053 people. Lists are declared (`[[lists]]`, `lists_file`) or read from the MTA's
//! alias maps and the directory (`crate::lists`), which builds and swaps this table. A message
//! has two audiences, its envelope's (this transaction's recipients) and its headers' (the To
//! and Cc addresses it names, which every transaction of a message split by the sending MTA
//! carries whole); the engine takes the wider.

use super::{hash_lowercase, hash_u64s};
use crate::envelope::Recipient;
use crate::verdict::HoldAction;
use std::collections::HashMap;
use std::time::Duration;

/// A distribution list and its overrides of the policy (only declared lists have overrides).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListRule {
    pub address: String,
    pub members: u64,
    /// Mail to this list is never counted nor held.
    pub exempt: bool,
    pub wide_audience: Option<u64>,
    pub trip_replies: Option<u32>,
    pub window: Option<Duration>,
    pub block_for: Option<Duration>,
    pub action: Option<HoldAction>,
    pub fast_senders: Option<u32>,
    pub me_too_messages: Option<u32>,
    /// 0 exempts the list from waves.
    pub wave_senders: Option<u32>,
    pub wave_window: Option<Duration>,
}

/// Lists by address (case-insensitive).
#[derive(Debug, Clone, Default)]
pub struct ListTable {
    by_address: HashMap<u64, usize>,
    lists: Vec<ListRule>,
}

impl ListTable {
    /// Adds a list; an address already present keeps its first definition and `false` is
    /// returned, so callers can report duplicates.
    pub fn insert(&mut self, rule: ListRule) -> bool {
        let key = hash_lowercase(&rule.address);
        if self.by_address.contains_key(&key) {
            return false;
        }
        self.by_address.insert(key, self.lists.len());
        self.lists.push(rule);
        true
    }

    pub fn get(&self, address: &str) -> Option<&ListRule> {
        self.by_address
            .get(&hash_lowercase(address))
            .map(|&i| &self.lists[i])
    }

    pub fn len(&self) -> usize {
        self.lists.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// Parses a lists file: one `address members` per line, optionally followed by `exempt`;
    /// `#` starts a comment. Errors name the 1-based line. Addresses already in the table
    /// (from `[[lists]]` in the policy file) keep their policy-file definition.
    pub fn add_file_text(&mut self, text: &str) -> Result<usize, (usize, String)> {
        let rules = ListTable::parse_file_text(text)?;
        Ok(rules.into_iter().filter(|r| self.insert(r.clone())).count())
    }

    /// The lists of a lists file, in order; errors name the 1-based line.
    pub fn parse_file_text(text: &str) -> Result<Vec<ListRule>, (usize, String)> {
        let mut seen = std::collections::HashSet::new();
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let address = fields.next().unwrap_or("");
            if !address.contains('@') || address.starts_with('@') || address.ends_with('@') {
                return Err((line_no, format!("{address:?} is not an email address")));
            }
            let members = match fields.next().map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 => n,
                Some(_) => {
                    return Err((
                        line_no,
                        "members must be a whole number of at least 1".into(),
                    ));
                }
                None => return Err((line_no, "expected `address members`".into())),
            };
            let exempt = match fields.next() {
                None => false,
                Some("exempt") => true,
                Some(other) => {
                    return Err((
                        line_no,
                        format!("unexpected {other:?}; the only option is `exempt`"),
                    ));
                }
            };
            if let Some(extra) = fields.next() {
                return Err((line_no, format!("unexpected {extra:?} after the options")));
            }
            if !seen.insert(hash_lowercase(address)) {
                return Err((line_no, format!("{address} is listed twice")));
            }
            rules.push(ListRule {
                address: address.to_string(),
                members,
                exempt,
                ..ListRule::default()
            });
        }
        Ok(rules)
    }
}

/// The audience of one envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Audience {
    /// Weighted fan-out: distinct recipients, lists counted by their members.
    pub weight: u64,
    /// The largest declared list among the recipients: its overrides apply.
    pub list: Option<usize>,
    /// A recipient is an exempt list.
    pub exempt: bool,
    /// Identifies the set of recipients regardless of order or case (for "me too" storms).
    pub fingerprint: u64,
}

impl Audience {
    pub fn list<'t>(&self, table: &'t ListTable) -> Option<&'t ListRule> {
        self.list.map(|i| &table.lists[i])
    }
}

impl Audience {
    /// The wider of two audiences of one message (its envelope's and its headers'): the larger
    /// weight and its fingerprint (the headers' on a tie: every copy of a split message has the
    /// same), the larger declared list of both, exempt when either names an exempt list.
    pub fn widest(self, headers: Audience, table: &ListTable) -> Audience {
        let members = |a: &Audience| a.list.map_or(0, |i| table.lists[i].members);
        let (wide, other) = if headers.weight >= self.weight {
            (headers, self)
        } else {
            (self, headers)
        };
        Audience {
            list: if members(&other) > members(&wide) {
                other.list
            } else {
                wide.list
            },
            exempt: wide.exempt || other.exempt,
            ..wide
        }
    }
}

/// Weighs an envelope's recipients. Duplicate recipients (any case) count once.
pub fn audience(rcpts: &[Recipient], lists: &ListTable) -> Audience {
    let mut hashes: Vec<u64> = rcpts.iter().map(|r| hash_lowercase(&r.address)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    weigh(&hashes, lists)
}

/// Weighs the addresses a message's headers name (`ThreadKeys::to_cc`: hashed, sorted, distinct).
pub fn header_audience(to_cc: &[u64], lists: &ListTable) -> Audience {
    weigh(to_cc, lists)
}

/// Weighs sorted, distinct address hashes.
fn weigh(hashes: &[u64], lists: &ListTable) -> Audience {
    let mut out = Audience::default();
    let mut largest = 0;
    for &h in hashes {
        match lists.by_address.get(&h) {
            Some(&i) => {
                let list = &lists.lists[i];
                out.weight = out.weight.saturating_add(list.members);
                out.exempt |= list.exempt;
                if list.members > largest {
                    largest = list.members;
                    out.list = Some(i);
                }
            }
            None => out.weight = out.weight.saturating_add(1),
        }
    }
    out.fingerprint = hash_u64s(hashes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(addrs: &[&str]) -> Vec<Recipient> {
        addrs.iter().map(|a| Recipient::plain(a)).collect()
    }

    fn table() -> ListTable {
        let mut t = ListTable::default();
        t.insert(ListRule {
            address: "all@corp.test".into(),
            members: 91_053,
            ..ListRule::default()
        });
        t.insert(ListRule {
            address: "team@corp.test".into(),
            members: 12,
            ..ListRule::default()
        });
        t.insert(ListRule {
            address: "announce@corp.test".into(),
            members: 91_053,
            exempt: true,
            ..ListRule::default()
        });
        t
    }

    #[test]
    fn each_recipient_counts_one() {
        let a = audience(&rcpts(&["a@x", "b@x", "c@x"]), &table());
        assert_eq!(a.weight, 3);
        assert_eq!(a.list, None);
        assert!(!a.exempt);
    }

    #[test]
    fn a_list_counts_its_members_and_the_largest_list_governs() {
        let t = table();
        let a = audience(
            &rcpts(&["team@corp.test", "ALL@Corp.Test", "boss@corp.test"]),
            &t,
        );
        assert_eq!(a.weight, 91_053 + 12 + 1);
        assert_eq!(a.list(&t).unwrap().address, "all@corp.test");
    }

    #[test]
    fn duplicates_count_once_and_order_does_not_change_the_fingerprint() {
        let t = table();
        let a = audience(&rcpts(&["a@x", "A@X", "b@x"]), &t);
        assert_eq!(a.weight, 2);
        let b = audience(&rcpts(&["b@x", "a@x"]), &t);
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = audience(&rcpts(&["b@x", "c@x"]), &t);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn the_wider_audience_wins_and_lists_and_exemptions_carry_over() {
        let t = table();
        let hashed = |addrs: &[&str]| {
            let mut h: Vec<u64> = addrs.iter().map(|a| hash_lowercase(a)).collect();
            h.sort_unstable();
            h.dedup();
            h
        };
        // A split transaction: 2 of the 4 people the headers name.
        let env = audience(&rcpts(&["a@x", "b@x"]), &t);
        let hdr = header_audience(&hashed(&["a@x", "b@x", "c@x", "D@X"]), &t);
        let w = env.widest(hdr, &t);
        assert_eq!(w.weight, 4);
        assert_eq!(w.fingerprint, hdr.fingerprint);
        // The other half has the same fingerprint: one audience.
        let other = audience(&rcpts(&["c@x", "d@x"]), &t).widest(hdr, &t);
        assert_eq!(other.fingerprint, w.fingerprint);
        // A list expanded before us: individuals in the envelope, the list in the header.
        let env = audience(&rcpts(&["p1@corp.test", "p2@corp.test"]), &t);
        let hdr = header_audience(&hashed(&["all@corp.test"]), &t);
        let w = env.widest(hdr, &t);
        assert_eq!(w.weight, 91_053);
        assert_eq!(w.list(&t).unwrap().address, "all@corp.test");
        // An exempt list named only in the headers exempts the message.
        let hdr = header_audience(&hashed(&["announce@corp.test"]), &t);
        assert!(env.widest(hdr, &t).exempt);
        // A wide envelope keeps its list when the headers name a smaller one.
        let env = audience(&rcpts(&["all@corp.test"]), &t);
        let hdr = header_audience(&hashed(&["team@corp.test", "a@x"]), &t);
        let w = env.widest(hdr, &t);
        assert_eq!(w.weight, 91_053);
        assert_eq!(w.list(&t).unwrap().address, "all@corp.test");
    }

    #[test]
    fn exempt_list_marks_the_audience() {
        let a = audience(&rcpts(&["announce@corp.test", "x@y"]), &table());
        assert!(a.exempt);
    }

    #[test]
    fn no_recipients_is_an_empty_audience() {
        assert_eq!(audience(&[], &table()).weight, 0);
    }

    #[test]
    fn huge_lists_saturate_instead_of_overflowing() {
        let mut t = ListTable::default();
        t.insert(ListRule {
            address: "a@x".into(),
            members: u64::MAX,
            ..ListRule::default()
        });
        assert_eq!(audience(&rcpts(&["a@x", "b@x"]), &t).weight, u64::MAX);
    }

    #[test]
    fn lists_file_parses_and_errors_name_the_line() {
        let mut t = ListTable::default();
        let n = t
            .add_file_text("# lists\n\nall@corp.test 91053\nnews@corp.test 500 exempt # ok\n")
            .unwrap();
        assert_eq!(n, 2);
        assert!(t.get("NEWS@corp.test").unwrap().exempt);
        for (text, line) in [
            ("a@x 10\nnot-an-address 5\n", 2),
            ("a@x ten\n", 1),
            ("a@x 0\n", 1),
            ("\n\na@x\n", 3),
            ("a@x 5 exempt extra\n", 1),
            ("a@x 5 loud\n", 1),
            ("a@x 5\nA@X 6\n", 2),
        ] {
            let err = ListTable::default().add_file_text(text).unwrap_err();
            assert_eq!(err.0, line, "{text:?}: {}", err.1);
        }
    }

    #[test]
    fn policy_file_lists_win_over_the_lists_file() {
        let mut t = table();
        let n = t
            .add_file_text("all@corp.test 5\nnew@corp.test 7\n")
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(t.get("all@corp.test").unwrap().members, 91_053);
    }
}
