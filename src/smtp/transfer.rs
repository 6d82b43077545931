//! The DATA phase: read the message, ask the engine once the headers are known, then stream it
//! to the upstream, hold it, or refuse it, always reading the client to its real end of data.

use crate::quarantine::HoldWriter;
use crate::reply;
use crate::smtp::data::{self, DataDecoder, DataFlaws};
use crate::smtp::session::{Flow, Read, Session};
use crate::smtp::upstream::{Reply, UpstreamError};
use crate::verdict::{Action, Verdict};

/// Headers beyond this are not waited for: the engine decides on what it has.
const MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// Where the message content goes once the verdict is known.
enum Sink {
    /// Still reading the header block.
    Undecided,
    /// The upstream said 354; content is streamed, dot-stuffed.
    Upstream,
    /// A breaker holds it: content goes to a quarantine temp file, committed at the end.
    Hold(Box<HoldWriter>),
    /// Read to the end, then answer with this.
    Refuse(Refusal),
}

enum Refusal {
    Policy(Box<Verdict>),
    /// The upstream refused DATA.
    Upstream(Reply),
    UpstreamLost(UpstreamError),
    Flawed,
    Local(&'static str),
}

struct Receiver {
    headers: Vec<u8>,
    sink: Sink,
    verdict: Verdict,
    wire: Vec<u8>,
    at_line_start: bool,
    /// The content so far ends with CRLF (or is empty).
    ends_with_crlf: bool,
    /// The final dot went upstream with the last content.
    dot_sent: bool,
    /// DATA was sent upstream when the client sent it (its 354 comes back while the client
    /// sends content). Until the final dot, the only way out is dropping the connection: a
    /// command sent now would be message content.
    upstream_in_data: bool,
}

/// Handles DATA from the 354 to the final reply.
pub(crate) async fn data(s: &mut Session) -> Flow {
    let Some(tx) = s.tx.as_ref() else {
        s.reply(reply::NEED_MAIL_BEFORE_DATA.as_bytes());
        return Flow::Continue;
    };
    if tx.envelope.rcpts.is_empty() {
        let text = if tx.rcpt_attempts == 0 {
            reply::NEED_RCPT
        } else {
            reply::NO_VALID_RCPT
        };
        s.reply(text.as_bytes());
        return Flow::Continue;
    }
    // Most mail can never be held (narrow audience): DATA goes upstream now, so its 354 comes
    // back while the client sends content. Mail that could be held waits for the verdict, so a
    // hold can end the upstream transaction with RSET instead of dropping the connection.
    let early = !s.shared.engine.could_hold(&tx.envelope);
    s.reply(reply::START_DATA.as_bytes());
    let upstream_in_data = match s.upstream.as_mut() {
        Some(up) if early => match up.write(b"DATA\r\n").await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(session = %s.id, error = %e, "upstream lost at DATA");
                s.upstream = None;
                false
            }
        },
        _ => false,
    };
    let cfg = s.shared.config.clone();
    let mut decoder = DataDecoder::new(
        cfg.proxy.bare_newline,
        cfg.proxy.max_line_length,
        s.offered.size_limit,
    );
    let mut rx = Receiver {
        headers: Vec::new(),
        sink: Sink::Undecided,
        verdict: Verdict::DELIVER,
        wire: Vec::with_capacity(16 * 1024),
        at_line_start: true,
        ends_with_crlf: true,
        dot_sent: false,
        upstream_in_data,
    };
    let mut content = Vec::with_capacity(16 * 1024);
    let started = std::time::Instant::now();
    loop {
        content.clear();
        let end = decoder.decode(&s.inbuf, &mut content);
        // Bytes after the end of data stay in the buffer: they are the client's next commands
        // (RFC 2920 3.1 lets a client pipeline them after the final dot; Postfix and Exim send
        // `.\r\nQUIT\r\n` in one write). They are read as commands, never as content, only
        // after this message's reply.
        s.inbuf.drain(..end.unwrap_or(s.inbuf.len()));
        if decoder.flaws.any() {
            rx.abandon(s, Refusal::Flawed);
        } else {
            rx.feed(s, &content, end.is_some()).await;
        }
        if end.is_some() {
            break;
        }
        let _ = s.flush().await;
        // A deadline that grows with what arrived: a client must keep up min_data_rate.
        let earned = std::time::Duration::from_secs_f64(
            decoder.wire_bytes() as f64 / cfg.proxy.min_data_rate as f64,
        );
        let outcome = s.read_more(started + cfg.proxy.data_timeout + earned).await;
        if !matches!(outcome, Read::Data) {
            // Client gone, too slow, or shutting down: nothing may be delivered.
            s.upstream = None;
            s.tx = None;
            let text = match outcome {
                Read::TimedOut => Some(reply::TIMEOUT),
                Read::Stopped => Some(reply::SERVICE_UNAVAILABLE),
                _ => None,
            };
            tracing::info!(session = %s.id, client = %s.peer, "client stopped mid-DATA; upstream transaction abandoned");
            if let Some(text) = text {
                s.reply(text.as_bytes());
            }
            return Flow::Close;
        }
    }
    let size = decoder.size();
    let final_reply = rx.finish(s, decoder.flaws).await;
    log_transaction(s, size, &rx.verdict, &final_reply);
    s.reply(final_reply.as_bytes());
    s.tx = None;
    Flow::Continue
}

