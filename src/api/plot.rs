//! The plot endpoint (`/api/rooms/{room}/plot.svg`, `plot.png`): query parameters in,
//! an image out, drawn by [`crate::render::plot`] on the blocking pool with no lock held.

use warp::reply::Response;

use super::error::{respond, ApiError};
use super::params::Params;
use super::{find_room_history, with_type};
use crate::clock::{now_ms, parse_duration};
use crate::hub::Hub;
use crate::render::plot::{self, Format, PlotOptions, Theme};

/// Default window of a plot.
const DEFAULT_WINDOW: &str = "15m";

/// `GET /api/rooms/{room}/plot.svg` and `plot.png`
pub(crate) async fn plot(
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
    let rh = find_room_history(&hub, &room)?;
    let to = now_ms();
    let data = rh.plot_data(&metric, device.as_deref(), to - window, to)?;
    let image = plot::render_blocking(data, opts).await?;
    Ok(with_type(image, format.content_type()))
}
