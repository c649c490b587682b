//! History: what the hub remembers of the readings it has accepted.
//!
//! It sits beside the fan-out, as its first sink: a room stamps each reading with its
//! offset and hands it to its [`RoomHistory`] in the same critical section, so the
//! history sees every room's readings in offset order. From here the readings go on to
//! the durable [`store`](crate::sinks::store) (batched, off the hot path), and the readers are the
//! recovery path of a reconnecting dashboard (`?since=`), its `snapshot`, the REST history
//! API and the plots.
//!
//! Per room it keeps:
//! - a bounded ring of compact points (`ts` + `value`, 16 bytes) for every
//!   (device, metric) series, trimmed to `points_per_series` and to the `retention`
//!   window; the number of series over all rooms is capped by `max_series`, and a
//!   reading that would create one more is refused ([`HistoryError::SeriesLimit`]);
//! - an offset-ordered log of its last `room_log_len` readings, kept as compact records
//!   (no JSON: frames are rebuilt on replay), for `?since=` recovery;
//! - the last value of every series, for `snapshot`.
//!
//! Every lock here is a std `Mutex` held for a short, synchronous step; none is held
//! across an `.await`. Lock order: a room's own lock (in `room.rs`) may be held while a
//! [`RoomHistory`] lock is taken, never the other way round.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::sinks::store::{Loaded, Store, StoreError, StoredReading};

/// `[history]`: how much the hub remembers, and where it keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Points kept in memory per (room, device, metric) series; the oldest go first.
    /// 16 bytes each, so 3,600 points are 56 KiB per series at most.
    #[serde(default = "default_points_per_series")]
    pub points_per_series: usize,
    /// How far back history reaches, in milliseconds: points older than this (by their
    /// `ts`) leave memory and the database, and a series with no point left is forgotten.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: u64,
    /// Series (room, device, metric) over all rooms at most. A reading that would create
    /// one more is refused with the error `series_limit`, so a client inventing endless
    /// metrics or device ids cannot grow memory without bound.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Readings per room kept in offset order for `?since=` recovery. A dashboard that
    /// reconnects further behind than this gets `"recovered":false`.
    #[serde(default = "default_room_log_len")]
    pub room_log_len: usize,
    /// Readings kept for recovery over all rooms at most (64 bytes each). When the total
    /// is reached, a room that records a reading drops its own oldest one, so busy rooms
    /// shorten their recovery window instead of memory growing with the number of rooms.
    #[serde(default = "default_max_log_entries")]
    pub max_log_entries: usize,
    /// Keep history in an SQLite database under `data_dir`, so a restarted hub keeps its
    /// rooms' epochs and offsets and the recent window. `false` (or `--no-persist`) runs
    /// in memory only, and a restarted hub gives every room a new epoch.
    #[serde(default = "default_persist")]
    pub persist: bool,
    /// Directory of the database file `telehub.db` (created if missing).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How often buffered readings are committed to the database, in milliseconds. A
    /// `kill -9` loses at most the readings of the last interval; a clean shutdown loses
    /// none.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
}

const fn default_points_per_series() -> usize {
    3_600
}
const fn default_retention_ms() -> u64 {
    3_600_000
}
const fn default_max_series() -> usize {
    10_000
}
const fn default_room_log_len() -> usize {
    10_000
}
const fn default_max_log_entries() -> usize {
    1_000_000
}
const fn default_persist() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
const fn default_flush_interval_ms() -> u64 {
    500
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            points_per_series: default_points_per_series(),
            retention_ms: default_retention_ms(),
            max_series: default_max_series(),
            room_log_len: default_room_log_len(),
            max_log_entries: default_max_log_entries(),
            persist: default_persist(),
            data_dir: default_data_dir(),
            flush_interval_ms: default_flush_interval_ms(),
        }
    }
}

impl HistoryConfig {
    /// Checks the values serde cannot; names the key (`history.…`) that is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.points_per_series == 0 || self.points_per_series > 10_000_000 {
            return Err(("history.points_per_series", "must be 1 to 10000000".into()));
        }
        if self.retention_ms < 1_000 {
            return Err(("history.retention_ms", "must be at least 1000".into()));
        }
        if self.max_series == 0 {
            return Err(("history.max_series", "must be at least 1".into()));
        }
        if self.room_log_len == 0 || self.room_log_len > 10_000_000 {
            return Err(("history.room_log_len", "must be 1 to 10000000".into()));
        }
        if self.max_log_entries == 0 {
            return Err(("history.max_log_entries", "must be at least 1".into()));
        }
        if !(10..=60_000).contains(&self.flush_interval_ms) {
            return Err(("history.flush_interval_ms", "must be 10 to 60000".into()));
        }
        if self.persist && self.data_dir.as_os_str().is_empty() {
            return Err((
                "history.data_dir",
                "must not be empty when persist = true".into(),
            ));
        }
        Ok(())
    }
}

