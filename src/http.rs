//! The HTTP side of the hub, as warp filters: health, the room list, metrics (and, as
//! the other stages land, history and plots) and the browser dashboard at `/`
//! ([`crate::dashboard`]). One function per endpoint, composed in [`routes`]; unknown
//! paths and bad requests become JSON errors in [`recover`].

use std::convert::Infallible;
use std::path::PathBuf;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::history_api;
use crate::hub::Hub;
use crate::mqtt::Bridges;
use crate::plot::Format;
use crate::upgrade::error_response;

/// All HTTP routes of the hub; `dashboard_dir` serves the page from disk instead of the
/// embedded copy.
pub fn routes(
    hub: Hub,
    bridges: Bridges,
    dashboard_dir: Option<PathBuf>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    healthz()
        .or(rooms(hub.clone()))
        .or(room_history(hub.clone()))
        .or(room_series(hub.clone()))
        .or(room_plot(hub.clone()))
        .or(api_bridges(bridges.clone()))
        .or(metrics(hub, bridges))
        .or(crate::dashboard::routes(dashboard_dir))
        .recover(recover)
}

fn with_hub(hub: Hub) -> impl Filter<Extract = (Hub,), Error = Infallible> + Clone {
    warp::any().map(move || hub.clone())
}

/// GET /healthz
fn healthz() -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).map(|| "ok")
}

/// GET /api/rooms
fn rooms(hub: Hub) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms")
        .and(warp::get())
        .and(with_hub(hub))
        .map(|hub: Hub| warp::reply::json(&serde_json::json!({ "rooms": hub.summaries() })))
}

/// The query string as pairs (empty when there is none); the handlers check them.
fn query_pairs() -> impl Filter<Extract = (Vec<(String, String)>,), Error = Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
}

/// GET /api/rooms/{room}/history?device=&metric=&from=&to=&limit=&format=&step=
fn room_history(hub: Hub) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "history")
        .and(warp::get())
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|room, hub, q| history_api::history(hub, room, q))
}

/// GET /api/rooms/{room}/series
fn room_series(hub: Hub) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "series")
        .and(warp::get())
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|room, hub, q| history_api::series(hub, room, q))
}

/// GET /api/rooms/{room}/plot.svg and /api/rooms/{room}/plot.png
fn room_plot(hub: Hub) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let format = warp::path("plot.svg")
        .map(|| Format::Svg)
        .or(warp::path("plot.png").map(|| Format::Png))
        .unify();
    warp::path!("api" / "rooms" / String / ..)
        .and(format)
        .and(warp::path::end())
        .and(warp::get())
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|room, format, hub, q| history_api::plot(hub, room, format, q))
}

/// GET /api/bridges: each MQTT bridge with its connection state and counters.
fn api_bridges(
    bridges: Bridges,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "bridges")
        .and(warp::get())
        .map(move || warp::reply::json(&serde_json::json!({ "bridges": bridges.statuses() })))
}

/// GET /metrics
fn metrics(
    hub: Hub,
    bridges: Bridges,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_hub(hub))
        .map(move |hub: Hub| {
            let mut text = String::with_capacity(4096);
            hub.metrics().render(hub.room_count(), &mut text);
            render_history_metrics(&hub, &mut text);
            bridges.render_metrics(&mut text);
            warp::reply::with_header(text, "content-type", "text/plain; version=0.0.4")
        })
}

/// The history's gauges and counters, appended to `/metrics`.
fn render_history_metrics(hub: &Hub, out: &mut String) {
    use std::fmt::Write as _;
    let h = hub.history();
    let _ = write!(
        out,
        "# HELP telehub_history_series Series (room, device, metric) kept in memory.\n\
         # TYPE telehub_history_series gauge\ntelehub_history_series {}\n\
         # HELP telehub_history_store_dropped_total Readings not written to the database because its queue was full.\n\
         # TYPE telehub_history_store_dropped_total counter\ntelehub_history_store_dropped_total {}\n",
        h.series_count(),
        h.store_dropped()
    );
}

/// Turns warp's rejections into JSON errors with the right status.
async fn recover(err: Rejection) -> Result<warp::reply::Response, Infallible> {
    let resp = if err.is_not_found() {
        error_response(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method",
        )
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        error_response(StatusCode::BAD_REQUEST, "invalid_parameter", &e.to_string())
    } else {
        error_response(StatusCode::BAD_REQUEST, "bad_request", &format!("{err:?}"))
    };
    Ok(resp)
}
