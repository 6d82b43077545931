//! The policy file's schema: every section and key, with its default. Sections deny unknown
//! keys. Durations are written like "60m", "6h", "14d".

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration. Sections of later features are accepted and validated already.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Where stormbreaker's own mail goes (releases, alerts); `[upstream]` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinject: Option<ReinjectConfig>,
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub lists: Vec<ListConfig>,
    /// Where else list sizes come from: the MTA's alias maps, the directory's groups.
    #[serde(default)]
    pub list_sources: Vec<ListSourceConfig>,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub milter: MilterConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub mark: MarkConfig,
    #[serde(default)]
    pub service: ServiceConfig,
}

pub use crate::smtp::data::BareNewline;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address the SMTP proxy listens on; absent means no proxy (milter only).
    pub listen: Option<SocketAddr>,
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    pub max_connections: usize,
    /// Bytes of message content (after dot-unstuffing); advertised as SIZE.
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// RCPTs past `max_recipients` get 452 4.5.3 without counting toward `max_errors` until
    /// this many (Postfix's smtpd_recipient_overshoot_limit).
    pub recipient_overshoot_limit: usize,
    /// A text line in DATA, CRLF included (RFC 5321 4.5.3.1.6).
    pub max_line_length: usize,
    /// A command line, CRLF included (RFC 5321 4.5.3.1.4).
    pub max_command_length: usize,
    /// Errors (4xx/5xx replies) in one session before it is closed with 421.
    pub max_errors: usize,
    pub bare_newline: BareNewline,
    /// The client's next command must arrive whole within this: a deadline, not an idle timer,
    /// so a client trickling a byte at a time is cut off too (RFC 5321 4.5.3.2.7: 5 minutes).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub command_timeout: Duration,
    /// DATA must arrive within this plus what `min_data_rate` earns (RFC 5321 4.5.3.2.6).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub data_timeout: Duration,
    /// Bytes per second a client must sustain in DATA beyond `data_timeout` (Postfix's
    /// smtpd_min_data_rate).
    pub min_data_rate: u64,
    /// On SIGTERM, how long sessions in flight may take before they get 421.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain (leaf first) for STARTTLS; with `tls_key`, STARTTLS is offered.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// With a certificate: `starttls` (offered in EHLO, RFC 3207; ports 25 and 587) or
    /// `implicit` (TLS from the first byte, RFC 8314; port 465).
    pub tls: ProxyTls,
    /// Sessions at once from one client address (Postfix's anvil allows 50); 0 turns it off.
    pub max_connections_per_client: usize,
}

/// How clients get TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyTls {
    #[default]
    Starttls,
    Implicit,
}

/// TLS on the leg to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain text: keep the upstream on loopback or a trusted network.
    #[default]
    None,
    /// STARTTLS required, the certificate verified (`tls_ca`, `tls_name`): nothing is sent in
    /// clear after EHLO, and an upstream that cannot do it is not used.
    Starttls,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: None,
            hostname: "stormbreaker.localdomain".into(),
            max_connections: 1000,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            recipient_overshoot_limit: 1000,
            max_line_length: 1000,
            max_command_length: 512,
            max_errors: 20,
            bare_newline: BareNewline::Reject,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            min_data_rate: 500,
            shutdown_grace: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            tls: ProxyTls::Starttls,
            max_connections_per_client: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The MTA every accepted message goes to (host:port).
    pub address: String,
    /// How the real client address and HELO reach the upstream (see [`PassClient`]).
    pub pass_client: PassClient,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    /// Waiting for any upstream reply. Kept well under the 10 minutes a client waits after its
    /// final dot (RFC 5321 4.5.3.2.6), and under Postfix's 100 s smtpd_proxy_timeout.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub reply_timeout: Duration,
    /// Idle upstream connections kept for the next client session; 0 turns reuse off. Only
    /// connections that carry no client identity are reused (never after XCLIENT).
    pub pool_size: usize,
    /// An idle connection is closed (QUIT) after this long unused (Postfix's
    /// smtp_connection_cache_time_limit is 2s; MTAs time idle sessions out after minutes).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub pool_idle_time: Duration,
    /// Transactions one upstream connection carries before it is closed; 20 matches
    /// Exchange's MaxMessagesPerConnection default.
    pub reuse_count_limit: u32,
    /// Age after which an upstream connection is not reused (Postfix's
    /// smtp_connection_reuse_time_limit).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub reuse_time_limit: Duration,
    /// TLS to the upstream, for relayed mail, releases and alerts (AUTH may cross a network).
    pub tls: UpstreamTls,
    /// PEM CA certificates the upstream's certificate must chain to; the system's when unset.
    pub tls_ca: Option<PathBuf>,
    /// The name the upstream's certificate must carry; the address's host when unset.
    pub tls_name: Option<String>,
}