/// What can go wrong recording or querying history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Creating the series would pass `history.max_series`.
    #[error("the hub keeps at most {max} series (history.max_series); this reading would create one more")]
    SeriesLimit { max: usize },
    #[error("unknown room `{0}`")]
    UnknownRoom(String),
    #[error("no series matches {0}")]
    UnknownSeries(String),
    #[error("durable history: {0}")]
    Store(#[from] StoreError),
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

/// One series' ring of points and its last value.
struct Series {
    key: Arc<SeriesKey>,
    unit: Option<Arc<str>>,
    /// Sorted by `ts` (a late point is inserted in place).
    points: VecDeque<Point>,
    /// The latest reading by arrival (not by `ts`) and its offset.
    last: Point,
    last_offset: u64,
}

/// One entry of the room log: 64 bytes, no JSON.
struct Entry {
    offset: u64,
    ts: i64,
    value: f64,
    seq: Option<u64>,
    key: Arc<SeriesKey>,
    unit: Option<Arc<str>>,
}

/// Shared by the registry and every room.
struct Common {
    config: HistoryConfig,
    series: AtomicUsize,
    /// Log entries over all rooms (bounded by `max_log_entries`).
    log_entries: AtomicUsize,
    store: Option<Store>,
}

/// The history of one room. A room holds it for its whole life; the registry keeps it
/// after the room is gone, until its last series expires.
pub struct RoomHistory {
    name: Arc<str>,
    epoch: Arc<str>,
    common: Arc<Common>,
    inner: Mutex<RoomInner>,
}

#[derive(Default)]
struct RoomInner {
    /// The last offset given out (0: none yet).
    offset: u64,
    series: HashMap<Arc<str>, HashMap<Arc<str>, Series>>,
    log: VecDeque<Entry>,
}

/// How a `?since=` replay went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Every reading after `since` was replayed, and they follow on from what the client
    /// saw (same epoch).
    pub recovered: bool,
    /// How many readings were replayed.
    pub replayed: usize,
}

impl RoomHistory {
    fn lock(&self) -> MutexGuard<'_, RoomInner> {
        // Every step below leaves the state consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Names this room's offset sequence.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The last offset given out (0 when the room has had no reading).
    pub fn offset(&self) -> u64 {
        self.lock().offset
    }

    /// Records an accepted reading: gives it the room's next offset, keeps its point,
    /// its log entry and its last value, and queues it for the store. Called by the room
    /// under its own lock, so offsets are given out in the order readings are fanned out.
    /// Cheap: no JSON, and no allocation unless the series is new or its unit changed.
    pub fn record(&self, r: &Record<'_>) -> Result<u64, HistoryError> {
        let cfg = &self.common.config;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let by_metric = match inner.series.get_mut(&**r.device) {
            Some(m) => m,
            None => inner.series.entry(r.device.clone()).or_default(),
        };
        let series = match by_metric.get_mut(r.metric) {
            Some(s) => s,
            None => {
                self.reserve_series()?;
                let metric: Arc<str> = Arc::from(r.metric);
                by_metric.entry(metric.clone()).or_insert(Series {
                    key: Arc::new(SeriesKey {
                        device: r.device.clone(),
                        metric,
                    }),
                    unit: None,
                    points: VecDeque::new(),
                    last: Point {
                        ts: r.ts,
                        value: r.value,
                    },
                    last_offset: 0,
                })
            }
        };
        if series.unit.as_deref() != r.unit {
            series.unit = r.unit.map(Arc::from);
        }
        inner.offset += 1;
        let offset = inner.offset;
        let point = Point {
            ts: r.ts,
            value: r.value,
        };
        insert_point(&mut series.points, point, cfg.points_per_series);
        series.last = point;
        series.last_offset = offset;
        let key = series.key.clone();
        let unit = series.unit.clone();
        self.make_log_room(&mut inner.log);
        if let Some(store) = &self.common.store {
            store.push_reading(StoredReading {
                room: self.name.clone(),
                key: key.clone(),
                unit: unit.clone(),
                ts: r.ts,
                value: r.value,
                seq: r.seq,
                offset,
            });
        }
        inner.log.push_back(Entry {
            offset,
            ts: r.ts,
            value: r.value,
            seq: r.seq,
            key,
            unit,
        });
        Ok(offset)
    }

