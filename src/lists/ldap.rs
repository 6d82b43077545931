//! List sizes from an LDAP directory or Active Directory: every group with an address (`mail`)
//! whose members reach `min_members` people is a list. Groups are read with a paged search
//! (RFC 2696); nested groups are expanded here (OpenLDAP and the like: member DNs that are
//! groups of the same search, each person counted once, cycles cut), or counted by AD itself
//! with LDAP_MATCHING_RULE_IN_CHAIN.

use super::expand::AliasGraph;
use crate::config::{LdapNested, ListSourceConfig};
use anyhow::{Context, anyhow, bail};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: membership through any depth of nesting.
pub const IN_CHAIN_RULE: &str = "1.2.840.113556.1.4.1941";

#[derive(Debug, Clone)]
pub struct LdapSource {
    url: String,
    starttls: bool,
    tls_ca: Option<PathBuf>,
    bind_dn: Option<String>,
    password_file: Option<PathBuf>,
    base_dn: String,
    filter: String,
    mail_attribute: String,
    member_attribute: String,
    nested: LdapNested,
    page_size: i32,
    timeout: Duration,
    min_members: u64,
}

/// One group as the search returned it.
struct Group {
    dn: String,
    mails: Vec<String>,
    members: Vec<String>,
}

impl LdapSource {
    pub fn new(config: &ListSourceConfig) -> LdapSource {
        LdapSource {
            url: config.url.clone().unwrap_or_default(),
            starttls: config.starttls,
            tls_ca: config.tls_ca.clone(),
            bind_dn: config.bind_dn.clone(),
            password_file: config.password_file.clone(),
            base_dn: config.base_dn.clone().unwrap_or_default(),
            filter: config.filter.trim().to_string(),
            mail_attribute: config.mail_attribute.clone(),
            member_attribute: config.member_attribute.clone(),
            nested: config.nested,
            page_size: config.page_size.min(i32::MAX as u32) as i32,
            timeout: config.timeout,
            min_members: config.min_members,
        }
    }

    /// Connects, binds, reads the groups and counts their people: `(address, members)` for
    /// each group address at or above `min_members`. Any failure fails the whole read, so the
    /// caller keeps the previous lists.
    pub async fn load(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let mut ldap = self.connect().await?;
        let result = self.load_with(&mut ldap).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn connect(&self) -> anyhow::Result<Ldap> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(self.starttls);
        if self.starttls || self.url.starts_with("ldaps://") {
            let tls = crate::tls::client_config(self.tls_ca.as_deref()).map_err(|e| anyhow!(e))?;
            settings = settings.set_config(tls);
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .with_context(|| format!("{}: cannot connect", self.url))?;
        ldap3::drive!(conn);
        if let (Some(dn), Some(file)) = (&self.bind_dn, &self.password_file) {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("{}: cannot read the bind password", file.display()))?;
            let password = password.trim_end_matches(['\r', '\n']);
            ldap.with_timeout(self.timeout)
                .simple_bind(dn, password)
                .await
                .and_then(|r| r.success())
                .with_context(|| format!("{}: bind as {dn} failed", self.url))?;
        }
        Ok(ldap)
    }

