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

use tracing::debug;

use crate::api::error::error_response;
use crate::auth::{Answer, Authorizer, Refusal};
use crate::config::Overflow;
use crate::hub::room::{Presence, Since};
use crate::hub::Hub;
use crate::metrics::Rejection;
use crate::net::transport::Transport;
use crate::runtimes::Placement;
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
    /// Where each room's sessions run (`server.threads`).
    pub runtimes: Arc<Placement>,
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
    presence: Presence,
    /// `?overflow=`; `None`: `limits.default_overflow`.
    overflow: Option<Overflow>,
    since: Option<u64>,
    epoch: Option<String>,
    acks: bool,
}

pub(crate) fn parse_query(raw: Option<&str>) -> Result<Query, (Rejection, String)> {
    let mut q = Query {
        role: Role::Dashboard,
        presence: Presence::Devices,
        overflow: None,
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
            "overflow" => {
                q.overflow = Some(Overflow::parse(&v).ok_or_else(|| {
                    (
                        Rejection::InvalidQuery,
                        "overflow must be `close` or `latest`".to_string(),
                    )
                })?)
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
    pub(super) fn new(why: Rejection, status: StatusCode, message: impl Into<String>) -> Refused {
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
    let overflow = query.overflow.unwrap_or(hub.limits().default_overflow);
    let opts = SessionOptions {
        acks: query.acks,
        ping_interval: ctx.ping_interval,
        linger: match query.role {
            Role::Dashboard => Duration::from_millis(hub.limits().dashboard_linger_ms),
            Role::Device => Duration::ZERO,
        },
        coalescing: overflow == Overflow::Latest && query.role == Role::Dashboard,
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
                    overflow,
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
                Answer::HostNotAllowed => (Rejection::HostNotAllowed, StatusCode::FORBIDDEN),
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
        .join(
            room,
            client,
            query.role,
            Via::Ws,
            query.presence,
            overflow,
            since,
        )
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
    auth.check_host(head.host)?;
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
/// keep-alive connection; fresh connections take [`super::direct::serve_raw`]). `conn_guard` is the
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
        spawn_session(
            parts.io.into_inner(),
            parts.read_buf,
            accepted,
            ctx,
            conn_guard,
        );
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

/// Starts an accepted session on its room's runtime ([`crate::runtimes`]): a plain
/// socket moves there; a TLS stream, or a socket that cannot move, runs here.
pub(super) fn spawn_session<S: Transport, G: Send + Sync + 'static>(
    stream: S,
    already_read: Bytes,
    accepted: Accepted,
    ctx: Arc<WsContext>,
    conn_guard: G,
) {
    let Some(worker) = ctx.runtimes.worker_for(accepted.start.room()).cloned() else {
        tokio::spawn(run_session(stream, already_read, accepted, ctx, conn_guard));
        return;
    };
    match stream.detach() {
        Err(stream) => {
            tokio::spawn(run_session(stream, already_read, accepted, ctx, conn_guard));
        }
        Ok(Err(e)) => debug!(error = %e, "cannot move a connection to its runtime"),
        Ok(Ok(std)) => {
            // Registered with the worker's reactor here (inside its context), so the task
            // spawned there is the session's future alone: a wrapper that attached the
            // socket inside the task would keep its captures beside the session's state
            // for the connection's whole life.
            let attached = {
                let _in_worker = worker.enter();
                S::attach(std)
            };
            match attached {
                Ok(stream) => {
                    drop(worker.spawn(run_session(stream, already_read, accepted, ctx, conn_guard)))
                }
                Err(e) => debug!(error = %e, "cannot register a connection on its runtime"),
            }
        }
    }
}

pub(super) async fn run_session<S: Transport, G: Send + Sync + 'static>(
    stream: S,
    already_read: Bytes,
    accepted: Accepted,
    ctx: Arc<WsContext>,
    conn_guard: G,
) {
    let _completion = ctx.completion.clone();
    let _conn_guard = conn_guard;
    if accepted.opts.coalescing {
        // Best effort: a socket that refuses keeps its autotuned buffer.
        let _ = socket2::SockRef::from(stream.tcp())
            .set_send_buffer_size(ws_client::COALESCING_SEND_BUFFER);
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream.tcp());
    let (read, write) = stream.into_halves();
    let socket = Socket {
        read,
        write,
        already_read,
        fd,
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

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn overflow_is_close_or_latest_and_unset_by_default() {
        use super::{parse_query, Overflow};
        assert_eq!(parse_query(None).ok().and_then(|q| q.overflow), None);
        let latest = parse_query(Some("role=dashboard&overflow=latest"));
        assert_eq!(latest.ok().and_then(|q| q.overflow), Some(Overflow::Latest));
        let close = parse_query(Some("overflow=close"));
        assert_eq!(close.ok().and_then(|q| q.overflow), Some(Overflow::Close));
        let Err((_, message)) = parse_query(Some("overflow=newest")) else {
            panic!("a bad overflow is refused");
        };
        assert_eq!(message, "overflow must be `close` or `latest`");
    }
}
