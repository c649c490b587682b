//! History: what the hub remembers of the readings it has accepted.
//!
//! It sits beside the fan-out, as its first sink: a room stamps each reading with its
//! offset and hands it to its [`RoomHistory`] in the same critical section, so the
//! history sees every room's readings in offset order. From here the readings go on to
//! the durable store (through [`durable::Durable`]) (batched, off the hot path), and the readers are the
//! recovery path of a reconnecting dashboard (`?since=`), its `snapshot`, the REST history
//! API and the plots.
//!
//! Per room it keeps:
//! - a bounded ring of compact points (`ts` + `value`, 16 bytes) for every
//!   (device, metric) series, trimmed to `points_per_series` and to the memory
//!   window; the number of series over all rooms is capped by `max_series`, and a
//!   reading that would create one more is refused ([`HistoryError::SeriesLimit`]);
//! - an offset-ordered log of its last `room_log_len` readings, kept as compact records
//!   (no JSON: frames are rebuilt on replay), for `?since=` recovery;
//! - the last value of every series, for `snapshot`.
//!
//! Every lock here is a std `Mutex` held for a short, synchronous step; none is held
//! across an `.await`. Lock order: a room's own lock (in `hub/room.rs`) may be held while a
//! [`RoomHistory`] lock is taken, never the other way round.

pub(crate) mod durable;
pub(crate) mod query;
pub(crate) mod room;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::clock::{new_epoch, now_ms};
pub use crate::config::HistoryConfig;
use durable::{Commits, Durable, Loaded};
pub(crate) use query::{PlotData, Query, QueryResult};
pub(crate) use query::{DEFAULT_QUERY_LIMIT, MAX_QUERY_LIMIT};
pub(crate) use room::RoomHistory;
use room::RoomInner;

/// What can go wrong recording or querying history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Creating the series would pass `history.max_series`.
    #[error("the hub keeps at most {max} series (history.max_series); this reading would create one more")]
    SeriesLimit { max: usize },
    /// Creating the series would pass [`SeriesCaps::per_room`].
    #[error("a room holds at most {max} series (limits.max_series_per_room); this reading would create one more")]
    RoomSeriesLimit { max: usize },
    /// Creating the series would pass [`SeriesCaps::per_device`].
    #[error("a device creates at most {max} series (limits.max_series_per_device); this reading would create one more")]
    DeviceSeriesLimit { max: usize },
    #[error("unknown room `{0}`")]
    UnknownRoom(String),
    #[error("no series matches {0}")]
    UnknownSeries(String),
}

/// A (device, metric) pair, shared by a series, its log records and the store's rows.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub device: Arc<str>,
    pub metric: Arc<str>,
}

/// One point of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Epoch milliseconds.
    pub ts: i64,
    pub value: f64,
}

/// The caps on new series below the hub-wide `max_series`, which the room (the hub's
/// `[limits]`) hands to [`RoomHistory::record_capped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeriesCaps {
    /// Series in one room at most.
    pub per_room: usize,
    /// Series of one device (in one room) at most.
    pub per_device: usize,
}

impl SeriesCaps {
    /// No cap but the hub-wide one.
    pub(crate) const NONE: SeriesCaps = SeriesCaps {
        per_room: usize::MAX,
        per_device: usize::MAX,
    };
}

/// A reading as the room hands it to history.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub device: &'a Arc<str>,
    pub metric: &'a str,
    pub unit: Option<&'a str>,
    pub ts: i64,
    pub value: f64,
    pub seq: Option<u64>,
}

/// A reading of the room log, lent out on replay and snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Replayed<'a> {
    pub device: &'a str,
    pub metric: &'a str,
    pub unit: Option<&'a str>,
    pub ts: i64,
    pub value: f64,
    pub seq: Option<u64>,
    pub offset: u64,
}

/// Shared by the registry and every room.
struct Common {
    config: HistoryConfig,
    series: AtomicUsize,
    /// Log entries over all rooms (bounded by `max_log_entries`).
    log_entries: AtomicUsize,
    store: Option<Box<dyn Durable>>,
}

