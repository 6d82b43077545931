//! Milter front end: Postfix (`smtpd_milters`, `milter_protocol = 6`) and Sendmail 8.14+ ask the
//! storm engine about each message.
//!
//! - `codec`: the wire format (framing, command and response tables), no I/O.
//! - `mta`: the MTA's side of the wire format, for tests and `fuzz/` (feature `mta`).
//! - `session`: one connection's state machine, no I/O: commands in, responses out.
//! - this file: listening (TCP or unix socket), reading packets with limits and deadlines,
//!   asking the engine at end of message, and the one log line per message.
//!
//! Recommended Postfix settings: `milter_protocol = 6` and `milter_default_action = tempfail`,
//! so that mail waits in the senders' queues while stormbreaker is down instead of passing
//! unchecked (`accept`) or bouncing (`reject`).

pub mod codec;
#[cfg(any(test, feature = "mta"))]
pub mod mta;
pub mod session;

use crate::config::Config;
use crate::engine::Engine;
use crate::envelope::Envelope;
use crate::service::Shutdown;
use crate::verdict::{Action, Verdict};
use codec::{CodecError, FrameReader, Response};
use session::{Pending, Session, Step};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long a connection may sit between commands. The MTA holds its milter connection for a
/// whole SMTP session, idle clients included, so this is generous; it bounds dead peers.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Once a packet has begun, the rest of it must arrive within this.
const PACKET_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more are closed at once with a log line. Postfix opens one per
/// smtpd process (default_process_limit 100).
const MAX_SESSIONS: usize = 1024;
/// Read buffer per MTA connection; most milter packets are far smaller.
const READ_BUFFER: usize = 8 * 1024;

/// Serves the milter protocol on `listen` (`host:port` or a unix socket path) until shutdown.
pub async fn serve(
    config: Arc<Config>,
    engine: Arc<Engine>,
    listen: String,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let options = Options {
        trace_header: config.milter.trace_header,
        shutdown_grace: config.proxy.shutdown_grace,
    };
    serve_with(engine, listen, options, shutdown).await
}

/// What decides about each message: the storm engine, or a scripted stand-in in tests.
pub trait Decider: Send + Sync + 'static {
    /// Whether a message with this envelope could be held at all. When not, the message is
    /// accepted at DATA and the MTA sends us nothing more of it (no headers, no end of message).
    /// The default waits for the headers of every message.
    fn could_hold(&self, _envelope: &Envelope) -> bool {
        true
    }

    fn decide(
        &self,
        envelope: &Envelope,
        headers: &[u8],
        now_ms: u64,
    ) -> impl Future<Output = Verdict> + Send;
}

impl Decider for Engine {
    fn could_hold(&self, envelope: &Envelope) -> bool {
        Engine::could_hold(self, envelope)
    }

    fn decide(
        &self,
        envelope: &Envelope,
        headers: &[u8],
        now_ms: u64,
    ) -> impl Future<Output = Verdict> + Send {
        Engine::decide(self, envelope, headers, now_ms)
    }
}

/// Settings of the milter server.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Add `X-Stormbreaker: <decision>` to messages that go on.
    pub trace_header: bool,
    /// On shutdown, how long connections in flight may go on before they are closed.
    pub shutdown_grace: Duration,
}

/// Serves the milter protocol on `listen` with `decider` until `shutdown` turns true.
pub async fn serve_with<D: Decider>(
    decider: Arc<D>,
    listen: String,
    options: Options,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = Listener::bind(&listen).await?;
    tracing::info!(listen = %listen, "milter listening");
    let mut sessions = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    next_id += 1;
                    if sessions.len() >= MAX_SESSIONS {
                        tracing::warn!(peer = %peer, limit = MAX_SESSIONS,
                            "milter: too many connections, closing the new one");
                        continue;
                    }
                    let decider = decider.clone();
                    let id = next_id;
                    sessions.spawn(async move {
                        run_connection(stream, id, &peer, &*decider, options.trace_header).await
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "milter: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = sessions.join_next(), if !sessions.is_empty() => log_join(done),
        }
    }
    drop(listener);
    let grace = options.shutdown_grace;
    if !sessions.is_empty() {
        tracing::info!(sessions = sessions.len(), grace = ?grace, "milter: waiting for connections in flight");
    }
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = sessions.join_next().await {
            log_join(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "milter: closing connections still open after the grace period"
        );
        sessions.shutdown().await;
    }
    Ok(())
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "milter: a connection task panicked; other connections go on");
    }
}

