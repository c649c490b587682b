//! Handlers of the history endpoints (`/api/rooms/{room}/history`, `/series`): query
//! parameters in, JSON or CSV out.
//!
//! Readers at the end of the data flow. Routes are declared in [`crate::api`]; every
//! handler answers with a response (never a warp rejection), so an error always carries
//! its documented JSON body: `400 invalid_parameter` naming the parameter,
//! `404 unknown_room`, `404 unknown_series`. Queries and rendering run on the blocking
//! pool: they copy points out of the room's history under its lock, then format or draw
//! with no lock held.

use std::fmt::Write as _;

use warp::reply::Response;

use super::error::{respond, ApiError};
use super::params::Params;
use super::{blocking, find_room_history, with_type};
use crate::clock::now_ms;
use crate::hub::Hub;
use crate::sinks::history::{Query, QueryResult, MAX_QUERY_LIMIT};

/// Buckets per series a query past memory gets from a rollup tier when it gives no
/// `step` (the step is the window over this, down to a multiple of the tier's).
const ROLLUP_POINTS: i64 = 1_000;

/// `GET /api/rooms/{room}/history` (asked of the room's keeper on a cluster).
pub(crate) async fn history(
    hub: Hub,
    room: String,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    if let Some(answer) = super::keeper::to_keeper(&hub, &room, "history", &raw).await {
        return Ok(answer);
    }
    Ok(history_here(hub, room, raw).await)
}

/// The history query answered from this hub's own history.
pub(crate) async fn history_here(hub: Hub, room: String, raw: Vec<(String, String)>) -> Response {
    respond(history_inner(hub, room, raw).await).unwrap_or_else(|never| match never {})
}

