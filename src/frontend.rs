//! What every front end (the SMTP proxy, the milter) does with a verdict, in one place so the
//! two cannot drift: the decider they ask, what a verdict comes to for a front end that can or
//! cannot hold, the reply texts, and the side effects of a decision (the alert when a breaker
//! opens, the metrics, the hold's log line, and the one log line per message with the same
//! fields whatever the front end; see `logging` for the field names).
//!
//! A new front end gets all of it by asking a [`Decider`], passing the verdict to
//! [`disposition`], calling [`decided`] and, for a hold, [`held`], and ending each message with
//! [`finished`].

use crate::config::Config;
use crate::engine::Engine;
use crate::envelope::Envelope;
use crate::notify::Notifier;
use crate::proxy::pool::{PoolLimits, UpstreamPool};
use crate::quarantine::Quarantine;
use crate::reply;
use crate::smtp::client::{ClientTls, Target, Timeouts};
use crate::verdict::{Action, Hold, Verdict};
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// A future a decider returns (boxed, so front ends can hold any decider behind one pointer).
pub type Deciding<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// What decides about each message: the storm engine, or a scripted stand-in in tests.
pub trait Decider: Send + Sync {
    /// Whether a message with this envelope could be held at all. When not, a front end may
    /// let it go on before its headers are known (the proxy sends DATA upstream at once, the
    /// milter accepts at DATA). The default waits for the headers of every message.
    fn could_hold(&self, _envelope: &Envelope) -> bool {
        true
    }

    /// The verdict for a message; `headers` is its header block (through the empty line).
    fn decide<'a>(&'a self, envelope: &'a Envelope, headers: &'a [u8], now_ms: u64)
    -> Deciding<'a>;

    /// `decide`, and the header line that marks a message let through as decided already
    /// (`mark.rs`), for a front end that relays the message on to an MTA that may ask
    /// stormbreaker again (the proxy). None by default.
    fn decide_and_mark<'a>(
        &'a self,
        envelope: &'a Envelope,
        headers: &'a [u8],
        now_ms: u64,
    ) -> DecidingMarked<'a> {
        let deciding = self.decide(envelope, headers, now_ms);
        Box::pin(async move { (deciding.await, None) })
    }
}

/// What `Decider::decide_and_mark` returns.
pub type DecidingMarked<'a> = Pin<Box<dyn Future<Output = (Verdict, Option<String>)> + Send + 'a>>;

impl Decider for Engine {
    fn could_hold(&self, envelope: &Envelope) -> bool {
        Engine::could_hold(self, envelope)
    }

    fn decide<'a>(
        &'a self,
        envelope: &'a Envelope,
        headers: &'a [u8],
        now_ms: u64,
    ) -> Deciding<'a> {
        Box::pin(Engine::decide(self, envelope, headers, now_ms))
    }

    fn decide_and_mark<'a>(
        &'a self,
        envelope: &'a Envelope,
        headers: &'a [u8],
        now_ms: u64,
    ) -> DecidingMarked<'a> {
        Box::pin(async move {
            let d = Engine::decide_message(self, envelope, headers, now_ms).await;
            (d.verdict, d.stamp)
        })
    }
}

/// What the front ends and the admin API share. The configuration, the engine and the
/// upstream target are swapped whole on SIGHUP; a session keeps the ones it started with, so a
/// reload never changes the rules under a session in flight.
pub struct Shared {
    pub config: ArcSwap<Config>,
    pub engine: ArcSwap<Engine>,
    /// Where held messages go (`[quarantine] dir`).
    pub quarantine: Option<Quarantine>,
    /// Alerts to admins and notices to held senders.
    pub notifier: Option<Arc<Notifier>>,
    /// The proxy's idle upstream connections for the next client session.
    pub pool: UpstreamPool,
    /// TLS for the proxy's clients when set (`[proxy] tls_cert` and `tls_key`).
    pub tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// The upstream MTA: address, our EHLO name, deadlines, TLS.
    pub target: ArcSwap<Target>,
    /// Where releases and alerts go (`[reinject]`, else the upstream).
    pub reinject: ArcSwap<Target>,
}

