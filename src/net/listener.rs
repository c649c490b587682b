//! The accept loop: TCP connections in, under the connection cap, each served on its
//! own task by hyper (REST, metrics, the dashboard through warp) or taken by the
//! WebSocket [`handshake`] straight away.
//!
//! The first stage of the data flow. The cap is the configured `limits.max_connections`,
//! lowered to fit under the open-file limit (raised to its hard limit at start); a
//! connection past it is answered `503 server_full` and closed.
//!
//! With `[server.tls]` every connection first completes a TLS handshake (within the
//! handshake timeout; a failure is counted as `tls_handshake`), then hyper serves the
//! TLS stream as it serves TCP, `/ws/...` upgrades included. Plain connections take a
//! task of their own type ([`serve_connection`]), untouched by TLS.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::api::error::error_response;
use crate::hub::Hub;
use crate::metrics::Rejection;
use crate::net::direct;
use crate::net::handshake::{self, WsContext};
use crate::net::tls::Tls;
use crate::net::transport::Transport;
use crate::shutdown::{Completion, Shutdown};

/// File descriptors kept free for the hub's own use (logs, the database and its WAL,
/// broker links, each runtime's epoll and wake-up fds, a plot's files) when the
/// connection cap is derived from the open-file limit. About 30 are in use at start.
const RESERVED_FDS: usize = 128;

/// The warp routes as a hyper service, as every connection's task needs them.
pub(crate) trait Routes:
    Service<
        Request<Incoming>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<R> Routes for R where
    R: Service<
            Request<Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// What every connection's task needs: the WebSocket context, the warp routes, the hub
/// (for the refusal metrics) and the shutdown latch.
#[derive(Clone)]
pub(crate) struct Handlers<R> {
    pub(crate) ws: Arc<WsContext>,
    pub(crate) routes: R,
    pub(crate) hub: Hub,
    pub(crate) shutdown: Shutdown,
    pub(crate) completion: Completion,
    /// `[server.tls]`: every connection is TLS; `None` serves plain TCP.
    pub(crate) tls: Option<Arc<Tls>>,
}

/// Counts open TCP connections against the cap; the count drops when the last clone of
/// the guard (the HTTP task's, or the WebSocket session's after an upgrade) is gone.
pub(crate) struct ConnGuard {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the open-file soft limit to the hard limit and returns the connection cap
/// that fits under it.
pub(crate) fn connection_cap(configured: usize) -> usize {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(_, h)| h)
                .unwrap_or(soft);
            let fit = (soft as usize).saturating_sub(RESERVED_FDS).max(1);
            let cap = configured.min(fit);
            info!(
                soft_limit = soft,
                hard_limit = hard,
                max_connections = cap,
                "open-file limit"
            );
            cap
        }
        Err(e) => {
            warn!(error = %e, "cannot raise the open-file limit; keeping the configured cap");
            configured
        }
    }
}