/// The history of every room: a cheap `Clone` handle.
#[derive(Clone)]
pub struct History {
    common: Arc<Common>,
    rooms: Arc<Mutex<HashMap<Arc<str>, Arc<RoomHistory>>>>,
}

impl History {
    /// History backed by durable storage: `loaded` (what the store held at start) is put
    /// back first, then every recorded reading and new epoch goes to `store`.
    pub(crate) fn durable(
        config: HistoryConfig,
        store: Box<dyn Durable>,
        loaded: Loaded,
    ) -> History {
        let history = History::build(config, Some(store));
        history.restore(loaded);
        history
    }

    /// History in memory only (`persist = false`).
    pub fn in_memory(mut config: HistoryConfig) -> History {
        config.persist = false;
        History::build(config, None)
    }

    fn build(config: HistoryConfig, store: Option<Box<dyn Durable>>) -> History {
        History {
            common: Arc::new(Common {
                config,
                series: AtomicUsize::new(0),
                log_entries: AtomicUsize::new(0),
                store,
            }),
            rooms: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<RoomHistory>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.common.config
    }

    /// Whether readings go to the database.
    pub fn persistent(&self) -> bool {
        self.common.store.is_some()
    }

    fn restore(&self, loaded: Loaded) {
        let mut rooms = self.rooms();
        for (name, epoch, offset) in loaded.rooms {
            let room = Arc::new(RoomHistory {
                name: name.clone(),
                epoch,
                common: self.common.clone(),
                inner: Mutex::new(RoomInner {
                    offset,
                    ..RoomInner::default()
                }),
            });
            rooms.insert(name, room);
        }
        let mut refused = 0usize;
        let read = match loaded.rows {
            Some(rows) => rows.for_each(&mut |r| {
                if let Some(room) = rooms.get(&r.room) {
                    if room.restore(&r).is_err() {
                        refused += 1;
                    }
                }
            }),
            None => Ok(0),
        };
        if refused > 0 {
            tracing::warn!(
                refused,
                max_series = self.common.config.max_series,
                "stored readings not reloaded: history.max_series reached"
            );
        }
        match read {
            Ok(readings) => tracing::info!(
                rooms = rooms.len(),
                readings,
                "history reloaded from the database"
            ),
            Err(e) => tracing::error!(
                error = %e,
                "stored readings could not all be reloaded into memory (they stay on disk)"
            ),
        }
    }

    /// The history of `room`, created (with a new epoch) if the hub has none for it.
    /// The room takes its epoch and its starting offset from here.
    pub fn room(&self, room: &Arc<str>) -> Arc<RoomHistory> {
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get(room) {
            return r.clone();
        }
        let epoch = new_epoch();
        if let Some(store) = &self.common.store {
            store.push_room(room.clone(), epoch.clone());
        }
        let r = Arc::new(RoomHistory {
            name: room.clone(),
            epoch,
            common: self.common.clone(),
            inner: Mutex::new(RoomInner::default()),
        });
        rooms.insert(room.clone(), r.clone());
        r
    }

    /// The history of `room` if the hub has one.
    pub fn get(&self, room: &str) -> Option<Arc<RoomHistory>> {
        self.rooms().get(room).cloned()
    }

    /// Log entries (kept for recovery) over all rooms.
    pub fn log_entries(&self) -> usize {
        self.common.log_entries.load(Ordering::Relaxed)
    }

    /// Series over all rooms.
    pub fn series_count(&self) -> usize {
        self.common.series.load(Ordering::Acquire)
    }

    /// Readings the store refused because its queue was full (not durably stored).
    pub fn store_dropped(&self) -> u64 {
        self.common.store.as_ref().map_or(0, |s| s.dropped())
    }

    /// Failed commit attempts so far.
    pub fn store_commit_failures(&self) -> u64 {
        self.common
            .store
            .as_ref()
            .map_or(0, |s| s.commit_failures())
    }

    /// Why the store fails to commit, while it does (`/healthz` answers 503 with it).
    pub fn store_failing(&self) -> Option<Arc<str>> {
        let store = self.common.store.as_ref()?;
        store.commits().borrow().failing.clone()
    }

    /// The commit state to wait on for durable acks; `None` without a store.
    pub(crate) fn commits(&self) -> Option<Commits> {
        self.common.store.as_ref().map(|s| s.commits())
    }

    /// Enforces the memory window (`memory_ms`) at `now_ms`: old points go, series with none left
    /// go, and, in memory only, a room with no series that no live room holds goes too
    /// (when it comes back it has a new epoch: its history is gone). With a store the
    /// room stays known (its epoch and offset, a few hundred bytes, as every stored room
    /// is after a restart): forgetting it would give it a new epoch when it comes back,
    /// and a new epoch clears its rows and rollups from the file, so an hour of silence
    /// would erase months of history.
    pub fn prune(&self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.common.config.memory_window_ms() as i64);
        let rooms: Vec<Arc<RoomHistory>> = self.rooms().values().cloned().collect();
        let mut dropped = 0;
        for r in &rooms {
            dropped += r.prune(cutoff);
        }
        drop(rooms);
        if self.common.store.is_none() {
            self.rooms()
                .retain(|_, r| Arc::strong_count(r) > 1 || r.has_series());
        }
        if dropped > 0 {
            tracing::debug!(dropped, "series past the memory window dropped");
        }
    }