impl Receiver {
    async fn feed(&mut self, s: &mut Session, content: &[u8], at_end: bool) {
        if let Sink::Undecided = self.sink {
            self.headers.extend_from_slice(content);
            let Some(header_len) = header_block_len(&self.headers, at_end) else {
                return;
            };
            self.decide(s, header_len).await;
            let buffered = std::mem::take(&mut self.headers);
            self.push(s, &buffered, at_end).await;
            // Keep the header block for logs and the hold record.
            self.headers = buffered;
            self.headers.truncate(header_len);
            return;
        }
        self.push(s, content, at_end).await;
    }

    async fn decide(&mut self, s: &mut Session, header_len: usize) {
        let Some(tx) = s.tx.as_ref() else {
            self.sink = Sink::Refuse(Refusal::Local(reply::LOCAL_ERROR));
            return;
        };
        let headers = &self.headers[..header_len];
        let now = crate::now_ms();
        self.verdict = s.shared.engine.decide(&tx.envelope, headers, now).await;
        if let (Some(opened), Some(notifier)) = (&self.verdict.opened, &s.shared.notifier) {
            metrics::counter!(crate::admin::metric::BREAKERS_OPENED).increment(1);
            notifier.breaker_opened(opened, now);
        }
        if self.verdict.action != Action::Deliver {
            // Held or refused: the upstream must never see this message's final dot.
            self.leave_data(s);
        }
        self.sink = match self.verdict.action {
            Action::Deliver => match s.upstream.as_mut() {
                Some(up) if self.upstream_in_data => match up.read_reply().await {
                    Ok(r) if r.code == 354 => Sink::Upstream,
                    Ok(r) => {
                        self.upstream_in_data = false;
                        Sink::Refuse(Refusal::Upstream(r))
                    }
                    Err(e) => {
                        self.leave_data(s);
                        Sink::Refuse(Refusal::UpstreamLost(e))
                    }
                },
                Some(up) => match up.command(b"DATA\r\n").await {
                    Ok(r) if r.code == 354 => {
                        self.upstream_in_data = true;
                        Sink::Upstream
                    }
                    Ok(r) => Sink::Refuse(Refusal::Upstream(r)),
                    Err(e) => {
                        s.upstream = None;
                        Sink::Refuse(Refusal::UpstreamLost(e))
                    }
                },
                None => Sink::Refuse(Refusal::Local(reply::UPSTREAM_FAILED)),
            },
            Action::Quarantine => match &s.shared.quarantine {
                Some(q) => {
                    let q = q.clone();
                    match tokio::task::spawn_blocking(move || q.begin()).await {
                        Ok(Ok(writer)) => Sink::Hold(Box::new(writer)),
                        failed => {
                            tracing::error!(session = %s.id, error = %task_error(failed.map(|r| r.err())), "cannot start a held message; client told 451");
                            Sink::Refuse(Refusal::Local(reply::LOCAL_ERROR))
                        }
                    }
                }
                None => Sink::Refuse(Refusal::Local(reply::LOCAL_ERROR)),
            },
            Action::Reject | Action::Tempfail => {
                Sink::Refuse(Refusal::Policy(Box::new(self.verdict.clone())))
            }
        };
    }