impl Shared {
    /// Fails when `[upstream] tls` is set and its CA file or name does not load.
    pub fn new(
        config: Arc<Config>,
        engine: Arc<Engine>,
        quarantine: Option<Quarantine>,
        notifier: Option<Arc<Notifier>>,
    ) -> anyhow::Result<Self> {
        let pool = UpstreamPool::new(PoolLimits::from_config(&config.upstream));
        let target = upstream_target(&config).map_err(|e| anyhow::anyhow!("upstream.tls: {e}"))?;
        let reinject =
            reinject_target(&config).map_err(|e| anyhow::anyhow!("reinject.tls: {e}"))?;
        Ok(Shared {
            reinject: ArcSwap::new(Arc::new(reinject)),
            config: ArcSwap::new(config),
            engine: ArcSwap::new(engine),
            quarantine,
            notifier,
            pool,
            tls: arc_swap::ArcSwapOption::empty(),
            target: ArcSwap::new(Arc::new(target)),
        })
    }

    /// Puts a reloaded configuration, and the engine and upstream built from it, in place for
    /// the sessions that start from now on. Idle upstream connections to the old target are
    /// closed.
    pub async fn reload(&self, config: Arc<Config>, engine: Arc<Engine>) -> Result<(), String> {
        let target = upstream_target(&config)?;
        let reinject = reinject_target(&config)?;
        self.reinject.store(Arc::new(reinject));
        let moved = self.target.load().address != target.address;
        self.config.store(config);
        self.engine.store(engine);
        self.target.store(Arc::new(target));
        if moved {
            self.pool.close_all().await;
        }
        Ok(())
    }
}

/// The upstream as `[upstream]` describes it: where the proxy relays.
pub fn upstream_target(config: &Config) -> Result<Target, String> {
    let up = &config.upstream;
    target(
        config,
        &up.address,
        up.tls,
        up.tls_ca.as_deref(),
        up.tls_name.as_deref(),
    )
}

/// Where released messages and alerts go: `[reinject]`, else `[upstream]`.
pub fn reinject_target(config: &Config) -> Result<Target, String> {
    match &config.reinject {
        Some(r) => target(
            config,
            &r.address,
            r.tls,
            r.tls_ca.as_deref(),
            r.tls_name.as_deref(),
        ),
        None => upstream_target(config),
    }
}

fn target(
    config: &Config,
    address: &str,
    tls: crate::config::UpstreamTls,
    ca: Option<&std::path::Path>,
    name: Option<&str>,
) -> Result<Target, String> {
    let tls = match tls {
        crate::config::UpstreamTls::None => None,
        crate::config::UpstreamTls::Starttls => {
            let connector = crate::tls::connector(ca)?;
            let name = crate::tls::server_name(name, address)?;
            Some(Arc::new(ClientTls { connector, name }))
        }
    };
    Ok(Target {
        address: address.to_string(),
        hostname: config.proxy.hostname.clone(),
        timeouts: Timeouts {
            connect: config.upstream.connect_timeout,
            reply: config.upstream.reply_timeout,
        },
        tls,
    })
}

/// What a front end does with a message, given its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Let it go on (the proxy relays it; the milter continues).
    Deliver,
    /// Keep it in the quarantine; the client hears 250 once it is committed.
    Hold,
    /// Answer with this reply (code, enhanced code, text; one line with CRLF).
    Refuse(String),
}

/// The disposition of `verdict` for a front end that `can_hold` (it has a quarantine). A
/// message that should be held where it cannot be is deferred (451 4.3.0): never delivered,
/// never lost.
pub fn disposition(verdict: &Verdict, can_hold: bool) -> Disposition {
    match verdict.action {
        Action::Deliver => Disposition::Deliver,
        Action::Quarantine if can_hold => Disposition::Hold,
        Action::Quarantine => Disposition::Refuse(reply::CANNOT_HOLD.to_string()),
        Action::Reject | Action::Tempfail => Disposition::Refuse(refusal(verdict)),
    }
}

