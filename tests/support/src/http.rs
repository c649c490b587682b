//! A raw HTTP/1.1 request (GET, POST, PUT, ...) over a fresh connection (`Connection: close`), for the
//! hub's REST endpoints, its write endpoints, `/metrics` and the dashboard files: status,
//! head and body as sent, with chunked transfer encoding undone.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// One response, as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code of the status line.
    pub status: u16,
    /// The status line and headers, without the blank line.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `GET path` with `extra_headers` (each line ending in `\r\n`) and reads the whole
/// response; an I/O or framing error is returned, for callers that report rather than
/// panic (the examples).
pub async fn try_get(
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> anyhow::Result<Response> {
    let s = TcpStream::connect(addr).await?;
    exchange(s, addr, path, extra_headers).await
}

/// [`try_get`] on a stream already open (a TLS one, say).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> anyhow::Result<Response> {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n");
    send(s, path, req.into_bytes()).await
}

/// How a POST sends its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`, in chunks of at most 1,000 bytes (as a client
    /// streaming a compressed body sends it).
    Chunked,
}

/// Sends `POST path` with `extra_headers` (each line ending in `\r\n`) and `body`, and
/// reads the whole response.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
    body: &[u8],
    framing: Framing,
) -> Response {
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}");
    let mut req = head.into_bytes();
    match framing {
        Framing::Length => {
            req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            req.extend_from_slice(body);
        }
        Framing::Chunked => {
            req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(1_000) {
                req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                req.extend_from_slice(chunk);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
        }
    }
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"));
    send(s, path, req)
        .await
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e:#}"))
}

/// Writes a whole request and reads the whole response.
async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
    req: Vec<u8>,
) -> anyhow::Result<Response> {
    s.write_all(&req).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{path}: no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{path}: no status line in {head:?}"))?;
    let mut r = Response {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        r.body = dechunk(&r.body);
    }
    Ok(r)
}

/// [`try_get`] for tests: panics on any error, within [`WAIT`].
pub async fn get(addr: SocketAddr, path: &str, extra_headers: &str) -> Response {
    try_get(addr, path, extra_headers)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e:#}"))
}

/// `GET path` as (status, body text): what most tests look at.
pub async fn http_get(addr: SocketAddr, path: &str, extra_headers: &str) -> (u16, String) {
    let r = get(addr, path, extra_headers).await;
    (r.status, r.text())
}

/// `POST path` with a JSON `body` as (status, body text); panics on any I/O error.
pub async fn http_post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http_request(addr, "POST", path, body).await
}

/// `METHOD path` with a JSON `body` (may be empty) as (status, body text); panics on
/// any I/O error.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = request(addr, method, path, "", body).await;
    (r.status, r.text())
}

/// `METHOD path` with `extra_headers` (each line ending in `\r\n`) and a JSON `body`
/// (may be empty); panics on any error, within [`WAIT`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &str,
) -> Response {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes()).await
}

/// Sends `req`, a whole request exactly as given (its own `Host`, say), and reads the
/// whole response; panics on any error, within [`WAIT`].
pub async fn raw(addr: SocketAddr, req: &[u8]) -> Response {
    let s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    send(s, "request", req.to_vec())
        .await
        .unwrap_or_else(|e| panic!("http://{addr}: {e:#}"))
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = s.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&s[..end]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &s[end + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        s = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n6\r\npedia \r\n0\r\n\r\n"),
            b"Wikipedia "
        );
        assert_eq!(dechunk(b"0\r\n\r\n"), b"");
    }
}