    /// Sends content on; with `at_end`, the final dot goes in the same write (one syscall and
    /// one wake-up of the upstream less per message).
    async fn push(&mut self, s: &mut Session, content: &[u8], at_end: bool) {
        if content.is_empty() && !at_end {
            return;
        }
        if !content.is_empty() {
            self.ends_with_crlf = content.ends_with(b"\r\n");
        }
        if let Sink::Hold(_) = self.sink {
            let Sink::Hold(mut writer) = std::mem::replace(&mut self.sink, Sink::Undecided) else {
                return;
            };
            let chunk = content.to_vec();
            let written = tokio::task::spawn_blocking(move || {
                let r = writer.write_all(&chunk);
                (writer, r)
            })
            .await;
            self.sink = match written {
                Ok((writer, Ok(()))) => Sink::Hold(writer),
                failed => {
                    tracing::error!(session = %s.id, error = %task_error(failed.map(|(_, r)| r.err())), "cannot write a held message; client told 451");
                    Sink::Refuse(Refusal::Local(reply::LOCAL_ERROR))
                }
            };
            return;
        }
        if let Sink::Upstream = self.sink {
            self.wire.clear();
            data::stuff(content, &mut self.at_line_start, &mut self.wire);
            if at_end {
                self.wire
                    .extend_from_slice(data::end_of_data(self.ends_with_crlf));
                self.dot_sent = true;
            }
            let written = match s.upstream.as_mut() {
                Some(up) => up.write(&self.wire).await,
                None => Err(UpstreamError::Closed),
            };
            if let Err(e) = written {
                s.upstream = None;
                self.sink = Sink::Refuse(Refusal::UpstreamLost(e));
            }
        }
    }

    /// Stops relaying: an upstream mid-DATA is dropped so it can never see a final dot.
    fn abandon(&mut self, s: &mut Session, why: Refusal) {
        self.leave_data(s);
        if !matches!(self.sink, Sink::Refuse(_)) {
            self.sink = Sink::Refuse(why);
        }
    }

    /// Drops an upstream that is inside DATA: closing is the only abort that cannot deliver.
    fn leave_data(&mut self, s: &mut Session) {
        if self.upstream_in_data {
            s.upstream = None;
            self.upstream_in_data = false;
        }
    }

    /// After the end of data: the one reply the client gets for this message.
    async fn finish(&mut self, s: &mut Session, flaws: DataFlaws) -> String {
        if !matches!(self.sink, Sink::Upstream) {
            self.leave_data(s);
        }
        if flaws.any() {
            // Nothing went upstream past DATA (abandon dropped it); end the transaction there.
            s.reset_upstream().await;
            return if flaws.too_big {
                reply::SIZE_EXCEEDED
            } else if flaws.bare_newline {
                reply::BARE_NEWLINE
            } else {
                reply::DATA_LINE_TOO_LONG
            }
            .to_string();
        }
        match std::mem::replace(&mut self.sink, Sink::Undecided) {
            Sink::Upstream => {
                let Some(up) = s.upstream.as_mut() else {
                    return reply::UPSTREAM_FAILED.to_string();
                };
                self.upstream_in_data = false;
                let result = if self.dot_sent {
                    up.read_reply().await
                } else {
                    match up.write(data::end_of_data(self.ends_with_crlf)).await {
                        Ok(()) => up.read_reply().await,
                        Err(e) => Err(e),
                    }
                };
                match result {
                    Ok(r) if r.code >= 200 && r.code < 300 || r.code >= 400 => {
                        String::from_utf8_lossy(&r.raw).into_owned()
                    }
                    Ok(r) => {
                        // 1xx/3xx where a final reply is due: not success (checklist 15).
                        tracing::warn!(session = %s.id, reply = %r.summary(), "unexpected upstream reply to end of data");
                        s.upstream = None;
                        reply::UPSTREAM_BAD_REPLY.to_string()
                    }
                    Err(e) => {
                        tracing::warn!(session = %s.id, error = %e, "upstream lost after end of data; client told 451");
                        s.upstream = None;
                        reply::UPSTREAM_FAILED.to_string()
                    }
                }
            }
            Sink::Hold(writer) => {
                s.reset_upstream().await;
                self.commit_hold(s, writer).await
            }
            Sink::Refuse(Refusal::Policy(v)) => {
                s.reset_upstream().await;
                policy_reply(&v)
            }
            Sink::Refuse(Refusal::Upstream(r)) => {
                s.reset_upstream().await;
                if r.code >= 400 {
                    String::from_utf8_lossy(&r.raw).into_owned()
                } else {
                    reply::UPSTREAM_BAD_REPLY.to_string()
                }
            }
            Sink::Refuse(Refusal::UpstreamLost(e)) => {
                tracing::warn!(session = %s.id, error = %e, "upstream lost during DATA; client told 451");
                reply::UPSTREAM_FAILED.to_string()
            }
            Sink::Refuse(Refusal::Local(text)) => {
                s.reset_upstream().await;
                text.to_string()
            }
            Sink::Refuse(Refusal::Flawed) | Sink::Undecided => {
                s.reset_upstream().await;
                reply::LOCAL_ERROR.to_string()
            }
        }
    }
}

