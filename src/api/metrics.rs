//! `GET /metrics`: the hub's counters, the history's gauges and the bridges' state in
//! the Prometheus text format.

use warp::{Filter, Rejection, Reply};

use super::with_hub;
use crate::hub::Hub;
use crate::sources::mqtt::Bridges;

/// GET /metrics
pub(crate) fn route(
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