async fn history_inner(
    hub: Hub,
    room: String,
    raw: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let p = Params::new(
        raw,
        &["device", "metric", "from", "to", "limit", "format", "step"],
    )?;
    let now = now_ms();
    let query = Query {
        device: p.device()?,
        metric: p.metric()?,
        from: p.time("from", now)?,
        to: p.time("to", now)?,
        limit: p
            .number("limit", 1..=MAX_QUERY_LIMIT as u64)?
            .map_or(crate::sinks::history::DEFAULT_QUERY_LIMIT, |n| n as usize),
        step: p.duration("step")?,
    };
    if let (Some(f), Some(t)) = (query.from, query.to) {
        if f > t {
            return Err(ApiError::param("from", "must not be after `to`"));
        }
    }
    let csv = match p.get("format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::param("format", "must be json or csv")),
    };
    let rh = find_room_history(&hub, &room)?;
    // Memory holds `memory_ms` back from now; an older `from` reads the raw rows on disk
    // for the part before that (aligned up to `step`, so no bucket is split in two).
    let history = hub.history().clone();
    let mut disk_before = now.saturating_sub(history.config().memory_window_ms() as i64);
    if let Some(step) = query.step.filter(|s| *s > 1) {
        disk_before = disk_before.div_euclid(step) * step + step;
    }
    let from_disk = history.persistent() && query.from.is_some_and(|f| f < disk_before);
    // Past memory, a step (asked, or about ROLLUP_POINTS buckets per series when none
    // is) that a rollup tier divides is answered from that tier alone.
    let tiers = crate::sinks::store::rollup::tiers(history.config());
    let rollup = if from_disk {
        match query.step {
            Some(step) => {
                crate::sinks::store::rollup::tier_for_step(&tiers, step).map(|t| (t.clone(), step))
            }
            None => {
                let span = query.to.unwrap_or(now) - query.from.unwrap_or(now);
                crate::sinks::store::rollup::auto_step(&tiers, span, ROLLUP_POINTS)
                    .map(|(t, s)| (t.clone(), s))
            }
        }
    } else {
        None
    };
    blocking(move || {
        let mut resolution = "raw".to_string();
        let mut step = query.step;
        let result = if let Some((tier, tier_step)) = rollup {
            let rows = crate::sinks::store::read::query_rollup(
                &history.config().data_dir,
                &tier,
                &room,
                &query,
                tier_step,
            )
            .map_err(|e| ApiError::internal(format!("history rollups: {e}")))?;
            if rows.is_empty() && (query.device.is_some() || query.metric.is_some()) {
                // Neither the tier nor memory knows such a series.
                rh.query(&Query {
                    from: Some(disk_before),
                    ..query.clone()
                })?;
            }
            resolution = tier.name;
            step = Some(tier_step);
            QueryResult::Buckets(rows)
        } else if from_disk {
            let memory = Query {
                from: Some(disk_before),
                ..query.clone()
            };
            let recent = match rh.query(&memory) {
                Ok(r) => Some(r),
                Err(crate::sinks::history::HistoryError::UnknownSeries(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let older = crate::sinks::store::read::query_rows(
                &history.config().data_dir,
                &room,
                &query,
                disk_before,
            )
            .map_err(|e| ApiError::internal(format!("history on disk: {e}")))?;
            let nothing = match &older {
                QueryResult::Points(p) => p.is_empty(),
                QueryResult::Buckets(b) => b.is_empty(),
            };
            if recent.is_none() && nothing && (query.device.is_some() || query.metric.is_some()) {
                // Neither memory nor the file holds such a series.
                rh.query(&query)?;
            }
            merge(older, recent, query.limit)
        } else {
            rh.query(&query)?
        };
        Ok(if csv {
            with_type(to_csv(&result), "text/csv; charset=utf-8")
        } else {
            // Serialised straight from the rows: no intermediate JSON tree.
            let body = match &result {
                QueryResult::Points(points) => serde_json::to_vec(&HistoryBody {
                    room: &room,
                    resolution: &resolution,
                    step: None,
                    points,
                }),
                QueryResult::Buckets(buckets) => serde_json::to_vec(&HistoryBody {
                    room: &room,
                    resolution: &resolution,
                    step,
                    points: buckets,
                }),
            }
            .map_err(|e| ApiError::internal(e.to_string()))?;
            with_type(body, "application/json")
        })
    })
    .await
}

/// The disk's older part, then memory's newer part, the newest `limit` of them; an
/// unknown series is one neither holds.
fn merge(older: QueryResult, recent: Option<QueryResult>, limit: usize) -> QueryResult {
    fn newest<T>(mut rows: Vec<T>, limit: usize) -> Vec<T> {
        let skip = rows.len().saturating_sub(limit);
        rows.drain(..skip);
        rows
    }
    match (older, recent) {
        (QueryResult::Points(mut a), Some(QueryResult::Points(b))) => {
            a.extend(b);
            QueryResult::Points(newest(a, limit))
        }
        (QueryResult::Buckets(mut a), Some(QueryResult::Buckets(b))) => {
            a.extend(b);
            QueryResult::Buckets(newest(a, limit))
        }
        (older, _) => older,
    }
}

/// The JSON answer of a history query.
#[derive(serde::Serialize)]
struct HistoryBody<'a, T> {
    room: &'a str,
    /// The tier the answer came from: `raw` readings (memory and disk alike), or a
    /// rollup tier's step (`1m`, `1h`).
    resolution: &'a str,
    /// Bucket width in ms, when the query asked for `step`.
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<i64>,
    points: &'a [T],
}

/// CSV with a header line. Device and metric ids cannot hold commas or quotes (their
/// character sets are restricted), so no field needs quoting.
fn to_csv(result: &QueryResult) -> String {
    let mut out = String::new();
    match result {
        QueryResult::Points(points) => {
            out.push_str("device,metric,ts,value\n");
            for p in points {
                let _ = writeln!(out, "{},{},{},{}", p.device, p.metric, p.ts, p.value);
            }
        }
        QueryResult::Buckets(buckets) => {
            out.push_str("device,metric,ts,min,max,mean,count\n");
            for b in buckets {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{},{},{}",
                    b.device, b.metric, b.ts, b.min, b.max, b.mean, b.count
                );
            }
        }
    }
    out
}

/// `GET /api/rooms/{room}/series` (asked of the room's keeper on a cluster).
pub(crate) async fn series(
    hub: Hub,
    room: String,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    if let Some(answer) = super::keeper::to_keeper(&hub, &room, "series", &raw).await {
        return Ok(answer);
    }
    Ok(series_here(hub, room, raw))
}

/// The series of this hub's own history. A kept cluster room names the epoch and
/// offset Redis gave its readings (this hub's store numbers them its own way).
pub(crate) fn series_here(hub: Hub, room: String, raw: Vec<(String, String)>) -> Response {
    let answer = respond((|| {
        Params::new(raw, &[])?;
        let rh = find_room_history(&hub, &room)?;
        let labels = hub.labels();
        let series: Vec<serde_json::Value> = rh
            .series_info()
            .into_iter()
            .map(|s| {
                let label = labels.get(&room, &s.device, &s.metric);
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                if let (Some(l), Some(obj)) = (label, v.as_object_mut()) {
                    if let Ok(serde_json::Value::Object(extra)) = serde_json::to_value(l) {
                        obj.extend(extra);
                    }
                }
                v
            })
            .collect();
        let (epoch, offset) = hub
            .kept_position(&room)
            .unwrap_or_else(|| (rh.epoch().to_string(), rh.offset()));
        let body = serde_json::to_vec(&serde_json::json!({
            "room": room,
            "epoch": epoch,
            "offset": offset,
            "series": series,
        }))
        .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(with_type(body, "application/json"))
    })());
    answer.unwrap_or_else(|never| match never {})
}
