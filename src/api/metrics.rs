//! `GET /metrics`: the hub's registry (its own metrics, the history's gauges and the MQTT
//! bridges' state, see [`crate::metrics`]) in the Prometheus text format.
//!
//! Encoded with `prometheus-client`'s Prometheus text encoder (version 0.0.4), which
//! every Prometheus and every compatible scraper accepts, rather than its OpenMetrics
//! encoder: in the 0.0.4 format a counter's `# TYPE` line names the `_total` series
//! itself, as this endpoint always has.

use prometheus_client::encoding::prometheus_text;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::with_hub;
use crate::auth::Authorizer;
use crate::hub::Hub;

/// GET /metrics (an admin token in token mode, unless `auth.public_metrics`)
pub(crate) fn route(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(super::auth::metrics_access(auth))
        .and(with_hub(hub))
        .map(|hub: Hub| {
            let mut text = String::with_capacity(8192);
            let status = match prometheus_text::encode(&mut text, hub.metrics().registry()) {
                Ok(()) => StatusCode::OK,
                Err(_) => {
                    // Only a collector can fail (writing to a String cannot): say so
                    // rather than serve half a scrape as a whole one.
                    tracing::error!("/metrics: a collector failed to encode");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            warp::reply::with_status(
                warp::reply::with_header(text, "content-type", prometheus_text::CONTENT_TYPE),
                status,
            )
        })
}