/// A stream from either kind of listener.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Acknowledges what was read at once. Postfix leaves Nagle on for its milter sockets and
    /// sends the steps we do not answer (connect, HELO, MAIL, RCPT, headers) without waiting:
    /// each small write then waits for the ACK of the one before, and a receiver that delays
    /// its ACKs (40 ms on Linux) stalls every message. Measured: ~385 msg/s at 20 sessions
    /// whatever the load, against ~600 without the milter.
    fn acknowledge_now(&self) {}
}

impl Stream for tokio::net::TcpStream {
    fn acknowledge_now(&self) {
        // Quick-ack mode is not sticky (the kernel leaves it again), so this is renewed after
        // every read that emptied our buffer.
        let _ = self.set_quickack(true);
    }
}

impl Stream for tokio::net::UnixStream {}

enum Listener {
    Tcp(TcpListener),
    /// The socket path is removed again when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// `host:port`, or a path (containing `/`); Postfix-style `inet:` and `unix:` prefixes work.
    async fn bind(listen: &str) -> anyhow::Result<Listener> {
        let unix_path = listen
            .strip_prefix("unix:")
            .or_else(|| listen.strip_prefix("local:"))
            .or_else(|| listen.contains('/').then_some(listen));
        if let Some(path) = unix_path {
            let path = PathBuf::from(path);
            // A socket left by an earlier run would make bind fail; anything else is left alone.
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(&path);
                }
            }
            let listener = UnixListener::bind(&path)
                .map_err(|e| anyhow::anyhow!("milter.listen {}: {e}", path.display()))?;
            // The MTA runs as its own user (postfix): it must be able to connect. Restrict access
            // with the permissions of the folder the socket is in.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| anyhow::anyhow!("milter.listen {}: chmod: {e}", path.display()))?;
            return Ok(Listener::Unix(listener, path));
        }
        let address = listen.strip_prefix("inet:").unwrap_or(listen);
        let listener = bind_tcp(address)
            .await
            .map_err(|e| anyhow::anyhow!("milter.listen {listen}: {e}"))?;
        Ok(Listener::Tcp(listener))
    }

    async fn accept(&self) -> std::io::Result<(Box<dyn Stream>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), path.display().to_string()))
            }
        }
    }
}

/// The segment size we announce to MTAs connecting over TCP. Postfix sizes each milter
/// stream's buffer at four times the MSS and fills it with zeros per SMTP session: on loopback
/// (MSS ~64 KiB) that is 256 KiB of memset and page faults per message, measured at about 8% of
/// smtpd's time. An Ethernet-sized MSS keeps it at ~6 KiB; milter packets are small anyway.
const ANNOUNCED_MSS: u32 = 1400;

async fn bind_tcp(address: &str) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket2::SockRef::from(&socket).set_tcp_mss(ANNOUNCED_MSS)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Why a connection was closed by us.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("truncated packet: the peer closed after {got} of {expected} bytes")]
    Truncated { got: usize, expected: usize },
    #[error("no complete packet within {0:?}")]
    Timeout(Duration),
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads whole commands off the MTA's stream: a small read buffer, the codec's [`FrameReader`]
/// and the deadlines.
struct CommandReader<S> {
    stream: S,
    frames: FrameReader,
    /// Postfix opens one milter connection per SMTP session, so this buffer is allocated (and
    /// zeroed) per message: keep it small. Larger packets are put together by the frame reader.
    buf: Box<[u8]>,
    /// `buf[start..end]` has been read but not yet pushed to the frame reader.
    start: usize,
    end: usize,
}

impl<S: AsyncRead + Unpin> CommandReader<S> {
    fn new(stream: S) -> Self {
        CommandReader {
            stream,
            frames: FrameReader::new(),
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Whether bytes already read wait to be framed (the peer sent more than one packet).
    fn buffered(&self) -> bool {
        self.start < self.end
    }

    /// Reads one packet: `Ok(None)` when the peer closes cleanly between packets. The peer has
    /// IDLE_TIMEOUT to begin a packet and PACKET_TIMEOUT from its first byte to its last.
    async fn next(&mut self) -> Result<Option<codec::Command>, ReadError> {
        let idle_deadline = Instant::now() + IDLE_TIMEOUT;
        let mut packet_deadline = None;
        loop {
            if self.buffered() {
                let (used, command) = self.frames.push(&self.buf[self.start..self.end])?;
                self.start += used;
                if command.is_some() {
                    return Ok(command);
                }
            }
            let (deadline, timeout) = if self.frames.in_packet() {
                let deadline =
                    *packet_deadline.get_or_insert_with(|| Instant::now() + PACKET_TIMEOUT);
                (deadline, PACKET_TIMEOUT)
            } else {
                (idle_deadline, IDLE_TIMEOUT)
            };
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut self.buf))
                .await
                .map_err(|_| ReadError::Timeout(timeout))??;
            (self.start, self.end) = (0, n);
            if n == 0 {
                return match self.frames.partial() {
                    None => Ok(None),
                    Some((got, expected)) => Err(ReadError::Truncated { got, expected }),
                };
            }
        }
    }
}

