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

/// `GET /api/rooms/{room}/history`
pub(crate) async fn history(
    hub: Hub,
    room: String,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    respond(history_inner(hub, room, raw).await)
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
    blocking(move || {
        let result = rh.query(&query)?;
        Ok(if csv {
            with_type(to_csv(&result), "text/csv; charset=utf-8")
        } else {
            // Serialised straight from the rows: no intermediate JSON tree.
            let body = match &result {
                QueryResult::Points(points) => serde_json::to_vec(&HistoryBody {
                    room: &room,
                    step: None,
                    points,
                }),
                QueryResult::Buckets(buckets) => serde_json::to_vec(&HistoryBody {
                    room: &room,
                    step: query.step,
                    points: buckets,
                }),
            }
            .map_err(|e| ApiError::internal(e.to_string()))?;
            with_type(body, "application/json")
        })
    })
    .await
}

/// The JSON answer of a history query.
#[derive(serde::Serialize)]
struct HistoryBody<'a, T> {
    room: &'a str,
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

/// `GET /api/rooms/{room}/series`
pub(crate) async fn series(
    hub: Hub,
    room: String,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    respond((|| {
        Params::new(raw, &[])?;
        let rh = find_room_history(&hub, &room)?;
        let body = serde_json::to_vec(&serde_json::json!({
            "room": room,
            "epoch": rh.epoch(),
            "offset": rh.offset(),
            "series": rh.series_info(),
        }))
        .map_err(|e| ApiError::internal(e.to_string()))?;
        Ok(with_type(body, "application/json"))
    })())
}
