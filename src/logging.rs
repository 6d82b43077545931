//! Structured logs (tracing): text for people, JSON for log pipelines; to standard error, the
//! journal or syslog (`[log] format`, `output`).
//!
//! - Text is `message key=value …`, logfmt-style: a value is quoted (with `\"` and `\\`
//!   escapes) when it is empty or holds a space, a quote, `=` or a control character, so every
//!   line splits the same way. Colour only when standard error is a terminal.
//! - JSON is one object a line: `timestamp` (RFC 3339, UTC), `level`, `message`, the event's
//!   fields, `target`. Fields keep their types: numbers and booleans as such, and a field
//!   logged with `?` whose value prints as a JSON array or object (`to = ?rcpts`) as that
//!   array or object, not as a string holding one.
//! - `output = "syslog"` sends each line as syslog(3) does to `/dev/log` (`log.socket`):
//!   `<PRI>Mmm dd hh:mm:ss stormbreaker[PID]: line`, facility `log.facility` (mail by
//!   default, beside Postfix). RFC 3164's local form rather than RFC 5424, because that is
//!   what every local syslog daemon parses on `/dev/log` (journald does not parse RFC 5424
//!   there, systemd issue 19251; rsyslog's imuxsock expects the glibc form).
//! - `output = "journald"` speaks the journal's native protocol: MESSAGE is the text line, and
//!   each field is also its own journal field, `SB_<NAME>` (`journalctl SB_DECISION=quarantine`;
//!   the prefix keeps `message_id` from clashing with the journal's own MESSAGE_ID).
//!
//! ## Field names every front end uses
//!
//! The proxy's transaction line and the milter's message line describe the same thing and use
//! the same names, so one query finds a message whichever front end saw it. Values are typed
//! as given.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `event` | string | `transaction` (one line per message, at its end) |
//! | `mode` | string | `proxy` or `milter` |
//! | `session` | string | our id of the SMTP session (the milter: of the MTA's connection) |
//! | `client` | string | the SMTP client's IP address, without port |
//! | `client_port` | number | its port, when known |
//! | `client_name` | string | its reverse name or HELO, when known |
//! | `from` | string | envelope sender, without angle brackets; empty for `<>` |
//! | `rcpts` | number | count of accepted recipients |
//! | `to` | array of strings | the recipients (the first 20; `rcpts` has the count) |
//! | `message_id` | string | the Message-ID header, with angle brackets |
//! | `size` | number | bytes of content |
//! | `decision` | string | `verdict::Verdict::label`: deliver, would-hold, quarantine, reject, tempfail; `refused` when the upstream said no |
//! | `storm` | string | the storm id, once storms have ids; until then absent |
//! | `thread` | string | the thread key whose breaker holds the message (or that counted it) |
//! | `list` | string | the distribution list that made the audience wide |
//! | `audience` | number | weighted fan-out of the envelope |
//! | `breaker` | string | the rule: replies, fast, me-too, manual |
//! | `reason` | string | the one-line reason given to the sender |
//! | `reply` | string | the last line of the reply the client got |
//! | `queue_id` | string | the upstream's (proxy) or Postfix's (milter) queue id |
//! | `held_id` | string | the quarantine id of a held message |
//! | `tls` | string | TLS version of the client session, empty without TLS |
//! | `auth` | string | the SASL name the client authenticated as, empty without |
//! | `ms` | number | milliseconds from MAIL FROM to the final reply |
//!
//! Fields with no value for a message are left out rather than logged empty (tracing records
//! nothing for an `Option` field that is `None`: `thread = hold.map(|h| h.thread.as_str())`),
//! and are never `Debug` renderings of Rust types (`action=Quarantine`). Administrators' actions log
//! `who` (the token's name, or "anonymous") and `client`.

use crate::config::{LogConfig, LogFormat, LogOutput};
use std::fmt;
use std::io::IsTerminal;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The name in syslog lines and the journal's SYSLOG_IDENTIFIER.
const IDENTIFIER: &str = "stormbreaker";
/// Prefix of our fields in the journal.
const JOURNAL_PREFIX: &str = "SB_";
/// A send to the log socket waits at most this long (a stuck syslog daemon must not stop mail
/// for long); the line is then dropped.
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

