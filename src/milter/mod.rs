//! Milter front end: Postfix (`smtpd_milters`, `milter_protocol = 6`) and Sendmail 8.14+ ask the
//! storm engine about each message.
//!
//! - `codec`: the wire format (framing, command and response tables), no I/O.
//! - `mta`: the MTA's side of the wire format, for tests and `fuzz/` (feature `mta`).
//! - `session`: one connection's state machine, no I/O: commands in, responses out.
//! - this file: listening (TCP or unix socket), reading packets with limits and deadlines,
//!   asking the engine at the end of the headers, keeping a held message's copy in our
//!   quarantine, and acting on the verdict through `frontend`, like the proxy.
//!
//! A held message is kept in our own quarantine, not the MTA's: the engine decides at the end
//! of the headers, only a message to hold sends us its body, we write it to the quarantine,
//! fsync, and answer DISCARD, so the MTA's client hears 250 only once our copy is durable.
//! `stormbreaker quarantine` then lists, releases (re-injecting to `[upstream] address`),
//! deletes and expires milter holds like proxy holds, for Postfix and Sendmail alike.
//!
//! Recommended Postfix settings: `milter_protocol = 6` and `milter_default_action = tempfail`,
//! so that mail waits in the senders' queues while stormbreaker is down instead of passing
//! unchecked (`accept`) or bouncing (`reject`).

pub mod codec;
#[cfg(any(test, feature = "mta"))]
pub mod mta;
pub mod session;

use crate::frontend::{Decider, Disposition, MessageFacts, Shared};
use crate::notify::Notifier;
use crate::quarantine::{HoldWriter, Quarantine};
use crate::service::Shutdown;
use crate::verdict::Verdict;
use codec::{CodecError, FrameReader, Response};
use session::{Ending, Pending, Session, Step};
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
/// Each MTA connection takes the engine and settings in place when it opens, so a reload
/// (SIGHUP) applies from the next SMTP session on.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Listener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let options = Options {
        shutdown_grace: shared.config.load().proxy.shutdown_grace,
    };
    let services = move || Services {
        decider: shared.engine.load_full(),
        quarantine: shared.quarantine.clone(),
        notifier: shared.notifier.clone(),
        trace_header: shared.config.load().milter.trace_header,
    };
    serve_listener(services, listener, options, shutdown).await
}

/// What one MTA connection works with.
#[derive(Clone)]
pub struct Services {
    pub decider: Arc<dyn Decider>,
    /// Where held messages go; without it a message to hold is deferred.
    pub quarantine: Option<Quarantine>,
    pub notifier: Option<Arc<Notifier>>,
    /// Add `X-Stormbreaker: <decision>` to messages that go on.
    pub trace_header: bool,
}

/// Settings of the milter server.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// On shutdown, how long connections in flight may go on before they are closed.
    pub shutdown_grace: Duration,
}

/// Serves the milter protocol on `listen` until `shutdown` turns true; `services` gives each
/// new MTA connection what it works with (the engine, or a scripted decider in tests).
pub async fn serve_with(
    services: impl Fn() -> Services + Send + 'static,
    listen: String,
    options: Options,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = Listener::bind(&listen).await?;
    serve_listener(services, listener, options, shutdown).await
}