    /// Waits until every reading recorded so far is committed to the database (no-op in
    /// memory); false if the store is failing and some are not. Blocks: call it from
    /// `spawn_blocking` or a plain thread.
    pub fn flush(&self) -> bool {
        self.common.store.as_ref().is_none_or(|store| store.flush())
    }

    /// Commits everything and stops the store's writer (clean shutdown). Blocks.
    pub fn close(&self) {
        if let Some(store) = &self.common.store {
            store.close();
        }
    }

    /// Prunes every `memory_ms / 60` (at least every second, at most every minute)
    /// until `shutdown` resolves.
    pub async fn run_retention(self, shutdown: impl std::future::Future<Output = ()>) {
        let every = std::time::Duration::from_millis(
            (self.common.config.memory_window_ms() / 60).clamp(1_000, 60_000),
        );
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => self.prune(now_ms()),
            }
        }
    }
}

/// History's part of `/metrics`, read at each scrape from the counts history keeps anyway
/// (a collector: history is a component of its own, built before the hub's metrics).
pub(crate) struct HistoryCollector(History);

impl std::fmt::Debug for HistoryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistoryCollector")
    }
}

impl History {
    /// The collector that exposes `telehub_history_series` and
    /// `telehub_history_store_dropped_total`.
    pub(crate) fn collector(&self) -> HistoryCollector {
        HistoryCollector(self.clone())
    }
}

impl Collector for HistoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = ConstGauge::new(self.0.series_count() as i64);
        series.encode(encoder.encode_descriptor(
            "telehub_history_series",
            "Series (room, device, metric) kept in memory.",
            None,
            series.metric_type(),
        )?)?;
        // The encoder adds `_total` to a counter's name.
        let dropped = ConstCounter::new(self.0.store_dropped());
        dropped.encode(encoder.encode_descriptor(
            "telehub_history_store_dropped",
            "Readings not queued for the database because its queue was full (fanned out, not acknowledged).",
            None,
            dropped.metric_type(),
        )?)?;
        let failures = ConstCounter::new(self.0.store_commit_failures());
        failures.encode(encoder.encode_descriptor(
            "telehub_store_commit_failures",
            "Commit attempts of the history store that failed (each retry counts).",
            None,
            failures.metric_type(),
        )?)?;
        let failing = ConstGauge::new(i64::from(self.0.store_failing().is_some()));
        failing.encode(encoder.encode_descriptor(
            "telehub_store_failing",
            "1 while the history store's commits fail past their retries (acks are withheld), else 0.",
            None,
            failing.metric_type(),
        )?)
    }
}