/// The reply for a policy refusal, saying what happened and what to do instead:
/// `550 5.7.1 Not delivered: reply-all storm on this thread (...), reply to the sender only`
/// or `451 4.7.1 Deferred, try later: ...`. One line, well within the 512 octets of a reply
/// line (RFC 5321 4.5.3.1.5).
pub fn refusal(verdict: &Verdict) -> String {
    let (reason, advice) = match verdict.hold.as_ref() {
        Some(h) => (h.reason.as_str(), crate::engine::advice(h.breaker)),
        None => ("reply-all storm protection", "reply to the sender only"),
    };
    let (code, what) = match verdict.action {
        Action::Tempfail => (reply::POLICY_TEMPFAIL, "Deferred, try later"),
        _ => (reply::POLICY_REJECT, "Not delivered"),
    };
    format!(
        "{code} {}\r\n",
        reply_text(&format!("{what}: {reason}, {advice}"), MAX_REPLY_TEXT)
    )
}

/// Text after the code and enhanced code: a reply line is at most 512 octets with CRLF.
const MAX_REPLY_TEXT: usize = 400;

/// Text put in a reply (SMTP or milter) or a header value: printable ASCII only (CR, LF, NUL
/// and other controls become spaces; `%`, which Sendmail reads as a format, becomes `?`), at
/// most `max` bytes, no trailing space.
pub fn reply_text(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            '%' => '?',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => ' ',
        })
        .take(max)
        .collect();
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// The reply a held message gets, naming its quarantine id.
pub fn held_reply(id: &str) -> String {
    format!(
        "250 2.0.0 {id} held for review: reply-all storm protection, an administrator may release it\r\n"
    )
}

/// A verdict was reached: when it opened a breaker, count it and alert the admins (once per
/// opening; the notifier keeps the rates).
pub fn decided(verdict: &Verdict, notifier: Option<&Notifier>, now_ms: u64) {
    if let Some(opened) = &verdict.opened {
        metrics::counter!(crate::admin::metric::BREAKERS_OPENED).increment(1);
        if let Some(notifier) = notifier {
            notifier.breaker_opened(opened, now_ms);
        }
    }
}

/// A message is durably in the quarantine: count it, tell the notifier (alert updates, the
/// sender's notice), and log it.
pub fn held(envelope: &Envelope, hold: &Hold, id: &str, notifier: Option<&Notifier>) {
    metrics::counter!(crate::admin::metric::HELD).increment(1);
    if let Some(notifier) = notifier {
        notifier.message_held(envelope, hold, id, crate::now_ms());
    }
    tracing::warn!(
        held_id = id,
        thread = %hold.thread,
        list = hold.list.as_deref(),
        breaker = hold.breaker,
        reason = %hold.reason,
        "message held in quarantine"
    );
}

/// Everything the one log line of a message says, whichever front end handled it.
pub struct MessageFacts<'a> {
    /// `proxy` or `milter`.
    pub mode: &'static str,
    pub session: &'a str,
    pub client: Option<SocketAddr>,
    pub client_name: Option<&'a str>,
    pub envelope: &'a Envelope,
    /// The header block, for the Message-ID.
    pub headers: &'a [u8],
    pub size: Option<usize>,
    /// Where the front end decided: `data` (on the envelope alone) or `end-of-headers`.
    pub decided_at: &'static str,
    /// The reply the client got (last line), when the front end knows it.
    pub reply: Option<&'a str>,
    pub queue_id: Option<&'a str>,
    pub held_id: Option<&'a str>,
    pub tls: Option<&'a str>,
    pub ms: Option<u64>,
}