/// Where released messages and alerts go when that is not `[upstream]`: in front of a
/// submission server that requires AUTH, or with the milter (a port that does not call it).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReinjectConfig {
    /// host:port of an MTA that relays for this host without AUTH.
    pub address: String,
    pub tls: UpstreamTls,
    pub tls_ca: Option<PathBuf>,
    pub tls_name: Option<String>,
}

/// How the proxy tells the upstream who the real client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassClient {
    /// `true`: XCLIENT when offered (the MTA's restrictions then judge the real client), else
    /// XFORWARD before each transaction. An XCLIENT connection serves one client session only.
    #[default]
    Xclient,
    /// `"xforward"`: XFORWARD only. The MTA logs the real client but judges the proxy; upstream
    /// connections stay reusable across client sessions.
    Xforward,
    /// `false`: the upstream sees only the proxy.
    Off,
}

impl PassClient {
    pub fn xclient(self) -> bool {
        self == PassClient::Xclient
    }

    pub fn xforward(self) -> bool {
        self != PassClient::Off
    }
}

impl Serialize for PassClient {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PassClient::Xclient => s.serialize_bool(true),
            PassClient::Xforward => s.serialize_str("xforward"),
            PassClient::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for PassClient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PassClient;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"true, false, "xclient" or "xforward""#)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<PassClient, E> {
                Ok(if v {
                    PassClient::Xclient
                } else {
                    PassClient::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PassClient, E> {
                match v {
                    "xclient" => Ok(PassClient::Xclient),
                    "xforward" => Ok(PassClient::Xforward),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            // Unset: the proxy refuses to start without it; releases and alerts refuse to go.
            address: String::new(),
            pass_client: PassClient::Xclient,
            connect_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(90),
            pool_size: 32,
            pool_idle_time: Duration::from_secs(5),
            reuse_count_limit: 20,
            reuse_time_limit: Duration::from_secs(300),
            tls: UpstreamTls::None,
            tls_ca: None,
            tls_name: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    pub dir: PathBuf,
    /// Held messages older than this are purged (and the purge logged).
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub retention: Duration,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/spool/stormbreaker/quarantine"),
            retention: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

pub use crate::verdict::HoldAction;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A message is wide when its weighted fan-out reaches this many people: the wider of its
    /// envelope's recipients and the To/Cc addresses of its headers (lists counted by members).
    pub wide_audience: u64,
    /// Transactions with at least this many envelope recipients (lists counted by members) are
    /// decided with their headers; fewer are delivered unread (the proxy relays them at once,
    /// the milter accepts them at DATA). A message split by its sending MTA into transactions
    /// of this size or more is counted whole; a smaller last part passes. 1 reads every message.
    pub header_audience_from: u64,
    /// Transactions of one message (same Message-ID and envelope sender) within this long are
    /// one message: one verdict for all of them, counted once.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub copies_window: Duration,
    /// Distinct people replying widely in one thread within `window` that open its breaker.
    pub trip_replies: u32,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub window: Duration,
    /// How long an open breaker holds replies.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub block_for: Duration,
    /// A breaker that re-opens doubles its block, up to this.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub max_block: Duration,
    pub action: HoldAction,
    /// Faster trip for very large audiences: this many distinct senders within `fast_window`
    /// to an audience of at least `fast_audience` opens the breaker. 0 turns it off.
    pub fast_audience: u64,
    pub fast_senders: u32,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub fast_window: Duration,
    /// "Me too" storms: distinct people sending new (non-reply) wide messages with the same
    /// normalised subject to the same audience. 0 turns it off.
    pub me_too_messages: u32,
    /// Waves: distinct people starting new threads (any subject) to the same wide audience
    /// within `wave_window` that open the audience's wave breaker. 0 turns it off.
    pub wave_senders: u32,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub wave_window: Duration,
    /// Senders whose new messages waves neither count nor hold (announcement senders).
    pub wave_exempt_senders: Vec<String>,
    /// Hold automatic replies (out of office: `Auto-Submitted`, `X-Autoreply`,
    /// `Precedence: auto_reply/bulk/junk`) to a wide audience from the first.
    pub hold_auto_replies: bool,
    /// Envelope senders never counted nor held (the alert sender is always exempt).
    pub exempt_senders: Vec<String>,
    /// Most threads tracked at once; the oldest are forgotten first beyond it.
    pub max_threads: usize,
    /// A file of distribution lists for sites with thousands: one `address members` per line.
    pub lists_file: Option<PathBuf>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            wide_audience: 2500,
            header_audience_from: 2,
            copies_window: Duration::from_secs(10 * 60),
            trip_replies: 10,
            window: Duration::from_secs(3600),
            block_for: Duration::from_secs(6 * 3600),
            max_block: Duration::from_secs(48 * 3600),
            action: HoldAction::Quarantine,
            fast_audience: 50_000,
            fast_senders: 5,
            fast_window: Duration::from_secs(5 * 60),
            me_too_messages: 10,
            wave_senders: 10,
            wave_window: Duration::from_secs(15 * 60),
            wave_exempt_senders: Vec::new(),
            hold_auto_replies: true,
            exempt_senders: Vec::new(),
            max_threads: 1_000_000,
            lists_file: None,
        }
    }
}

/// A declared distribution list: one RCPT that the MTA expands into `members` people.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    pub address: String,
    pub members: u64,
    /// Never count nor hold mail to this list (for example an announcements list).
    #[serde(default)]
    pub exempt: bool,
    /// Per-list overrides of the policy thresholds.
    #[serde(default)]
    pub wide_audience: Option<u64>,
    #[serde(default)]
    pub trip_replies: Option<u32>,
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub block_for: Option<Duration>,
    #[serde(default)]
    pub action: Option<HoldAction>,
    #[serde(default)]
    pub fast_senders: Option<u32>,
    #[serde(default)]
    pub me_too_messages: Option<u32>,
    /// 0 exempts the list from waves.
    #[serde(default)]
    pub wave_senders: Option<u32>,
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub wave_window: Option<Duration>,
}

/// Map types `postmap -s` can list (after an optional `proxy:`).
pub const POSTFIX_LISTABLE_MAPS: [&str; 8] = [
    "hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash", "inline",
];

/// What a list source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListSourceKind {
    /// Postfix's `virtual_alias_maps` (read with `postconf` and `postmap -s`), or alias files
    /// in Postfix's source format.
    Postfix,
    /// Group member counts from an LDAP directory or Active Directory.
    Ldap,
}