    /// Makes room in `log` for one more entry and counts it: drops the room's oldest
    /// entry when the room is at `room_log_len` or all rooms are at `max_log_entries`.
    fn make_log_room(&self, log: &mut VecDeque<Entry>) {
        let cfg = &self.common.config;
        let total = self.common.log_entries.load(Ordering::Relaxed);
        if log.len() >= cfg.room_log_len || (total >= cfg.max_log_entries && !log.is_empty()) {
            log.pop_front();
        } else {
            self.common.log_entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Empties `log` and gives its entries back to the global budget.
    fn forget_log(&self, log: &mut VecDeque<Entry>) {
        self.common
            .log_entries
            .fetch_sub(log.len(), Ordering::Relaxed);
        log.clear();
    }

    /// Takes one series from the global budget, or says the budget is spent.
    fn reserve_series(&self) -> Result<(), HistoryError> {
        let max = self.common.config.max_series;
        self.common
            .series
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| HistoryError::SeriesLimit { max })
    }

    /// Replays the log after `since` to `each`, in offset order, and says whether that is
    /// complete. With a different `epoch`, or a `since` older than the oldest kept entry
    /// (or beyond the room's offset), the replay is every kept entry and `recovered` is
    /// false. The room calls this under its own lock, together with adding the
    /// dashboard to its subscribers, so nothing published meanwhile is missed or doubled.
    pub fn replay(
        &self,
        since: u64,
        epoch: Option<&str>,
        mut each: impl FnMut(Replayed<'_>),
    ) -> Recovery {
        let inner = self.lock();
        let oldest = inner.log.front().map_or(inner.offset + 1, |e| e.offset);
        let same_epoch = epoch.is_none_or(|e| e == &*self.epoch);
        let recovered = same_epoch && since <= inner.offset && since + 1 >= oldest;
        let start = if recovered { since } else { 0 };
        // Log offsets are consecutive, so the first entry to send is found by arithmetic.
        let skip = usize::try_from(start.saturating_sub(oldest - 1)).unwrap_or(usize::MAX);
        let mut replayed = 0;
        for e in inner.log.iter().skip(skip) {
            each(replayed_of(e));
            replayed += 1;
        }
        Recovery {
            recovered,
            replayed,
        }
    }

    /// The oldest offset the log still holds (`offset + 1` when it is empty).
    pub fn oldest_offset(&self) -> u64 {
        let inner = self.lock();
        inner.log.front().map_or(inner.offset + 1, |e| e.offset)
    }

    /// Hands `f` the last value of every series, by device then metric.
    pub fn snapshot<R>(&self, f: impl FnOnce(&[Replayed<'_>]) -> R) -> R {
        let inner = self.lock();
        let entries: Vec<Replayed<'_>> = sorted_series(&inner)
            .map(|s| Replayed {
                device: &s.key.device,
                metric: &s.key.metric,
                unit: s.unit.as_deref(),
                ts: s.last.ts,
                value: s.last.value,
                seq: None,
                offset: s.last_offset,
            })
            .collect();
        f(&entries)
    }

    /// Whether the room has any series now.
    pub fn has_series(&self) -> bool {
        !self.lock().series.is_empty()
    }

    /// `GET /api/rooms/{room}/series`: every series with its last value.
    pub fn series_info(&self) -> Vec<SeriesInfo> {
        let inner = self.lock();
        sorted_series(&inner)
            .map(|s| SeriesInfo {
                device: s.key.device.clone(),
                metric: s.key.metric.clone(),
                unit: s.unit.clone(),
                last_value: s.last.value,
                last_ts: s.last.ts,
                count: s.points.len(),
            })
            .collect()
    }

    /// Points or buckets of the series that match `q`, newest last.
    pub fn query(&self, q: &Query) -> Result<QueryResult, HistoryError> {
        let from = q.from.unwrap_or(i64::MIN);
        let to = q.to.unwrap_or(i64::MAX);
        let inner = self.lock();
        let matching: Vec<&Series> = sorted_series(&inner)
            .filter(|s| q.device.as_deref().is_none_or(|d| d == &*s.key.device))
            .filter(|s| q.metric.as_deref().is_none_or(|m| m == &*s.key.metric))
            .collect();
        if matching.is_empty() && (q.device.is_some() || q.metric.is_some()) {
            return Err(HistoryError::UnknownSeries(describe(q)));
        }
        match q.step {
            None => {
                let mut rows = Vec::new();
                for s in &matching {
                    let range = ts_range(&s.points, from, to);
                    // Only the newest `limit` can be answered, from any series.
                    let skip = range.len().saturating_sub(q.limit);
                    rows.extend(range.skip(skip).map(|p| PointRow {
                        device: s.key.device.clone(),
                        metric: s.key.metric.clone(),
                        ts: p.ts,
                        value: p.value,
                    }));
                }
                drop(inner);
                // A stable sort keeps device/metric order among equal timestamps.
                rows.sort_by_key(|r| r.ts);
                let skip = rows.len().saturating_sub(q.limit);
                rows.drain(..skip);
                Ok(QueryResult::Points(rows))
            }
            Some(step) => {
                let step = step.max(1);
                let mut rows = Vec::new();
                for s in &matching {
                    let mut current: Option<BucketRow> = None;
                    for p in ts_range(&s.points, from, to) {
                        let start = p.ts.div_euclid(step) * step;
                        match &mut current {
                            Some(b) if b.ts == start => b.add(p.value),
                            _ => {
                                if let Some(done) = current.take() {
                                    rows.push(done.finish());
                                }
                                current = Some(BucketRow::start(&s.key, start, p.value));
                            }
                        }
                    }
                    if let Some(done) = current {
                        rows.push(done.finish());
                    }
                }
                drop(inner);
                rows.sort_by_key(|r| r.ts);
                let skip = rows.len().saturating_sub(q.limit);
                rows.drain(..skip);
                Ok(QueryResult::Buckets(rows))
            }
        }
    }

    /// The points of one metric between `from` and `to`, one line per device (or only
    /// `device`), for a plot. Copied out so rendering holds no lock.
    pub fn plot_data(
        &self,
        metric: &str,
        device: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<PlotData, HistoryError> {
        let inner = self.lock();
        let mut unit = None;
        let mut lines = Vec::new();
        for s in sorted_series(&inner) {
            if &*s.key.metric != metric || device.is_some_and(|d| d != &*s.key.device) {
                continue;
            }
            if unit.is_none() {
                unit = s.unit.as_deref().map(str::to_owned);
            }
            lines.push((
                s.key.device.to_string(),
                ts_range(&s.points, from, to).copied().collect(),
            ));
        }
        if lines.is_empty() {
            let q = Query {
                device: device.map(str::to_owned),
                metric: Some(metric.to_owned()),
                ..Query::default()
            };
            return Err(HistoryError::UnknownSeries(describe(&q)));
        }
        Ok(PlotData {
            room: self.name.to_string(),
            metric: metric.to_owned(),
            unit,
            from,
            to,
            lines,
        })
    }

    /// Drops points older than `cutoff` and the series left with none; returns how many
    /// series were dropped.
    fn prune(&self, cutoff: i64) -> usize {
        let mut inner = self.lock();
        let mut dropped = 0;
        for by_metric in inner.series.values_mut() {
            by_metric.retain(|_, s| {
                let keep = s.points.partition_point(|p| p.ts < cutoff);
                s.points.drain(..keep);
                if s.points.capacity() > 2 * s.points.len() + 64 {
                    s.points.shrink_to_fit();
                }
                let alive = !s.points.is_empty();
                if !alive {
                    dropped += 1;
                }
                alive
            });
        }
        inner.series.retain(|_, m| !m.is_empty());
        if inner.series.is_empty() {
            // Nothing of the room is within the retention window any more.
            self.forget_log(&mut inner.log);
            inner.log.shrink_to_fit();
        }
        self.common.series.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    /// Puts back a reading loaded from the store (start-up only; no store write).
    fn restore(&self, r: &StoredReading) -> Result<(), HistoryError> {
        let cfg = &self.common.config;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let by_metric = inner.series.entry(r.key.device.clone()).or_default();
        let series = match by_metric.get_mut(&*r.key.metric) {
            Some(s) => s,
            None => {
                self.reserve_series()?;
                by_metric.entry(r.key.metric.clone()).or_insert(Series {
                    key: r.key.clone(),
                    unit: None,
                    points: VecDeque::new(),
                    last: Point {
                        ts: r.ts,
                        value: r.value,
                    },
                    last_offset: 0,
                })
            }
        };
        series.unit = r.unit.clone();
        let point = Point {
            ts: r.ts,
            value: r.value,
        };
        insert_point(&mut series.points, point, cfg.points_per_series);
        series.last = point;
        series.last_offset = r.offset;
        let key = series.key.clone();
        // Rows come in offset order; a gap (rows lost to a crash) restarts the log so
        // its offsets stay consecutive.
        if inner.log.back().is_some_and(|e| e.offset + 1 != r.offset) {
            self.forget_log(&mut inner.log);
        }
        self.make_log_room(&mut inner.log);
        inner.log.push_back(Entry {
            offset: r.offset,
            ts: r.ts,
            value: r.value,
            seq: r.seq,
            key,
            unit: r.unit.clone(),
        });
        inner.offset = inner.offset.max(r.offset);
        Ok(())
    }
}

impl Drop for RoomHistory {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let series: usize = inner.series.values().map(HashMap::len).sum();
        self.common.series.fetch_sub(series, Ordering::AcqRel);
        self.common
            .log_entries
            .fetch_sub(inner.log.len(), Ordering::Relaxed);
    }
}

fn replayed_of(e: &Entry) -> Replayed<'_> {
    Replayed {
        device: &e.key.device,
        metric: &e.key.metric,
        unit: e.unit.as_deref(),
        ts: e.ts,
        value: e.value,
        seq: e.seq,
        offset: e.offset,
    }
}

/// The room's series, by device then metric.
fn sorted_series(inner: &RoomInner) -> impl Iterator<Item = &Series> {
    let mut all: Vec<&Series> = inner.series.values().flat_map(|m| m.values()).collect();
    all.sort_by(|a, b| (&*a.key.device, &*a.key.metric).cmp(&(&*b.key.device, &*b.key.metric)));
    all.into_iter()
}

/// Adds `p` keeping the ring sorted by `ts` and at most `cap` long (the oldest goes).
fn insert_point(points: &mut VecDeque<Point>, p: Point, cap: usize) {
    if points.back().is_none_or(|last| last.ts <= p.ts) {
        points.push_back(p);
    } else {
        let at = points.partition_point(|q| q.ts <= p.ts);
        points.insert(at, p);
    }
    while points.len() > cap {
        points.pop_front();
    }
}

/// The points with `from <= ts <= to`.
fn ts_range(
    points: &VecDeque<Point>,
    from: i64,
    to: i64,
) -> std::collections::vec_deque::Iter<'_, Point> {
    let lo = points.partition_point(|p| p.ts < from);
    let hi = points.partition_point(|p| p.ts <= to).max(lo);
    points.range(lo..hi)
}

fn describe(q: &Query) -> String {
    match (&q.device, &q.metric) {
        (Some(d), Some(m)) => format!("device `{d}` and metric `{m}`"),
        (Some(d), None) => format!("device `{d}`"),
        (None, Some(m)) => format!("metric `{m}`"),
        (None, None) => "the query".to_string(),
    }
}

/// A history query (`GET /api/rooms/{room}/history`), already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub device: Option<String>,
    pub metric: Option<String>,
    /// Epoch ms, inclusive.
    pub from: Option<i64>,
    /// Epoch ms, inclusive.
    pub to: Option<i64>,
    /// The newest `limit` points (or buckets) are returned.
    pub limit: usize,
    /// Bucket width in ms: answer min/max/mean/count per bucket instead of points.
    pub step: Option<i64>,
}

/// Points a query returns when it gives no `limit`, and the most it may ask for.
pub(crate) const DEFAULT_QUERY_LIMIT: usize = 10_000;
pub(crate) const MAX_QUERY_LIMIT: usize = 100_000;

impl Default for Query {
    fn default() -> Self {
        Query {
            device: None,
            metric: None,
            from: None,
            to: None,
            limit: DEFAULT_QUERY_LIMIT,
            step: None,
        }
    }
}

/// One point of a history answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointRow {
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub ts: i64,
    pub value: f64,
}

/// One bucket of a downsampled history answer; `ts` is the bucket's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketRow {
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub ts: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl BucketRow {
    fn start(key: &SeriesKey, ts: i64, v: f64) -> BucketRow {
        BucketRow {
            device: key.device.clone(),
            metric: key.metric.clone(),
            ts,
            min: v,
            max: v,
            // Holds the sum until `finish`.
            mean: v,
            count: 1,
        }
    }
    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.mean += v;
        self.count += 1;
    }
    fn finish(mut self) -> BucketRow {
        self.mean /= self.count as f64;
        self
    }
}

