//! HTTP ingest's routes, the HTTP side of [`crate::sources::http_ingest`]:
//!
//! - `POST /api/rooms/{room}/devices/{device}/readings`: one reading, an array, or
//!   `{"items":[...]}`; `200 {"accepted":N,"duplicates":D,"offsets":[first,last]}`, `207`
//!   with `errors` when some items were refused, `400` when none was taken (or the body
//!   is not JSON), `413` for a body over `limits.max_frame_bytes` or more than
//!   `limits.max_batch` items, `429` with `Retry-After` over the rate, `503
//!   store_unavailable` when the readings cannot be kept (the answer waits, as a
//!   WebSocket `accepted` does, until they are: on disk with `history.ack = "durable"`);
//! - `GET /api/rooms/{room}/devices/{device}/commands?wait=30s`: the commands waiting for
//!   the device, after a long poll of up to `wait` (60 s at most);
//! - `POST /api/rooms/{room}/devices/{device}/commands/{id}/ack`: `{"ok":true,"result":..}`.
//!
//! With `[auth] mode = "token"` each needs a Bearer token that may join the room as
//! that device (a device token whose `sub` is the device, or an admin token).

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use warp::http::header::RETRY_AFTER;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::auth::{self, Denied};
use super::error::error_response;
use super::write::{read_body, BodyError};
use crate::auth::{Access, Authorizer};
use crate::sources::http_devices::DeviceError;
use crate::sources::http_ingest::{HttpIngest, IngestError, Ingested};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::ids::{valid_id, MAX_COMMAND_ID_LEN};
use telehub_protocol::inbound::AckIn;
use telehub_protocol::role::Role;

/// How long a command poll waits without `wait=`: not at all.
const DEFAULT_WAIT: Duration = Duration::ZERO;

/// The three routes.
pub(crate) fn routes(
    ingest: HttpIngest,
    auth: Authorizer,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    readings(ingest.clone(), auth.clone())
        .or(commands(ingest.clone(), auth.clone()))
        .unify()
        .or(ack(ingest, auth))
        .unify()
}

/// Whether the request's token may be `device` in `room` (else 403, counted).
fn allow(auth: &Authorizer, access: &Access, room: &str, device: &str) -> Result<(), Rejection> {
    match access {
        Access::Open => Ok(()),
        Access::Token(g) => g
            .may_join(room, device, Role::Device)
            .map_err(|r| warp::reject::custom(Denied(auth.refuse(r)))),
    }
}

fn ids_error(room: &str, device: &str) -> Option<Response> {
    if !valid_id(room) {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_room",
            &format!("room `{room}` is not a valid id (1 to 64 of A-Za-z0-9_.-)"),
        ));
    }
    if !valid_id(device) {
        return Some(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            &format!("device `{device}` is not a valid id (1 to 64 of A-Za-z0-9_.-)"),
        ));
    }
    None
}

/// POST /api/rooms/{room}/devices/{device}/readings
fn readings(
    ingest: HttpIngest,
    auth: Authorizer,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "devices" / String / "readings")
        .and(warp::post())
        .and(auth::access(auth.clone()))
        .and(warp::body::stream())
        .and_then(move |room: String, device: String, access: Access, body| {
            let (ingest, auth) = (ingest.clone(), auth.clone());
            async move {
                allow(&auth, &access, &room, &device)?;
                if let Some(e) = ids_error(&room, &device) {
                    return Ok::<_, Rejection>(e);
                }
                let max = ingest.max_body_bytes();
                let text = match read_body(body, max).await {
                    Ok(raw) => raw,
                    Err(BodyError::TooLarge) => {
                        return Ok(error_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            &format!("the body is over limits.max_frame_bytes ({max} bytes)"),
                        ))
                    }
                    Err(BodyError::Broken(e)) => {
                        return Ok(error_response(
                            StatusCode::BAD_REQUEST,
                            "body_incomplete",
                            &format!("the body did not arrive whole: {e}"),
                        ))
                    }
                };
                let Ok(text) = String::from_utf8(text) else {
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidJson.as_str(),
                        "the body is not UTF-8",
                    ));
                };
                Ok(match ingest.readings(&room, &device, &text).await {
                    Ok(done) => answer(done),
                    Err(e) => refused(e),
                })
            }
        })
}

/// The answer to readings that were looked at one by one.
fn answer(done: Ingested) -> Response {
    if let Some(why) = &done.unavailable {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable.as_str(),
            why,
        );
    }
    let status = match (done.errors.is_empty(), done.accepted) {
        (true, _) => StatusCode::OK,
        (false, 0) => StatusCode::BAD_REQUEST,
        (false, _) => StatusCode::MULTI_STATUS,
    };
    let mut body = serde_json::to_value(&done).unwrap_or_default();
    if status == StatusCode::BAD_REQUEST {
        // The first refusal as every telehub error reads, beside the per-item list.
        if let (Some(first), Some(obj)) = (done.errors.first(), body.as_object_mut()) {
            obj.insert("error".into(), first.error.into());
            obj.insert("message".into(), first.message.clone().into());
        }
    }
    let mut resp = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    if let Some(wait) = done.retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_secs(wait)));
    }
    resp
}

