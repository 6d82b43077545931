//! The DATA phase of one message: read the content, ask the engine once the headers are
//! known, then stream the message to the upstream, hold it, or refuse it, always reading the
//! client to its real end of data. The session's loop feeds it; it never touches a socket.

use crate::frontend::{Decider, Disposition, Shared};
use crate::proxy::session::Transaction;
use crate::proxy::upstream::UpstreamLink;
use crate::quarantine::HoldWriter;
use crate::reply;
use crate::smtp::client::{ClientError, Reply};
use crate::smtp::data::{DataDecoder, DataFlaws};
use crate::verdict::Verdict;
use std::time::Instant;

/// Headers beyond this are not waited for: the engine decides on what it has.
pub const MAX_HEADER_BLOCK: usize = 1024 * 1024;

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
    /// The verdict's own reply (reject, tempfail, or cannot hold).
    Reply(String),
    /// The upstream refused DATA.
    Upstream(Reply),
    UpstreamLost(ClientError),
    /// A framing flaw (bare newline, long line, size): the reply comes from the flaws.
    Flawed,
    Local(&'static str),
}

/// What the data phase needs from its session, borrowed for one step.
pub struct Context<'a> {
    pub shared: &'a Shared,
    /// What decides (the engine the session started with).
    pub decider: &'a dyn Decider,
    pub upstream: &'a mut UpstreamLink,
    pub tx: &'a Transaction,
    pub session: &'a str,
}

/// One message being received.
pub struct DataPhase {
    decoder: DataDecoder,
    headers: Vec<u8>,
    sink: Sink,
    verdict: Verdict,
    /// Content decoded from the last read, reused between reads.
    content: Vec<u8>,
    /// The last content, sent with the final dot.
    tail: Vec<u8>,
    /// The quarantine id, once held.
    held_id: Option<String>,
    pub started: Instant,
}

/// What feeding the client's bytes came to.
pub enum Fed {
    /// All of it was message content: more is needed.
    More,
    /// The end of data was found after this many bytes; what follows is the client's next
    /// commands (RFC 2920 3.1 lets it pipeline them after the final dot).
    End(usize),
}

impl DataPhase {
    pub fn new(config: &crate::config::Config, size_limit: usize) -> Self {
        let proxy = &config.proxy;
        DataPhase {
            decoder: DataDecoder::new(proxy.bare_newline, proxy.max_line_length, size_limit),
            headers: Vec::new(),
            sink: Sink::Undecided,
            verdict: Verdict::DELIVER,
            content: Vec::with_capacity(16 * 1024),
            tail: Vec::new(),
            held_id: None,
            started: Instant::now(),
        }
    }

    /// Bytes read off the wire so far (for the minimum data rate).
    pub fn wire_bytes(&self) -> usize {
        self.decoder.wire_bytes()
    }

    /// Content bytes decoded so far.
    pub fn size(&self) -> usize {
        self.decoder.size()
    }

    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// The header block (empty until the headers were complete).
    pub fn headers(&self) -> &[u8] {
        &self.headers
    }

    /// The quarantine id of a held message.
    pub fn held_id(&self) -> Option<&str> {
        self.held_id.as_deref()
    }

