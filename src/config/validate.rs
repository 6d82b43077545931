//! Checks that need more than one value's type, or the text itself: what `run` would fail
//! on, or would lose mail with, is refused here so `check-config` finds it first.

use super::schema::*;
use std::net::SocketAddr;

/// Retention below this deletes held mail before anyone can look at it.
const MIN_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);

impl Config {
    /// A key the running service needs but has no safe default for.
    fn check_required(&self) -> Result<(), (String, String)> {
        if self.proxy.listen.is_some() && self.upstream.address.is_empty() {
            return Err((
                "upstream.address".into(),
                "the proxy needs [upstream] address: the MTA every accepted message goes to".into(),
            ));
        }
        Ok(())
    }

    /// Values that type-check but would break the service or lose held mail.
    fn check_operational(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.quarantine.retention < MIN_RETENTION {
            return fail(
                "quarantine.retention",
                "must be at least 1h: held messages older than this are deleted, at the next \
                 start too (the default is 14d)"
                    .into(),
            );
        }
        if let Err(e) = check_log_level(&self.log.level) {
            return fail("log.level", e);
        }
        for (key, value) in [
            ("proxy.command_timeout", self.proxy.command_timeout),
            ("proxy.data_timeout", self.proxy.data_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.reply_timeout", self.upstream.reply_timeout),
            ("state.timeout", self.state.timeout),
        ] {
            if value.is_zero() {
                return fail(key, "must be longer than 0s".into());
            }
        }
        for (key, value) in [
            ("policy.window", self.policy.window),
            ("policy.block_for", self.policy.block_for),
            ("policy.fast_window", self.policy.fast_window),
        ] {
            if value < std::time::Duration::from_secs(1) {
                return fail(
                    key,
                    "must be at least 1s (breakers count in seconds)".into(),
                );
            }
        }
        if let Some(admin) = self.admin.listen {
            if !admin.ip().is_loopback() && self.admin.token_file.is_none() {
                return fail(
                    "admin.listen",
                    format!(
                        "{admin} is not a loopback address and [admin] token_file is not set: \
                         the console can release mail and reset breakers; bind it to 127.0.0.1 \
                         or ::1, or set token_file"
                    ),
                );
            }
            if self.proxy.listen == Some(admin) {
                return fail("admin.listen", "is the same address as proxy.listen".into());
            }
        }
        self.check_peers()?;
        for (i, sender) in self.policy.exempt_senders.iter().enumerate() {
            // An envelope sender, or the name a submission client authenticates as.
            if sender.trim().is_empty() || sender.trim().contains(char::is_whitespace) {
                return fail(
                    &format!("policy.exempt_senders[{i}]"),
                    format!("{sender:?} is neither an email address nor a login name"),
                );
            }
        }
        if self.state.backend == StateBackend::Redis {
            // The same checks `run` connects with (modes, URLs, TLS files), naming the key.
            crate::store::redis_link::Target::from_config(&self.state, self.state.timeout)
                .map_err(|e| (e.key, e.message))?;
        }
        Ok(())
    }

    /// `[admin] node_name` and `peers`: names that can prefix an id, one per node, and URLs
    /// the admin client can reach.
    fn check_peers(&self) -> Result<(), (String, String)> {
        let admin = &self.admin;
        if let Some(name) = &admin.node_name {
            check_node_name(name).map_err(|e| ("admin.node_name".to_string(), e))?;
        }
        let me = admin.node_name();
        for (i, peer) in admin.peers.iter().enumerate() {
            let key = |leaf: &str| format!("admin.peers[{i}].{leaf}");
            check_node_name(&peer.name).map_err(|e| (key("name"), e))?;
            if peer.name == me {
                return Err((
                    key("name"),
                    format!(
                        "{:?} is this node's own name ([admin] node_name, else the host name): \
                         list the other nodes only",
                        peer.name
                    ),
                ));
            }
            if admin.peers[..i].iter().any(|p| p.name == peer.name) {
                return Err((key("name"), format!("{:?} is named twice", peer.name)));
            }
            crate::admin::client::peer_authority(&peer.url).map_err(|e| (key("url"), e))?;
        }
        Ok(())
    }

    /// The STARTTLS certificate and key, when set, must load (so `check-config` finds a bad
    /// file before `run` does).
    fn check_tls(&self) -> Result<(), (String, String)> {
        if let Some(r) = &self.reinject {
            if r.address.parse::<SocketAddr>().is_err() {
                return Err((
                    "reinject.address".into(),
                    "must be an IP address and port, e.g. \"127.0.0.1:10025\"".into(),
                ));
            }
            if r.tls == UpstreamTls::Starttls {
                crate::tls::connector(r.tls_ca.as_deref())
                    .map_err(|e| ("reinject.tls_ca".to_string(), e))?;
                crate::tls::server_name(r.tls_name.as_deref(), &r.address)
                    .map_err(|e| ("reinject.tls_name".to_string(), e))?;
            }
        }
        if self.upstream.tls == UpstreamTls::Starttls {
            crate::tls::connector(self.upstream.tls_ca.as_deref())
                .map_err(|e| ("upstream.tls_ca".to_string(), e))?;
            crate::tls::server_name(self.upstream.tls_name.as_deref(), &self.upstream.address)
                .map_err(|e| ("upstream.tls_name".to_string(), e))?;
        }
        if self.proxy.tls == ProxyTls::Implicit && self.proxy.tls_cert.is_none() {
            return Err((
                "proxy.tls".into(),
                "implicit TLS needs tls_cert and tls_key".into(),
            ));
        }
        match (&self.proxy.tls_cert, &self.proxy.tls_key) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(("proxy.tls_key".into(), "tls_cert needs tls_key".into())),
            (None, Some(_)) => Err(("proxy.tls_cert".into(), "tls_key needs tls_cert".into())),
            (Some(cert), Some(key)) => crate::tls::acceptor(cert, key)
                .map(drop)
                .map_err(|e| ("proxy.tls_cert".into(), e)),
        }
    }

