//! The client's stream: plain until STARTTLS (RFC 3207), or TLS from the first byte
//! (`[proxy] tls = "implicit"`, port 465, RFC 8314), and TLS at most once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The client's connection over any byte stream `S` (TCP in production, an in-memory duplex
/// in unit tests).
pub enum ClientStream<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Only while the handshake owns the stream.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The negotiated protocol version for logs ("TLSv1.3"), or "" in plain text.
    pub fn tls_version(&self) -> &'static str {
        use tokio_rustls::rustls::ProtocolVersion;
        match self {
            ClientStream::Tls(s) => match s.get_ref().1.protocol_version() {
                Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            },
            _ => "",
        }
    }

    /// Runs the TLS handshake on a plain stream. On failure the stream is gone: the session
    /// must end.
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> io::Result<()> {
        let ClientStream::Plain(plain) = std::mem::replace(self, ClientStream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = acceptor.accept(plain).await?;
        *self = ClientStream::Tls(Box::new(tls));
        Ok(())
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "client stream lost in a TLS handshake",
    )
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}