/// Installs the global subscriber; RUST_LOG, when set, overrides the configured level. Fails
/// when the journal's or syslog's socket cannot be reached.
pub fn init(config: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = layer(config)?.with_filter(filter);
    // Already installed (tests calling twice): keep the first.
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Ok(())
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The formatting layer `config` asks for, unfiltered.
pub fn layer(config: &LogConfig) -> Result<BoxedLayer, String> {
    let socket = || {
        let path = config.socket_path().expect("a socket output");
        Socket::connect(&path).map_err(|e| {
            format!(
                "log.output {:?}: cannot reach {}: {e}",
                format!("{:?}", config.output).to_lowercase(),
                path.display()
            )
        })
    };
    Ok(match (config.output, config.format) {
        (LogOutput::Stderr, LogFormat::Text) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(Logfmt)
            .boxed(),
        (LogOutput::Stderr, LogFormat::Json) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(JsonLines)
            .boxed(),
        (LogOutput::Syslog, format) => {
            let writer = SyslogWriter {
                socket: socket()?,
                facility: config.facility.code(),
                tag: format!("{IDENTIFIER}[{}]", std::process::id()),
            };
            match format {
                // Time and severity are in the syslog header already.
                LogFormat::Text => tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .without_time()
                    .with_level(false)
                    .fmt_fields(Logfmt)
                    .boxed(),
                LogFormat::Json => tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .event_format(JsonLines)
                    .boxed(),
            }
        }
        (LogOutput::Journald, _) => JournaldLayer { socket: socket()? }.boxed(),
    })
}

// ---------------------------------------------------------------------------------------------
// Text: logfmt fields.

/// Whether a text value needs quotes to stay one token.
fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control())
}

/// Writes `value` as one logfmt token.
fn write_value(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    if needs_quotes(value) {
        write!(out, "{value:?}")
    } else {
        out.write_str(value)
    }
}

/// A `?`-logged value's text, and whether it is already a quoted string (`?some_string`).
fn debug_text(value: &dyn fmt::Debug) -> (String, bool) {
    let s = format!("{value:?}");
    let quoted = s.len() >= 2 && s.starts_with('"') && s.ends_with('"');
    (s, quoted)
}

/// Fields as `key=value`, values quoted when they must be (see the module docs).
pub struct Logfmt;

impl<'w> FormatFields<'w> for Logfmt {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = LogfmtVisitor { out: String::new() };
        fields.record(&mut visitor);
        writer.write_str(&visitor.out)
    }
}

/// Collects `message key=value …` into a string.
struct LogfmtVisitor {
    out: String,
}

impl LogfmtVisitor {
    fn sep(&mut self) {
        if !self.out.is_empty() {
            self.out.push(' ');
        }
    }

    fn pair(&mut self, field: &Field, value: &str, quoted: bool) {
        if field.name().starts_with("log.") {
            return;
        }
        self.sep();
        if field.name() == "message" {
            self.out.push_str(value);
            return;
        }
        self.out.push_str(field.name());
        self.out.push('=');
        if quoted {
            self.out.push_str(value);
        } else {
            let _ = write_value(&mut self.out, value);
        }
    }
}

impl Visit for LogfmtVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, value, false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.pair(field, &text, true);
            return;
        }
        let (text, quoted) = debug_text(value);
        self.pair(field, &text, quoted);
    }
}

// ---------------------------------------------------------------------------------------------
// JSON: typed fields.

/// One JSON object a line, fields typed (see the module docs).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writer.write_str(&json_line(event))?;
        writer.write_char('\n')
    }
}

/// The JSON object of one event, without a line end.
fn json_line(event: &Event<'_>) -> String {
    let meta = event.metadata();
    let mut fields = JsonVisitor::default();
    event.record(&mut fields);
    let mut out = String::from("{");
    let mut push = |key: &str, value: &serde_json::Value| {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    };
    push(
        "timestamp",
        &humantime::format_rfc3339_micros(SystemTime::now())
            .to_string()
            .into(),
    );
    push("level", &meta.level().as_str().into());
    for (k, v) in &fields.fields {
        push(k, v);
    }
    let target = fields.log_target.as_deref().unwrap_or(meta.target());
    push("target", &target.into());
    out.push('}');
    out
}

