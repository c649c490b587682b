//! The WebSocket handshake of `GET /ws/{room}/{client}`, on the hub's own accept path.
//!
//! warp's `ws()` filter always builds tungstenite's default configuration, whose 128 KiB
//! read buffer costs about 134 KiB of memory per idle connection (see `docs/DESIGN.md`).
//! So the hub validates the request and answers `101 Switching Protocols` itself, takes
//! the TCP stream back from hyper, and runs it with the hub's own framing
//! ([`crate::websocket`]). Everything is checked before the upgrade so that a bad request
//! gets a plain HTTP status with a JSON body, and a full hub a 503.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;
use warp::Reply;

use crate::hub::Hub;
use crate::metrics::Rejection;
use crate::protocol::{valid_id, Role, Via};
use crate::room::Since;
use crate::session::{self, SessionOptions, Socket};
use crate::shutdown::{Completion, Shutdown};

/// What the handshake needs from the server.
pub struct WsContext {
    pub hub: Hub,
    pub shutdown: Shutdown,
    pub completion: Completion,
    pub ping_interval: Duration,
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// A JSON error response: `{"error": CODE, "message": TEXT}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> warp::reply::Response {
    let body = warp::reply::json(&serde_json::json!({ "error": code, "message": message }));
    warp::reply::with_status(body, status).into_response()
}

fn reject(hub: &Hub, why: Rejection, status: StatusCode, message: &str) -> warp::reply::Response {
    hub.metrics().rejected(why);
    error_response(status, why.as_str(), message)
}

/// The query of a WebSocket request, validated.
struct Query {
    role: Role,
    since: Option<u64>,
    epoch: Option<String>,
    acks: bool,
}

fn parse_query(raw: Option<&str>) -> Result<Query, (Rejection, String)> {
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

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Handles a request whose path starts with `/ws/`. `conn_guard` is the accept loop's
/// connection count token, moved into the session so it is released when the WebSocket
/// closes rather than when the HTTP exchange ends.
pub fn handle<G: Send + Sync + 'static>(
    mut req: Request<Incoming>,
    ctx: &Arc<WsContext>,
    conn_guard: G,
) -> warp::reply::Response {
    let hub = &ctx.hub;
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches("/ws/").split('/');
    let (room, client) = match (parts.next(), parts.next(), parts.next()) {
        (Some(r), Some(c), None) => (r, c),
        _ => {
            return reject(
                hub,
                Rejection::NotFound,
                StatusCode::NOT_FOUND,
                "WebSocket path is /ws/{room}/{client}",
            )
        }
    };
    if !valid_id(room) {
        return reject(
            hub,
            Rejection::InvalidRoom,
            StatusCode::BAD_REQUEST,
            "room must be 1 to 64 characters of A-Za-z0-9_.-",
        );
    }
    if !valid_id(client) {
        return reject(
            hub,
            Rejection::InvalidClient,
            StatusCode::BAD_REQUEST,
            "client must be 1 to 64 characters of A-Za-z0-9_.-",
        );
    }
    let query = match parse_query(req.uri().query()) {
        Ok(q) => q,
        Err((why, message)) => return reject(hub, why, StatusCode::BAD_REQUEST, &message),
    };
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let upgrade_ok = header_has(&req, header::CONNECTION, "upgrade")
        && header_has(&req, header::UPGRADE, "websocket");
    let Some(key) = key.filter(|_| upgrade_ok && version_ok && req.method() == hyper::Method::GET)
    else {
        let mut resp = reject(
            hub,
            Rejection::UpgradeRequired,
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket endpoint: send a GET with Upgrade: websocket and Sec-WebSocket-Version: 13",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    };

    let since = query.since.map(|offset| Since {
        offset,
        epoch: query.epoch.as_deref(),
    });
    let membership = match hub.join(room, client, query.role, Via::Ws, since) {
        Ok(m) => m,
        Err(e) => {
            return reject(
                hub,
                e.rejection(),
                StatusCode::SERVICE_UNAVAILABLE,
                &e.to_string(),
            )
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let hub = hub.clone();
    let shutdown = ctx.shutdown.clone();
    let completion = ctx.completion.clone();
    let opts = SessionOptions {
        acks: query.acks,
        ping_interval: ctx.ping_interval,
    };
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
        let (read, write) = parts.io.into_inner().into_split();
        let socket = Socket {
            read,
            write,
            already_read: parts.read_buf,
        };
        // The session runs as a task of its own so that this task's state (the pending
        // upgrade) is freed: an idle connection then costs only the session's future.
        tokio::spawn(async move {
            let _completion = completion;
            let _conn_guard = conn_guard;
            session::run(socket, membership, hub, shutdown, opts).await;
        });
    });

    let accept = accept_key(key.as_bytes());
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
