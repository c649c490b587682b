//! The WebSocket handshake of `GET /ws/{room}/{client}`, on the hub's own accept path.
//!
//! warp's `ws()` filter always builds tungstenite's default configuration, whose 128 KiB
//! read buffer costs about 134 KiB of memory per idle connection (see `docs/DESIGN.md`).
//! So the hub validates the request and answers `101 Switching Protocols` itself, takes
//! the TCP stream back from hyper, and runs it with the hub's own framing
//! ([`crate::net::ws::codec`]). Everything is checked before the upgrade so that a bad request
//! gets a plain HTTP status with a JSON body, and a full hub a 503.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::api::error::error_response;
use crate::hub::room::Since;
use crate::hub::Hub;
use crate::metrics::Rejection;
use crate::shutdown::{Completion, Shutdown};
use crate::sources::ws_client::{self, SessionOptions, Socket};
use telehub_protocol::ids::valid_id;
use telehub_protocol::role::{Role, Via};

/// What the handshake needs from the server.
pub(crate) struct WsContext {
    pub hub: Hub,
    pub shutdown: Shutdown,
    pub completion: Completion,
    pub ping_interval: Duration,
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The query of a WebSocket request, validated.
pub(crate) struct Query {
    role: Role,
    since: Option<u64>,
    epoch: Option<String>,
    acks: bool,
}

pub(crate) fn parse_query(raw: Option<&str>) -> Result<Query, (Rejection, String)> {
    let mut q = Query {
        role: Role::Dashboard,
        since: None,
        epoch: None,
        acks: false,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "role" => {
                q.role = Role::parse(&v).ok_or_else(|| {
                    (
                        Rejection::InvalidRole,
                        format!(
                            "role must be `device` or `dashboard`, not `{}`",
                            v.chars().take(32).collect::<String>()
                        ),
                    )
                })?
            }
            "since" => {
                q.since = Some(v.parse().map_err(|_| {
                    (
                        Rejection::InvalidQuery,
                        "since must be an unsigned integer offset".to_string(),
                    )
                })?)
            }
            "epoch" => {
                if v.is_empty() || v.len() > 64 {
                    return Err((
                        Rejection::InvalidQuery,
                        "epoch must be 1 to 64 characters".into(),
                    ));
                }
                q.epoch = Some(v.into_owned());
            }
            "acks" => {
                q.acks = match v.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err((Rejection::InvalidQuery, "acks must be true or false".into()))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// What the handshake looks at in a request, however it was parsed.
pub(crate) struct Head<'a> {
    pub get: bool,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Upgrade` lists `websocket`.
    pub upgrade_websocket: bool,
    /// `Sec-WebSocket-Version: 13`.
    pub version_13: bool,
    pub key: Option<&'a [u8]>,
}

/// An upgrade the hub accepts: the member is already in its room.
pub(crate) struct Accepted {
    pub membership: crate::hub::Membership,
    pub accept_key: String,
    pub opts: SessionOptions,
}

/// An upgrade the hub refuses, with the status and JSON error to answer.
pub(crate) struct Refused {
    pub why: Rejection,
    pub status: StatusCode,
    pub message: String,
}

impl Refused {
    fn new(why: Rejection, status: StatusCode, message: impl Into<String>) -> Refused {
        Refused {
            why,
            status,
            message: message.into(),
        }
    }

    /// The JSON body `{"error": CODE, "message": TEXT}`.
    pub(crate) fn body(&self) -> String {
        serde_json::json!({ "error": self.why.as_str(), "message": self.message }).to_string()
    }
}

/// True if a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn lists(value: &[u8], token: &str) -> bool {
    std::str::from_utf8(value)
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Validates an upgrade request and, if it is good, joins the room. Every refusal is
/// decided here, before any byte of WebSocket is spoken.
pub(crate) fn decide(ctx: &WsContext, head: &Head) -> Result<Accepted, Refused> {
    let hub = &ctx.hub;
    let refused = |r: Refused| {
        hub.metrics().rejected(r.why);
        r
    };
    let mut parts = head.path.trim_start_matches("/ws/").split('/');
    let (room, client) = match (parts.next(), parts.next(), parts.next()) {
        (Some(r), Some(c), None) => (r, c),
        _ => {
            return Err(refused(Refused::new(
                Rejection::NotFound,
                StatusCode::NOT_FOUND,
                "WebSocket path is /ws/{room}/{client}",
            )))
        }
    };
    if !valid_id(room) {
        return Err(refused(Refused::new(
            Rejection::InvalidRoom,
            StatusCode::BAD_REQUEST,
            "room must be 1 to 64 characters of A-Za-z0-9_.-",
        )));
    }
    if !valid_id(client) {
        return Err(refused(Refused::new(
            Rejection::InvalidClient,
            StatusCode::BAD_REQUEST,
            "client must be 1 to 64 characters of A-Za-z0-9_.-",
        )));
    }
    let query = parse_query(head.query)
        .map_err(|(why, message)| refused(Refused::new(why, StatusCode::BAD_REQUEST, message)))?;
    let key = head
        .key
        .filter(|_| head.get && head.connection_upgrade && head.upgrade_websocket && head.version_13)
        .ok_or_else(|| {
            refused(Refused::new(
                Rejection::UpgradeRequired,
                StatusCode::UPGRADE_REQUIRED,
                "this is a WebSocket endpoint: send a GET with Upgrade: websocket and Sec-WebSocket-Version: 13",
            ))
        })?;
    let since = query.since.map(|offset| Since {
        offset,
        epoch: query.epoch.as_deref(),
    });
    let membership = hub
        .join(room, client, query.role, Via::Ws, since)
        .map_err(|e| {
            refused(Refused::new(
                e.rejection(),
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        })?;
    Ok(Accepted {
        membership,
        accept_key: accept_key(key),
        opts: SessionOptions {
            acks: query.acks,
            ping_interval: ctx.ping_interval,
        },
    })
}

/// The `Sec-WebSocket-Version` header sent with a 426, as RFC 6455 4.4 asks.
fn refusal_response(r: &Refused) -> warp::reply::Response {
    let mut resp = error_response(r.status, r.why.as_str(), &r.message);
    if r.status == StatusCode::UPGRADE_REQUIRED {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    resp
}

/// Handles a `/ws/` request that arrived through hyper (after another request on a
/// keep-alive connection; fresh connections take [`serve_raw`]). `conn_guard` is the
/// accept loop's connection count token, moved into the session so it is released when
/// the WebSocket closes rather than when the HTTP exchange ends.
pub(crate) fn handle<G: Send + Sync + 'static>(
    mut req: Request<Incoming>,
    ctx: &Arc<WsContext>,
    conn_guard: G,
) -> warp::reply::Response {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .any(|v| lists(v.as_bytes(), token))
    };
    let head = Head {
        get: req.method() == hyper::Method::GET,
        path: req.uri().path(),
        query: req.uri().query(),
        connection_upgrade: has(header::CONNECTION, "upgrade"),
        upgrade_websocket: has(header::UPGRADE, "websocket"),
        version_13: req
            .headers()
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13"),
        key: req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|v| v.as_bytes()),
    };
    let accepted = match decide(ctx, &head) {
        Ok(a) => a,
        Err(r) => return refusal_response(&r),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = ctx.clone();
    let accept = accepted.accept_key.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => return debug!(error = %e, "upgrade failed"),
        };
        // Take the TCP stream back from hyper so the session owns plain halves with no
        // boxing or buffering in between.
        let parts = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(p) => p,
            Err(_) => return debug!("upgraded connection is not a TCP stream"),
        };
        // The session runs as a task of its own so that this task's state (the pending
        // upgrade) is freed: an idle connection then costs only the session's future.
        tokio::spawn(run_session(
            parts.io.into_inner(),
            parts.read_buf,
            accepted,
            ctx,
            conn_guard,
        ));
    });
    let mut resp = warp::reply::Response::default();
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

async fn run_session<G: Send + Sync + 'static>(
    stream: TcpStream,
    already_read: Bytes,
    accepted: Accepted,
    ctx: Arc<WsContext>,
    conn_guard: G,
) {
    let _completion = ctx.completion.clone();
    let _conn_guard = conn_guard;
    let (read, write) = stream.into_split();
    let socket = Socket {
        read,
        write,
        already_read,
    };
    ws_client::run(
        socket,
        accepted.membership,
        ctx.hub.clone(),
        ctx.shutdown.clone(),
        accepted.opts,
    )
    .await;
}

/// Largest handshake request accepted on the direct path (431 past it).
pub(crate) const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;
/// Headers read from a handshake request at most.
pub(crate) const MAX_HANDSHAKE_HEADERS: usize = 32;
/// How long a client may take to send its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// True if a connection's first bytes are `GET /ws/`: such a connection is upgraded on
/// the direct path, without hyper. Waits (briefly) until enough bytes are there to tell.
pub(crate) async fn is_websocket_request(stream: &TcpStream) -> bool {
    const PREFIX: &[u8] = b"GET /ws/";
    let mut buf = [0u8; 8];
    let check = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if buf[..n] != PREFIX[..n] {
                return false;
            }
            if n == PREFIX.len() {
                return true;
            }
            // Part of the prefix is in: wait for more without spinning.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, check)
        .await
        .unwrap_or(false)
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
            let mut headers = [httparse::EMPTY_HEADER; MAX_HANDSHAKE_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => return Ok(Some(n)),
                Ok(httparse::Status::Partial) if buf.len() < MAX_HANDSHAKE_BYTES => {}
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
    })
    .await;
    let end = match parsed {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => {
            let r = Refused::new(
                Rejection::InvalidQuery,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "handshake request too large",
            );
            let _ = stream.write_all(raw_refusal(&r).as_bytes()).await;
            return;
        }
        Ok(Err(e)) => return debug!(error = %e, "bad handshake"),
        Err(_) => return debug!("handshake timed out"),
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HANDSHAKE_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(&buf[..end]).is_err() {
        return;
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
    };
    let decision = if over_cap {
        ctx.hub.metrics().rejected(Rejection::ServerFull);
        Err(Refused::new(
            Rejection::ServerFull,
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is at its connection limit; try again later",
        ))
    } else {
        decide(&ctx, &head)
    };
    let accepted = match decision {
        Ok(a) => a,
        Err(r) => {
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
    tokio::spawn(run_session(stream, already_read, accepted, ctx, conn_guard));
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

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