#[derive(Default)]
struct JsonVisitor {
    /// In the order the event gives them, `message` first.
    fields: Vec<(String, serde_json::Value)>,
    /// The `log` crate's target, for records bridged from `log`.
    log_target: Option<String>,
}

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        let name = field.name();
        if name == "log.target" {
            self.log_target = value.as_str().map(str::to_string);
            return;
        }
        if name.starts_with("log.") {
            return;
        }
        self.fields.push((name.to_string(), value));
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| value.to_string().into(), Into::into);
        self.put(field, v);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| value.to_string().into(), Into::into);
        self.put(field, v);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() != "message"
            && (text.starts_with('[') || text.starts_with('{'))
            && let Ok(typed) = serde_json::from_str::<serde_json::Value>(&text)
        {
            self.put(field, typed);
            return;
        }
        let (text, quoted) = (text.clone(), debug_text(value).1);
        // `?a_string` prints quoted: keep the string, not its quotes.
        let value = if quoted && field.name() != "message" {
            serde_json::from_str::<String>(&text).unwrap_or(text)
        } else {
            text
        };
        self.put(field, value.into());
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets: syslog and the journal.

/// A datagram socket connected to a log daemon; connected again when the daemon restarted.
struct Socket {
    path: PathBuf,
    socket: RwLock<UnixDatagram>,
}

impl Socket {
    fn connect(path: &Path) -> std::io::Result<Socket> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Socket {
            path: path.to_path_buf(),
            socket: RwLock::new(socket),
        })
    }

    /// Sends one datagram; after a failure, connects again once and retries. A line that
    /// still cannot go is dropped (logging must never stop mail).
    fn send(&self, payload: &[u8]) -> std::io::Result<()> {
        let first = self
            .socket
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .send(payload);
        match first {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Err(e),
            Err(_) => {
                let fresh = UnixDatagram::unbound()?;
                fresh.connect(&self.path)?;
                fresh.set_write_timeout(Some(SEND_TIMEOUT))?;
                fresh.send(payload)?;
                *self.socket.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                Ok(())
            }
        }
    }
}

/// Syslog severity of a tracing level (RFC 5424 6.2.1).
fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `Mmm dd hh:mm:ss` in local time, as syslog(3) writes it.
fn syslog_time(now: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as libc::time_t;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r only writes into it and reads
    // `secs`, both alive for the call; the process never changes TZ while running.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let converted = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !converted {
        return humantime::format_rfc3339_seconds(now).to_string();
    }
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Formats each event into a buffer and sends it as one syslog datagram.
struct SyslogWriter {
    socket: Socket,
    facility: u8,
    /// `stormbreaker[PID]`.
    tag: String,
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> SyslogLine<'a> {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine<'a> {
        self.line(severity(meta.level()))
    }
}

impl SyslogWriter {
    fn line(&self, severity: u8) -> SyslogLine<'_> {
        SyslogLine {
            to: self,
            severity,
            buf: Vec::with_capacity(256),
        }
    }
}

/// One event's text; sent when dropped.
struct SyslogLine<'a> {
    to: &'a SyslogWriter,
    severity: u8,
    buf: Vec<u8>,
}

impl std::io::Write for SyslogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            return;
        }
        let datagram = format!(
            "<{}>{} {}: {}",
            u16::from(self.to.facility) * 8 + u16::from(self.severity),
            syslog_time(SystemTime::now()),
            self.to.tag,
            // One line per datagram: a daemon would otherwise split or mangle it.
            text.replace('\n', " ")
        );
        let _ = self.to.socket.send(datagram.as_bytes());
    }
}

/// The journal's native protocol: MESSAGE is the text line; each field is `SB_<NAME>`.
struct JournaldLayer {
    socket: Socket,
}

/// Appends one journal field (the export format's binary form when the value spans lines).
fn journal_field(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    } else {
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
        buf.push(b'\n');
    }
}

/// A field name as the journal allows it: upper case letters, digits and `_`.
fn journal_name(name: &str) -> String {
    let mut out = String::from(JOURNAL_PREFIX);
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    out.truncate(64);
    out
}

