//! The history of one room: a bounded ring of points per (device, metric) series, the
//! offset-ordered recovery log, and the last value of every series.
//!
//! The room (in [`crate::hub::room`]) calls [`RoomHistory::record`] under its own lock for
//! every accepted reading, which is where offsets are given out; the snapshot and a
//! `?since=` replay's start are read under the same lock at a dashboard's join, and the
//! replay's pages ([`RoomHistory::replay_page`]) under it as the dashboard reads. Queries and plots are in
//! [`super::query`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::durable::{Queued, StoredReading};
use super::{Common, HistoryError, Point, Record, Replayed, SeriesCaps, SeriesKey};

/// One series' ring of points and its last value.
pub(super) struct Series {
    pub(super) key: Arc<SeriesKey>,
    pub(super) unit: Option<Arc<str>>,
    /// Sorted by `ts` (a late point is inserted in place).
    pub(super) points: VecDeque<Point>,
    /// The latest reading by arrival (not by `ts`) and its offset.
    pub(super) last: Point,
    pub(super) last_offset: u64,
}

impl Series {
    /// A new series whose first point is `(ts, value)` (recorded by the caller).
    fn new(key: Arc<SeriesKey>, ts: i64, value: f64) -> Series {
        Series {
            key,
            unit: None,
            points: VecDeque::new(),
            last: Point { ts, value },
            last_offset: 0,
        }
    }
}

/// One entry of the room log: 64 bytes, no JSON.
pub(super) struct Entry {
    pub(super) offset: u64,
    pub(super) ts: i64,
    pub(super) value: f64,
    pub(super) seq: Option<u64>,
    pub(super) key: Arc<SeriesKey>,
    pub(super) unit: Option<Arc<str>>,
}

/// The history of one room. A room holds it for its whole life; the registry keeps it
/// after the room is gone, until its last series expires.
pub struct RoomHistory {
    pub(super) name: Arc<str>,
    pub(super) epoch: Arc<str>,
    pub(super) common: Arc<Common>,
    pub(super) inner: Mutex<RoomInner>,
}

#[derive(Default)]
pub(super) struct RoomInner {
    /// The last offset given out (0: none yet).
    pub(super) offset: u64,
    pub(super) series: HashMap<Arc<str>, HashMap<Arc<str>, Series>>,
    /// How many series `series` holds (against [`SeriesCaps::per_room`]).
    pub(super) series_count: usize,
    pub(super) log: VecDeque<Entry>,
}

