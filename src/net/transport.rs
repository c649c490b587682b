//! The byte streams a connection runs on: plain TCP today, TLS over TCP next.
//!
//! The handshake, the session, the decoder and the writer are generic over these
//! traits, so each kind of stream gets its own monomorphised copy and a plain connection
//! costs exactly what it did before: no boxing, no enum match, no extra buffer. A plain
//! socket keeps its readiness-based read (no buffer while idle) and its unbuffered
//! `writev`; a stream with a buffer of its own (TLS records) says when it owes a flush.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

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
}
