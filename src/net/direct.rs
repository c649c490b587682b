//! The direct handshake path: a fresh connection whose first bytes are `GET /ws/` is
//! handshaken here with httparse, without hyper, so a WebSocket connection never holds
//! hyper's buffers; anything else goes on to hyper untouched (the bytes are peeked, not
//! read).
//!
//! The network edge, between the [`listener`](super::listener) and the checks of
//! [`handshake::decide`]. A request that stays incomplete past [`HANDSHAKE_TIMEOUT`]
//! gets `408`, a malformed one `400`, an oversized one `431`, each counted.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tracing::debug;

use super::handshake::{decide, lists, spawn_session, Head, Refused, WsContext};
use crate::metrics::Rejection;

/// Largest handshake request accepted on the direct path (431 past it).
pub(crate) const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;
/// Headers read from a handshake request at most.
pub(crate) const MAX_HANDSHAKE_HEADERS: usize = 32;
/// How long a refused client's remaining bytes are read (and dropped) before the close.
const LINGER: Duration = Duration::from_millis(500);
/// How long a client may take to send its handshake (and, on a TLS listener, to finish
/// the TLS handshake before that).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the first bytes of a fresh connection say.
pub(crate) enum Sniffed {
    /// `GET /ws/`: the direct WebSocket path ([`serve_raw`]).
    WebSocket,
    /// Anything else: hyper and warp take it.
    Other,
    /// Part of `GET /ws/` and then nothing for [`HANDSHAKE_TIMEOUT`].
    TimedOut,
    /// Closed (or broken) before saying anything.
    Gone,
}