/// As `serve_with`, on a listener already bound (`run` binds every listener before it drops
/// privileges).
pub async fn serve_listener(
    services: impl Fn() -> Services + Send + 'static,
    listener: Listener,
    options: Options,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(listen = %listener.name(), "milter listening");
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
                    let services = services();
                    let id = next_id;
                    sessions.spawn(async move {
                        run_connection(stream, id, &peer, services).await
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

/// The milter's bound socket.
pub enum Listener {
    Tcp(TcpListener),
    /// The socket path is removed again when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// `host:port`, or a path (containing `/`); Postfix-style `inet:` and `unix:` prefixes work.
    pub async fn bind(listen: &str) -> anyhow::Result<Listener> {
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

    /// The address or socket path, for logs.
    pub fn name(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(_, path) => path.display().to_string(),
        }
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

/// A message past the end of its headers, decided, waiting for its end.
struct InFlight {
    pending: Pending,
    verdict: Verdict,
    /// The copy being written to the quarantine, for a message to hold.
    writer: Option<Box<HoldWriter>>,
    /// Writing the copy failed: the message is deferred at its end.
    failed: bool,
}

/// Serves one MTA connection; protocol errors end it with a log line, never beyond it.
async fn run_connection(stream: Box<dyn Stream>, id: u64, peer: &str, services: Services) {
    // The conversation is strictly request then response, so one stream serves both ways (no
    // split halves and their lock).
    let mut reader = CommandReader::new(stream);
    let mut session = Session::new(services.trace_header);
    let mut in_flight: Option<InFlight> = None;
    let mut out = Vec::with_capacity(256);
    let conn = id.to_string();
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
        if matches!(
            command,
            codec::Command::Mail(_) | codec::Command::Abort | codec::Command::QuitNewConnection
        ) {
            // A new transaction or an abort: a message in flight is over; its partial copy is
            // removed with its writer (the MTA never gave its client a 250 for it).
            in_flight = None;
        }
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
                if services.decider.could_hold(&pending.envelope) {
                    vec![Response::Continue]
                } else {
                    let responses = session.accept_message();
                    finished(&conn, "data", &pending, &Verdict::DELIVER, None, None);
                    responses
                }
            }
            Step::Decide(pending) => {
                let (flight, responses) = decide(&services, &mut session, &conn, pending).await;
                in_flight = flight;
                responses
            }
            Step::Body(chunk) => {
                if let Some(flight) = in_flight.as_mut() {
                    write_body(flight, chunk, &conn).await;
                }
                session.body_reply()
            }
            Step::EndOfMessage(undecided) => {
                let flight = match undecided {
                    // No end of headers from this MTA: decide now (with no body to keep, a
                    // hold is deferred, never lost).
                    Some(pending) => decide(&services, &mut session, &conn, pending).await.0,
                    None => in_flight.take(),
                };
                match flight {
                    Some(flight) => end_of_message(&services, &session, &conn, flight).await,
                    None => vec![Response::Continue],
                }
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
    // A message still in flight (the MTA went away before its end) drops its partial copy:
    // the MTA keeps the message, and its client never heard 250 for it.
    drop(in_flight);
    let _ = reader.stream.shutdown().await;
}

/// At the end of the headers: the verdict and what it comes to. A message to hold starts its
/// copy in the quarantine (headers first) and goes on; anything else is answered now and,
/// unless it waits for the trace header, logged.
async fn decide(
    services: &Services,
    session: &mut Session,
    conn: &str,
    pending: Pending,
) -> (Option<InFlight>, Vec<Response>) {
    let now = crate::now_ms();
    let verdict = services
        .decider
        .decide(&pending.envelope, &pending.headers, now)
        .await;
    crate::frontend::decided(&verdict, services.notifier.as_deref(), now);
    if pending.headers_truncated {
        tracing::warn!(
            conn,
            queue_id = pending.queue_id.as_deref(),
            limit = session::MAX_HEADER_BLOCK,
            "milter: header block over the limit, later headers not seen by the engine"
        );
    }
    // A copy without all of its headers would not be the message: such a hold is deferred.
    let can_hold = services.quarantine.is_some() && !pending.headers_truncated;
    let disposition = crate::frontend::disposition(&verdict, can_hold);
    let responses = session.after_decision(&disposition);
    let mut flight = InFlight {
        pending,
        verdict,
        writer: None,
        failed: false,
    };
    match disposition {
        Disposition::Hold => {
            let Some(q) = services.quarantine.clone() else {
                return (None, responses);
            };
            let headers = flight.pending.headers.clone();
            let started = tokio::task::spawn_blocking(move || {
                let mut writer = q.begin()?;
                writer.write_all(&headers)?;
                Ok::<_, std::io::Error>(writer)
            })
            .await;
            match started {
                Ok(Ok(writer)) => flight.writer = Some(Box::new(writer)),
                failed => {
                    tracing::error!(conn, error = ?failed.map(|r| r.err().map(|e| e.to_string())), "milter: cannot start a held message; it will be deferred");
                    flight.failed = true;
                }
            }
            (Some(flight), responses)
        }
        Disposition::Deliver if responses == [Response::Continue] => {
            // Goes on to the end of message for the trace header.
            (Some(flight), responses)
        }
        Disposition::Deliver | Disposition::Refuse(_) => {
            let reply = responses.iter().find_map(|r| match r {
                Response::ReplyCode(text) => Some(text.as_str()),
                _ => None,
            });
            finished(
                conn,
                "end-of-headers",
                &flight.pending,
                &flight.verdict,
                reply,
                None,
            );
            (None, responses)
        }
    }
}

/// Appends a body chunk to the copy of a message being held.
async fn write_body(flight: &mut InFlight, chunk: Vec<u8>, conn: &str) {
    let Some(mut writer) = flight.writer.take() else {
        return;
    };
    let written = tokio::task::spawn_blocking(move || {
        let r = writer.write_all(&chunk);
        (writer, r)
    })
    .await;
    match written {
        Ok((writer, Ok(()))) => flight.writer = Some(writer),
        failed => {
            tracing::error!(conn, error = ?failed.map(|(_, r)| r.err().map(|e| e.to_string())), "milter: cannot write a held message; it will be deferred");
            flight.failed = true;
        }
    }
}

/// At the end of message: a held message is committed (fsync, rename) and only then may the
/// MTA discard its own copy; a delivered one gets the trace header.
async fn end_of_message(
    services: &Services,
    session: &Session,
    conn: &str,
    mut flight: InFlight,
) -> Vec<Response> {
    let mut held_id = None;
    let ending = match (flight.writer.take(), &flight.verdict.hold) {
        (Some(writer), Some(hold)) if !flight.failed => {
            let (envelope, hold, headers) = (
                flight.pending.envelope.clone(),
                hold.clone(),
                flight.pending.headers.clone(),
            );
            let committed =
                tokio::task::spawn_blocking(move || writer.commit(&envelope, &hold, &headers))
                    .await;
            match committed {
                Ok(Ok(id)) => {
                    if let Some(hold) = &flight.verdict.hold {
                        crate::frontend::held(
                            &flight.pending.envelope,
                            hold,
                            &id.0,
                            services.notifier.as_deref(),
                        );
                    }
                    held_id = Some(id.0);
                    Ending::Held
                }
                failed => {
                    tracing::error!(conn, error = ?failed.map(|r| r.err().map(|e| e.to_string())), "milter: cannot commit a held message; deferred");
                    Ending::Refuse(crate::reply::LOCAL_ERROR.to_string())
                }
            }
        }
        // The copy failed: deferred, never lost.
        _ if flight.failed => Ending::Refuse(crate::reply::LOCAL_ERROR.to_string()),
        // Decided here (the MTA sent no end of headers, so there is no body to keep) or going
        // on for the trace header.
        _ => match crate::frontend::disposition(&flight.verdict, false) {
            Disposition::Deliver => Ending::Deliver {
                label: flight.verdict.label(),
            },
            Disposition::Refuse(text) => Ending::Refuse(text),
            Disposition::Hold => Ending::Refuse(crate::reply::CANNOT_HOLD.to_string()),
        },
    };
    let responses = session.at_end(&ending);
    let reply = match &ending {
        Ending::Refuse(text) => Some(text.trim_end()),
        _ => None,
    };
    finished(
        conn,
        "end-of-headers",
        &flight.pending,
        &flight.verdict,
        reply,
        held_id.as_deref(),
    );
    responses
}

/// The one log line per message, through `frontend` like the proxy's.
fn finished(
    conn: &str,
    decided_at: &'static str,
    pending: &Pending,
    verdict: &Verdict,
    reply: Option<&str>,
    held_id: Option<&str>,
) {
    let facts = MessageFacts {
        mode: "milter",
        session: conn,
        client: pending.envelope.client_addr,
        client_name: Some(pending.client_name.as_str()).filter(|n| !n.is_empty()),
        envelope: &pending.envelope,
        headers: &pending.headers,
        size: None,
        decided_at,
        reply,
        queue_id: pending.queue_id.as_deref(),
        held_id,
        tls: None,
        ms: None,
    };
    crate::frontend::finished(&facts, verdict, reply.is_some_and(|r| !r.starts_with('2')));
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
