//! The cluster: several hubs sharing rooms through one Redis (`[cluster] redis_url`).
//! Beside the hub: it owns the Redis connections, the scripts and this hub's room
//! subscriptions, and knows nothing of rooms' members. The hub calls it at its seam
//! (`Hub::join`, the WebSocket device's publish) and implements [`feed::RoomSink`] to
//! receive what other hubs published.
//!
//! - Redis is the authority for offsets: a device's message is one [`scripts::PUBLISH`]
//!   call (one round trip) that stamps, stores in the room's stream and PUBLISHes.
//! - Every hub (the publishing one too) fans readings out from its subscription: one
//!   SUBSCRIBE per room with local dashboards, reference counted by [`Seat`]s.
//! - A dashboard's join reads the room's epoch, last offset, stream and last values in
//!   one [`scripts::FETCH`], after its subscription is confirmed (see `hub/room.rs`).
//!
//! - [`scripts`]: the Lua and the parsing of its answers.
//! - [`feed`]: the subscription connection: reconnects, resubscribes, dispatches.
//! - [`presence`]: who is in a room on every hub, with entries that expire.
//! - [`commands`]: commands across hubs: routed by presence, over the hubs' channels.
//! - [`keeper`]: the one hub per room that stores its readings and answers its history.

pub(crate) mod commands;
pub(crate) mod feed;
pub(crate) mod keeper;
pub(crate) mod presence;
pub(crate) mod scripts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use telehub_protocol::inbound::ReadingIn;

pub(crate) use scripts::Fetched;

/// How long a join waits for Redis to confirm its room's subscription before the
/// dashboard is closed with 1013 `cluster unavailable` (it reconnects and tries again).
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame for every hub's dashboards of a room ([`Cluster::broadcast`]).
type RoomFrame = (Arc<str>, bytes::Bytes);

/// Room frames (alerts) waiting to be PUBLISHed at most; past it one is dropped and
/// logged.
const BROADCAST_QUEUE: usize = 1024;
/// How long one command (a publish, a fetch) may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the cluster could not do something.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// Redis refused or did not answer (unreachable, timed out, script error). The
    /// message is Redis's or the client's, never the URL (it may hold a password).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Answer(#[from] scripts::BadAnswer),
    #[error("the room's subscription was not confirmed within {0:?}")]
    NotSubscribed(Duration),
}

/// A reading as it travels through Redis (the stream entry, the last value, the
/// PUBLISHed payload after `offset:epoch:`): what every hub needs to build the
/// `reading` frame with the offset Redis gave it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireReading<'a> {
    #[serde(borrow)]
    pub device: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub metric: std::borrow::Cow<'a, str>,
    pub value: f64,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<std::borrow::Cow<'a, str>>,
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// What one device message became in Redis.
#[derive(Debug)]
pub(crate) struct Stamped {
    /// Per reading, in order: its offset, 0 for a duplicate `(device, seq)`, -1 for a
    /// new series past `limits.max_series_per_room`.
    pub answers: Vec<i64>,
    /// This hub holds the room's keeper lease (it took it now, or had it): it is to
    /// store the room's readings ([`keeper`]).
    pub keeper: bool,
}

/// A handle to this hub's part of the cluster.
#[derive(Clone)]
pub(crate) struct Cluster {
    inner: Arc<Shared>,
}

struct Shared {
    cfg: ClusterConfig,
    node_id: Arc<str>,
    client: redis::Client,
    /// Commands and scripts (multiplexed; reconnects by itself with backoff).
    cmd: ConnectionManager,
    publish: Arc<Script>,
    fetch: Arc<Script>,
    /// [`commands::ROUTE`].
    route: Script,
    /// [`keeper::TAIL`] and [`keeper::HOLDER`].
    tail: Script,
    holder: Script,
    /// History questions this hub asked other hubs and waits on.
    asks: keeper::Asks,
    /// Frames for every hub's dashboards of a room (alerts), in order, to the task
    /// that PUBLISHes them ([`Cluster::broadcast`]).
    broadcasts: tokio::sync::mpsc::Sender<RoomFrame>,
    broadcasts_rx: Mutex<Option<tokio::sync::mpsc::Receiver<RoomFrame>>>,
    /// The presence task's queue, and its scripts.
    presence: presence::Writer,
    presence_scripts: presence::Scripts,
    /// Wakes the presence task to refresh at once (the feed connected again: Redis may
    /// have lost every entry).
    presence_now: Notify,
    /// Rooms with local dashboards: how many hold a [`Seat`], and whether Redis has
    /// confirmed the subscription on the current connection. Bounded by the hub's
    /// rooms (`limits.max_rooms`): a seat is only taken by a member of a room.
    subs: Mutex<HashMap<Arc<str>, Sub>>,
    /// Wakes the feed to reconcile its subscriptions with `subs`.
    changed: Notify,
    /// Whether the subscription connection is up; the reason while it is not.
    up: AtomicBool,
    down_reason: Mutex<Option<String>>,
    stats: Stats,
}