/// Serves one MTA connection; protocol errors end it with a log line, never beyond it.
async fn run_connection<D: Decider>(
    stream: Box<dyn Stream>,
    id: u64,
    peer: &str,
    decider: &D,
    trace_header: bool,
) {
    // The conversation is strictly request then response, so one stream serves both ways (no
    // split halves and their lock).
    let mut reader = CommandReader::new(stream);
    let mut session = Session::new(trace_header);
    let mut out = Vec::with_capacity(256);
    tracing::debug!(conn = id, peer, "milter: connection");
    loop {
        let command = reader.next().await;
        if !reader.buffered() {
            reader.stream.acknowledge_now();
        }
        let command = match command {
            Ok(Some(command)) => command,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(conn = id, peer, error = %e, "milter: closing connection");
                break;
            }
        };
        let step = match session.handle(command) {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(conn = id, peer, error = %e, "milter: closing connection");
                break;
            }
        };
        let responses = match step {
            Step::Reply(responses) => responses,
            Step::Close => break,
            Step::AtData(pending) => {
                if decider.could_hold(&pending.envelope) {
                    vec![Response::Continue]
                } else {
                    let responses = session.accept_message();
                    log_message(id, "data", &pending, &Verdict::DELIVER, &responses);
                    responses
                }
            }
            Step::Decide(pending) => {
                let verdict = decider
                    .decide(&pending.envelope, &pending.headers, crate::now_ms())
                    .await;
                let responses = session.verdict(&verdict);
                log_message(id, "end-of-message", &pending, &verdict, &responses);
                responses
            }
        };
        if responses.is_empty() {
            continue;
        }
        out.clear();
        for r in &responses {
            codec::encode(r, &mut out);
        }
        if let Err(e) = reader.stream.write_all(&out).await {
            tracing::warn!(conn = id, peer, error = %e, "milter: write failed, closing connection");
            break;
        }
    }
    let _ = reader.stream.shutdown().await;
}

/// One structured line per message, naming the MTA's queue id so a hold can be released.
/// `decided_at`: "data" (accepted with the envelope alone) or "end-of-message".
fn log_message(
    conn: u64,
    decided_at: &'static str,
    pending: &Pending,
    verdict: &Verdict,
    responses: &[Response],
) {
    let queue_id = pending.queue_id.as_deref().unwrap_or("-");
    let envelope = &pending.envelope;
    let hold = verdict.hold.as_ref();
    let thread = hold.map_or("", |h| h.thread.as_str());
    let reason = hold.map_or("", |h| h.reason.as_str());
    let breaker = hold.map_or("", |h| h.breaker);
    let list = hold.and_then(|h| h.list.as_deref()).unwrap_or("");
    let client = envelope
        .client_addr
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let quarantined = responses
        .iter()
        .any(|r| matches!(r, Response::Quarantine(_)));
    if pending.headers_truncated {
        tracing::warn!(
            conn,
            queue_id,
            limit = session::MAX_HEADER_BLOCK,
            "milter: header block over the limit, later headers not seen by the engine"
        );
    }
    let verdict_label = verdict.label();
    macro_rules! line {
        ($level:ident, $text:expr) => {
            tracing::$level!(
                conn,
                queue_id,
                decided_at,
                verdict = verdict_label,
                client = %client,
                client_name = %pending.client_name,
                from = %envelope.mail_from,
                rcpts = envelope.rcpts.len(),
                thread,
                list,
                breaker,
                reason,
                $text
            )
        };
    }
    match (verdict.action, hold) {
        (Action::Quarantine, _) if quarantined => line!(
            warn,
            "milter: message put in the MTA's hold queue (release: postsuper -H <queue_id>)"
        ),
        (Action::Quarantine, _) => line!(
            warn,
            "milter: the MTA offers no quarantine action: message tempfailed instead"
        ),
        (Action::Reject, _) => line!(warn, "milter: message rejected"),
        (Action::Tempfail, _) => line!(warn, "milter: message tempfailed"),
        (Action::Deliver, Some(_)) => line!(info, "milter: would hold (log only), delivered"),
        (Action::Deliver, None) => line!(info, "milter: message delivered"),
    }
}