/// The one log line per message, and the message metric. `refused`: the message did not go
/// on although the verdict said deliver (the upstream, the framing or a local error said no).
pub fn finished(facts: &MessageFacts<'_>, verdict: &Verdict, refused: bool) {
    let decision = if refused && verdict.action == Action::Deliver {
        "refused"
    } else {
        verdict.label()
    };
    metrics::counter!(crate::admin::metric::MESSAGES, "decision" => decision).increment(1);
    let envelope = facts.envelope;
    let hold = verdict.hold.as_ref();
    let to: Vec<&str> = envelope
        .rcpts
        .iter()
        .take(20)
        .map(|r| r.address.as_str())
        .collect();
    let message_id = message_id(facts.headers);
    tracing::info!(
        event = "transaction",
        mode = facts.mode,
        session = facts.session,
        client = facts.client.map(|a| a.ip().to_string()),
        client_port = facts.client.map(|a| a.port()),
        client_name = facts.client_name,
        from = %envelope.mail_from,
        rcpts = envelope.rcpts.len(),
        to = ?to,
        message_id = message_id.as_deref(),
        size = facts.size,
        decision,
        decided_at = facts.decided_at,
        thread = hold.map(|h| h.thread.as_str()),
        list = hold.and_then(|h| h.list.as_deref()),
        audience = hold.map(|h| h.audience),
        breaker = hold.map(|h| h.breaker),
        reason = hold.map(|h| h.reason.as_str()),
        reply = facts.reply,
        queue_id = facts.queue_id,
        held_id = facts.held_id,
        tls = facts.tls.filter(|t| !t.is_empty()),
        auth = envelope.auth.as_deref(),
        ms = facts.ms,
        "transaction"
    );
}

/// The Message-ID header of a header block, with its angle brackets, for logs.
pub fn message_id(headers: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("message-id") {
            continue;
        }
        let mut value = value.trim().to_string();
        // A folded Message-ID goes on in the next lines.
        while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
            value.push_str(next.trim());
            lines.next();
        }
        let value = reply_text(&value, 250);
        return (!value.is_empty()).then_some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Hold;

    #[test]
    fn reply_text_keeps_replies_on_one_printable_line() {
        assert_eq!(
            reply_text("a\r\nb\0c%d\u{e9}  ", 100),
            "a  b c?d".to_string()
        );
        assert_eq!(reply_text("abcdef", 3), "abc");
    }

    fn verdict(action: Action) -> Verdict {
        Verdict {
            action,
            hold: Some(Hold {
                thread: "subj:x".into(),
                list: None,
                audience: 3000,
                breaker: "replies",
                replies: 10,
                senders: 10,
                reason: "reply-all storm: 10% of\r\nBcc: evil".into(),
                action: Default::default(),
                origin: None,
            }),
            opened: None,
        }
    }

    #[test]
    fn every_verdict_has_one_disposition_for_both_front_ends() {
        assert_eq!(disposition(&Verdict::DELIVER, true), Disposition::Deliver);
        assert_eq!(
            disposition(&verdict(Action::Quarantine), true),
            Disposition::Hold
        );
        // Cannot hold: deferred, the same reply in the proxy and the milter.
        assert_eq!(
            disposition(&verdict(Action::Quarantine), false),
            Disposition::Refuse(reply::CANNOT_HOLD.into())
        );
        let Disposition::Refuse(r) = disposition(&verdict(Action::Reject), true) else {
            panic!()
        };
        assert_eq!(
            r,
            "550 5.7.1 Not delivered: reply-all storm: 10? of  Bcc: evil, reply to the sender only\r\n"
        );
        let Disposition::Refuse(r) = disposition(&verdict(Action::Tempfail), false) else {
            panic!()
        };
        assert_eq!(
            r,
            "451 4.7.1 Deferred, try later: reply-all storm: 10? of  Bcc: evil, reply to the sender only\r\n"
        );
        // Dry run: delivered.
        assert_eq!(
            disposition(&verdict(Action::Deliver), true),
            Disposition::Deliver
        );
    }

    #[test]
    fn message_ids_are_found_folded_and_cleaned() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\n").as_deref(),
            Some("<a@b>")
        );
        assert_eq!(
            message_id(b"message-id:\r\n <long@host>\r\n\r\n").as_deref(),
            Some("<long@host>")
        );
        assert_eq!(message_id(b"Subject: none\r\n\r\n"), None);
    }
}