/// What [`RoomHistory::record_capped`] did with an accepted reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The room offset it was given.
    pub(crate) offset: u64,
    /// What the store did with it (`None`: history is in memory only).
    pub(crate) queued: Option<Queued>,
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
    pub(super) fn lock(&self) -> MutexGuard<'_, RoomInner> {
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

    /// Whether the series (`device`, `metric`) holds a point at exactly `ts` with
    /// `value`: the identity of a reading without `seq` (an MQTT message the broker
    /// delivers again). Only as far back as memory holds the series.
    pub(crate) fn holds_point(&self, device: &str, metric: &str, ts: i64, value: f64) -> bool {
        let inner = self.lock();
        let Some(series) = inner.series.get(device).and_then(|m| m.get(metric)) else {
            return false;
        };
        let at = series.points.partition_point(|p| p.ts < ts);
        series
            .points
            .range(at..)
            .take_while(|p| p.ts == ts)
            .any(|p| p.value.to_bits() == value.to_bits())
    }

    /// The committed seq windows of this room's devices (none in memory only): what
    /// duplicate detection starts from, before memory's log is replayed over it, so a
    /// resend of readings older than memory holds is still found. Reads the file.
    pub(crate) fn stored_seqs(&self) -> Vec<super::durable::StoredSeqs> {
        self.common
            .store
            .as_ref()
            .map_or_else(Vec::new, |s| s.device_seqs(&self.name))
    }

    /// The last ticket the store gave out (0 in memory): a duplicate's original is
    /// covered by it.
    pub(crate) fn last_ticket(&self) -> super::durable::Ticket {
        self.common.store.as_ref().map_or(0, |s| s.last_ticket())
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
        self.record_capped(r, SeriesCaps::NONE)
            .map(|rec| rec.offset)
    }

    /// [`RoomHistory::record`], refusing a new series past `caps` as well as past the
    /// hub-wide `max_series`; says what the store did with the reading too.
    pub(crate) fn record_capped(
        &self,
        r: &Record<'_>,
        caps: SeriesCaps,
    ) -> Result<Recorded, HistoryError> {
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
                if inner.series_count >= caps.per_room {
                    return Err(HistoryError::RoomSeriesLimit { max: caps.per_room });
                }
                if by_metric.len() >= caps.per_device {
                    return Err(HistoryError::DeviceSeriesLimit {
                        max: caps.per_device,
                    });
                }
                self.reserve_series()?;
                inner.series_count += 1;
                let metric: Arc<str> = Arc::from(r.metric);
                let key = Arc::new(SeriesKey {
                    device: r.device.clone(),
                    metric: metric.clone(),
                });
                by_metric
                    .entry(metric)
                    .or_insert_with(|| Series::new(key, r.ts, r.value))
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
        let queued = self.common.store.as_ref().map(|store| {
            store.push_reading(StoredReading {
                room: self.name.clone(),
                key: key.clone(),
                unit: unit.clone(),
                ts: r.ts,
                value: r.value,
                seq: r.seq,
                offset,
            })
        });
        if queued == Some(Queued::Refused) {
            // Fanned out, but not kept: out of the ring too, so that the device's resend
            // (or the broker's redelivery) is recorded once, not taken as a duplicate.
            if let Some(s) = inner
                .series
                .get_mut(&**r.device)
                .and_then(|m| m.get_mut(r.metric))
            {
                let at = s.points.partition_point(|p| p.ts < r.ts);
                let same = |p: &Point| p.ts == r.ts && p.value.to_bits() == r.value.to_bits();
                if let Some(i) = (at..s.points.len())
                    .take_while(|&i| s.points[i].ts == r.ts)
                    .find(|&i| same(&s.points[i]))
                {
                    s.points.remove(i);
                }
            }
        }
        inner.log.push_back(Entry {
            offset,
            ts: r.ts,
            value: r.value,
            seq: r.seq,
            key,
            unit,
        });
        Ok(Recorded { offset, queued })
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
    /// false. All at once (a room rebuilding its duplicate windows, tests); a dashboard's
    /// replay goes page by page ([`RoomHistory::replay_start`]).
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

    /// Where a `?since=` replay starts: whether it is complete (see [`RoomHistory::replay`])
    /// and the first offset to send (past the room's offset when there is nothing).
    /// Called by the room under its own lock; the pages follow with
    /// [`RoomHistory::replay_page`] as the dashboard reads.
    pub fn replay_start(&self, since: u64, epoch: Option<&str>) -> (bool, u64) {
        let inner = self.lock();
        let oldest = inner.log.front().map_or(inner.offset + 1, |e| e.offset);
        let same_epoch = epoch.is_none_or(|e| e == &*self.epoch);
        let recovered = same_epoch && since <= inner.offset && since + 1 >= oldest;
        let cursor = if recovered { since + 1 } else { oldest };
        (recovered, cursor)
    }

    /// Hands `each` up to `max` log entries from offset `cursor` on, in order, and
    /// returns the next cursor; `None` when the log no longer holds `cursor` (trimmed
    /// past it while the dashboard was catching up: it is too slow for this room).
    pub fn replay_page(
        &self,
        cursor: u64,
        max: usize,
        mut each: impl FnMut(Replayed<'_>),
    ) -> Option<u64> {
        let inner = self.lock();
        if cursor > inner.offset {
            return Some(cursor);
        }
        let oldest = inner.log.front().map_or(inner.offset + 1, |e| e.offset);
        if cursor < oldest {
            return None;
        }
        // Log offsets are consecutive, so the first entry is found by arithmetic.
        let skip = usize::try_from(cursor - oldest).unwrap_or(usize::MAX);
        let mut next = cursor;
        for e in inner.log.iter().skip(skip).take(max) {
            each(replayed_of(e));
            next = e.offset + 1;
        }
        Some(next)
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

    /// Drops points older than `cutoff` and the series left with none; returns how many
    /// series were dropped.
    pub(super) fn prune(&self, cutoff: i64) -> usize {
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
        inner.series_count = inner.series_count.saturating_sub(dropped);
        if inner.series.is_empty() {
            // Nothing of the room is within the memory window any more.
            self.forget_log(&mut inner.log);
            inner.log.shrink_to_fit();
        }
        self.common.series.fetch_sub(dropped, Ordering::AcqRel);
        dropped
    }

    /// Puts back a reading loaded from the store (start-up only; no store write).
    pub(super) fn restore(&self, r: &StoredReading) -> Result<(), HistoryError> {
        let cfg = &self.common.config;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let by_metric = inner.series.entry(r.key.device.clone()).or_default();
        let series = match by_metric.get_mut(&*r.key.metric) {
            Some(s) => s,
            None => {
                self.reserve_series()?;
                inner.series_count += 1;
                by_metric
                    .entry(r.key.metric.clone())
                    .or_insert_with(|| Series::new(r.key.clone(), r.ts, r.value))
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
pub(super) fn sorted_series(inner: &RoomInner) -> impl Iterator<Item = &Series> {
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