/// Tells a connection whose first bytes are `GET /ws/` (upgraded on the direct path,
/// without hyper) from any other. The bytes are peeked, not read, so hyper still gets
/// them all. A client that sends part of the prefix and stops costs nothing until more
/// bytes arrive: the peek runs inside `try_io`, so an incomplete prefix clears the
/// socket's readiness and the next `readable()` waits for new bytes instead of
/// returning at once (which would spin).
pub(crate) async fn sniff(stream: &TcpStream) -> Sniffed {
    const PREFIX: &[u8] = b"GET /ws/";
    // A second handle on the same socket for the synchronous peek (std's `peek` on the
    // shared, non-blocking file description); dropped when the sniff ends.
    let Ok(peeker) = stream.as_fd().try_clone_to_owned() else {
        return Sniffed::Other;
    };
    let peeker = std::net::TcpStream::from(peeker);
    let check = async {
        let mut buf = [0u8; PREFIX.len()];
        loop {
            let Ok(ready) = stream.ready(Interest::READABLE).await else {
                return Sniffed::Gone;
            };
            // Once the client has closed its side, no more bytes can come: an incomplete
            // prefix then is a client gone (read-closed readiness is never cleared).
            let closed = ready.is_read_closed();
            let peeked = stream.try_io(Interest::READABLE, || {
                let n = peeker.peek(&mut buf)?;
                if !closed && n > 0 && n < PREFIX.len() && buf[..n] == PREFIX[..n] {
                    // Only part of the prefix: wait for more (clears readiness).
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match peeked {
                Ok(n) if n < PREFIX.len() && buf[..n] == PREFIX[..n] => return Sniffed::Gone,
                Ok(n) if buf[..n] == PREFIX[..] => return Sniffed::WebSocket,
                Ok(_) => return Sniffed::Other,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Sniffed::Gone,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, check)
        .await
        .unwrap_or(Sniffed::TimedOut)
}

/// Answers a request that stayed incomplete for [`HANDSHAKE_TIMEOUT`] with `408` (counted)
/// and closes the connection.
pub(crate) async fn time_out(mut stream: TcpStream, ctx: &WsContext) {
    let r = Refused::new(
        Rejection::RequestTimeout,
        StatusCode::REQUEST_TIMEOUT,
        "the request was not complete within the handshake timeout",
    );
    refuse_raw(&mut stream, ctx, &r).await;
}

/// Counts a refusal on the direct path, writes it as raw HTTP and ends the stream.
async fn refuse_raw(stream: &mut TcpStream, ctx: &WsContext, r: &Refused) {
    ctx.hub.metrics().rejected(r.why);
    let _ = stream.write_all(raw_refusal(r).as_bytes()).await;
    let _ = stream.shutdown().await;
    // Read what the client still sends for a moment before closing, so the close is not
    // a reset that could destroy the answer in the client's receive buffer.
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    })
    .await;
}

/// How far a buffer holds a handshake request head.
pub(crate) enum HeadStatus {
    /// A complete head of this many bytes.
    Complete(usize),
    /// More bytes are needed, and the head is still under [`MAX_HANDSHAKE_BYTES`].
    Partial,
    /// Over [`MAX_HANDSHAKE_BYTES`] or [`MAX_HANDSHAKE_HEADERS`] (431).
    TooLarge,
    /// Not HTTP/1.1 (400).
    Malformed(String),
}

/// Where `buf` stands as a handshake request head, with the direct path's limits.
pub(crate) fn head_status(buf: &[u8]) -> HeadStatus {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HANDSHAKE_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => HeadStatus::Complete(n),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HANDSHAKE_BYTES => HeadStatus::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            HeadStatus::TooLarge
        }
        Err(e) => HeadStatus::Malformed(e.to_string()),
    }
}

/// Hands `f` what [`decide`] reads of a complete request head (or why it does not parse).
pub(crate) fn with_head<R>(buf: &[u8], f: impl FnOnce(Result<&Head<'_>, String>) -> R) -> R {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HANDSHAKE_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if let Err(e) = req.parse(buf) {
        return f(Err(e.to_string()));
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let find = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let head = Head {
        get: req.method == Some("GET"),
        path,
        query,
        connection_upgrade: find("connection").any(|h| lists(h.value, "upgrade")),
        upgrade_websocket: find("upgrade").any(|h| lists(h.value, "websocket")),
        version_13: find("sec-websocket-version").any(|h| h.value == b"13"),
        key: find("sec-websocket-key").next().map(|h| h.value),
        authorization: find("authorization").next().map(|h| h.value),
        origin: find("origin").next().map(|h| h.value),
        host: find("host").next().map(|h| h.value),
    };
    f(Ok(&head))
}

/// The direct path: reads and answers the handshake of a fresh connection itself
/// (httparse on a buffer freed before the session starts), then runs the session. Keeps
/// hyper's per-connection buffers and task out of every WebSocket's life.
pub(crate) async fn serve_raw<G: Send + Sync + 'static>(
    mut stream: TcpStream,
    ctx: Arc<WsContext>,
    conn_guard: G,
    over_cap: bool,
) {
    let mut buf = Vec::with_capacity(1024);
    let parsed = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            match head_status(&buf) {
                HeadStatus::Complete(n) => return Ok(Some(n)),
                HeadStatus::Partial => {}
                HeadStatus::TooLarge => return Ok(None),
                HeadStatus::Malformed(e) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                }
            }
        }
    })
    .await;
    let malformed =
        |message: String| Refused::new(Rejection::BadRequest, StatusCode::BAD_REQUEST, message);
    let end = match parsed {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => {
            let r = Refused::new(
                Rejection::HeadersTooLarge,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the handshake request is over {MAX_HANDSHAKE_BYTES} bytes or \
                     {MAX_HANDSHAKE_HEADERS} headers"
                ),
            );
            return refuse_raw(&mut stream, &ctx, &r).await;
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            debug!(error = %e, "bad handshake");
            let r = malformed(format!("malformed HTTP request: {e}"));
            return refuse_raw(&mut stream, &ctx, &r).await;
        }
        Ok(Err(e)) => return debug!(error = %e, "handshake ended"),
        Err(_) => return time_out(stream, &ctx).await,
    };
    // Refusals `decide` made are counted there; a head that does not parse again is
    // counted here, and its client's remaining bytes drained before the close.
    let decision = with_head(&buf[..end], |head| match head {
        Err(e) => Err((malformed(format!("malformed HTTP request: {e}")), true)),
        Ok(_) if over_cap => {
            ctx.hub.metrics().rejected(Rejection::ServerFull);
            Err((
                Refused::new(
                    Rejection::ServerFull,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the hub is at its connection limit; try again later",
                ),
                false,
            ))
        }
        Ok(head) => decide(&ctx, head).map_err(|r| (r, false)),
    });
    let accepted = match decision {
        Ok(a) => a,
        Err((r, true)) => return refuse_raw(&mut stream, &ctx, &r).await,
        Err((r, false)) => {
            let _ = stream.write_all(raw_refusal(&r).as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accepted.accept_key
    );
    if stream.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    let already_read = Bytes::copy_from_slice(&buf[end..]);
    // A task of its own: the accept task (hyper's connection future included) ends here,
    // so an idle connection costs only the session's own, smaller future.
    spawn_session(stream, already_read, accepted, ctx, conn_guard);
}

/// A refusal as raw HTTP/1.1, closing the connection.
fn raw_refusal(r: &Refused) -> String {
    let body = r.body();
    let extra = if r.status == StatusCode::UPGRADE_REQUIRED {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        r.status.as_u16(),
        r.status.canonical_reason().unwrap_or(""),
        body.len()
    )
}
