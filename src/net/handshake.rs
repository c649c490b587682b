//! The WebSocket handshake of `GET /ws/{room}/{client}`, on the hub's own accept path.
//!
//! warp's `ws()` filter always builds tungstenite's default configuration, whose 128 KiB
//! read buffer costs about 134 KiB of memory per idle connection (see `docs/DESIGN.md`).
//! So the hub validates the request and answers `101 Switching Protocols` itself, takes
//! the TCP stream back from hyper, and runs it with the hub's own framing
//! ([`crate::net::ws::codec`]). Everything is checked before the upgrade so that a bad request
//! gets a plain HTTP status with a JSON body, and a full hub a 503.
//!
//! The access checks happen here too, in every auth mode the `Origin` (403
//! `origin_not_allowed`), and with `[auth] mode = "token"` a token in the query (400
//! `token_in_query`) and the `Authorization: Bearer` token (401 `unauthorized`, 403
//! `forbidden`). A browser's upgrade (it has an `Origin`) without that header is
//! accepted without joining: the session waits for the first frame's token
//! ([`ws_client::Start::AwaitAuth`]); any other upgrade without a token is a 401.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::os::fd::AsFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tracing::debug;

use crate::api::error::error_response;
use crate::auth::{Answer, Authorizer, Refusal};
use crate::hub::room::{Presence, Since};
use crate::hub::Hub;
use crate::metrics::Rejection;
use crate::net::transport::Transport;
use crate::shutdown::{Completion, Shutdown};
use crate::sources::ws_client::{self, PendingJoin, SessionOptions, Socket, Start};
use telehub_protocol::ids::valid_id;
use telehub_protocol::role::{Role, Via};

/// What the handshake needs from the server.
pub(crate) struct WsContext {
    pub hub: Hub,
    pub shutdown: Shutdown,
    pub completion: Completion,
    pub ping_interval: Duration,
    /// Origins and tokens (`[auth]`).
    pub auth: Authorizer,
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
struct Query {
    role: Role,
    presence: Presence,
    since: Option<u64>,
    epoch: Option<String>,
    acks: bool,
}

fn parse_query(raw: Option<&str>) -> Result<Query, (Rejection, String)> {
    let mut q = Query {
        role: Role::Dashboard,
        presence: Presence::Devices,
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
            "presence" => {
                q.presence = match v.as_ref() {
                    "devices" => Presence::Devices,
                    "all" => Presence::All,
                    _ => {
                        return Err((
                            Rejection::InvalidQuery,
                            "presence must be `devices` or `all`".into(),
                        ))
                    }
                }
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
    /// `Authorization` (never logged).
    pub authorization: Option<&'a [u8]>,
    /// `Origin`, which browsers always send on a WebSocket upgrade.
    pub origin: Option<&'a [u8]>,
    /// `Host`, the hub's own origin when `auth.allowed_origins` is empty.
    pub host: Option<&'a [u8]>,
}

/// An upgrade the hub accepts: the member is already in its room, or (token mode
/// without `Authorization`) will be once its first frame's token grants it.
pub(crate) struct Accepted {
    pub start: Start,
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
    let opts = SessionOptions {
        acks: query.acks,
        ping_interval: ctx.ping_interval,
    };
    let grant = match authorize(ctx, head, room, client, query.role) {
        Ok(Some(grant)) => Some(grant),
        Ok(None) if ctx.auth.enabled() => {
            return Ok(Accepted {
                start: Start::AwaitAuth(PendingJoin {
                    room: room.to_string(),
                    client: client.to_string(),
                    role: query.role,
                    presence: query.presence,
                    since: query.since,
                    epoch: query.epoch,
                }),
                accept_key: accept_key(key),
                opts,
            })
        }
        Ok(None) => None,
        Err(r) => {
            let (why, status) = match r.answer() {
                Answer::Unauthorized => (Rejection::Unauthorized, StatusCode::UNAUTHORIZED),
                Answer::Forbidden => (Rejection::Forbidden, StatusCode::FORBIDDEN),
                Answer::OriginNotAllowed => (Rejection::OriginNotAllowed, StatusCode::FORBIDDEN),
                Answer::TokenInQuery => (Rejection::TokenInQuery, StatusCode::BAD_REQUEST),
            };
            return Err(refused(Refused::new(why, status, r.to_string())));
        }
    };
    let since = query.since.map(|offset| Since {
        offset,
        epoch: query.epoch.as_deref(),
    });
    let membership = hub
        .join(room, client, query.role, Via::Ws, query.presence, since)
        .map_err(|e| {
            refused(Refused::new(
                e.rejection(),
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        })?;
    Ok(Accepted {
        start: Start::Joined(membership, grant),
        accept_key: accept_key(key),
        opts,
    })
}

/// The access checks of an upgrade: the `Origin` (every mode), then in token mode no
/// token in the query and the bearer token's grant. `Ok(None)`: no token was asked for
/// (mode none), or a browser (it sent `Origin`) sent none: its first frame must carry it.
fn authorize(
    ctx: &WsContext,
    head: &Head,
    room: &str,
    client: &str,
    role: Role,
) -> Result<Option<crate::auth::Grant>, Refusal> {
    let auth = &ctx.auth;
    auth.check_origin(head.origin, head.host)?;
    if !auth.enabled() {
        return Ok(None);
    }
    auth.check_query(head.query)?;
    let Some(token) = auth.bearer(head.authorization)? else {
        // Only a browser (which always sends `Origin`, checked above) may bring its
        // token in the first frame; anything else without a token is refused now.
        if head.origin.is_none() {
            return Err(auth.refuse(Refusal::MissingToken));
        }
        return Ok(None);
    };
    let grant = auth.verify(token)?;
    grant
        .may_join(room, client, role)
        .map_err(|r| auth.refuse(r))?;
    if !grant.is_admin() && ctx.hub.held_by_other_role(room, client, role) {
        return Err(auth.refuse(Refusal::ForbiddenClient));
    }
    Ok(Some(grant))
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
pub(crate) fn handle<S: Transport, G: Send + Sync + 'static>(
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
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        origin: req.headers().get(header::ORIGIN).map(|v| v.as_bytes()),
        host: req.headers().get(header::HOST).map(|v| v.as_bytes()),
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
        // Take the stream (TCP, or TLS over TCP) back from hyper so the session owns its
        // halves with no boxing or buffering in between.
        let parts = match upgraded.downcast::<TokioIo<S>>() {
            Ok(p) => p,
            Err(_) => return debug!("upgraded connection is not the stream it was accepted as"),
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

async fn run_session<S: Transport, G: Send + Sync + 'static>(
    stream: S,
    already_read: Bytes,
    accepted: Accepted,
    ctx: Arc<WsContext>,
    conn_guard: G,
) {
    let _completion = ctx.completion.clone();
    let _conn_guard = conn_guard;
    let (read, write) = stream.into_halves();
    let socket = Socket {
        read,
        write,
        already_read,
    };
    ws_client::run(
        socket,
        accepted.start,
        ctx.hub.clone(),
        ctx.auth.clone(),
        ctx.shutdown.clone(),
        accepted.opts,
    )
    .await;
}

/// Largest handshake request accepted on the direct path (431 past it).
const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;
/// Headers read from a handshake request at most.
const MAX_HANDSHAKE_HEADERS: usize = 32;
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
    let mut headers = [httparse::EMPTY_HEADER; MAX_HANDSHAKE_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if let Err(e) = req.parse(&buf[..end]) {
        let r = malformed(format!("malformed HTTP request: {e}"));
        return refuse_raw(&mut stream, &ctx, &r).await;
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
