//! The plot endpoint (`/api/rooms/{room}/plot.svg`, `plot.png`): query parameters in,
//! an image out, drawn by [`crate::render::plot`] on the blocking pool with no lock held.
//! A window that reaches past what memory holds (`history.memory_ms`) is drawn from the
//! coarsest rollup tier that still gives about [`PLOT_BUCKETS`] points per line (each
//! bucket's mean), as the REST history answers such windows.

use warp::reply::Response;

use super::error::{respond, ApiError};
use super::params::Params;
use super::{find_room_history, with_type};
use crate::clock::{now_ms, parse_duration};
use crate::hub::Hub;
use crate::render::plot::{self, Format, PlotOptions, Theme};
use crate::sinks::history::query::BucketRow;
use crate::sinks::history::{PlotData, Point, Query, MAX_QUERY_LIMIT};
use crate::sinks::store::{read, rollup};

/// Default window of a plot.
const DEFAULT_WINDOW: &str = "15m";
/// Points per line, about, when a plot is drawn from a rollup tier.
const PLOT_BUCKETS: i64 = 1_000;

/// `GET /api/rooms/{room}/plot.svg` and `plot.png` (asked of the room's keeper on a
/// cluster).
pub(crate) async fn plot(
    hub: Hub,
    room: String,
    format: Format,
    raw: Vec<(String, String)>,
) -> Result<Response, std::convert::Infallible> {
    let what = match format {
        Format::Png => "plot.png",
        Format::Svg => "plot.svg",
    };
    if let Some(answer) = super::keeper::to_keeper(&hub, &room, what, &raw).await {
        return Ok(answer);
    }
    Ok(plot_here(hub, room, format, raw).await)
}

/// The plot drawn from this hub's own history.
pub(crate) async fn plot_here(
    hub: Hub,
    room: String,
    format: Format,
    raw: Vec<(String, String)>,
) -> Response {
    respond(plot_inner(hub, room, format, raw).await).unwrap_or_else(|never| match never {})
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
    let rh = find_room_history(&hub, &room)?;
    let to = now_ms();
    let from = to - window;
    let history = hub.history().clone();
    let past_memory =
        history.persistent() && from < to - history.config().memory_window_ms() as i64;
    let tiers = rollup::tiers(history.config());
    let tier = past_memory
        .then(|| rollup::auto_step(&tiers, window, PLOT_BUCKETS))
        .flatten()
        .map(|(t, step)| (t.clone(), step));
    let data = match tier {
        None => rh.plot_data(&metric, device.as_deref(), from, to)?,
        Some((tier, step)) => {
            let q = Query {
                device: device.clone(),
                metric: Some(metric.clone()),
                from: Some(from),
                to: Some(to),
                limit: MAX_QUERY_LIMIT,
                step: Some(step),
            };
            let dir = history.config().data_dir.clone();
            let name = room.clone();
            let rows = super::blocking(move || {
                read::query_rollup(&dir, &tier, &name, &q, step)
                    .map_err(|e| ApiError::internal(format!("history rollups: {e}")))
            })
            .await?;
            // Memory names the unit (and, with no rows on disk either, refuses an
            // unknown series with 404 as a memory-only plot does).
            let recent = rh.plot_data(&metric, device.as_deref(), from, to);
            if rows.is_empty() {
                recent?
            } else {
                let unit = recent.ok().and_then(|d| d.unit);
                bucket_lines(room, metric, unit, (from, to), rows)
            }
        }
    };
    let image = plot::render_blocking(data, opts).await?;
    Ok(with_type(image, format.content_type()))
}

/// Rollup buckets as plot lines: one per device, each bucket's mean at its start, oldest
/// first.
fn bucket_lines(
    room: String,
    metric: String,
    unit: Option<String>,
    (from, to): (i64, i64),
    rows: Vec<BucketRow>,
) -> PlotData {
    let mut by_device: std::collections::BTreeMap<String, Vec<Point>> = Default::default();
    for r in rows {
        by_device
            .entry(r.device.to_string())
            .or_default()
            .push(Point {
                ts: r.ts,
                value: r.mean,
            });
    }
    let lines = by_device
        .into_iter()
        .map(|(device, mut points)| {
            points.sort_by_key(|p| p.ts);
            (device, points)
        })
        .collect();
    PlotData {
        room,
        metric,
        unit,
        from,
        to,
        lines,
    }
}
