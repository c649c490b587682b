//! Reading history back: REST queries (points, or buckets of min/max/mean/count), the
//! series list, and the points of a plot. Everything is copied out under the room
//! history's lock, so formatting and drawing run with no lock held.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;

use super::room::{sorted_series, Series};
use super::{HistoryError, Point, RoomHistory, SeriesKey};

impl RoomHistory {
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