fn retry_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// A request refused whole.
fn refused(e: IngestError) -> Response {
    let message = e.to_string();
    match e {
        IngestError::Body(p) => {
            let status = if p.code == ErrorCode::BatchTooLarge {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            error_response(status, p.code.as_str(), &message)
        }
        IngestError::RateLimited { wait, .. } => {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited.as_str(),
                &message,
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_secs(wait)));
            resp
        }
        IngestError::Device(DeviceError::HeldOverWs(_)) => {
            error_response(StatusCode::CONFLICT, "device_held", &message)
        }
        IngestError::Device(DeviceError::TooManyDevices) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_http_devices",
            &message,
        ),
        IngestError::Device(DeviceError::Join(j)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            j.rejection().as_str(),
            &message,
        ),
        IngestError::TooManyWaiters => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_waiters",
            &message,
        ),
    }
}

/// `wait=`: `30s`, `500ms`, `2m`, or seconds as a bare number.
fn parse_wait(s: &str) -> Option<Duration> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// GET /api/rooms/{room}/devices/{device}/commands?wait=30s
fn commands(
    ingest: HttpIngest,
    auth: Authorizer,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "devices" / String / "commands")
        .and(warp::get())
        .and(auth::access(auth.clone()))
        .and(warp::query::<Vec<(String, String)>>())
        .and_then(move |room: String, device: String, access: Access, q: Vec<(String, String)>| {
            let (ingest, auth) = (ingest.clone(), auth.clone());
            async move {
                allow(&auth, &access, &room, &device)?;
                if let Some(e) = ids_error(&room, &device) {
                    return Ok::<_, Rejection>(e);
                }
                let mut wait = DEFAULT_WAIT;
                for (k, v) in &q {
                    if k == "wait" {
                        match parse_wait(v) {
                            Some(w) => wait = w,
                            None => {
                                return Ok(error_response(
                                    StatusCode::BAD_REQUEST,
                                    "invalid_parameter",
                                    &format!(
                                        "parameter `wait`: `{v}` is not a duration such as 30s or 500ms"
                                    ),
                                ))
                            }
                        }
                    }
                }
                Ok(match ingest.commands(&room, &device, wait).await {
                    Ok(cmds) => warp::reply::json(&serde_json::json!({ "commands": cmds }))
                        .into_response(),
                    Err(e) => refused(e),
                })
            }
        })
}

/// An ack's body.
#[derive(Deserialize)]
struct AckBody {
    ok: bool,
    #[serde(default)]
    result: Option<Box<RawValue>>,
}

/// POST /api/rooms/{room}/devices/{device}/commands/{id}/ack
fn ack(
    ingest: HttpIngest,
    auth: Authorizer,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("api" / "rooms" / String / "devices" / String / "commands" / String / "ack")
        .and(warp::post())
        .and(auth::access(auth.clone()))
        .and(warp::body::stream())
        .and_then(
            move |room: String, device: String, id: String, access: Access, body| {
                let (ingest, auth) = (ingest.clone(), auth.clone());
                async move {
                    allow(&auth, &access, &room, &device)?;
                    if let Some(e) = ids_error(&room, &device) {
                        return Ok::<_, Rejection>(e);
                    }
                    if id.is_empty() || id.len() > MAX_COMMAND_ID_LEN {
                        return Ok(error_response(
                            StatusCode::BAD_REQUEST,
                            ErrorCode::InvalidField.as_str(),
                            "the command id must be 1 to 128 characters",
                        ));
                    }
                    let max = ingest.max_body_bytes();
                    let Ok(raw) = read_body(body, max).await else {
                        return Ok(error_response(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            &format!("the body is over limits.max_frame_bytes ({max} bytes)"),
                        ));
                    };
                    let a: AckBody = match serde_json::from_slice(&raw) {
                        Ok(a) => a,
                        Err(e) => {
                            return Ok(error_response(
                                StatusCode::BAD_REQUEST,
                                ErrorCode::InvalidJson.as_str(),
                                &format!("the ack is not {{\"ok\":bool,\"result\"?}}: {e}"),
                            ))
                        }
                    };
                    let ack = AckIn {
                        id,
                        ok: a.ok,
                        result: a.result,
                    };
                    Ok(match ingest.ack(&room, &device, &ack) {
                        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
                        Ok(Err(p)) => {
                            let status = if p.code == ErrorCode::UnknownCommand {
                                StatusCode::NOT_FOUND
                            } else {
                                StatusCode::BAD_REQUEST
                            };
                            error_response(status, p.code.as_str(), &p.message)
                        }
                        Err(e) => refused(e),
                    })
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use super::parse_wait;
    use std::time::Duration;

    #[test]
    fn waits_read_as_durations() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "s", "-1s", "1h", "1.5s", "99999999999999999999s"] {
            assert_eq!(parse_wait(bad), None, "{bad:?}");
        }
    }
}