    /// `[service]`: names that can be a user and group other than root. Whether they exist
    /// on this machine is `check_environment`'s.
    fn check_service(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        for (key, name) in [
            ("service.user", &self.service.user),
            ("service.group", &self.service.group),
        ] {
            let Some(name) = name else { continue };
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':') {
                return fail(key, format!("{name:?} is not a user or group name"));
            }
            if name == "root" || name == "0" {
                return fail(
                    key,
                    "must not be root: it is the account the service switches to after \
                     binding its ports; leave it out to run as whoever starts it"
                        .into(),
                );
            }
        }
        if self.service.group.is_some() && self.service.user.is_none() {
            return fail(
                "service.group",
                "needs [service] user: the group is switched to together with the user".into(),
            );
        }
        Ok(())
    }

    /// Checks that need more than one value's type.
    pub(super) fn validate(&self, text: &str) -> Result<(), (String, String)> {
        self.check_operational()?;
        self.check_service()?;
        let fail = |key: &str, msg: &str| Err((key.to_string(), msg.to_string()));
        if self.proxy.listen.is_none() && self.milter.listen.is_none() {
            return fail(
                "proxy.listen",
                "nothing to listen on: set [proxy] listen, [milter] listen, or both",
            );
        }
        if self.proxy.hostname.is_empty() || self.proxy.hostname.contains(char::is_whitespace) {
            return fail("proxy.hostname", "must be a host name without spaces");
        }
        if self.proxy.max_line_length < 80 {
            return fail("proxy.max_line_length", "must be at least 80 octets");
        }
        if self.proxy.max_command_length < 512 {
            return fail(
                "proxy.max_command_length",
                "must be at least 512 octets (RFC 5321 4.5.3.1.4)",
            );
        }
        if self.proxy.max_recipients < 100 {
            return fail(
                "proxy.max_recipients",
                "must be at least 100 (RFC 5321 4.5.3.1.8)",
            );
        }
        for (key, value) in [
            ("proxy.max_connections", self.proxy.max_connections),
            ("proxy.max_message_size", self.proxy.max_message_size),
            ("proxy.max_errors", self.proxy.max_errors),
            ("policy.max_threads", self.policy.max_threads),
            ("proxy.min_data_rate", self.proxy.min_data_rate as usize),
            (
                "upstream.reuse_count_limit",
                self.upstream.reuse_count_limit as usize,
            ),
        ] {
            if value == 0 {
                return fail(key, "must be greater than 0");
            }
        }
        if !self.upstream.address.is_empty() && self.upstream.address.parse::<SocketAddr>().is_err()
        {
            return fail(
                "upstream.address",
                "must be an IP address and port, e.g. \"127.0.0.1:10025\"",
            );
        }
        if self.policy.trip_replies == 0 {
            return fail("policy.trip_replies", "must be at least 1");
        }
        if self.policy.wide_audience == 0 {
            return fail("policy.wide_audience", "must be at least 1");
        }
        for (key, value) in [
            ("policy.window", self.policy.window),
            ("policy.block_for", self.policy.block_for),
            ("policy.fast_window", self.policy.fast_window),
            ("notify.interval", self.notify.interval),
            ("notify.remind_every", self.notify.remind_every),
            (
                "notify.remind_before_expiry",
                self.notify.remind_before_expiry,
            ),
            ("upstream.pool_idle_time", self.upstream.pool_idle_time),
        ] {
            if value.is_zero() {
                return fail(key, "must be longer than 0s");
            }
        }
        if self.notify.remind_before_expiry >= self.quarantine.retention {
            return fail(
                "notify.remind_before_expiry",
                "must be shorter than quarantine.retention (held mail is deleted after that)",
            );
        }
        for (key, template) in [
            (
                "notify.sender_notice_subject",
                &self.notify.sender_notice_subject,
            ),
            (
                "notify.sender_notice_template",
                &self.notify.sender_notice_template,
            ),
        ] {
            if let Err(e) = crate::notify::check_template(template) {
                return fail(key, &e);
            }
        }
        if self.policy.max_block < self.policy.block_for {
            return fail("policy.max_block", "must be at least policy.block_for");
        }
        let slots = crate::breaker::MAX_SENDER_THRESHOLD;
        if self.policy.fast_audience > 0 && !(1..=slots).contains(&self.policy.fast_senders) {
            return fail(
                "policy.fast_senders",
                &format!(
                    "must be 1 to {slots} (or set fast_audience = 0 to turn the fast trip off)"
                ),
            );
        }
        // Storms keep as many senders as the largest threshold: bounded, so a storm stays small.
        for (key, value) in [
            ("policy.trip_replies", self.policy.trip_replies),
            ("policy.me_too_messages", self.policy.me_too_messages),
            ("policy.wave_senders", self.policy.wave_senders),
        ] {
            if value > slots {
                return fail(
                    key,
                    &format!("must be at most {slots} (distinct senders a storm keeps)"),
                );
            }
        }
        if self.policy.header_audience_from == 0 {
            return fail(
                "policy.header_audience_from",
                "must be at least 1 (1 reads the headers of every message)",
            );
        }
        for (key, value) in [
            ("policy.copies_window", self.policy.copies_window),
            ("policy.wave_window", self.policy.wave_window),
        ] {
            if value < std::time::Duration::from_secs(1) {
                return fail(key, "must be at least 1s");
            }
        }
        for (i, sender) in self.policy.wave_exempt_senders.iter().enumerate() {
            if sender.trim().is_empty() || sender.trim().contains(char::is_whitespace) {
                return fail(
                    &format!("policy.wave_exempt_senders[{i}]"),
                    &format!("{sender:?} is not an email address"),
                );
            }
        }
        for (i, list) in self.lists.iter().enumerate() {
            if !list.address.contains('@') {
                return fail(&format!("lists[{i}].address"), "must be an email address");
            }
            if list.members == 0 {
                return fail(&format!("lists[{i}].members"), "must be at least 1");
            }
            if list.trip_replies == Some(0) {
                return fail(&format!("lists[{i}].trip_replies"), "must be at least 1");
            }
            if list.wide_audience == Some(0) {
                return fail(&format!("lists[{i}].wide_audience"), "must be at least 1");
            }
            if list.fast_senders.is_some_and(|n| !(1..=slots).contains(&n)) {
                return fail(
                    &format!("lists[{i}].fast_senders"),
                    &format!("must be 1 to {slots}"),
                );
            }
            for (key, value) in [
                ("trip_replies", list.trip_replies),
                ("me_too_messages", list.me_too_messages),
                ("wave_senders", list.wave_senders),
            ] {
                if value.is_some_and(|n| n > slots) {
                    return fail(
                        &format!("lists[{i}].{key}"),
                        &format!("must be at most {slots} (distinct senders a storm keeps)"),
                    );
                }
            }
            for (key, value) in [
                ("window", list.window),
                ("block_for", list.block_for),
                ("wave_window", list.wave_window),
            ] {
                if value.is_some_and(|d| d.is_zero()) {
                    return fail(&format!("lists[{i}].{key}"), "must be longer than 0s");
                }
            }
        }
        self.check_list_sources(text)?;
        self.check_required()?;
        self.check_tls()
    }
}

