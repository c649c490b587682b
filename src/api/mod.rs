//! The HTTP API, as warp filters: health, the room list, history, plots, bridges,
//! metrics and the browser dashboard at `/`. Readers at the end of the data flow: they
//! read the hub's rooms and what the sinks remembered, and change nothing.
//!
//! One function per endpoint, composed in [`routes`]; handlers live in [`history`],
//! [`plot`] and beside their route; unknown paths and bad requests become JSON errors in
//! [`error`].

pub(crate) mod alerts;
pub(crate) mod assets;
pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod history;
pub(crate) mod ingest;
pub(crate) mod keeper;
pub(crate) mod layout;
pub(crate) mod metrics;
pub(crate) mod params;
pub(crate) mod plot;
pub(crate) mod write;

use std::convert::Infallible;
use std::path::PathBuf;

use warp::{Filter, Rejection, Reply};

use std::sync::Arc;

use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use self::error::ApiError;
use crate::auth::{Access, Authorizer, Refusal};
use crate::config::DashboardConfig;
use crate::hub::Hub;
use crate::render::plot::Format;
use crate::sinks::history::RoomHistory;
use crate::sinks::layouts::Layouts;
use crate::sources::http_ingest::HttpIngest;
use crate::sources::influx::Influx;
use crate::sources::mqtt::Bridges;
use telehub_protocol::ids::valid_id;

/// All HTTP routes of the hub; `dashboard_dir` serves the page from disk instead of the
/// embedded copy. Every `/api` route (HTTP ingest's in [`ingest`]), the line-protocol
/// writes ([`write`]) and
/// `/metrics` go through `auth` ([`auth`]); `/healthz` and the dashboard's files are
/// open.
pub(crate) fn routes(
    hub: Hub,
    auth: Authorizer,
    bridges: Bridges,
    ingest: (Influx, HttpIngest),
    layouts: Layouts,
    dashboard_dir: Option<PathBuf>,
    page: &DashboardConfig,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    healthz(hub.clone())
        .or(write::routes(ingest.0, auth.clone()))
        .or(self::ingest::routes(ingest.1, auth.clone()))
        .or(rooms(hub.clone(), auth.clone()))
        .or(room_history(hub.clone(), auth.clone()))
        .or(room_series(hub.clone(), auth.clone()))
        .or(room_plot(hub.clone(), auth.clone()))
        .or(layout::route(layouts, auth.clone()))
        .or(api_bridges(bridges, auth.clone()))
        .or(page_settings(page, auth.clone()))
        .or(alerts::routes(hub.clone(), auth.clone()))
        .or(metrics::route(hub, auth))
        .or(crate::api::assets::routes(dashboard_dir))
        .recover(error::recover)
}

fn with_hub(hub: Hub) -> impl Filter<Extract = (Hub,), Error = Infallible> + Clone {
    warp::any().map(move || hub.clone())
}

/// GET /healthz: `ok`, or 503 with the reason while the history store's commits fail
/// (readings are then fanned out but not acknowledged), or while a cluster hub cannot
/// reach Redis (`redis_unavailable: ...`).
fn healthz(hub: Hub) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(warp::get())
        .and(with_hub(hub))
        .map(|hub: Hub| {
            let failing = hub
                .history()
                .store_failing()
                .map(|why| format!("store_unavailable: {why}"))
                .or_else(|| {
                    hub.cluster()
                        .and_then(|c| c.unhealthy())
                        .map(|why| format!("redis_unavailable: {why}"))
                });
            match failing {
                None => warp::reply::with_status("ok".to_string(), StatusCode::OK).into_response(),
                Some(why) => {
                    warp::reply::with_status(why, StatusCode::SERVICE_UNAVAILABLE).into_response()
                }
            }
        })
}