/// Accepts connections until `stop` resolves and returns the count of those still open
/// (for the shutdown's grace-period report).
pub(crate) async fn accept_until<R>(
    listener: TcpListener,
    max_connections: usize,
    stop: impl Future<Output = ()>,
    h: Handlers<R>,
) -> Arc<AtomicUsize>
where
    R: Routes,
{
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    let mut accept_errors_logged = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            res = listener.accept() => match res {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: the connection cap should keep us under the
                    // open-file limit, but if not, back off instead of spinning.
                    accept_errors_logged += 1;
                    if accept_errors_logged.is_power_of_two() {
                        warn!(error = %e, count = accept_errors_logged, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let over_cap = open.fetch_add(1, Ordering::Relaxed) >= max_connections;
        let guard = Arc::new(ConnGuard { open: open.clone() });
        match &h.tls {
            Some(tls) => tokio::spawn(serve_tls(
                stream,
                peer,
                over_cap,
                guard,
                tls.clone(),
                h.clone(),
            )),
            None => tokio::spawn(serve_connection(stream, peer, over_cap, guard, h.clone())),
        };
    }

    open
}

/// Takes the TLS handshake of one connection (within [`direct::HANDSHAKE_TIMEOUT`]),
/// then serves the decrypted stream with hyper like any other. A handshake that fails
/// or times out is counted (`tls_handshake`), logged at debug, and the socket closed.
async fn serve_tls<R>(
    stream: TcpStream,
    peer: SocketAddr,
    over_cap: bool,
    guard: Arc<ConnGuard>,
    tls: Arc<Tls>,
    h: Handlers<R>,
) where
    R: Routes,
{
    let _ = stream.set_nodelay(true);
    let accepted =
        tokio::time::timeout(direct::HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    drop(tls);
    match accepted {
        Ok(Ok(stream)) => serve_http(stream, peer, over_cap, guard, h).await,
        Ok(Err(e)) => {
            h.hub.metrics().rejected(Rejection::TlsHandshake);
            debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            h.hub.metrics().rejected(Rejection::TlsHandshake);
            debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Serves one plain TCP connection: a fresh `GET /ws/` on the direct path
/// ([`direct::serve_raw`]), anything else with hyper ([`serve_http`]).
async fn serve_connection<R>(
    stream: TcpStream,
    peer: SocketAddr,
    over_cap: bool,
    guard: Arc<ConnGuard>,
    h: Handlers<R>,
) where
    R: Routes,
{
    let _ = stream.set_nodelay(true);
    match direct::sniff(&stream).await {
        direct::Sniffed::WebSocket => {
            return direct::serve_raw(stream, h.ws.clone(), guard, over_cap).await
        }
        direct::Sniffed::TimedOut => return direct::time_out(stream, &h.ws).await,
        direct::Sniffed::Gone => return,
        direct::Sniffed::Other => {}
    }
    serve_http(stream, peer, over_cap, guard, h).await
}

/// Serves one connection (TCP or TLS) with hyper: WebSocket upgrades to
/// [`handshake::handle`], everything else to warp, and a 503 for everything once the hub
/// is at its cap.
async fn serve_http<S, R>(
    stream: S,
    peer: SocketAddr,
    over_cap: bool,
    guard: Arc<ConnGuard>,
    h: Handlers<R>,
) where
    S: Transport,
    R: Routes,
{
    let Handlers {
        ws,
        routes,
        hub,
        mut shutdown,
        completion: _completion,
        tls: _,
    } = h;
    let service = service_fn(move |req: Request<Incoming>| {
        if over_cap {
            hub.metrics().rejected(Rejection::ServerFull);
            let resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Rejection::ServerFull.as_str(),
                "the hub is at its connection limit; try again later",
            );
            return Either::Left(std::future::ready(Ok(resp)));
        }
        if req.uri().path().starts_with("/ws/") {
            let resp = handshake::handle::<S, _>(req, &ws, guard.clone());
            return Either::Left(std::future::ready(Ok(resp)));
        }
        // Upgrades check `Host` in the handshake; every other request here.
        let host = req.headers().get(hyper::header::HOST).map(|h| h.as_bytes());
        if let Err(refusal) = ws.auth.check_host(host) {
            let resp = error_response(
                StatusCode::FORBIDDEN,
                refusal.answer().code(),
                &refusal.to_string(),
            );
            return Either::Left(std::future::ready(Ok(resp)));
        }
        let mut routes = routes.clone();
        Either::Right(routes.call(req))
    });
    // Without a timer hyper's header timeout does nothing: a client that sends part of a
    // request (or leaves a kept-alive connection idle) would hold its connection slot
    // for ever, and enough of them fill the hub. The same bound as a WebSocket handshake.
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(direct::HANDSHAKE_TIMEOUT)
        .keep_alive(!over_cap)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "http connection error");
            }
        }
        _ = shutdown.recv() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