/// How an LDAP group's nested groups are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LdapNested {
    /// Member DNs that are groups found by the search are expanded by stormbreaker, each person
    /// counted once, cycles cut (OpenLDAP, 389-ds, and AD groups under 1,500 direct members).
    #[default]
    Expand,
    /// Active Directory counts for us: one search per group with the
    /// LDAP_MATCHING_RULE_IN_CHAIN filter `memberOf:1.2.840.113556.1.4.1941:=`. AD only.
    InChain,
    /// Direct members only; nested groups count as one member each.
    Direct,
}

/// One `[[list_sources]]` entry. One flat table for both kinds so every key keeps its line in
/// error messages; `validate` refuses keys of the other kind.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListSourceConfig {
    pub kind: ListSourceKind,
    /// Names the source in logs and metrics; `postfix-1`, `ldap-2`... (1-based position) when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How often the sizes are read again (and at every SIGHUP).
    #[serde(
        default = "default_list_refresh",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub refresh: Duration,
    /// Only aliases or groups that reach at least this many people become lists.
    #[serde(default = "default_min_members")]
    pub min_members: u64,
    /// Postfix: the configuration folder whose `virtual_alias_maps` are read (`postconf -c`),
    /// also given to `postmap -c` for `maps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_dir: Option<PathBuf>,
    /// Postfix: maps to read instead of (or without) a config_dir: `hash:/etc/postfix/virtual`,
    /// `lmdb:...`, `texthash:...`, or a plain path to an alias file in Postfix's source format.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<String>,
    /// LDAP: `ldap://host:389` or `ldaps://host:636`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// LDAP: STARTTLS on an `ldap://` URL.
    #[serde(default)]
    pub starttls: bool,
    /// LDAP: PEM CA certificates the server's certificate must chain to; the system's when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// LDAP: the DN to bind as; anonymous when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_dn: Option<String>,
    /// LDAP: a file holding the bind password (one line; a trailing newline is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// LDAP: where groups are searched (subtree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dn: Option<String>,
    /// LDAP: which entries are groups.
    #[serde(default = "default_group_filter")]
    pub filter: String,
    /// LDAP: the group's address attribute.
    #[serde(default = "default_mail_attribute")]
    pub mail_attribute: String,
    /// LDAP: the attribute holding member DNs (`member`, `uniqueMember`).
    #[serde(default = "default_member_attribute")]
    pub member_attribute: String,
    #[serde(default)]
    pub nested: LdapNested,
    /// LDAP: entries per page of a search (RFC 2696 paged results); AD's MaxPageSize is 1000.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// LDAP: connecting, binding and each search must finish within this.
    #[serde(
        default = "default_ldap_timeout",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
}