struct Sub {
    refs: usize,
    confirmed: watch::Sender<bool>,
}

/// The cluster's metrics (registered in the hub's registry at start).
#[derive(Clone, Default)]
struct Stats {
    up: Gauge,
    publishes: Counter,
    publish_failures: Counter,
    resyncs: Counter,
    repairs: Counter,
    reconnects: Counter,
    kept: Counter,
    keeper_lost: Counter,
    keeper_reads: Counter,
}

impl Cluster {
    /// Connects to `cfg.redis_url` (which must answer now: a hub does not start
    /// without its cluster) and registers the cluster's metrics.
    pub(crate) async fn connect(
        cfg: &ClusterConfig,
        metrics: &mut Metrics,
    ) -> Result<Cluster, ClusterError> {
        if cfg.redis_url.starts_with("rediss://") {
            // redis-rs builds its TLS config from the process default provider; the
            // hub's rustls uses ring. Already installed is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(cfg.redis_url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(5));
        let cmd = ConnectionManager::new_with_config(client.clone(), config).await?;
        let node_id: Arc<str> = if cfg.node_id.is_empty() {
            default_node_id().into()
        } else {
            cfg.node_id.as_str().into()
        };
        let stats = Stats::default();
        let node =
            prometheus_client::metrics::family::Family::<Vec<(String, String)>, Gauge>::default();
        node.get_or_create(&vec![("node".to_string(), node_id.to_string())])
            .set(1);
        metrics.register(
            "telehub_cluster_node",
            "1, labelled with this hub's cluster node id (cluster.node_id)",
            node,
        );
        metrics.register(
            "telehub_cluster_redis_up",
            "1 while this hub's Redis subscription connection is up, 0 while it reconnects",
            stats.up.clone(),
        );
        metrics.register(
            "telehub_cluster_publishes",
            "Device messages stamped and published through Redis",
            stats.publishes.clone(),
        );
        metrics.register(
            "telehub_cluster_publish_failures",
            "Device messages Redis did not take (answered store_unavailable)",
            stats.publish_failures.clone(),
        );
        metrics.register(
            "telehub_cluster_resyncs",
            "Dashboards closed with 1013 `cluster resync` (a new epoch, or a gap the stream no longer covers)",
            stats.resyncs.clone(),
        );
        metrics.register(
            "telehub_cluster_gap_repairs",
            "Gaps in a room's readings seen live and read back from its Redis stream",
            stats.repairs.clone(),
        );
        metrics.register(
            "telehub_cluster_reconnects",
            "Times the subscription connection to Redis was lost and made again",
            stats.reconnects.clone(),
        );
        metrics.register(
            "telehub_cluster_kept_readings",
            "Readings this hub stored (history and SQLite) as their room's keeper",
            stats.kept.clone(),
        );
        metrics.register(
            "telehub_cluster_keeper_reads",
            "Script calls this hub made to read a kept room's stream and renew its lease",
            stats.keeper_reads.clone(),
        );
        metrics.register(
            "telehub_cluster_keeper_lost_readings",
            "Readings a room's stream trimmed before any keeper stored them (a keeper's hand-over took longer than the stream holds)",
            stats.keeper_lost.clone(),
        );
        let (broadcasts, broadcasts_rx) = tokio::sync::mpsc::channel(BROADCAST_QUEUE);
        Ok(Cluster {
            inner: Arc::new(Shared {
                cfg: cfg.clone(),
                node_id,
                client,
                cmd,
                publish: Arc::new(Script::new(scripts::PUBLISH)),
                fetch: Arc::new(Script::new(scripts::FETCH)),
                route: Script::new(commands::ROUTE),
                tail: Script::new(keeper::TAIL),
                holder: Script::new(keeper::HOLDER),
                asks: keeper::Asks::default(),
                broadcasts,
                broadcasts_rx: Mutex::new(Some(broadcasts_rx)),
                presence: presence::Writer::default(),
                presence_scripts: presence::Scripts::default(),
                presence_now: Notify::new(),
                subs: Mutex::new(HashMap::new()),
                changed: Notify::new(),
                up: AtomicBool::new(false),
                down_reason: Mutex::new(Some("connecting".to_string())),
                stats,
            }),
        })
    }

    /// `cluster.keeper_lease_ms`.
    pub(crate) fn keeper_lease_ms(&self) -> u64 {
        self.inner.cfg.keeper_lease_ms
    }

    /// This hub's name in the cluster.
    pub(crate) fn node_id(&self) -> &Arc<str> {
        &self.inner.node_id
    }

    /// `None` while Redis is reachable; otherwise why not (for `/healthz`).
    pub(crate) fn unhealthy(&self) -> Option<String> {
        if self.inner.up.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.inner.down_reason)
            .clone()
            .or_else(|| Some("disconnected".into()))
    }