/// GET /api/rooms: the rooms the request's token covers (all of them in mode none).
fn rooms(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms")
        .and(warp::get())
        .and(auth::access(auth))
        .and(with_hub(hub))
        .and_then(|access: Access, hub: Hub| async move {
            let reply = match hub.cluster() {
                // Every hub's members, read from Redis: the same answer on every hub.
                Some(c) => match hub.cluster_summaries().await {
                    Ok(mut rooms) => {
                        rooms.retain(|r| access.may_read(&r.room));
                        warp::reply::json(&serde_json::json!({
                            "node": c.node_id(),
                            "rooms": rooms,
                        }))
                        .into_response()
                    }
                    Err(e) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "redis_unavailable",
                        format!("the cluster's rooms cannot be read: {e}"),
                    )
                    .into_response(),
                },
                None => {
                    let mut rooms = hub.summaries();
                    rooms.retain(|r| access.may_read(&r.room));
                    warp::reply::json(&serde_json::json!({ "rooms": rooms })).into_response()
                }
            };
            Ok::<_, Rejection>(reply)
        })
}

/// `/api/rooms/{room}/...`: passes the room on once the request's token covers it
/// (else 403 `forbidden`, whether the room exists or not).
pub(crate) fn room_allowed(
    auth: Authorizer,
) -> impl Fn(String, Access) -> std::future::Ready<Result<String, Rejection>> + Clone {
    move |room, access| std::future::ready(auth::room_access(&access, &auth, &room).map(|()| room))
}

/// The query string as pairs (empty when there is none); the handlers check them.
fn query_pairs() -> impl Filter<Extract = (Vec<(String, String)>,), Error = Rejection> + Clone {
    warp::query::<Vec<(String, String)>>()
}

/// GET /api/rooms/{room}/history?device=&metric=&from=&to=&limit=&format=&step=
fn room_history(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "history")
        .and(warp::get())
        .and(auth::access(auth.clone()))
        .and_then(room_allowed(auth))
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|room, hub, q| history::history(hub, room, q))
}

/// GET /api/rooms/{room}/series
fn room_series(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "series")
        .and(warp::get())
        .and(auth::access(auth.clone()))
        .and_then(room_allowed(auth))
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|room, hub, q| history::series(hub, room, q))
}

/// GET /api/rooms/{room}/plot.svg and /api/rooms/{room}/plot.png
fn room_plot(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let format = warp::path("plot.svg")
        .map(|| Format::Svg)
        .or(warp::path("plot.png").map(|| Format::Png))
        .unify();
    let allowed = room_allowed(auth.clone());
    warp::path!("api" / "rooms" / String / ..)
        .and(format)
        .and(warp::path::end())
        .and(warp::get())
        .and(auth::access(auth))
        .and_then(move |room, format, access| {
            let checked = allowed(room, access);
            async move { checked.await.map(|room| (room, format)) }
        })
        .untuple_one()
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|room, format, hub, q| plot::plot(hub, room, format, q))
}

/// GET /api/dashboard: the page's settings from `[dashboard]` (the map tile template),
/// for any caller the REST API admits; made once, at start-up.
fn page_settings(
    page: &DashboardConfig,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let body = Arc::new(page.public());
    warp::path!("api" / "dashboard")
        .and(warp::get())
        .and(auth::access(auth))
        .map(move |_: Access| warp::reply::json(&*body))
}

/// GET /api/bridges: each MQTT bridge with its connection state and counters.
fn api_bridges(
    bridges: Bridges,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let counter = auth.clone();
    warp::path!("api" / "bridges")
        .and(warp::get())
        .and(auth::access(auth))
        .and_then(move |access: Access| {
            let (bridges, counter) = (bridges.clone(), counter.clone());
            async move {
                // Broker addresses, client ids and errors are an operator's business: a
                // bridge's client id lets whoever reaches the broker take over its session.
                if !access.is_admin() {
                    let refused = counter.refuse(Refusal::NotAdmin);
                    return Err(warp::reject::custom(auth::Denied(refused)));
                }
                Ok(warp::reply::json(
                    &serde_json::json!({ "bridges": bridges.statuses() }),
                ))
            }
        })
}

pub(crate) fn find_room_history(hub: &Hub, room: &str) -> Result<Arc<RoomHistory>, ApiError> {
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

pub(crate) async fn blocking<T: Send + 'static>(
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

pub(crate) fn with_type(
    body: impl Into<warp::hyper::body::Bytes>,
    content_type: &'static str,
) -> Response {
    let mut resp = Response::new(body.into().into());
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