impl<S: Subscriber> Layer<S> for JournaldLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = LogfmtVisitor { out: String::new() };
        event.record(&mut text);
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let mut buf = Vec::with_capacity(512);
        journal_field(&mut buf, "MESSAGE", &text.out);
        journal_field(&mut buf, "PRIORITY", &severity(meta.level()).to_string());
        journal_field(&mut buf, "SYSLOG_IDENTIFIER", IDENTIFIER);
        journal_field(
            &mut buf,
            "TARGET",
            fields.log_target.as_deref().unwrap_or(meta.target()),
        );
        let whole = buf.len();
        for (name, value) in &fields.fields {
            if name == "message" {
                continue;
            }
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            journal_field(&mut buf, &journal_name(name), &value);
        }
        if let Err(e) = self.socket.send(&buf)
            && e.raw_os_error() == Some(libc::EMSGSIZE)
        {
            // Too big for one datagram: the line alone, cut short.
            buf.truncate(whole);
            let mut short = Vec::new();
            let cut: String = text.out.chars().take(16 * 1024).collect();
            journal_field(&mut short, "MESSAGE", &cut);
            short.extend_from_slice(&buf[buf.len().min(whole)..]);
            let _ = self.socket.send(&short);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures what a layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn sample_event() {
        let rcpts = vec!["a@corp.test".to_string(), "b@corp.test".to_string()];
        let reply = "250 2.0.0 Ok: queued as X";
        tracing::info!(
            session = "s1",
            rcpts = 2u64,
            to = ?rcpts,
            reply = %reply,
            thread = "",
            quoted = ?"x y",
            ok = true,
            "transaction"
        );
    }

    #[test]
    fn json_fields_keep_their_types() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .event_format(JsonLines),
        );
        tracing::subscriber::with_default(subscriber, sample_event);
        let line: serde_json::Value = serde_json::from_str(buf.text().trim()).unwrap();
        assert_eq!(line["message"], "transaction");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["rcpts"], 2);
        assert_eq!(
            line["to"],
            serde_json::json!(["a@corp.test", "b@corp.test"])
        );
        assert_eq!(line["reply"], "250 2.0.0 Ok: queued as X");
        assert_eq!(line["quoted"], "x y");
        assert_eq!(line["ok"], true);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(line["target"].as_str().unwrap().starts_with("stormbreaker"));
        assert!(buf.text().starts_with("{\"timestamp\""), "{}", buf.text());
    }

    #[test]
    fn text_values_are_one_token_each() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .without_time()
                .fmt_fields(Logfmt),
        );
        tracing::subscriber::with_default(subscriber, sample_event);
        let text = buf.text();
        assert!(
            text.contains(
                r#"transaction session=s1 rcpts=2 to="[\"a@corp.test\", \"b@corp.test\"]" reply="250 2.0.0 Ok: queued as X" thread="" quoted="x y" ok=true"#
            ),
            "{text}"
        );
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn syslog_lines_have_the_glibc_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let writer = SyslogWriter {
            socket: Socket::connect(&path).unwrap(),
            facility: crate::config::SyslogFacility::Mail.code(),
            tag: "stormbreaker[42]".into(),
        };
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .fmt_fields(Logfmt),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(thread = "subj:x y", "breaker opened")
        });
        let mut buf = [0u8; 2048];
        let n = server.recv(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        // mail.warning = 2 * 8 + 4.
        assert!(line.starts_with("<20>"), "{line}");
        let rest = &line[4..];
        assert_eq!(
            &rest[15..],
            " stormbreaker[42]: stormbreaker::logging::tests: breaker opened thread=\"subj:x y\""
        );
    }

    #[test]
    fn journal_fields_are_named_and_framed() {
        let mut buf = Vec::new();
        journal_field(&mut buf, "MESSAGE", "one line");
        journal_field(&mut buf, "SB_X", "two\nlines");
        assert_eq!(&buf[..17], b"MESSAGE=one line\n");
        assert_eq!(&buf[17..22], b"SB_X\n");
        assert_eq!(&buf[22..30], &9u64.to_le_bytes());
        assert_eq!(&buf[30..], b"two\nlines\n");
        assert_eq!(journal_name("message_id"), "SB_MESSAGE_ID");
        assert_eq!(journal_name("client.name"), "SB_CLIENT_NAME");
    }
}