fn default_list_refresh() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_min_members() -> u64 {
    50
}

fn default_group_filter() -> String {
    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))".into()
}

fn default_mail_attribute() -> String {
    "mail".into()
}

fn default_member_attribute() -> String {
    "member".into()
}

fn default_page_size() -> u32 {
    500
}

fn default_ldap_timeout() -> Duration {
    Duration::from_secs(30)
}

impl ListSourceConfig {
    /// The name in logs and metrics; `index` is the entry's 0-based position.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!(
                "{}-{}",
                match self.kind {
                    ListSourceKind::Postfix => "postfix",
                    ListSourceKind::Ldap => "ldap",
                },
                index + 1
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Who gets the alert when a breaker opens, and the reminders; empty means no mail to
    /// admins.
    pub admins: Vec<String>,
    /// Header sender of alerts and notices, and envelope sender of alerts; always exempt from
    /// every breaker. Notices go with the null envelope sender (MAIL FROM:<>).
    pub from: String,
    /// At most one update per breaker per interval while it stays open.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Tell each sender whose reply was held, once per storm. Never for reject or tempfail
    /// (the client gets the SMTP reply then), automatic replies, exempt senders or `from`.
    pub notify_senders: bool,
    /// Subject of the sender notice; placeholders as in `sender_notice_template`.
    pub sender_notice_subject: String,
    /// Body of the sender notice. Placeholders: {subject} (the thread's), {storm} (its id),
    /// {list}, {audience}, {sender}, {id} (the held message's), {reason}, {advice}, {from};
    /// `{{` and `}}` for braces.
    pub sender_notice_template: String,
    /// Remind the admins while held mail waits (and before retention deletes it).
    pub reminders: bool,
    /// At most one reminder of the held mail per this.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub remind_every: Duration,
    /// One mail naming the held messages this long before `quarantine.retention` deletes them.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub remind_before_expiry: Duration,
}

/// The default sender notice (`[notify] sender_notice_template`).
pub const SENDER_NOTICE_SUBJECT: &str = "Your reply was held for review: {subject}";
pub const SENDER_NOTICE_TEMPLATE: &str = "\
Your message on \"{subject}\" to {list} was held for review, not delivered.

Many people were replying to everybody on this thread at once (a reply-all
storm), so further replies to everybody are held for a while: {reason}.
Please {advice}.

