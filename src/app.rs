//! Wires the stages together and runs them: history and its store, the hub, the MQTT
//! bridges, the HTTP routes, the accept loop, the background sweeper, and the graceful
//! shutdown.
//!
//! [`run`] takes a listener that is already bound (tests bind `127.0.0.1:0`) and a
//! future that resolves when the hub should stop. Connections are accepted by
//! [`crate::net::listener`]: `/ws/...` requests are upgraded by
//! [`crate::net::handshake`], everything else goes to the warp routes of [`crate::api`].

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::alerts::Alerts;
use crate::auth::Authorizer;
use crate::config::Settings;
use crate::hub::mailbox::Close;
use crate::hub::{Hub, ReadingTap};
use crate::metrics::Metrics;
use crate::net::handshake::WsContext;
use crate::net::listener;
use crate::net::tls::Tls;
use crate::runtimes::Runtimes;
use crate::shutdown::{self, Completion, Shutdown};
use crate::sinks::history::History;
use crate::sources::http_devices::HttpDevices;
use crate::sources::http_ingest::HttpIngest;
use crate::sources::influx::{Influx, InfluxStats};
use crate::sources::mqtt::{Bridge, Bridges, HubSink};

/// How often empty rooms and stale commands are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often `stale` alert rules look at the clock.
const ALERT_TICK: Duration = Duration::from_secs(1);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot read the listener's address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("cannot open history: {0}")]
    History(#[from] crate::sinks::store::StoreError),
    #[error("cannot open the dashboard layouts: {0}")]
    Layouts(#[from] crate::sinks::layouts::LayoutError),
    /// An MQTT bridge cannot be set up (bad config, unreadable CA file).
    #[error(transparent)]
    Bridge(#[from] crate::sources::mqtt::BridgeError),
    /// An `[[auth.keys]]` entry cannot be used (its file went away since validation).
    #[error("{0}")]
    Auth(String),
    /// `[server.tls]` cannot be set up (its files changed since validation).
    #[error("{0}")]
    Tls(String),
    /// A worker runtime (`server.threads`) cannot be started.
    #[error("cannot start a worker runtime: {0}")]
    Runtime(std::io::Error),
    /// The alert tables cannot be opened.
    #[error("{0}")]
    Alerts(String),
    /// `[cluster]`: Redis cannot be reached at start (the message never holds the URL).
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Runs the hub on `listener` until `stop` resolves, then shuts down gracefully: every
/// client gets its queued frames and close code 1001, within `server.shutdown_grace_ms`.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let addr = listener.local_addr()?;
    // Before the log line: tests and scripts take it to mean the hub is ready.
    let tls = match &settings.server.tls {
        Some(cfg) => Some(Arc::new(Tls::new(cfg).map_err(ServerError::Tls)?)),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!("listening on {scheme}://{addr}");
    let max_connections = listener::connection_cap(settings.limits.max_connections);
    // One registry for the hub, completed below with the collectors of the stages that
    // keep their own counts, before anything is served.
    let mut metrics = Metrics::new();
    // Blocking (SQLite open and reload), but before anything is served.
    let history = History::open_timed(
        settings.history.clone(),
        Some(metrics.store_commit_seconds().clone()),
    )?;
    if history.persistent() {
        info!(data_dir = %settings.history.data_dir.display(), "durable history");
    } else {
        info!("history in memory only (persist = false)");
    }
    metrics.register_collector(history.collector());
    let layouts = crate::sinks::layouts::Layouts::open(&settings.history)?;
    metrics.register_collector(layouts.collector());
    // `[cluster]`: Redis must answer now; its metrics join the registry first.
    let cluster = if settings.cluster.enabled() {
        let c = crate::cluster::Cluster::connect(&settings.cluster, &mut metrics)
            .await
            .map_err(|e| ServerError::Cluster(e.to_string()))?;
        info!(node = %c.node_id(), prefix = %settings.cluster.key_prefix, "cluster: rooms shared through Redis");
        Some(c)
    } else {
        None
    };
    // MQTT bridges: built (and their TLS set up) before anything is served, so a bad
    // one stops start-up; mirroring bridges tap WebSocket devices' readings.
    let mut bridges = Vec::new();
    let mut taps: Vec<Arc<dyn ReadingTap>> = Vec::new();
    for (mut spec, conf) in settings
        .mqtt
        .validate()?
        .into_iter()
        .zip(&settings.mqtt.bridges)
    {
        // On a cluster every hub bridges the broker under its own session.
        if let (Some(c), None) = (&cluster, &conf.client_id) {
            spec.client_id = format!("{}-{}", spec.client_id, c.node_id());
        }
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
    let bridge_links: std::collections::HashMap<String, crate::sources::mqtt::link::BridgeLink> =
        bridges
            .iter()
            .map(|b: &Bridge| (b.spec().name.clone(), b.link()))
            .collect();
    let bridge_states = Bridges::new(bridges.iter().map(|b| b.state()).collect());
    metrics.register_collector(bridge_states.clone());
    let refused = metrics.auth_refused(&crate::auth::refusal_labels());
    let auth = Authorizer::new(&settings.auth, addr, refused)
        .map_err(|e| ServerError::Auth(e.to_string()))?;
    if !auth.enabled() && !addr.ip().is_loopback() {
        warn!(
            %addr,
            "auth.mode = \"none\" on a non-loopback address: anyone who reaches this port can \
             publish as any device and read every room; set [auth] mode = \"token\""
        );
    }
    let runtimes = Runtimes::start(settings.server.threads).map_err(ServerError::Runtime)?;
    info!(threads = runtimes.placement().threads(), "runtimes");
    // Line protocol's counters join the registry before the hub takes it.
    let influx_stats = Arc::new(InfluxStats::default());
    metrics.register_collector(crate::sources::influx::Stats(influx_stats.clone()));
    // Alert state shares the history's SQLite file (its own tables and connection).
    let alerts_db = history
        .persistent()
        .then(|| settings.history.data_dir.join(crate::sinks::store::DB_FILE));
    let alerts = Alerts::open(&settings.alerts, alerts_db.as_deref())
        .map_err(|e| ServerError::Alerts(e.to_string()))?;
    alerts.register(&mut metrics);
    let hub = Hub::with_metrics(settings.limits.clone(), history.clone(), metrics);
    hub.set_taps(taps);
    hub.set_alerts(alerts);
    let (trigger, shutdown) = shutdown::channel();
    let (completion, mut all_done) = mpsc::channel::<()>(1);
    {
        let bridge_names: Vec<&str> = bridge_links.keys().map(String::as_str).collect();
        let specs = crate::alerts::notify::validate(&settings.alerts.sinks, &bridge_names)
            .map_err(|(key, message)| ServerError::Alerts(format!("{key}: {message}")))?;
        if let Some(alerts) = hub.alerts() {
            alerts.start_sinks(specs, &bridge_links, &shutdown, &completion);
        }
    }
    if let Some(cluster) = cluster {
        hub.set_cluster(cluster.clone());
        let questions = hub.take_questions();
        tokio::spawn(crate::api::keeper::answer_questions(
            hub.clone(),
            questions,
            shutdown.clone(),
            completion.clone(),
        ));
        hub.start_keeper(cluster.clone(), shutdown.clone(), completion.clone());
        cluster.start_broadcasts(shutdown.clone());
        cluster.start_feed(Arc::new(hub.clone()), shutdown.clone(), completion.clone());
        let members_of = hub.clone();
        cluster.start_presence(
            move || members_of.local_members(),
            shutdown.clone(),
            completion.clone(),
        );
    }
    // Devices that post over HTTP, held between their requests.
    let http_devices = HttpDevices::new(hub.clone(), influx_stats.devices_gauge());
    let influx = Influx::new(settings.influx.clone(), http_devices.clone(), influx_stats);
    let http_ingest = HttpIngest::new(http_devices.clone());
    tokio::spawn(http_devices.run(shutdown.clone(), completion.clone()));

    let ws = Arc::new(WsContext {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        completion: completion.clone(),
        ping_interval: Duration::from_millis(settings.server.ping_interval_ms),
        auth: auth.clone(),
        runtimes: runtimes.placement().clone(),
    });
    for bridge in bridges {
        let sink = HubSink::new(hub.clone(), bridge.link()).protect_ws_members(auth.enabled());
        let mut stop_bridge = shutdown.clone();
        let done = completion.clone();
        tokio::spawn(async move {
            bridge
                .run(sink, async move { stop_bridge.recv().await })
                .await;
            drop(done);
        });
    }

    let routes = warp::service(crate::api::routes(
        hub.clone(),
        auth,
        bridge_states,
        (influx, http_ingest),
        layouts,
        settings.server.dashboard_dir.clone(),
        &settings.dashboard,
    ));

    tokio::spawn(sweep(hub.clone(), shutdown.clone(), completion.clone()));
    if let Some(tls) = &tls {
        reload_on_sighup(tls.clone(), shutdown.clone());
    }
    {
        let mut shutdown = shutdown.clone();
        let completion = completion.clone();
        tokio::spawn(history.clone().run_retention(async move {
            shutdown.recv().await;
            drop(completion);
        }));
    }

    let open = listener::accept_until(
        listener,
        max_connections,
        stop,
        listener::Handlers {
            ws: ws.clone(),
            routes,
            hub: hub.clone(),
            shutdown: shutdown.clone(),
            completion: completion.clone(),
            tls,
        },
    )
    .await;
    info!("shutting down");
    // Readings stop before the store closes: what was acknowledged is on disk, and what
    // comes later is answered `store_unavailable`, never acknowledged and then lost. The
    // flush lets durable acks already waiting go out before the connections close.
    hub.stop_readings();
    let flushing = history.clone();
    let flush = tokio::task::spawn_blocking(move || flushing.flush());
    let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
    if !matches!(tokio::time::timeout(grace, flush).await, Ok(Ok(true))) {
        warn!("history not flushed before the connections close; unacknowledged readings stay with their devices");
    }
    trigger.fire();
    hub.close_all(Close::GOING_AWAY);
    drop(completion);
    drop(ws);
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
    // Off the home runtime: joining the worker threads blocks until they have stopped.
    let _ = tokio::task::spawn_blocking(move || drop(runtimes)).await;
    if let Some(alerts) = hub.alerts().cloned() {
        if let Err(e) = tokio::task::spawn_blocking(move || alerts.close()).await {
            warn!(error = %e, "alert store flush failed");
        }
    }
    info!("stopped");
    Ok(())
}

/// SIGHUP reloads `[server.tls]`'s certificate and key (a bad file keeps the old ones).
#[cfg(unix)]
fn reload_on_sighup(tls: Arc<Tls>, mut shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => return warn!(error = %e, "cannot listen for SIGHUP; TLS reload is off"),
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => match got {
                    Some(()) => {
                        // Blocking file reads, but small and rare: off the runtime anyway.
                        let tls = tls.clone();
                        let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
                    }
                    None => return,
                },
                _ = shutdown.recv() => return,
            }
        }
    });
}

#[cfg(not(unix))]
fn reload_on_sighup(_tls: Arc<Tls>, _shutdown: Shutdown) {}

/// Periodically frees rooms that stayed empty and commands that were never answered.
async fn sweep(hub: Hub, mut shutdown: Shutdown, _completion: Completion) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    let mut alerts = tokio::time::interval(ALERT_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => hub.sweep(),
            _ = alerts.tick() => hub.tick_alerts(),
            _ = shutdown.recv() => return,
        }
    }
}