/// What a history query answers.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    Points(Vec<PointRow>),
    Buckets(Vec<BucketRow>),
}

/// A series as `GET /api/rooms/{room}/series` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesInfo {
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub unit: Option<Arc<str>>,
    pub last_value: f64,
    pub last_ts: i64,
    /// Points kept in memory.
    pub count: usize,
}

/// The data of one plot: one line per device, points sorted by `ts`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotData {
    pub room: String,
    pub metric: String,
    pub unit: Option<String>,
    pub from: i64,
    pub to: i64,
    pub lines: Vec<(String, Vec<Point>)>,
}

/// The history of every room: a cheap `Clone` handle.
#[derive(Clone)]
pub struct History {
    common: Arc<Common>,
    rooms: Arc<Mutex<HashMap<Arc<str>, Arc<RoomHistory>>>>,
}

impl History {
    /// Opens history as `config` says: with `persist`, opens (or creates) the database
    /// in `data_dir`, reloads each room's epoch, last offset and its readings within the
    /// retention window, and starts the store's writer.
    pub fn open(config: HistoryConfig) -> Result<History, HistoryError> {
        if !config.persist {
            return Ok(History::in_memory(config));
        }
        let (store, loaded) = Store::open(&config)?;
        let history = History::build(config, Some(store));
        history.restore(loaded);
        Ok(history)
    }