The mail administrators have been told. If your message was held by mistake
they can release it; its reference is {id} (storm {storm}).

This notice is sent once per storm; it is automatic, please do not reply.
";

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            admins: Vec::new(),
            from: "stormbreaker@localhost".into(),
            interval: Duration::from_secs(30 * 60),
            notify_senders: true,
            sender_notice_subject: SENDER_NOTICE_SUBJECT.into(),
            sender_notice_template: SENDER_NOTICE_TEMPLATE.into(),
            reminders: true,
            remind_every: Duration::from_secs(4 * 3600),
            remind_before_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    #[default]
    Memory,
    Redis,
}

/// When the shared state store does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StateFallback {
    /// Decide with the in-process counters; mail keeps flowing.
    #[default]
    Local,
    /// 451 4.7.1 every message until the store answers again.
    Tempfail,
}

/// How the Redis backend finds its server(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server at `url` (or a proxy/endpoint that always names the primary).
    #[default]
    Standalone,
    /// A Redis Cluster reached through the seed `nodes`; storms spread over its shards.
    Cluster,
    /// The primary that `sentinels` name for `master_name`; followed across failovers.
    Sentinel,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub mode: RedisMode,
    /// Standalone: the server (`redis://`, `rediss://` for TLS, `unix://`).
    pub url: Option<String>,
    /// Cluster: seed nodes (`redis://host:port` or `rediss://`); the rest is discovered.
    pub nodes: Vec<String>,
    /// Sentinel: the sentinels (`redis://host:26379` or `rediss://`).
    pub sentinels: Vec<String>,
    /// Sentinel: the name the sentinels monitor the primary under.
    pub master_name: Option<String>,
    /// Cluster and sentinel: credentials for the data nodes (standalone takes them in `url`).
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS (`rediss://`): the CA certificate(s) to verify servers with, PEM; the system's
    /// roots when unset.
    pub tls_ca_file: Option<PathBuf>,
    /// TLS client certificate and key (PEM), for servers with `tls-auth-clients yes`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub prefix: String,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub timeout: Duration,
    pub on_unavailable: StateFallback,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Memory,
            mode: RedisMode::Standalone,
            url: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            username: None,
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            prefix: "sb:".into(),
            timeout: Duration::from_millis(200),
            on_unavailable: StateFallback::Local,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// `host:port` or a unix socket path; absent means no milter.
    pub listen: Option<String>,
    /// Add an `X-Stormbreaker` header naming the decision to delivered mail.
    pub trace_header: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    /// Standard error (colour only when it is a terminal); under systemd, the journal gets
    /// it as plain lines.
    #[default]
    Stderr,
    /// The journal's native protocol: the line as MESSAGE, each field as SB_<NAME>.
    Journald,
    /// The local syslog socket, as syslog(3) writes it (`<PRI>Mmm dd hh:mm:ss
    /// stormbreaker[PID]: line`).
    Syslog,
}

/// Syslog facility of `output = "syslog"` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    /// Where Postfix logs, so one `grep` finds a message in both.
    #[default]
    Mail,
    Daemon,
    User,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    /// The facility number of RFC 5424 6.2.1.
    pub fn code(self) -> u8 {
        match self {
            SyslogFacility::User => 1,
            SyslogFacility::Mail => 2,
            SyslogFacility::Daemon => 3,
            SyslogFacility::Local0 => 16,
            SyslogFacility::Local1 => 17,
            SyslogFacility::Local2 => 18,
            SyslogFacility::Local3 => 19,
            SyslogFacility::Local4 => 20,
            SyslogFacility::Local5 => 21,
            SyslogFacility::Local6 => 22,
            SyslogFacility::Local7 => 23,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "stormbreaker=debug". RUST_LOG overrides it.
    pub level: String,
    pub output: LogOutput,
    /// The socket of `output`: /dev/log for syslog, /run/systemd/journal/socket for journald
    /// when unset.
    pub socket: Option<PathBuf>,
    /// Facility of syslog lines.
    pub facility: SyslogFacility,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            output: LogOutput::Stderr,
            socket: None,
            facility: SyslogFacility::Mail,
        }
    }
}