    /// Where the decision was taken, for the log line.
    pub fn decided_at(&self) -> &'static str {
        "end-of-headers"
    }

    /// Feeds the client's bytes: decodes them, and relays, holds or discards the content.
    pub async fn feed(&mut self, cx: &mut Context<'_>, input: &[u8]) -> Fed {
        let mut content = std::mem::take(&mut self.content);
        content.clear();
        let end = self.decoder.decode(input, &mut content);
        if self.decoder.flaws.any() {
            self.refuse(cx, Refusal::Flawed);
        } else {
            self.accept(cx, &content, end.is_some()).await;
        }
        self.content = content;
        match end {
            Some(n) => Fed::End(n),
            None => Fed::More,
        }
    }

    async fn accept(&mut self, cx: &mut Context<'_>, content: &[u8], at_end: bool) {
        if let Sink::Undecided = self.sink {
            self.headers.extend_from_slice(content);
            let Some(header_len) = header_block_len(&self.headers, at_end) else {
                return;
            };
            let stamp = self.decide(cx, header_len).await;
            // The mark of this decision goes first, so a milter on the upstream MTA sees it.
            if let (Some(stamp), Sink::Upstream) = (stamp, &self.sink) {
                self.push(cx, stamp.as_bytes(), false).await;
            }
            let buffered = std::mem::take(&mut self.headers);
            self.push(cx, &buffered, at_end).await;
            // Keep the header block for the hold record.
            self.headers = buffered;
            self.headers.truncate(header_len);
            return;
        }
        self.push(cx, content, at_end).await;
    }

    /// Decides, and returns the mark to add when the message goes on (see `mark.rs`).
    async fn decide(&mut self, cx: &mut Context<'_>, header_len: usize) -> Option<String> {
        let headers = &self.headers[..header_len];
        let now = crate::now_ms();
        let (verdict, stamp) = cx
            .decider
            .decide_and_mark(&cx.tx.envelope, headers, now)
            .await;
        self.verdict = verdict;
        crate::frontend::decided(&self.verdict, cx.shared.notifier.as_deref(), now);
        let can_hold = cx.shared.quarantine.is_some();
        self.sink = match crate::frontend::disposition(&self.verdict, can_hold) {
            Disposition::Deliver => match cx.upstream.start_content().await {
                Ok(None) => Sink::Upstream,
                Ok(Some(refused)) => Sink::Refuse(Refusal::Upstream(refused)),
                Err(e) => Sink::Refuse(Refusal::UpstreamLost(e)),
            },
            Disposition::Hold => {
                // Held: the upstream must never see this message's final dot.
                cx.upstream.abandon_data();
                let q = cx.shared.quarantine.clone()?;
                match tokio::task::spawn_blocking(move || q.begin()).await {
                    Ok(Ok(writer)) => Sink::Hold(Box::new(writer)),
                    failed => {
                        tracing::error!(session = %cx.session, error = %task_error(failed.map(|r| r.err())), "cannot start a held message; client told 451");
                        Sink::Refuse(Refusal::Local(reply::LOCAL_ERROR))
                    }
                }
            }
            Disposition::Refuse(text) => {
                cx.upstream.abandon_data();
                Sink::Refuse(Refusal::Reply(text))
            }
        };
        stamp
    }

    /// Sends content on. The last chunk waits for `finish`, which sends it with the final dot
    /// in one write (one syscall and one wake-up of the upstream less per message).
    async fn push(&mut self, cx: &mut Context<'_>, content: &[u8], at_end: bool) {
        match &mut self.sink {
            Sink::Hold(_) => {
                let Sink::Hold(mut writer) = std::mem::replace(&mut self.sink, Sink::Undecided)
                else {
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
                        tracing::error!(session = %cx.session, error = %task_error(failed.map(|(_, r)| r.err())), "cannot write a held message; client told 451");
                        Sink::Refuse(Refusal::Local(reply::LOCAL_ERROR))
                    }
                };
            }
            Sink::Upstream if at_end => self.tail.extend_from_slice(content),
            Sink::Upstream => {
                if let Err(e) = cx.upstream.send_content(content).await {
                    self.sink = Sink::Refuse(Refusal::UpstreamLost(e));
                }
            }
            Sink::Undecided | Sink::Refuse(_) => {}
        }
    }

    /// Stops relaying: an upstream mid-DATA is dropped so it can never see a final dot.
    fn refuse(&mut self, cx: &mut Context<'_>, why: Refusal) {
        cx.upstream.abandon_data();
        if !matches!(self.sink, Sink::Refuse(_)) {
            self.sink = Sink::Refuse(why);
        }
    }

    /// After the end of data: the one reply the client gets for this message.
    pub async fn finish(&mut self, cx: &mut Context<'_>) -> String {
        let flaws = self.decoder.flaws;
        if flaws.any() {
            cx.upstream.reset().await;
            return flaw_reply(flaws).to_string();
        }
        match std::mem::replace(&mut self.sink, Sink::Undecided) {
            Sink::Upstream => {
                let tail = std::mem::take(&mut self.tail);
                match cx.upstream.finish(&tail).await {
                    Ok(r) if r.code >= 200 && r.code < 300 || r.code >= 400 => {
                        String::from_utf8_lossy(&r.raw).into_owned()
                    }
                    Ok(r) => {
                        // 1xx/3xx where a final reply is due is not success (SMTP-CHECKLIST 15).
                        tracing::warn!(session = %cx.session, reply = %r.summary(), "unexpected upstream reply to end of data");
                        reply::UPSTREAM_BAD_REPLY.to_string()
                    }
                    Err(e) => {
                        metrics::counter!(crate::admin::metric::UPSTREAM_FAILURES).increment(1);
                        tracing::warn!(session = %cx.session, error = %e, "upstream lost after end of data; client told 451");
                        reply::UPSTREAM_FAILED.to_string()
                    }
                }
            }
            Sink::Hold(writer) => {
                cx.upstream.reset().await;
                self.commit_hold(cx, writer).await
            }
            Sink::Refuse(Refusal::Reply(text)) => {
                cx.upstream.reset().await;
                text
            }
            Sink::Refuse(Refusal::Upstream(r)) => {
                cx.upstream.reset().await;
                if r.code >= 400 {
                    String::from_utf8_lossy(&r.raw).into_owned()
                } else {
                    reply::UPSTREAM_BAD_REPLY.to_string()
                }
            }
            Sink::Refuse(Refusal::UpstreamLost(e)) => {
                metrics::counter!(crate::admin::metric::UPSTREAM_FAILURES).increment(1);
                tracing::warn!(session = %cx.session, error = %e, "upstream lost during DATA; client told 451");
                reply::UPSTREAM_FAILED.to_string()
            }
            Sink::Refuse(Refusal::Local(text)) => {
                cx.upstream.reset().await;
                text.to_string()
            }
            Sink::Refuse(Refusal::Flawed) | Sink::Undecided => {
                cx.upstream.reset().await;
                reply::LOCAL_ERROR.to_string()
            }
        }
    }

    /// Makes the held message durable; only then does the client hear 250.
    async fn commit_hold(&mut self, cx: &mut Context<'_>, writer: Box<HoldWriter>) -> String {
        let Some(hold) = self.verdict.hold.clone() else {
            return reply::LOCAL_ERROR.to_string();
        };
        let envelope = cx.tx.envelope.clone();
        let headers = std::mem::take(&mut self.headers);
        let committed = {
            let (envelope, hold) = (envelope.clone(), hold.clone());
            tokio::task::spawn_blocking(move || writer.commit(&envelope, &hold, &headers)).await
        };
        match committed {
            Ok(Ok(id)) => {
                let notifier = cx.shared.notifier.as_deref();
                crate::frontend::held(&envelope, &hold, &id.0, notifier);
                let text = crate::frontend::held_reply(&id.0);
                self.held_id = Some(id.0);
                text
            }
            failed => {
                tracing::error!(session = %cx.session, error = %task_error(failed.map(|r| r.err())), "cannot commit a held message; client told 451");
                reply::LOCAL_ERROR.to_string()
            }
        }
    }
}

/// The reply for a message with framing flaws (read to its end, nothing delivered).
fn flaw_reply(flaws: DataFlaws) -> &'static str {
    if flaws.too_big {
        reply::SIZE_EXCEEDED
    } else if flaws.bare_newline {
        reply::BARE_NEWLINE
    } else {
        reply::DATA_LINE_TOO_LONG
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