impl Receiver {
    /// Makes the held message durable; only then does the client hear 250.
    async fn commit_hold(&mut self, s: &mut Session, writer: Box<HoldWriter>) -> String {
        let (Some(tx), Some(hold)) = (s.tx.as_ref(), self.verdict.hold.clone()) else {
            return reply::LOCAL_ERROR.to_string();
        };
        let envelope = tx.envelope.clone();
        let headers = std::mem::take(&mut self.headers);
        let committed = {
            let (envelope, hold) = (envelope.clone(), hold.clone());
            tokio::task::spawn_blocking(move || {
                let r = writer.commit(&envelope, &hold, &headers);
                (r, headers)
            })
            .await
        };
        match committed {
            Ok((Ok(id), headers)) => {
                self.headers = headers;
                metrics::counter!(crate::admin::metric::HELD).increment(1);
                if let Some(notifier) = &s.shared.notifier {
                    notifier.message_held(&envelope, &hold, crate::now_ms());
                }
                tracing::warn!(session = %s.id, id = %id, thread = %hold.thread, list = hold.list.as_deref().unwrap_or(""), breaker = hold.breaker, reason = %hold.reason, "message held in quarantine");
                format!("250 2.0.0 {id} held: reply-all storm protection, thread under review\r\n")
            }
            failed => {
                tracing::error!(session = %s.id, error = %task_error(failed.map(|(r, _)| r.err())), "cannot commit a held message; client told 451");
                reply::LOCAL_ERROR.to_string()
            }
        }
    }
}

/// The cause of a failed blocking quarantine step, for the log: the I/O error's own message
/// (not its Debug form), or why the task did not finish.
fn task_error<E: std::fmt::Display>(failed: Result<Option<E>, tokio::task::JoinError>) -> String {
    match failed {
        Ok(Some(e)) => e.to_string(),
        Ok(None) => "unknown error".to_string(),
        Err(e) => format!("quarantine task failed: {e}"),
    }
}

/// The reply for a policy refusal, with the engine's explanation.
fn policy_reply(v: &Verdict) -> String {
    let reason = v
        .hold
        .as_ref()
        .map(|h| h.reason.as_str())
        .unwrap_or("Reply-all storm protection");
    let code = match v.action {
        Action::Tempfail => reply::POLICY_TEMPFAIL,
        _ => reply::POLICY_REJECT,
    };
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(400)
        .collect();
    format!("{code} {reason}\r\n")
}

/// Length of the header block (through its empty line) once it is complete.
fn header_block_len(buf: &[u8], at_end: bool) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(0);
    }
    if let Some(pos) = memchr::memmem::find(buf, b"\r\n\r\n") {
        return Some(pos + 4);
    }
    if at_end || buf.len() >= MAX_HEADER_BLOCK {
        return Some(buf.len());
    }
    None
}

fn log_transaction(s: &Session, size: usize, verdict: &Verdict, final_reply: &str) {
    let Some(tx) = s.tx.as_ref() else { return };
    let decision = if final_reply.starts_with('2') || verdict.action != Action::Deliver {
        verdict.label()
    } else {
        "refused"
    };
    metrics::counter!(crate::admin::metric::MESSAGES, "decision" => decision).increment(1);
    let upstream = final_reply.trim_end().rsplit("\r\n").next().unwrap_or("");
    let hold = verdict.hold.as_ref();
    tracing::info!(
        session = %s.id,
        client = %s.peer,
        from = %tx.envelope.mail_from,
        rcpts = tx.envelope.rcpts.len(),
        size,
        reply = %upstream,
        decision,
        thread = hold.map(|h| h.thread.as_str()).unwrap_or(""),
        list = hold.and_then(|h| h.list.as_deref()).unwrap_or(""),
        breaker = hold.map(|h| h.breaker).unwrap_or(""),
        tls = s.client.tls_version(),
        ms = tx.started.elapsed().as_millis() as u64,
        "transaction"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_block_ends_at_the_empty_line() {
        assert_eq!(header_block_len(b"A: b\r\n\r\nbody", false), Some(8));
        assert_eq!(header_block_len(b"A: b\r\n", false), None);
        assert_eq!(header_block_len(b"A: b\r\n", true), Some(6));
        assert_eq!(header_block_len(b"\r\nbody", false), Some(0));
    }
}