#[cfg(test)]
mod tests {
    use super::codec::Command;
    use super::mta::encode_command;
    use super::*;

    async fn read_bytes(bytes: Vec<u8>) -> Result<Option<Command>, ReadError> {
        CommandReader::new(&bytes[..]).next().await
    }

    #[tokio::test]
    async fn reads_a_packet_and_a_clean_close() {
        let mut buf = Vec::new();
        encode_command(&Command::Helo("h".into()), &mut buf);
        assert_eq!(
            read_bytes(buf).await.unwrap(),
            Some(Command::Helo("h".into()))
        );
        assert!(read_bytes(vec![]).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn packets_larger_than_the_buffer_and_several_per_read() {
        let big = Command::Body(vec![b'x'; 3 * READ_BUFFER + 17]);
        let mut wire = Vec::new();
        for c in [
            &Command::Helo("a".into()),
            &big,
            &Command::Data,
            &Command::Quit,
        ] {
            encode_command(c, &mut wire);
        }
        let mut reader = CommandReader::new(&wire[..]);
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Command::Helo("a".into()))
        );
        assert!(
            reader.buffered(),
            "the start of the body packet came in the same read"
        );
        assert_eq!(reader.next().await.unwrap(), Some(big));
        assert_eq!(reader.next().await.unwrap(), Some(Command::Data));
        assert!(reader.buffered());
        assert_eq!(reader.next().await.unwrap(), Some(Command::Quit));
        assert!(!reader.buffered());
        assert_eq!(reader.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_absurd_and_unknown_packets_are_errors() {
        let mut buf = Vec::new();
        encode_command(&Command::Helo("client.example".into()), &mut buf);
        let whole = buf.len();
        buf.truncate(whole - 3);
        let e = read_bytes(buf).await.unwrap_err();
        assert!(
            matches!(e, ReadError::Truncated { got, expected } if got == whole - 3 && expected == whole),
            "{e}"
        );
        assert!(e.to_string().contains("truncated packet"));

        let e = read_bytes(vec![0, 0]).await.unwrap_err();
        assert!(matches!(
            e,
            ReadError::Truncated {
                got: 2,
                expected: 4
            }
        ));
        let e = read_bytes(vec![0, 0, 0, 9]).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "truncated packet: the peer closed after 4 of 13 bytes"
        );

        let e = read_bytes(vec![0xff, 0xff, 0xff, 0xff, b'H'])
            .await
            .unwrap_err();
        assert!(matches!(e, ReadError::Codec(CodecError::TooLong(_))), "{e}");

        // Unknown command refused though the rest of the packet never comes.
        let e = read_bytes(vec![0, 0, 0x10, 0, b'Z']).await.unwrap_err();
        assert!(
            matches!(e, ReadError::Codec(CodecError::UnknownCommand(b'Z'))),
            "{e}"
        );
    }

    /// A peer that never finishes its packet is cut off at PACKET_TIMEOUT, one that sits between
    /// packets only at IDLE_TIMEOUT (virtual time: the runtime's clock is paused).
    #[tokio::test(start_paused = true)]
    async fn deadlines_between_and_within_packets() {
        let (mut mta, ours) = tokio::io::duplex(64);
        let mut reader = CommandReader::new(ours);
        let start = Instant::now();
        let mut helo = Vec::new();
        encode_command(&Command::Helo("h".into()), &mut helo);
        let waiting = tokio::spawn(async move {
            let first = reader.next().await;
            let at = Instant::now();
            let second = reader.next().await;
            (first, at, second, Instant::now())
        });
        // Just inside the idle deadline, the packet begins; its last byte never comes.
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        mta.write_all(&helo).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        mta.write_all(&helo[..helo.len() - 1]).await.unwrap();
        let (first, at, second, end) = waiting.await.unwrap();
        assert_eq!(first.unwrap(), Some(Command::Helo("h".into())));
        assert_eq!(at - start, IDLE_TIMEOUT - Duration::from_secs(1));
        assert!(matches!(second, Err(ReadError::Timeout(t)) if t == PACKET_TIMEOUT));
        assert_eq!(end - at, Duration::from_secs(1) + PACKET_TIMEOUT);
        drop(mta);
    }
}
