//! The TOML policy file: schema (`schema`), checks (`validate`), and the one place that turns it
//! into the values each component runs with.
//!
//! Every error names the file, the line and the key at fault, so `stormbreaker check-config`
//! can point an administrator at the exact spot.

mod environment;
mod schema;
mod validate;

pub use environment::unix_socket_path;

pub use schema::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error, pointing at the file, line and key at fault.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses policy text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>| span.map(|s| line_of(text, s.start));
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: at(e.span()),
            key: None,
            message: e.message().trim().to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError {
                file: path.to_path_buf(),
                line: at(inner.span()),
                key: (key != ".").then_some(key),
                message: inner.message().trim().to_string(),
            }
        })?;
        config
            .validate(text)
            .map_err(|(key, message)| ConfigError {
                file: path.to_path_buf(),
                // A required key whose section is absent altogether (today only
                // [upstream] address): point at what requires it, the proxy's listen line.
                line: validate::key_line(text, &key)
                    // An element of an inline array (`peers = [{ … }]`): the array's line.
                    .or_else(|| {
                        let array = key.split_once('[')?.0;
                        validate::key_line(text, array)
                    })
                    .or_else(|| validate::key_line(text, "proxy.listen")),
                key: Some(key),
                message,
            })?;
        Ok(config)
    }

    /// `check_environment` as a `ConfigError` naming `path` and the key's line.
    pub fn check_files(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_environment().map_err(|(key, message)| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            ConfigError {
                file: path.to_path_buf(),
                line: validate::key_line(&text, &key).or_else(|| {
                    let array = key.split_once('[')?.0;
                    validate::key_line(&text, array)
                }),
                key: Some(key),
                message,
            }
        })
    }

    /// The effective configuration, defaults filled in, as TOML (`stormbreaker config dump`).
    pub fn dump(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("policy.toml"))
    }

    /// The smallest valid proxy configuration, then `rest`.
    fn proxy(rest: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:10025\"\n{rest}"
        ))
    }

    /// `rest` must be refused, naming `key` and the line it is on.
    fn refused(rest: &str, key: &str) -> ConfigError {
        let e = proxy(rest).expect_err(rest);
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.line.is_some(), "{e}");
        e
    }

    #[test]
    fn notify_keys_are_checked_with_their_key_and_line() {
        let e = refused(
            "[notify]\nsender_notice_template = \"\"\"\nHello {name}\n\"\"\"\n",
            "notify.sender_notice_template",
        );
        // The key's line (the smallest config takes lines 1 to 4).
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("unknown placeholder {name}"), "{e}");
        refused(
            "[notify]\nsender_notice_subject = \"held {subject\"\n",
            "notify.sender_notice_subject",
        );
        refused("[notify]\nremind_every = \"0s\"\n", "notify.remind_every");
        refused(
            "[notify]\nremind_before_expiry = \"0s\"\n",
            "notify.remind_before_expiry",
        );
        refused(
            "[quarantine]\nretention = \"2h\"\n[notify]\nremind_before_expiry = \"3h\"\n",
            "notify.remind_before_expiry",
        );
        // The defaults: notices on, reminders every 4 h and a day before deletion.
        let c = proxy("").unwrap();
        assert!(c.notify.notify_senders && c.notify.reminders);
        assert_eq!(c.notify.remind_every, Duration::from_secs(4 * 3600));
        assert_eq!(
            c.notify.remind_before_expiry,
            Duration::from_secs(24 * 3600)
        );
        let dump = c.dump();
        for key in [
            "notify_senders = true",
            "remind_every = \"4h\"",
            "remind_before_expiry = \"1day\"",
            "sender_notice_template = ",
        ] {
            assert!(dump.contains(key), "{key} not in {dump}");
        }
    }

    #[test]
    fn admin_peers_are_checked_with_their_key_and_line() {
        let ok = proxy(
            "[admin]\nlisten = \"127.0.0.1:9925\"\nnode_name = \"mx1\"\n\
             peers = [{ name = \"mx2\", url = \"http://10.0.0.2:9925\" }]\n",
        )
        .unwrap();
        assert_eq!(ok.admin.node_name(), "mx1");
        assert_eq!(ok.admin.peers[0].name, "mx2");
        // Inline array: the `peers` line.
        let e = refused(
            "[admin]\nnode_name = \"mx1\"\npeers = [{ name = \"mx2\", url = \"https://mx2:9925\" }]\n",
            "admin.peers[0].url",
        );
        assert_eq!(e.line, Some(7), "{e}");
        // Tables: the key's own line.
        let e = refused(
            "[admin]\nnode_name = \"mx1\"\n[[admin.peers]]\nname = \"mx2\"\nurl = \"http://a:1\"\n\
             [[admin.peers]]\nname = \"mx2\"\nurl = \"http://b:1\"\n",
            "admin.peers[1].name",
        );
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("named twice"), "{e}");
        refused(
            "[admin]\nnode_name = \"mx1\"\npeers = [{ name = \"mx1\", url = \"http://a:1\" }]\n",
            "admin.peers[0].name",
        );
        refused("[admin]\nnode_name = \"mx 1\"\n", "admin.node_name");
        refused(
            "[admin]\npeers = [{ name = \"a:b\", url = \"http://a:1\" }]\n",
            "admin.peers[0].name",
        );
    }

    #[test]
    fn a_proxy_without_an_upstream_is_refused() {
        let e = parse("[proxy]\nlisten = \"127.0.0.1:2525\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("upstream.address"), "{e}");
        // Milter alone needs none.
        assert!(parse("[milter]\nlisten = \"127.0.0.1:8891\"\n").is_ok());
    }

    #[test]
    fn values_that_would_lose_mail_or_go_blind_are_refused() {
        let e = refused("[quarantine]\nretention = \"0s\"\n", "quarantine.retention");
        assert_eq!(e.line, Some(6));
        refused(
            "[quarantine]\nretention = \"30m\"\n",
            "quarantine.retention",
        );
        let e = refused("[log]\nlevel = \"verbose\"\n", "log.level");
        assert!(e.message.contains("not a level"), "{e}");
        assert!(proxy("[log]\nlevel = \"warn,stormbreaker=debug\"\n").is_ok());
        let e = parse("[proxy]\nlisten = \"127.0.0.1:2525\"\ncommand_timeout = \"0s\"\n[upstream]\naddress = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("proxy.command_timeout"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        refused("reply_timeout = \"0s\"\n", "upstream.reply_timeout");
        refused("[policy]\nwindow = \"1ms\"\n", "policy.window");
        refused("[admin]\nlisten = \"0.0.0.0:9925\"\n", "admin.listen");
        refused("[admin]\nlisten = \"127.0.0.1:2525\"\n", "admin.listen");
        // Off loopback only behind tokens.
        assert!(
            proxy("[admin]\nlisten = \"0.0.0.0:9925\"\ntoken_file = \"/etc/sb.tokens\"\n").is_ok()
        );
        refused(
            "[policy]\nexempt_senders = [\"not an address\"]\n",
            "policy.exempt_senders[0]",
        );
        refused(
            "[state]\nbackend = \"redis\"\nurl = \"http://x\"\n",
            "state.url",
        );
    }

    #[test]
    fn redis_modes_and_tls_are_checked_naming_the_key() {
        let state = |rest: &str| format!("[state]\nbackend = \"redis\"\n{rest}");
        let key_of = |rest: &str| proxy(&state(rest)).expect_err(rest).key.unwrap_or_default();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(&pem, "not pem").unwrap();
        let pem = pem.display();
        for (rest, key) in [
            ("mode = \"ring\"\nurl = \"redis://x\"", "state.mode"),
            ("mode = \"cluster\"", "state.nodes"),
            (
                "mode = \"cluster\"\nnodes = [\"redis://a:1\", \"rediss://b:2\"]",
                "state.nodes[1]",
            ),
            (
                "mode = \"cluster\"\nnodes = [\"http://a:1\"]",
                "state.nodes[0]",
            ),
            (
                "mode = \"sentinel\"\nsentinels = [\"redis://a:26379\"]",
                "state.master_name",
            ),
            (
                "mode = \"sentinel\"\nmaster_name = \"m\"",
                "state.sentinels",
            ),
            (
                "url = \"redis://a:1\"\nnodes = [\"redis://a:1\"]",
                "state.nodes",
            ),
            (
                "url = \"rediss://a:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"",
                "state.tls_ca_file",
            ),
            (
                &format!("url = \"rediss://a:1\"\ntls_ca_file = \"{pem}\""),
                "state.tls_ca_file",
            ),
            (
                "url = \"redis://a:1\"\ntls_ca_file = \"/etc/hostname\"",
                "state.tls_ca_file",
            ),
            (
                "url = \"rediss://a:1\"\ntls_cert_file = \"/etc/hostname\"",
                "state.tls_key_file",
            ),
            ("url = \"redis://a:1\"\nprefix = \"{x}\"", "state.prefix"),
            ("", "state.url"),
        ] {
            assert_eq!(key_of(rest), key, "{rest}");
        }
        for ok in [
            "url = \"rediss://127.0.0.1:6380\"",
            "mode = \"cluster\"\nnodes = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]",
            "mode = \"sentinel\"\nsentinels = [\"rediss://127.0.0.1:26379\"]\nmaster_name = \"m\"\npassword = \"p\"",
        ] {
            assert!(
                proxy(&state(ok)).is_ok(),
                "{ok}: {:?}",
                proxy(&state(ok)).err()
            );
        }
    }

    #[test]
    fn errors_point_at_the_key_in_its_own_section() {
        // `address` also appears under [[lists]]: the line is upstream's.
        let text = "[proxy]\nlisten = \"127.0.0.1:2525\"\n[[lists]]\naddress = \"all@x.test\"\nmembers = 5\n[[lists]]\naddress = \"b@x.test\"\nmembers = 0\n[upstream]\naddress = \"127.0.0.1:1\"\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lists[1].members"), "{e}");
        assert_eq!(e.line, Some(8), "{e}");
    }

    #[test]
    fn the_dump_parses_back_to_the_same_values() {
        let c = proxy("[policy]\nwindow = \"90m\"\n[[lists]]\naddress = \"all@x.test\"\nmembers = 7\nblock_for = \"2h\"\n").unwrap();
        let dumped = c.dump();
        assert!(dumped.contains("window = \"1h 30m\""), "{dumped}");
        let again = parse(&dumped).unwrap();
        assert_eq!(again.policy.window, Duration::from_secs(90 * 60));
        assert_eq!(again.lists[0].block_for, Some(Duration::from_secs(7200)));
        assert_eq!(again.upstream.pass_client, c.upstream.pass_client);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = proxy("").unwrap();
        assert_eq!(c.policy.trip_replies, 10);
        assert_eq!(c.policy.window, Duration::from_secs(3600));
        assert_eq!(c.policy.block_for, Duration::from_secs(6 * 3600));
        assert_eq!(c.policy.action, HoldAction::Quarantine);
        assert_eq!(c.proxy.max_line_length, 1000);
    }

    #[test]
    fn durations_parse() {
        let c = parse(
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:1\"\n[policy]\nwindow = \"90m\"\nblock_for = \"6h\"\n",
        )
        .unwrap();
        assert_eq!(c.policy.window, Duration::from_secs(90 * 60));
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86400)
        );
    }

    #[test]
    fn pass_client_takes_a_bool_or_a_mechanism() {
        let with = |v: &str| {
            parse(&format!(
                "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:1\"\npass_client = {v}\n"
            ))
        };
        assert_eq!(
            with("true").unwrap().upstream.pass_client,
            PassClient::Xclient
        );
        assert_eq!(with("false").unwrap().upstream.pass_client, PassClient::Off);
        assert_eq!(
            with("\"xclient\"").unwrap().upstream.pass_client,
            PassClient::Xclient
        );
        assert_eq!(
            with("\"xforward\"").unwrap().upstream.pass_client,
            PassClient::Xforward
        );
        let e = with("\"proxy\"").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.to_string().contains("upstream.pass_client"), "{e}");
        assert!(e.to_string().contains("xforward"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("[proxy]\nlisten = \"127.0.0.1:2525\"\n\n[policy]\ntrip_replys = 5\n")
            .unwrap_err();
        let s = e.to_string();
        assert_eq!(e.line, Some(5), "{s}");
        assert!(s.starts_with("policy.toml:5"), "{s}");
        assert!(s.contains("trip_replys"), "{s}");
    }

    #[test]
    fn bad_duration_names_key() {
        let e = parse("[proxy]\nlisten = \"127.0.0.1:2525\"\n[policy]\nwindow = \"soon\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4));
        assert_eq!(e.key.as_deref(), Some("policy.window"));
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn semantic_error_names_line() {
        let e = parse("[proxy]\nlisten = \"127.0.0.1:2525\"\n[policy]\ntrip_replies = 0\n")
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("policy.trip_replies"));
        assert_eq!(e.line, Some(4));
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e = parse("[proxy]\nlisten = \"127.0.0.1:2525\"\n[policy]\ntrip_replies = \"ten\"\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.key.as_deref(), Some("policy.trip_replies"));
    }

    #[test]
    fn lists_parse_with_overrides() {
        let c = parse(
            "[proxy]\nlisten = \"127.0.0.1:2525\"\n[upstream]\naddress = \"127.0.0.1:1\"\n[[lists]]\naddress = \"all@corp.test\"\nmembers = 91053\ntrip_replies = 5\n",
        )
        .unwrap();
        assert_eq!(c.lists[0].members, 91053);
        assert_eq!(c.lists[0].trip_replies, Some(5));
    }

    #[test]
    fn list_sources_are_checked_with_their_key_and_line() {
        let ok = proxy(
            "[[list_sources]]\nkind = \"postfix\"\nconfig_dir = \"/etc/postfix\"\nrefresh = \"5m\"\n\
             [[list_sources]]\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:389\"\nbase_dn = \"dc=corp\"\n\
             bind_dn = \"cn=sb,dc=corp\"\npassword_file = \"/etc/stormbreaker/ldap.pw\"\nnested = \"in_chain\"\n",
        )
        .unwrap();
        assert_eq!(ok.list_sources[0].refresh, Duration::from_secs(300));
        assert_eq!(ok.list_sources[1].min_members, 50);
        assert_eq!(ok.list_sources[1].member_attribute, "member");
        assert_eq!(ok.list_sources[1].nested, LdapNested::InChain);
        assert_eq!(ok.list_sources[1].label(1), "ldap-2");
        let pf = "[[list_sources]]\nkind = \"postfix\"\n";
        let ldap = "[[list_sources]]\nkind = \"ldap\"\nurl = \"ldap://h\"\nbase_dn = \"dc=x\"\n";
        for (rest, key) in [
            (pf.to_string(), "list_sources[0].maps"),
            (format!("{pf}maps = [\"mysql:/etc/postfix/v.cf\"]\n"), "list_sources[0].maps"),
            (format!("{pf}maps = [\"ldap:/etc/postfix/v.cf\"]\n"), "list_sources[0].maps"),
            (format!("{pf}maps = [\"virtual\"]\n"), "list_sources[0].maps"),
            (format!("{pf}maps = [\"/v\"]\nurl = \"ldap://h\"\n"), "list_sources[0].url"),
            (format!("{pf}maps = [\"/v\"]\nrefresh = \"1s\"\n"), "list_sources[0].refresh"),
            (format!("{pf}maps = [\"/v\"]\nmin_members = 0\n"), "list_sources[0].min_members"),
            (format!("{pf}maps = [\"/v\"]\nname = \"declared\"\n"), "list_sources[0].name"),
            (format!("{pf}maps = [\"/v\"]\n{pf}maps = [\"/w\"]\nname = \"postfix-1\"\n"), "list_sources[1].name"),
            (format!("{pf}maps = [\"/v\"]\nrefresh = \"soon\"\n"), "list_sources[0].refresh"),
            ("[[list_sources]]\nkind = \"ldap\"\nbase_dn = \"dc=x\"\n".into(), "list_sources[0].url"),
            ("[[list_sources]]\nkind = \"ldap\"\nurl = \"http://h\"\nbase_dn = \"dc=x\"\n".into(), "list_sources[0].url"),
            ("[[list_sources]]\nkind = \"ldap\"\nurl = \"ldap://h\"\n".into(), "list_sources[0].base_dn"),
            (format!("{ldap}bind_dn = \"cn=a\"\n"), "list_sources[0].password_file"),
            (format!("{ldap}filter = \"objectClass=group\"\n"), "list_sources[0].filter"),
            (format!("{ldap}maps = [\"/v\"]\n"), "list_sources[0].maps"),
            (format!("{ldap}page_size = 0\n"), "list_sources[0].page_size"),
            (format!("{ldap}nested = \"deep\"\n"), "list_sources[0].nested"),
            ("[[list_sources]]\nkind = \"ldaps\"\n".into(), "list_sources[0].kind"),
            ("[[list_sources]]\nkind = \"ldap\"\nurl = \"ldaps://h\"\nstarttls = true\nbase_dn = \"dc=x\"\n".into(), "list_sources[0].starttls"),
        ] {
            refused(&rest, key);
        }
    }

    #[test]
    fn nothing_to_listen_on_is_an_error() {
        assert!(parse("").is_err());
    }
}