    /// Counts a dashboard closed to resynchronise.
    pub(crate) fn resynced(&self) {
        self.inner.stats.resyncs.inc();
    }

    fn key(&self, room: &str, what: &str) -> String {
        format!("{}:{{{room}}}:{what}", self.inner.cfg.key_prefix)
    }

    /// The room's pub/sub channel.
    fn channel(&self, room: &str) -> String {
        self.key(room, "c")
    }

    /// The room a channel name is of, if it is one of this prefix's rooms.
    fn room_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.inner.cfg.key_prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:c")
    }

    /// Stamps and publishes one device message in one round trip. The future owns
    /// everything it needs, so a session can hold it across its `select!` loop.
    pub(crate) fn publish(
        &self,
        room: &str,
        device: &str,
        items: &[ReadingIn],
        now_ms: i64,
        max_series: usize,
    ) -> impl Future<Output = Result<Stamped, ClusterError>> + Send + 'static {
        let cfg = &self.inner.cfg;
        let keys = [
            self.key(room, "m"),
            self.key(room, "s"),
            self.key(room, "lv"),
            self.key(room, "k"),
        ];
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(11 + items.len() * 3);
        args.push(self.channel(room).into_bytes());
        args.push(new_epoch().into_bytes());
        args.push(cfg.stream_len.to_string().into_bytes());
        args.push(secs(cfg.stream_ttl_ms).into_bytes());
        args.push(secs(cfg.meta_ttl_ms).into_bytes());
        args.push(secs(cfg.dedup_ttl_ms).into_bytes());
        args.push(self.key(room, &format!("dd:{device}:")).into_bytes());
        args.push(max_series.to_string().into_bytes());
        args.push(self.inner.node_id.as_bytes().to_vec());
        args.push(cfg.keeper_lease_ms.to_string().into_bytes());
        args.push(items.len().to_string().into_bytes());
        for item in items {
            let wire = WireReading {
                device: device.into(),
                metric: item.metric.as_str().into(),
                value: item.value,
                unit: item.unit.as_deref().map(Into::into),
                ts: item.ts.unwrap_or(now_ms),
                seq: item.seq,
            };
            args.push(
                item.seq
                    .map(|s| s.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
            );
            args.push(format!("{device}\n{}", item.metric).into_bytes());
            // Plain structs of strings and finite floats: serialising cannot fail.
            args.push(serde_json::to_vec(&wire).unwrap_or_default());
        }
        let script = self.inner.publish.clone();
        let mut con = self.inner.cmd.clone();
        let stats = self.inner.stats.clone();
        async move {
            let mut call = script.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            for a in &args {
                call.arg(a.as_slice());
            }
            let answer = call.invoke_async::<Value>(&mut con).await;
            let stamped = answer
                .map_err(ClusterError::from)
                .and_then(|v| Ok(scripts::published(&v)?))
                .map(|(_, keeper, answers)| Stamped { answers, keeper });
            match &stamped {
                Ok(_) => stats.publishes.inc(),
                Err(_) => stats.publish_failures.inc(),
            };
            stamped
        }
    }

    /// Reads what a joining dashboard needs: the epoch, last offset and last values,
    /// and with `since` the stream from `since + 1` (at most `cluster.stream_len`). A
    /// room Redis does not know gets its epoch now, so every welcome names one.
    pub(crate) async fn fetch(
        &self,
        room: &str,
        since: Option<u64>,
    ) -> Result<Fetched, ClusterError> {
        let mut con = self.inner.cmd.clone();
        let since = since.map(|s| s.to_string()).unwrap_or_default();
        let epoch = new_epoch();
        let mut tries = 0;
        let v: Value = loop {
            let answer = self
                .inner
                .fetch
                .key(self.key(room, "m"))
                .key(self.key(room, "s"))
                .key(self.key(room, "lv"))
                .key(self.key(room, "pm"))
                .key(self.key(room, "px"))
                .arg(&since)
                .arg(self.inner.cfg.stream_len)
                .arg(&epoch)
                .arg(secs(self.inner.cfg.meta_ttl_ms))
                .invoke_async(&mut con)
                .await;
            match answer {
                // The connection manager reconnects on the error that finds its
                // connection gone: a read (idempotent) is worth one more try then.
                Err(e) if tries == 0 && (e.is_connection_dropped() || e.is_io_error()) => {
                    tries += 1;
                }
                other => break other?,
            }
        };
        Ok(scripts::fetched(&v)?)
    }

    /// The stream's entries `from..=to` of `room` (a gap this hub's subscription missed),
    /// in offset order; fewer if the stream no longer holds them all.
    pub(crate) async fn read_range(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String)>, ClusterError> {
        let mut con = self.inner.cmd.clone();
        let v: Value = redis::cmd("XRANGE")
            .arg(self.key(room, "s"))
            .arg(format!("{from}-0"))
            .arg(format!("{to}-0"))
            .query_async(&mut con)
            .await?;
        self.inner.stats.repairs.inc();
        Ok(scripts::stream_entries(&v)?)
    }

    /// Queues `frame` (an `alert`) for the dashboards of `room` on every hub, this one
    /// included: PUBLISHed on the room's channel as `a:<frame>` in the order queued, and
    /// fanned out by each hub from its subscription. Never waits; a full queue drops it
    /// (logged).
    pub(crate) fn broadcast(&self, room: &Arc<str>, frame: bytes::Bytes) {
        if self
            .inner
            .broadcasts
            .try_send((room.clone(), frame))
            .is_err()
        {
            tracing::warn!(%room, "cluster: room broadcast queue full; an alert frame was not sent to other hubs");
        }
    }

    /// Runs the task behind [`Cluster::broadcast`] until shutdown.
    pub(crate) fn start_broadcasts(&self, mut shutdown: crate::shutdown::Shutdown) {
        let Some(mut rx) = lock(&self.inner.broadcasts_rx).take() else {
            return;
        };
        let cluster = self.clone();
        tokio::spawn(async move {
            loop {
                let (room, frame) = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                    _ = shutdown.recv() => return,
                };
                let mut payload = Vec::with_capacity(frame.len() + 2);
                payload.extend_from_slice(b"a:");
                payload.extend_from_slice(&frame);
                let mut con = cluster.inner.cmd.clone();
                let sent = redis::cmd("PUBLISH")
                    .arg(cluster.channel(&room))
                    .arg(payload)
                    .query_async::<i64>(&mut con)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(%room, error = %e, "cluster: an alert frame could not be published");
                }
            }
        });
    }

    /// Takes a seat in `room`'s subscription (subscribing if it is the first).
    pub(crate) fn seat(&self, room: &Arc<str>) -> Seat {
        let confirmed = {
            let mut subs = lock(&self.inner.subs);
            let sub = subs.entry(room.clone()).or_insert_with(|| Sub {
                refs: 0,
                confirmed: watch::channel(false).0,
            });
            sub.refs += 1;
            sub.confirmed.subscribe()
        };
        self.inner.changed.notify_one();
        Seat {
            cluster: self.clone(),
            room: room.clone(),
            confirmed,
        }
    }
}