    /// History in memory only (`persist = false`).
    pub fn in_memory(mut config: HistoryConfig) -> History {
        config.persist = false;
        History::build(config, None)
    }

    fn build(config: HistoryConfig, store: Option<Store>) -> History {
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
        for r in &loaded.readings {
            let Some(room) = rooms.get(&r.room) else {
                continue;
            };
            if room.restore(r).is_err() {
                refused += 1;
            }
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                max_series = self.common.config.max_series,
                "stored readings not reloaded: history.max_series reached"
            );
        }
        tracing::info!(
            rooms = rooms.len(),
            readings = loaded.readings.len(),
            "history reloaded from the database"
        );
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
        self.common.store.as_ref().map_or(0, Store::dropped)
    }

    /// Enforces the retention window at `now_ms`: old points go, series with none left
    /// go, and a room with no series that no live room holds goes too (when it comes
    /// back it has a new epoch: its history is gone).
    pub fn prune(&self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.common.config.retention_ms as i64);
        let rooms: Vec<Arc<RoomHistory>> = self.rooms().values().cloned().collect();
        let mut dropped = 0;
        for r in &rooms {
            dropped += r.prune(cutoff);
        }
        drop(rooms);
        self.rooms()
            .retain(|_, r| Arc::strong_count(r) > 1 || r.has_series());
        if dropped > 0 {
            tracing::debug!(dropped, "series past the retention window dropped");
        }
    }

    /// Waits until every reading recorded so far is committed to the database (no-op in
    /// memory). Blocks: call it from `spawn_blocking` or a plain thread.
    pub fn flush(&self) {
        if let Some(store) = &self.common.store {
            store.flush();
        }
    }

    /// Commits everything and stops the store's writer (clean shutdown). Blocks.
    pub fn close(&self) {
        if let Some(store) = &self.common.store {
            store.close();
        }
    }

    /// Prunes every `retention / 60` (at least every second, at most every minute)
    /// until `shutdown` resolves.
    pub async fn run_retention(self, shutdown: impl std::future::Future<Output = ()>) {
        let every = std::time::Duration::from_millis(
            (self.common.config.retention_ms / 60).clamp(1_000, 60_000),
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

/// The wall clock in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A fresh epoch: 8 base-36 characters from the process's random hasher keys and the
/// clock, so one life of a room's offsets is told from the next.
pub(crate) fn new_epoch() -> Arc<str> {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut n = h.finish();
    let mut s = String::with_capacity(8);
    for _ in 0..8 {
        let d = (n % 36) as u32;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    s.into()
}

/// Parses a duration such as `500ms`, `30s`, `15m`, `1h`, `2d` or `1w` into milliseconds
/// (at least 1 ms, at most 10 years).
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return None,
    };
    let ms = n.checked_mul(scale)?;
    (1..=315_576_000_000).contains(&ms).then_some(ms)
}

/// Parses a `from`/`to` value: epoch milliseconds, RFC 3339, or `-15m` (relative to
/// `now`).
pub(crate) fn parse_time(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        if rel.starts_with(|c: char| c.is_ascii_digit()) {
            if let Some(d) = parse_duration(rel) {
                return Some(now - d);
            }
        }
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HistoryConfig {
        HistoryConfig {
            points_per_series: 5,
            retention_ms: 60_000,
            max_series: 3,
            room_log_len: 4,
            persist: false,
            ..HistoryConfig::default()
        }
    }

    fn rec<'a>(device: &'a Arc<str>, metric: &'a str, ts: i64, value: f64) -> Record<'a> {
        Record {
            device,
            metric,
            unit: Some("C"),
            ts,
            value,
            seq: None,
        }
    }

    fn offsets(room: &RoomHistory, since: u64, epoch: Option<&str>) -> (bool, Vec<u64>) {
        let mut got = Vec::new();
        let r = room.replay(since, epoch, |e| got.push(e.offset));
        assert_eq!(r.replayed, got.len());
        (r.recovered, got)
    }

    #[test]
    fn defaults_match_the_docs_and_validate() {
        let c = HistoryConfig::default();
        assert_eq!(c.points_per_series, 3600);
        assert_eq!(c.retention_ms, 3_600_000);
        assert!(c.persist);
        assert!(c.flush_interval_ms <= 1000);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        c.validate().unwrap();
        let bad = HistoryConfig {
            flush_interval_ms: 0,
            ..c
        };
        assert_eq!(bad.validate().unwrap_err().0, "history.flush_interval_ms");
    }

    #[test]
    fn config_refuses_unknown_keys() {
        let err = toml::from_str::<HistoryConfig>("points = 3").unwrap_err();
        assert!(err.to_string().contains("points"), "{err}");
        let ok: HistoryConfig = toml::from_str("persist = false").unwrap();
        assert!(!ok.persist);
        assert_eq!(ok.points_per_series, 3600);
    }

    #[test]
    fn offsets_rise_by_one_and_the_ring_is_bounded() {
        let h = History::in_memory(cfg());
        let room = h.room(&Arc::from("r"));
        let d: Arc<str> = Arc::from("d1");
        for i in 0..8 {
            assert_eq!(
                room.record(&rec(&d, "t", 1000 + i, i as f64)).unwrap(),
                i as u64 + 1
            );
        }
        assert_eq!(room.offset(), 8);
        let info = room.series_info();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].count, 5);
        assert_eq!(info[0].last_value, 7.0);
        assert_eq!(info[0].unit.as_deref(), Some("C"));
        // The log keeps the last 4.
        assert_eq!(room.oldest_offset(), 5);
    }

    #[test]
    fn late_points_are_kept_in_ts_order() {
        let h = History::in_memory(cfg());
        let room = h.room(&Arc::from("r"));
        let d: Arc<str> = Arc::from("d");
        for ts in [10, 30, 20, 40] {
            room.record(&rec(&d, "t", ts, ts as f64)).unwrap();
        }
        let QueryResult::Points(p) = room.query(&Query::default()).unwrap() else {
            panic!()
        };
        let ts: Vec<i64> = p.iter().map(|p| p.ts).collect();
        assert_eq!(ts, [10, 20, 30, 40]);
        // The last value is the latest to arrive, not the latest ts.
        assert_eq!(room.series_info()[0].last_value, 40.0);
    }

    #[test]
    fn series_cap_is_global_and_refuses_with_series_limit() {
        let h = History::in_memory(cfg());
        let a = h.room(&Arc::from("a"));
        let b = h.room(&Arc::from("b"));
        let d: Arc<str> = Arc::from("d");
        a.record(&rec(&d, "m1", 1, 1.0)).unwrap();
        a.record(&rec(&d, "m2", 1, 1.0)).unwrap();
        b.record(&rec(&d, "m1", 1, 1.0)).unwrap();
        let err = b.record(&rec(&d, "m2", 1, 1.0)).unwrap_err();
        assert!(matches!(err, HistoryError::SeriesLimit { max: 3 }));
        // A refused reading takes no offset; existing series still record.
        assert_eq!(b.offset(), 1);
        assert_eq!(b.record(&rec(&d, "m1", 2, 2.0)).unwrap(), 2);
        assert_eq!(h.series_count(), 3);
    }

    #[test]
    fn replay_since_is_exact_within_the_log() {
        let h = History::in_memory(cfg());
        let room = h.room(&Arc::from("r"));
        let d: Arc<str> = Arc::from("d");
        let epoch = room.epoch().to_string();
        assert_eq!(offsets(&room, 0, None), (true, vec![]));
        for i in 0..6 {
            room.record(&rec(&d, "t", i, 0.0)).unwrap();
        }
        // Log holds 3..=6.
        assert_eq!(offsets(&room, 6, Some(&epoch)), (true, vec![]));
        assert_eq!(offsets(&room, 4, Some(&epoch)), (true, vec![5, 6]));
        assert_eq!(offsets(&room, 2, Some(&epoch)), (true, vec![3, 4, 5, 6]));
        // Too old: everything kept, not recovered.
        assert_eq!(offsets(&room, 1, Some(&epoch)), (false, vec![3, 4, 5, 6]));
        // Another epoch, or an offset the room never reached.
        assert_eq!(offsets(&room, 5, Some("other")), (false, vec![3, 4, 5, 6]));
        assert_eq!(offsets(&room, 99, None), (false, vec![3, 4, 5, 6]));
    }

    #[test]
    fn the_log_budget_over_all_rooms_is_kept() {
        let h = History::in_memory(HistoryConfig {
            room_log_len: 100,
            max_log_entries: 10,
            ..cfg()
        });
        let d: Arc<str> = Arc::from("d");
        let a = h.room(&Arc::from("a"));
        let b = h.room(&Arc::from("b"));
        for i in 0..8 {
            a.record(&rec(&d, "t", i, 0.0)).unwrap();
        }
        for i in 0..8 {
            b.record(&rec(&d, "t", i, 0.0)).unwrap();
        }
        // b could take only 2 of the budget, then it drops its own oldest.
        assert_eq!(h.log_entries(), 10);
        assert_eq!(offsets(&a, 0, None).1.len(), 8);
        assert_eq!(offsets(&b, 0, None).1.len(), 2);
        assert_eq!(b.oldest_offset(), 7);
        drop((a, b));
        h.prune(1_000_000);
        assert_eq!(h.log_entries(), 0);
        assert_eq!(h.series_count(), 0);
    }

    #[test]
    fn replayed_entries_carry_the_reading() {
        let h = History::in_memory(cfg());
        let room = h.room(&Arc::from("r"));
        let d: Arc<str> = Arc::from("dev");
        room.record(&Record {
            device: &d,
            metric: "hum",
            unit: None,
            ts: 77,
            value: 40.5,
            seq: Some(9),
        })
        .unwrap();
        let mut seen = Vec::new();
        room.replay(0, None, |e| {
            seen.push((
                e.device.to_string(),
                e.metric.to_string(),
                e.unit.is_none(),
                e.ts,
                e.value,
                e.seq,
                e.offset,
            ))
        });
        assert_eq!(
            seen,
            [("dev".into(), "hum".into(), true, 77, 40.5, Some(9), 1)]
        );
    }

    #[test]
    fn snapshot_has_the_last_value_of_every_series() {
        let h = History::in_memory(cfg());
        let room = h.room(&Arc::from("r"));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        room.record(&rec(&b, "t", 1, 1.0)).unwrap();
        room.record(&rec(&a, "t", 2, 2.0)).unwrap();
        room.record(&rec(&b, "t", 3, 3.0)).unwrap();
        let snap: Vec<(String, f64, u64)> = room.snapshot(|all| {
            all.iter()
                .map(|e| (e.device.to_string(), e.value, e.offset))
                .collect()
        });
        assert_eq!(snap, [("a".into(), 2.0, 2), ("b".into(), 3.0, 3)]);
    }

    #[test]
    fn queries_filter_limit_and_bucket() {
        let h = History::in_memory(HistoryConfig {
            points_per_series: 1000,
            ..cfg()
        });
        let room = h.room(&Arc::from("r"));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for i in 0..100 {
            room.record(&rec(&a, "t", i * 1000, i as f64)).unwrap();
            room.record(&rec(&b, "t", i * 1000 + 500, -(i as f64)))
                .unwrap();
        }
        let q = Query {
            device: Some("a".into()),
            from: Some(10_000),
            to: Some(19_000),
            ..Query::default()
        };
        let QueryResult::Points(p) = room.query(&q).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 10);
        assert_eq!((p[0].ts, p[9].ts), (10_000, 19_000));
        // limit keeps the newest, across devices, newest last.
        let QueryResult::Points(p) = room
            .query(&Query {
                limit: 3,
                ..Query::default()
            })
            .unwrap()
        else {
            panic!()
        };
        let got: Vec<(&str, i64)> = p.iter().map(|r| (&*r.device, r.ts)).collect();
        assert_eq!(got, [("b", 98_500), ("a", 99_000), ("b", 99_500)]);
        // 10 s buckets of device a: 10 points each.
        let QueryResult::Buckets(bk) = room
            .query(&Query {
                device: Some("a".into()),
                step: Some(10_000),
                ..Query::default()
            })
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(bk.len(), 10);
        assert_eq!(
            (bk[1].ts, bk[1].min, bk[1].max, bk[1].mean, bk[1].count),
            (10_000, 10.0, 19.0, 14.5, 10)
        );
        let err = room
            .query(&Query {
                metric: Some("nope".into()),
                ..Query::default()
            })
            .unwrap_err();
        assert!(matches!(err, HistoryError::UnknownSeries(_)));
    }

    #[test]
    fn prune_drops_old_points_series_and_unheld_rooms() {
        let h = History::in_memory(cfg());
        let d: Arc<str> = Arc::from("d");
        {
            let room = h.room(&Arc::from("gone"));
            room.record(&rec(&d, "t", 1_000, 1.0)).unwrap();
        }
        let kept = h.room(&Arc::from("kept"));
        kept.record(&rec(&d, "t", 1_000, 1.0)).unwrap();
        kept.record(&rec(&d, "t", 100_000, 2.0)).unwrap();
        assert_eq!(h.series_count(), 2);
        h.prune(100_000 + 1); // cutoff 40_001
        assert_eq!(h.series_count(), 1);
        assert!(
            h.get("gone").is_none(),
            "no series left and no room holds it"
        );
        assert_eq!(kept.series_info()[0].count, 1);
        h.prune(1_000_000);
        assert_eq!(h.series_count(), 0);
        // `kept` is still held by its (live) room: it stays, with its epoch and offset.
        assert!(h.get("kept").is_some());
        assert_eq!(kept.offset(), 2);
        let again = h.room(&Arc::from("gone"));
        assert_eq!(again.offset(), 0);
    }

    #[test]
    fn plot_data_is_one_line_per_device() {
        let h = History::in_memory(cfg());
        let room = h.room(&Arc::from("r"));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        room.record(&rec(&a, "t", 1, 1.0)).unwrap();
        room.record(&rec(&b, "t", 2, 2.0)).unwrap();
        room.record(&rec(&b, "h", 2, 2.0)).unwrap();
        let data = room.plot_data("t", None, 0, 10).unwrap();
        assert_eq!(data.lines.len(), 2);
        assert_eq!(data.unit.as_deref(), Some("C"));
        assert!(room.plot_data("x", None, 0, 10).is_err());
        assert_eq!(
            room.plot_data("t", Some("b"), 0, 10).unwrap().lines.len(),
            1
        );
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("15m"), Some(900_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("2d"), Some(172_800_000));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("99999999999999w"), None);
        assert_eq!(parse_time("-15m", 1_000_000), Some(100_000));
        assert_eq!(parse_time("1764000000000", 0), Some(1_764_000_000_000));
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z", 0),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_time("yesterday", 0), None);
        assert_eq!(parse_time("-", 0), None);
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 8);
    }
}
