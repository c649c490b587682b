//! Handlers of the history endpoints (`/api/rooms/{room}/history`, `/series`,
//! `/plot.svg`, `/plot.png`): query parameters in, JSON, CSV or an image out.
//!
//! Readers at the end of the data flow. Routes are declared in [`crate::http`]; every
//! handler answers with a response (never a warp rejection), so an error always carries
//! its documented JSON body: `400 invalid_parameter` naming the parameter,
//! `404 unknown_room`, `404 unknown_series`. Queries and rendering run on the blocking
//! pool: they copy points out of the room's history under its lock, then format or draw
//! with no lock held.

use std::fmt::Write as _;
use std::sync::Arc;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use crate::history::{
    now_ms, parse_duration, parse_time, HistoryError, Query, QueryResult, RoomHistory,
    MAX_QUERY_LIMIT,
};
use crate::hub::Hub;
use crate::plot::{self, Format, PlotError, PlotOptions, Theme};
use crate::protocol::{valid_id, valid_metric};
use crate::upgrade::error_response;

/// Default window of a plot.
const DEFAULT_WINDOW: &str = "15m";

/// An error answer: status, stable code and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn param(name: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            message: format!("parameter `{name}`: {why}"),
        }
    }

    fn unknown_room(room: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_room",
            message: format!("the hub has no room `{room}`"),
        }
    }

    fn internal(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        }
    }

    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> ApiError {
        match e {
            HistoryError::UnknownRoom(room) => ApiError::unknown_room(&room),
            HistoryError::UnknownSeries(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                code: "unknown_series",
                message: e.to_string(),
            },
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<PlotError> for ApiError {
    fn from(e: PlotError) -> ApiError {
        match e {
            PlotError::Size { name, .. } => ApiError::param(name, &e),
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// The query parameters of a request: each at most once, and only the known ones.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(raw: Vec<(String, String)>, known: &[&str]) -> Result<Params, ApiError> {
        for (i, (k, _)) in raw.iter().enumerate() {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::param(
                    k,
                    format!("unknown; this endpoint takes {}", known.join(", ")),
                ));
            }
            if raw[..i].iter().any(|(p, _)| p == k) {
                return Err(ApiError::param(k, "given more than once"));
            }
        }
        Ok(Params(raw))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn device(&self) -> Result<Option<String>, ApiError> {
        self.get("device")
            .map(|d| {
                if valid_id(d) {
                    Ok(d.to_string())
                } else {
                    Err(ApiError::param("device", "must be 1 to 64 of A-Za-z0-9_.-"))
                }
            })
            .transpose()
    }

    fn metric(&self) -> Result<Option<String>, ApiError> {
        self.get("metric")
            .map(|m| {
                if valid_metric(m) {
                    Ok(m.to_string())
                } else {
                    Err(ApiError::param(
                        "metric",
                        "must be 1 to 64 of A-Za-z0-9_.-/",
                    ))
                }
            })
            .transpose()
    }

    fn time(&self, name: &str, now: i64) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                parse_time(v, now).ok_or_else(|| {
                    ApiError::param(
                        name,
                        "must be epoch milliseconds, RFC 3339 or a relative window like -15m",
                    )
                })
            })
            .transpose()
    }

    fn duration(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|v| {
                parse_duration(v).ok_or_else(|| {
                    ApiError::param(name, "must be a duration like 30s, 1m, 15m, 1h or 1d")
                })
            })
            .transpose()
    }

    fn number(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|v| match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(ApiError::param(
                    name,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            })
            .transpose()
    }
}

fn room_history(hub: &Hub, room: &str) -> Result<Arc<RoomHistory>, ApiError> {
    if !valid_id(room) {
        return Err(ApiError::unknown_room(room));
    }
    hub.history()
        .get(room)
        .ok_or_else(|| ApiError::unknown_room(room))
}

/// History queries answered at the same time at most: each may build a body of up to
/// `MAX_QUERY_LIMIT` points (about 7.5 MB of JSON) on the blocking pool. Later requests
/// wait their turn; the connection cap bounds the waiters.
const MAX_CONCURRENT_QUERIES: usize = 4;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    static QUERIES: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(MAX_CONCURRENT_QUERIES);
    let _permit = QUERIES
        .acquire()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the query task failed: {e}")))?
}

fn respond(result: Result<Response, ApiError>) -> Result<Response, std::convert::Infallible> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

fn with_type(body: impl Into<warp::hyper::body::Bytes>, content_type: &'static str) -> Response {
    let mut resp = Response::new(body.into().into());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /api/rooms/{room}/history`
pub async fn history(
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
            .map_or(crate::history::DEFAULT_QUERY_LIMIT, |n| n as usize),
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
    let rh = room_history(&hub, &room)?;
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
pub async fn series(
    hub: Hub,
    room: String,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    respond((|| {
        Params::new(raw, &[])?;
        let rh = room_history(&hub, &room)?;
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

/// `GET /api/rooms/{room}/plot.svg` and `plot.png`
pub async fn plot(
    hub: Hub,
    room: String,
    format: Format,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    respond(plot_inner(hub, room, format, raw).await)
}

async fn plot_inner(
    hub: Hub,
    room: String,
    format: Format,
    raw: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let p = Params::new(
        raw,
        &["metric", "device", "window", "width", "height", "theme"],
    )?;
    let metric = p
        .metric()?
        .ok_or_else(|| ApiError::param("metric", "is required"))?;
    let device = p.device()?;
    let window = match p.duration("window")? {
        Some(w) => w,
        None => parse_duration(DEFAULT_WINDOW).unwrap_or(900_000),
    };
    // Parse sizes wide, so that 100000 is refused by the plot's own bounds check with a
    // message that names the limits.
    let width = p
        .number("width", 0..=u32::MAX as u64)?
        .map_or(plot::DEFAULT_WIDTH, |n| n as u32);
    let height = p
        .number("height", 0..=u32::MAX as u64)?
        .map_or(plot::DEFAULT_HEIGHT, |n| n as u32);
    let theme = match p.get("theme") {
        None => Theme::default(),
        Some(t) => t
            .parse()
            .map_err(|()| ApiError::param("theme", "must be light or dark"))?,
    };
    let opts = PlotOptions::new(format, width, height, theme)?;
    let rh = room_history(&hub, &room)?;
    let to = now_ms();
    let data = rh.plot_data(&metric, device.as_deref(), to - window, to)?;
    let image = plot::render_blocking(data, opts).await?;
    Ok(with_type(image, format.content_type()))
}
