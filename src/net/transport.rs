//! The byte streams a connection runs on: plain TCP, or TLS over TCP (`[server.tls]`).
//!
//! The handshake, the session, the decoder and the writer are generic over these
//! traits, so each kind of stream gets its own monomorphised copy and a plain connection
//! costs exactly what it did before TLS existed: no boxing, no enum match, no extra
//! buffer. A plain socket keeps its readiness-based read (no buffer while idle) and its
//! unbuffered `writev`; a TLS stream reads through rustls into the decoder's buffer and
//! flushes rustls' records after each batch of frames.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The read side of a WebSocket session.
pub(crate) trait WsRead: Send + Unpin + 'static {
    /// Waits for bytes and appends them to `buf`, reserving `want` bytes first; `Ok(0)`
    /// is the end of the stream. Cancel-safe: dropped early, nothing is lost.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        want: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;
}

/// The write side of a WebSocket session.
pub(crate) trait WsWrite: AsyncWrite + Send + Unpin + 'static {
    /// Bytes were accepted by a write but may still sit in the stream's own buffer (TLS
    /// records rustls could not put on the socket yet): a flush is owed. Never for TCP.
    fn unflushed(&self) -> bool {
        false
    }
}

/// A stream hyper can serve and the handshake can take back after an upgrade.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    type Read: WsRead;
    type Write: WsWrite;
    /// The two halves a session owns.
    fn into_halves(self) -> (Self::Read, Self::Write);
    /// Takes the stream off the runtime it was accepted on, so that another runtime
    /// ([`crate::runtimes`]) can [`Transport::attach`] it; `Err` gives back a stream
    /// that must stay where it is (TLS), `Ok(Err)` is a socket epoll would not let go.
    fn detach(self) -> Result<io::Result<std::net::TcpStream>, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
    /// Registers a [`Transport::detach`]ed stream with the current runtime.
    fn attach(stream: std::net::TcpStream) -> io::Result<Self>
    where
        Self: Sized;
    /// The TCP socket underneath (for socket options).
    fn tcp(&self) -> &TcpStream;
}

impl WsRead for OwnedReadHalf {
    async fn read_into(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        loop {
            // Readiness first, so an idle connection holds no read buffer.
            self.readable().await?;
            buf.reserve(want);
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

impl WsWrite for OwnedWriteHalf {}

impl Transport for TcpStream {
    type Read = OwnedReadHalf;
    type Write = OwnedWriteHalf;
    fn into_halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
    fn detach(self) -> Result<io::Result<std::net::TcpStream>, Self> {
        Ok(self.into_std())
    }
    fn attach(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_std(stream)
    }
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A TLS stream, as hyper serves it and the handshake takes it back.
pub(crate) type Tls = TlsStream<TcpStream>;

impl WsRead for ReadHalf<Tls> {
    async fn read_into(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        buf.reserve(want);
        self.read_buf(buf).await
    }
}

/// The write half of a TLS session, remembering whether rustls holds unflushed records.
pub(crate) struct TlsWrite {
    inner: WriteHalf<Tls>,
    dirty: bool,
}

impl AsyncWrite for TlsWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.dirty = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.dirty = false;
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl WsWrite for TlsWrite {
    fn unflushed(&self) -> bool {
        self.dirty
    }
}

impl Transport for Tls {
    type Read = ReadHalf<Tls>;
    type Write = TlsWrite;
    fn attach(_: std::net::TcpStream) -> io::Result<Tls> {
        Err(io::Error::other(
            "a TLS session stays on the runtime it was accepted on",
        ))
    }
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
    fn into_halves(self) -> (ReadHalf<Tls>, TlsWrite) {
        let (read, write) = tokio::io::split(self);
        (
            read,
            TlsWrite {
                inner: write,
                dirty: false,
            },
        )
    }
}