/// One dashboard's hold on its room's subscription; dropping it lets go (the last one
/// out unsubscribes).
pub(crate) struct Seat {
    cluster: Cluster,
    room: Arc<str>,
    confirmed: watch::Receiver<bool>,
}

impl Seat {
    /// Waits until Redis has confirmed the room's subscription on the current
    /// connection, at most [`SUBSCRIBE_TIMEOUT`].
    pub(crate) async fn confirmed(&mut self) -> Result<(), ClusterError> {
        let wait = self.confirmed.wait_for(|c| *c);
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ClusterError::NotSubscribed(SUBSCRIBE_TIMEOUT)),
        }
    }

    pub(crate) fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut subs = lock(&self.cluster.inner.subs);
        if let Some(sub) = subs.get_mut(&self.room) {
            sub.refs -= 1;
            if sub.refs == 0 {
                subs.remove(&self.room);
            }
        }
        drop(subs);
        self.cluster.inner.changed.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its value whole, so poison is harmless.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds as whole seconds (at least 1), for EXPIRE.
fn secs(ms: u64) -> String {
    ms.div_ceil(1000).max(1).to_string()
}

/// A fresh epoch, used by the publish script only when the room has none.
fn new_epoch() -> String {
    (0..8).map(|_| fastrand::alphanumeric()).collect::<String>()
}

/// The host name and a random suffix.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hub".to_string());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    format!("{host}-{}", new_epoch().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_reading_round_trips() {
        let w = WireReading {
            device: "d\"1".into(),
            metric: "t".into(),
            value: 1.5,
            unit: Some("C".into()),
            ts: 7,
            seq: Some(3),
        };
        let json = serde_json::to_string(&w).expect("serialises");
        let back: WireReading<'_> = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.device, "d\"1");
        assert_eq!(back.seq, Some(3));
        assert_eq!(secs(1), "1");
        assert_eq!(secs(60_000), "60");
    }
}