    async fn load_with(&self, ldap: &mut Ldap) -> anyhow::Result<Vec<(String, u64)>> {
        let attrs = match self.nested {
            LdapNested::InChain => vec![self.mail_attribute.clone()],
            _ => vec![self.mail_attribute.clone(), self.member_attribute.clone()],
        };
        let groups = self.search(ldap, &self.filter, &attrs).await?;
        let mut counts: Vec<(String, u64)> = Vec::new();
        match self.nested {
            LdapNested::Expand | LdapNested::Direct => {
                let expand = self.nested == LdapNested::Expand;
                let mut graph = AliasGraph::new();
                for g in &groups {
                    let own = normalize_dn(&g.dn);
                    let members = g
                        .members
                        .iter()
                        .map(|m| normalize_dn(m))
                        // groupOfNames must have a member: directories often list the group
                        // itself, or an empty DN, as a placeholder.
                        .filter(|m| !m.is_empty() && *m != own)
                        .map(|m| if expand { m } else { format!("{m}\u{0}direct") })
                        .collect::<Vec<_>>();
                    graph.define(&own, members.iter().map(String::as_str));
                }
                let people: HashMap<&str, u64> = graph.expand_all().into_iter().collect();
                for g in &groups {
                    let n = people
                        .get(normalize_dn(&g.dn).as_str())
                        .copied()
                        .unwrap_or(0);
                    counts.extend(g.mails.iter().map(|m| (m.clone(), n)));
                }
            }
            LdapNested::InChain => {
                for g in groups.iter().filter(|g| !g.mails.is_empty()) {
                    let filter = format!(
                        "(&(objectCategory=person)(memberOf:{IN_CHAIN_RULE}:={}))",
                        ldap3::ldap_escape(g.dn.as_str())
                    );
                    let n = self
                        .search(ldap, &filter, &["1.1".to_string()])
                        .await?
                        .len() as u64;
                    counts.extend(g.mails.iter().map(|m| (m.clone(), n)));
                }
            }
        }
        counts.retain(|(_, n)| *n >= self.min_members);
        Ok(counts)
    }

    /// A paged subtree search under base_dn; referrals are passed over.
    async fn search(
        &self,
        ldap: &mut Ldap,
        filter: &str,
        attrs: &[String],
    ) -> anyhow::Result<Vec<Group>> {
        let adapters: Vec<Box<dyn Adapter<_, _>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(self.page_size)),
        ];
        let mut stream = ldap
            .with_timeout(self.timeout)
            .streaming_search_with(
                adapters,
                &self.base_dn,
                Scope::Subtree,
                filter,
                attrs.to_vec(),
            )
            .await
            .with_context(|| format!("{}: search {filter} under {}", self.url, self.base_dn))?;
        let mut groups = Vec::new();
        let mut ranged = HashSet::new();
        while let Some(entry) = stream
            .next()
            .await
            .with_context(|| format!("{}: search {filter}", self.url))?
        {
            let entry = SearchEntry::construct(entry);
            let mut group = Group {
                dn: entry.dn,
                mails: Vec::new(),
                members: Vec::new(),
            };
            for (name, values) in entry.attrs {
                if name.eq_ignore_ascii_case(&self.mail_attribute) {
                    group.mails = values;
                } else if name.eq_ignore_ascii_case(&self.member_attribute) {
                    group.members = values;
                } else if name.to_ascii_lowercase().starts_with(&format!(
                    "{};range=",
                    self.member_attribute.to_ascii_lowercase()
                )) {
                    // AD hands out large member attributes in ranges (MaxValRange, 1,500):
                    // the count would be short.
                    ranged.insert(group.dn.clone());
                    group.members = values;
                }
            }
            groups.push(group);
        }
        let done = stream.finish().await;
        if done.rc != 0 {
            bail!(
                "{}: search {filter} under {} ended with {done}",
                self.url,
                self.base_dn
            );
        }
        if !ranged.is_empty() {
            tracing::warn!(
                url = %self.url,
                groups = ranged.len(),
                example = %ranged.iter().next().map(String::as_str).unwrap_or(""),
                "the directory sent member ranges (Active Directory's MaxValRange): these \
                 groups are counted short; set nested = \"in_chain\" for Active Directory"
            );
        }
        Ok(groups)
    }
}

/// A DN as compared here: lower case, no spaces around `,` and `=` (directories return DNs as
/// they were written; member values and entry DNs need not match byte for byte).
fn normalize_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    for part in dn.split(',') {
        if !out.is_empty() {
            out.push(',');
        }
        match part.split_once('=') {
            Some((k, v)) => {
                out.push_str(&k.trim().to_ascii_lowercase());
                out.push('=');
                out.push_str(&v.trim().to_lowercase());
            }
            None => out.push_str(&part.trim().to_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_compare_without_case_or_spaces() {
        assert_eq!(
            normalize_dn("CN=Eng Team, OU=Groups ,DC=Corp,DC=Test"),
            normalize_dn("cn=eng team,ou=groups,dc=corp,dc=test")
        );
        assert_ne!(normalize_dn("cn=a,dc=x"), normalize_dn("cn=b,dc=x"));
    }
}
