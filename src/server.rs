//! Wires the stages together and runs them: the accept loop, one task per connection,
//! the background sweeper, and the graceful shutdown.
//!
//! [`run`] takes a listener that is already bound (tests bind `127.0.0.1:0`) and a
//! future that resolves when the hub should stop. Each TCP connection is served by hyper;
//! `/ws/...` requests are upgraded by [`crate::upgrade`], everything else goes to the warp
//! routes of [`crate::http`].

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
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower_service::Service;
use tracing::{info, warn};

use crate::config::Settings;
use crate::history::History;
use crate::hub::{Hub, ReadingTap};
use crate::metrics::Rejection;
use crate::mqtt::{Bridge, Bridges, HubSink};
use crate::outbox::Close;
use crate::shutdown::{self, Completion, Shutdown};
use crate::upgrade::{self, error_response, WsContext};

/// File descriptors kept free for the hub's own use (logs, database, broker links)
/// when the connection cap is derived from the open-file limit.
const RESERVED_FDS: usize = 256;
/// How often empty rooms and stale commands are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("cannot open history: {0}")]
    History(#[from] crate::history::HistoryError),
    /// An MQTT bridge cannot be set up (bad config, unreadable CA file).
    #[error(transparent)]
    Bridge(#[from] crate::mqtt::BridgeError),
}

/// Counts open TCP connections against the cap; the count drops when the last clone of
/// the guard (the HTTP task's, or the WebSocket session's after an upgrade) is gone.
struct ConnGuard {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the open-file soft limit to the hard limit and returns the connection cap
/// that fits under it.
fn connection_cap(configured: usize) -> usize {
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

/// Runs the hub on `listener` until `stop` resolves, then shuts down gracefully: every
/// client gets its queued frames and close code 1001, within `server.shutdown_grace_ms`.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    info!("listening on http://{addr}");
    let max_connections = connection_cap(settings.limits.max_connections);
    // Blocking (SQLite open and reload), but before anything is served.
    let history = History::open(settings.history.clone())?;
    if history.persistent() {
        info!(data_dir = %settings.history.data_dir.display(), "durable history");
    } else {
        info!("history in memory only (persist = false)");
    }
    let hub = Hub::new(settings.limits.clone(), history.clone());
    let (trigger, shutdown) = shutdown::channel();
    let (completion, mut all_done) = mpsc::channel::<()>(1);

    let ws = Arc::new(WsContext {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        completion: completion.clone(),
        ping_interval: Duration::from_millis(settings.server.ping_interval_ms),
    });
    // MQTT bridges: built (and their TLS set up) before anything is served, so a bad
    // one stops start-up; mirroring bridges tap WebSocket devices' readings.
    let mut bridges = Vec::new();
    let mut taps: Vec<Arc<dyn ReadingTap>> = Vec::new();
    for spec in settings.mqtt.validate()? {
        // With history in memory a restarted hub has no last values, so the broker's
        // retained messages seed them; durable history already has them, and a re-sent
        // retained reading could be stored twice.
        let mut bridge = Bridge::new(spec)?;
        bridge.set_seed_on_start(!settings.history.persist);
        if bridge.spec().mirror {
            taps.push(Arc::new(bridge.link()));
        }
        bridges.push(bridge);
    }
    hub.set_taps(taps);
    let bridge_states = Bridges::new(bridges.iter().map(|b| b.state()).collect());
    for bridge in bridges {
        let sink = HubSink::new(hub.clone(), bridge.link());
        let mut stop_bridge = shutdown.clone();
        let done = completion.clone();
        tokio::spawn(async move {
            bridge
                .run(sink, async move { stop_bridge.recv().await })
                .await;
            drop(done);
        });
    }

    let routes = warp::service(crate::http::routes(
        hub.clone(),
        bridge_states,
        settings.server.dashboard_dir.clone(),
    ));

    tokio::spawn(sweep(hub.clone(), shutdown.clone(), completion.clone()));
    {
        let mut shutdown = shutdown.clone();
        let completion = completion.clone();
        tokio::spawn(history.clone().run_retention(async move {
            shutdown.recv().await;
            drop(completion);
        }));
    }

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
        tokio::spawn(serve_connection(
            stream,
            peer,
            over_cap,
            guard,
            ws.clone(),
            routes.clone(),
            hub.clone(),
            shutdown.clone(),
            completion.clone(),
        ));
    }

    drop(listener);
    info!("shutting down");
    trigger.fire();
    hub.close_all(Close::GOING_AWAY);
    drop(completion);
    drop(ws);
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
    if tokio::time::timeout(grace, all_done.recv()).await.is_err() {
        warn!(
            still_open = open.load(Ordering::Relaxed),
            "connections did not close within the grace period"
        );
    }
    // Every connection is gone, so nothing records any more: commit the rest.
    let closing = history.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || closing.close()).await {
        warn!(error = %e, "history flush failed");
    }
    info!("stopped");
    Ok(())
}

/// Serves one TCP connection with hyper: WebSocket upgrades to [`upgrade::handle`],
/// everything else to warp, and a 503 for everything once the hub is at its cap.
#[allow(clippy::too_many_arguments)]
async fn serve_connection<R>(
    stream: TcpStream,
    peer: SocketAddr,
    over_cap: bool,
    guard: Arc<ConnGuard>,
    ws: Arc<WsContext>,
    routes: R,
    hub: Hub,
    mut shutdown: Shutdown,
    _completion: Completion,
) where
    R: Service<
            Request<Incoming>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    R::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    if upgrade::is_websocket_request(&stream).await {
        return upgrade::serve_raw(stream, ws.clone(), guard, over_cap).await;
    }
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
            let resp = upgrade::handle(req, &ws, guard.clone());
            return Either::Left(std::future::ready(Ok(resp)));
        }
        let mut routes = routes.clone();
        Either::Right(routes.call(req))
    });
    let conn = http1::Builder::new()
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

/// Periodically frees rooms that stayed empty and commands that were never answered.
async fn sweep(hub: Hub, mut shutdown: Shutdown, _completion: Completion) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => hub.sweep(),
            _ = shutdown.recv() => return,
        }
    }
}
