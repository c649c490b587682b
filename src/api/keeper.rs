//! History across hubs: on a cluster, a room's history (memory and SQLite) is held by
//! its keeper, one hub (see `cluster/keeper.rs`). The history endpoints of any other
//! hub ask the keeper and answer with what it answered, so `/history`, `/series` and the
//! plots answer the same on every hub. This module is both ends: [`to_keeper`] asks,
//! [`answer_questions`] answers the questions other hubs ask this one.
//!
//! Authentication and parameters are checked by the asking hub's own routes first; the
//! keeper checks the parameters again as any request's. A room with no keeper yet (no
//! reading since Redis last lost it) is answered from this hub's own history.

use base64::Engine as _;
use http_body_util::{BodyExt, Limited};
use tracing::warn;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

use super::error::ApiError;
use super::{history, plot};
use crate::cluster::commands::NodeMessage;
use crate::cluster::keeper::{Answer, AskError, MAX_ANSWER_BYTES};
use crate::hub::{Hub, Question};
use crate::render::plot::Format;
use crate::shutdown::{Completion, Shutdown};
use telehub_protocol::ids::valid_id;

/// The header naming the hub that answered a history request it was asked by another.
pub(crate) const KEEPER_HEADER: &str = "x-telehub-keeper";

/// On a cluster hub that does not keep `room`: the keeper's answer to the history
/// question `what` (`history`, `series`, `plot.png`, `plot.svg`). `None`: answer here
/// (no cluster, this hub keeps the room, or nobody does yet).
pub(crate) async fn to_keeper(
    hub: &Hub,
    room: &str,
    what: &str,
    params: &[(String, String)],
) -> Option<Response> {
    let cluster = hub.cluster()?;
    if !valid_id(room) || hub.keeps(room) {
        return None;
    }
    let node = match cluster.keeper_of(room).await {
        Ok(Some(node)) if node != **cluster.node_id() => node,
        Ok(_) => return None,
        Err(e) => {
            return Some(unavailable(
                "redis_unavailable",
                format!("the room's keeper could not be looked up: {e}"),
            ))
        }
    };
    Some(match cluster.ask(&node, room, what, params).await {
        Ok(answer) => response(answer, &node),
        Err(AskError::Busy) => unavailable("busy", AskError::Busy.to_string()),
        Err(e) => unavailable("keeper_unavailable", e.to_string()),
    })
}

fn unavailable(code: &'static str, message: String) -> Response {
    let mut resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The keeper's answer as this hub's HTTP answer.
fn response(answer: Answer, node: &str) -> Response {
    let body = match (answer.text, answer.base64) {
        (Some(text), _) => text.into_bytes(),
        (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => bytes,
            Err(e) => {
                return ApiError::internal(format!("the keeper's answer was unreadable: {e}"))
                    .into_response()
            }
        },
        (None, None) => Vec::new(),
    };
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&answer.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(node) {
        headers.insert(KEEPER_HEADER, v);
    }
    resp
}

/// Answers the history questions other hubs ask this one, each on a task of its own
/// (the queries themselves share the API's blocking-pool bound), until shutdown.
pub(crate) async fn answer_questions(
    hub: Hub,
    mut questions: tokio::sync::mpsc::Receiver<Question>,
    mut shutdown: Shutdown,
    _done: Completion,
) {
    loop {
        let q = tokio::select! {
            q = questions.recv() => match q {
                Some(q) => q,
                None => return,
            },
            _ = shutdown.recv() => return,
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let answer = answer(&hub, q.room, &q.what, q.params).await;
            let Some(cluster) = hub.cluster() else {
                return;
            };
            let message = NodeMessage::Answer { id: q.id, answer };
            let text = serde_json::to_string(&message).unwrap_or_default();
            if let Err(e) = cluster.send_to(&q.node, text).await {
                warn!(node = %q.node, error = %e, "a history answer could not be sent to its hub");
            }
        });
    }
}

/// One question answered as a local request would be.
async fn answer(hub: &Hub, room: String, what: &str, params: Vec<(String, String)>) -> Answer {
    let hub = hub.clone();
    let resp = match what {
        "history" => history::history_here(hub, room, params).await,
        "series" => history::series_here(hub, room, params),
        "plot.png" => plot::plot_here(hub, room, Format::Png, params).await,
        "plot.svg" => plot::plot_here(hub, room, Format::Svg, params).await,
        other => {
            return Answer::error(
                400,
                "bad_request",
                &format!("no history question `{other}`"),
            )
        }
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let body = match Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Answer::error(
                413,
                "answer_too_large",
                &format!(
                    "the answer is over {} MiB, too large to pass between hubs: ask for a smaller `limit`, a `step` or a shorter window",
                    MAX_ANSWER_BYTES >> 20
                ),
            )
        }
    };
    let image = content_type.starts_with("image/png");
    match (image, String::from_utf8(body.to_vec())) {
        (false, Ok(text)) => Answer {
            status,
            content_type,
            text: Some(text),
            base64: None,
        },
        _ => Answer {
            status,
            content_type,
            text: None,
            base64: Some(base64::engine::general_purpose::STANDARD.encode(&body)),
        },
    }
}