/// Keys of `[[list_sources]]` each kind takes (besides kind, name, refresh, min_members).
const POSTFIX_SOURCE_KEYS: [&str; 2] = ["config_dir", "maps"];
const LDAP_SOURCE_KEYS: [&str; 12] = [
    "url",
    "starttls",
    "tls_ca",
    "bind_dn",
    "password_file",
    "base_dn",
    "filter",
    "mail_attribute",
    "member_attribute",
    "nested",
    "page_size",
    "timeout",
];

/// Shortest refresh: sources are whole directories and alias maps, read in full each time.
const MIN_LIST_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Config {
    /// `[[list_sources]]`: the keys of its kind only, the ones it needs, values it can use.
    fn check_list_sources(&self, text: &str) -> Result<(), (String, String)> {
        let table: toml::Table = toml::from_str(text).unwrap_or_default();
        let written: Vec<Vec<String>> = table
            .get("list_sources")
            .and_then(|v| v.as_array())
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        e.as_table()
                            .map(|t| t.keys().cloned().collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut names = std::collections::HashSet::new();
        for (i, source) in self.list_sources.iter().enumerate() {
            let key = |leaf: &str| format!("list_sources[{i}].{leaf}");
            let fail = |leaf: &str, msg: String| Err((key(leaf), msg));
            let (own, other, kind) = match source.kind {
                ListSourceKind::Postfix => {
                    (&POSTFIX_SOURCE_KEYS[..], &LDAP_SOURCE_KEYS[..], "postfix")
                }
                ListSourceKind::Ldap => (&LDAP_SOURCE_KEYS[..], &POSTFIX_SOURCE_KEYS[..], "ldap"),
            };
            for leaf in written.get(i).into_iter().flatten() {
                if other.contains(&leaf.as_str()) {
                    return fail(
                        leaf,
                        format!(
                            "is not a key of kind = \"{kind}\" (its keys: {})",
                            own.join(", ")
                        ),
                    );
                }
            }
            let label = source.label(i);
            if label.is_empty() || label.contains(char::is_whitespace) {
                return fail("name", format!("{label:?}: a name without spaces"));
            }
            if matches!(label.as_str(), "declared" | "lists_file") {
                return fail(
                    "name",
                    format!("{label:?} names the [[lists]] and lists_file tables in metrics"),
                );
            }
            if !names.insert(label.clone()) {
                return fail("name", format!("{label:?} names two list sources"));
            }
            if source.refresh < MIN_LIST_REFRESH {
                return fail(
                    "refresh",
                    "must be at least 10s: each refresh reads the whole source".into(),
                );
            }
            if source.min_members == 0 {
                return fail("min_members", "must be at least 1".into());
            }
            match source.kind {
                ListSourceKind::Postfix => {
                    if source.config_dir.is_none() && source.maps.is_empty() {
                        return fail(
                            "maps",
                            "a postfix source needs config_dir (its virtual_alias_maps are read) \
                             or maps"
                                .into(),
                        );
                    }
                    for map in &source.maps {
                        check_postfix_map(map).map_err(|msg| (key("maps"), msg))?;
                    }
                }
                ListSourceKind::Ldap => {
                    let Some(url) = &source.url else {
                        return fail(
                            "url",
                            "an ldap source needs url = \"ldap://host:389\"".into(),
                        );
                    };
                    let ldaps = url.starts_with("ldaps://");
                    if !(ldaps || url.starts_with("ldap://")) {
                        return fail("url", format!("{url:?} is not an ldap:// or ldaps:// URL"));
                    }
                    if ldaps && source.starttls {
                        return fail(
                            "starttls",
                            "ldaps:// is TLS from the start; starttls is for ldap:// URLs".into(),
                        );
                    }
                    if source
                        .base_dn
                        .as_deref()
                        .is_none_or(|b| b.trim().is_empty())
                    {
                        return fail(
                            "base_dn",
                            "an ldap source needs the base DN groups are searched under".into(),
                        );
                    }
                    match (&source.bind_dn, &source.password_file) {
                        (Some(_), None) => {
                            return fail("password_file", "bind_dn needs a password_file".into());
                        }
                        (None, Some(_)) => {
                            return fail("bind_dn", "password_file needs a bind_dn".into());
                        }
                        _ => {}
                    }
                    let filter = source.filter.trim();
                    if !(filter.starts_with('(') && filter.ends_with(')')) {
                        return fail(
                            "filter",
                            format!("{filter:?} is not an LDAP filter such as (objectClass=group)"),
                        );
                    }
                    for (leaf, value) in [
                        ("mail_attribute", &source.mail_attribute),
                        ("member_attribute", &source.member_attribute),
                    ] {
                        if value.is_empty() || value.contains(char::is_whitespace) {
                            return fail(leaf, format!("{value:?} is not an attribute name"));
                        }
                    }
                    if !(1..=i32::MAX as u32).contains(&source.page_size) {
                        return fail("page_size", "must be at least 1".into());
                    }
                    if source.timeout.is_zero() {
                        return fail("timeout", "must be longer than 0s".into());
                    }
                }
            }
        }
        Ok(())
    }
}

/// A `maps` entry: `TYPE:NAME` of a type `postmap -s` can list, or a plain alias file path.
fn check_postfix_map(map: &str) -> Result<(), String> {
    let map = map.trim();
    if map.starts_with('/') {
        return Ok(());
    }
    let Some((kind, name)) = map.strip_prefix("proxy:").unwrap_or(map).split_once(':') else {
        return Err(format!(
            "{map:?} is neither TYPE:NAME (hash:/etc/postfix/virtual) nor an absolute path"
        ));
    };
    if name.is_empty() {
        return Err(format!("{map:?} names no file"));
    }
    if kind == "ldap" {
        return Err(format!(
            "{map:?}: Postfix's LDAP maps cannot be listed; add a [[list_sources]] with \
             kind = \"ldap\" for the same directory"
        ));
    }
    if !POSTFIX_LISTABLE_MAPS.contains(&kind) {
        return Err(format!(
            "{map:?}: a {kind} map cannot be listed with postmap -s; types that can: {}",
            POSTFIX_LISTABLE_MAPS.join(", ")
        ));
    }
    Ok(())
}

/// Best effort: the line where `key` (`section.leaf`, `lists[2].leaf`) is assigned, within
/// its section; the section's header when the key is not written (a default at fault).
pub(super) fn key_line(text: &str, key: &str) -> Option<usize> {
    let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let (table, index) = match section.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (section, None),
    };
    let mut current = String::new();
    let mut seen = 0usize;
    let mut header_line = None;
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            current = name.trim().to_string();
            if current == table {
                seen += 1;
            }
            if current == table && index.is_none_or(|n| n + 1 == seen) {
                header_line = header_line.or(Some(i + 1));
            }
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            current = name.trim().to_string();
            if current == table {
                header_line = header_line.or(Some(i + 1));
            }
            continue;
        }
        let in_section = current == table && index.is_none_or(|n| n + 1 == seen);
        if in_section
            && l.strip_prefix(leaf)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    header_line
}

/// A node's name prefixes its ids (`mx2:20261202T…`), so it has no ':' or space.
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(format!(
            "{name:?} is not a node name (1 to 64 letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// A tracing filter that names levels only where levels go: `info`, `warn,stormbreaker=debug`.
/// (tracing would take `verbose` as a target name and then log nothing at all.)
fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |s: &str| LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        if !is_level(level) {
            return Err(format!(
                "{directive:?} is not a level: use one of {} (or target=level)",
                LEVELS.join(", ")
            ));
        }
    }
    if filter.trim().is_empty() {
        return Err("is empty: use one of trace, debug, info, warn, error".into());
    }
    Ok(())
}