impl LogConfig {
    /// The socket lines are sent to, for the journald and syslog outputs.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self.output {
            LogOutput::Stderr => None,
            LogOutput::Journald => Some(
                self.socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/run/systemd/journal/socket")),
            ),
            LogOutput::Syslog => Some(
                self.socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/dev/log")),
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The web console, the admin API, /metrics, /health and /ready on http://LISTEN/;
    /// absent means none.
    pub listen: Option<SocketAddr>,
    /// Who may use the console and the API: one `name:token` a line (a line with only a token
    /// is named "admin"); tokens of at least 16 characters; the file readable by its owner
    /// and group only. Without it the console and API answer loopback clients only, as
    /// "anonymous". /metrics, /health and /ready never ask for a token.
    pub token_file: Option<PathBuf>,
    /// This node's name in a quarantine view of several nodes (`peers`): the `node` of its
    /// held mail and the prefix of its ids elsewhere (`mx1:20261202T…`). The host name when
    /// unset.
    pub node_name: Option<String>,
    /// The other nodes serving the same organisation, each with its own quarantine: `quarantine
    /// list --all-nodes` and the console list their held mail through their admin API, and a
    /// release or delete of `NAME:ID` runs there.
    pub peers: Vec<PeerConfig>,
}

/// Another node's admin API (`[admin] peers`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its `[admin] node_name`: letters, digits, '.', '_', '-'.
    pub name: String,
    /// `http://HOST:PORT` of its `[admin] listen`.
    pub url: String,
    /// The token file whose entry (the one named like the caller, else the first) the peer
    /// accepts; this node's `[admin] token_file` when unset.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// `node_name`, else the host name (else "localhost").
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }

    /// The token file a request to `peer` authenticates with.
    pub fn peer_token_file<'a>(&'a self, peer: &'a PeerConfig) -> Option<&'a PathBuf> {
        peer.token_file.as_ref().or(self.token_file.as_ref())
    }
}

/// The signed mark of a decision already made (`X-Stormbreaker-Mark`, see `mark.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarkConfig {
    /// The secret (made at first start when missing); `mark.key` in the quarantine folder when
    /// unset. Give a proxy and a milter on different hosts the same file.
    pub key_file: Option<PathBuf>,
    /// The proxy adds the mark to mail it relays after counting it, so that a milter on the
    /// upstream MTA does not count it again.
    pub stamp: bool,
}

impl Default for MarkConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            stamp: true,
        }
    }
}

impl Config {
    /// Where the mark secret lives.
    pub fn mark_key_path(&self) -> PathBuf {
        self.mark
            .key_file
            .clone()
            .unwrap_or_else(|| self.quarantine.dir.join("mark.key"))
    }

    /// The largest sender threshold any rule or list uses: how many senders a storm keeps.
    pub fn sender_threshold(&self) -> u32 {
        let p = &self.policy;
        let mut max = p
            .trip_replies
            .max(p.me_too_messages)
            .max(p.wave_senders)
            .max(if p.fast_audience > 0 {
                p.fast_senders
            } else {
                0
            });
        for l in &self.lists {
            for v in [
                l.trip_replies,
                l.fast_senders,
                l.me_too_messages,
                l.wave_senders,
            ]
            .into_iter()
            .flatten()
            {
                max = max.max(v);
            }
        }
        max
    }
}

/// Whom `run` runs as.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// The user the service runs as. Started as root, `run` binds its listeners (port 25),
    /// then switches to this user and `group` for good, before it opens the quarantine or
    /// reads anything else; started as this user already (systemd's `User=`), nothing
    /// changes; started as anyone else, it refuses. Unset: it runs as whoever started it.
    pub user: Option<String>,
    /// The group; unset: the user's primary group. The user's supplementary groups (from
    /// /etc/group) are kept, as systemd's `User=` keeps them.
    pub group: Option<String>,
}

/// Parses "60m", "6h", "14d", "1h 30m", "250ms".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration {s:?} ({e}); write it like \"60m\", \"6h\", \"14d\"")
    })
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

pub(super) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// A duration as the policy file writes it ("1h 30m").
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}
