//! The InfluxDB write endpoints, `POST /api/v2/write?bucket=ROOM` and
//! `POST /write?db=ROOM`: the HTTP side of the Influx source ([`crate::sources::influx`]).
//!
//! Here: the query (room, `precision`), the token (`Authorization: Token`, `Bearer` or
//! v1's `Basic` with the token as password), the body (bounded by
//! `influx.max_body_bytes` as sent and once a gzip body is inflated), and the answer in
//! InfluxDB's terms:
//!
//! - `204` when every line was written;
//! - `400` when a line was bad: `{"code":"invalid","error":"invalid_line","line":N,
//!   "message":...}` naming the first bad line; the good lines are written all the same;
//!   `400 {"code":"invalid","error":"readings_refused"}` when the room refused readings
//!   of good lines (series caps, a `ts` too far ahead);
//! - `413` for a body too big, or one device with more readings than
//!   `influx.rate_burst`; `429` with `Retry-After` when a device is over its rate
//!   (nothing was written); `503` when the room cannot take the device, and `503
//!   store_unavailable` when the readings cannot be kept: the answer waits until they
//!   are (on disk with `history.ack = "durable"`), as a WebSocket `accepted` does.

use std::io::Read;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use warp::http::header::{AUTHORIZATION, CONTENT_ENCODING, RETRY_AFTER};
use warp::http::{HeaderMap, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::auth::Denied;
use super::error::error_response;
use crate::auth::{Access, Authorizer, Refusal};
use crate::sources::influx::{Influx, Precision, Refused, WriteError, WriteReport};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::ids::valid_id;
use telehub_protocol::role::Role;

/// Which write API a request came through: they name the room differently.
#[derive(Debug, Clone, Copy)]
enum Api {
    /// `/api/v2/write?bucket=`
    V2,
    /// `/write?db=`
    V1,
}

impl Api {
    fn room_param(self) -> &'static str {
        match self {
            Api::V2 => "bucket",
            Api::V1 => "db",
        }
    }
}

/// POST /api/v2/write?bucket=ROOM&precision=ns|us|ms|s and POST /write?db=ROOM&precision=
pub(crate) fn routes(
    influx: Influx,
    auth: Authorizer,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let v2 = warp::path!("api" / "v2" / "write").map(|| Api::V2);
    let v1 = warp::path!("write").map(|| Api::V1);
    v2.or(v1)
        .unify()
        .and(warp::post())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and_then(move |api, query: String, headers: HeaderMap, body| {
            let (influx, auth) = (influx.clone(), auth.clone());
            async move { write(influx, auth, api, query, headers, body).await }
        })
}

/// An InfluxDB-style error: `code` for InfluxDB clients, `error` and `message` as every
/// other telehub error.
fn influx_error(status: StatusCode, error: &str, message: &str) -> Response {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request too large",
        StatusCode::TOO_MANY_REQUESTS => "too many requests",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::UNAUTHORIZED => "unauthorized",
        _ => "invalid",
    };
    let body = serde_json::json!({ "code": code, "error": error, "message": message });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

async fn write<S, B>(
    influx: Influx,
    auth: Authorizer,
    api: Api,
    query: String,
    headers: HeaderMap,
    body: S,
) -> Result<Response, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let access = access(&auth, &headers, &query)?;
    let stats = influx.stats();
    let bad = |message: String| {
        stats.refused(Refused::BadRequest);
        Ok(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            &message,
        ))
    };
    let mut room = None;
    let mut precision = Precision::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == api.room_param() {
            room = Some(v.into_owned());
        } else if k == "precision" {
            match Precision::parse(&v) {
                Some(p) => precision = p,
                None => {
                    return bad(format!(
                        "parameter `precision`: `{v}` is not ns, us, ms or s"
                    ))
                }
            }
        }
    }
    let Some(room) = room else {
        return bad(format!(
            "parameter `{}`: missing; it names the room",
            api.room_param()
        ));
    };
    if !valid_id(&room) {
        return bad(format!(
            "parameter `{}`: room `{room}` is not a valid id (1 to 64 of A-Za-z0-9_.-)",
            api.room_param()
        ));
    }
    if !access.may_read(&room) {
        return Err(warp::reject::custom(Denied(
            auth.refuse(Refusal::ForbiddenRoom),
        )));
    }
    let max = influx.config().max_body_bytes;
    let too_large = || {
        stats.refused(Refused::BodyTooLarge);
        Ok(influx_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("the body is over influx.max_body_bytes ({max} bytes)"),
        ))
    };
    let raw = match read_body(body, max).await {
        Ok(raw) => raw,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Broken(e)) => {
            stats.refused(Refused::BadRequest);
            return Ok(influx_error(
                StatusCode::BAD_REQUEST,
                "body_incomplete",
                &format!("the body did not arrive whole, so nothing of it was written: {e}"),
            ));
        }
    };
    let gzip = match headers.get(CONTENT_ENCODING).map(HeaderValue::as_bytes) {
        None | Some(b"identity") => false,
        Some(b"gzip") => true,
        Some(other) => {
            stats.refused(Refused::BadRequest);
            return Ok(influx_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                &format!(
                    "Content-Encoding `{}` is not supported; send gzip or identity",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    let text = if gzip {
        match inflate(&raw, max) {
            Ok(Some(t)) => t,
            Ok(None) => return too_large(),
            Err(e) => {
                stats.refused(Refused::BadRequest);
                return Ok(influx_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_gzip",
                    &format!("the gzip body cannot be inflated: {e}"),
                ));
            }
        }
    } else {
        raw
    };
    let may_publish = |device: &str| match &access {
        Access::Open => Ok(()),
        Access::Token(g) => g.may_join(&room, device, Role::Device).map_err(|r| {
            auth.refuse(r);
            format!("the token may not publish as device `{device}`: {r}")
        }),
    };
    Ok(
        match influx.write(&room, &text, precision, may_publish).await {
            Ok(mut report) => match report.kept().await {
                Ok(()) => answer(report),
                Err(why) => {
                    stats.refused(Refused::StoreUnavailable);
                    influx_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::StoreUnavailable.as_str(),
                        &why,
                    )
                }
            },
            Err(e @ WriteError::RateLimited { wait, .. }) => {
                let mut resp = influx_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &e.to_string(),
                );
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
                resp
            }
            Err(e @ WriteError::OverBurst { .. }) => influx_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                &e.to_string(),
            ),
            Err(WriteError::Room(e)) => influx_error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.rejection().as_str(),
                &e.to_string(),
            ),
        },
    )
}

/// The answer to a write that was taken (whole or in part).
fn answer(report: WriteReport) -> Response {
    if let Some(f) = report.first_fault {
        let message = format!(
            "partial write: line {}: {}; {} line(s) written, {} refused",
            f.line, f.reason, report.lines_written, report.lines_refused
        );
        let body = serde_json::json!({
            "code": "invalid",
            "error": "invalid_line",
            "line": f.line,
            "message": message,
        });
        return warp::reply::with_status(warp::reply::json(&body), StatusCode::BAD_REQUEST)
            .into_response();
    }
    if let Some(why) = report.refused_reason {
        let message = format!(
            "partial write: {} reading(s) refused: {why}",
            report.refused_readings
        );
        return influx_error(StatusCode::BAD_REQUEST, "readings_refused", &message);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// What the request may do, as for every `/api` route, but also taking InfluxDB's
/// `Authorization: Token T` (Telegraf's `influxdb_v2`) and `Basic` with the token as
/// the password (`influxdb`'s `username`/`password`).
fn access(auth: &Authorizer, headers: &HeaderMap, query: &str) -> Result<Access, Rejection> {
    let header = headers.get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let bearer = header.and_then(|h| {
        let text = std::str::from_utf8(h).ok()?.trim();
        let (scheme, rest) = text.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("token") {
            Some(format!("Bearer {}", rest.trim()))
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let pair = String::from_utf8(decoded).ok()?;
            let (_, password) = pair.split_once(':')?;
            Some(format!("Bearer {password}"))
        } else {
            None
        }
    });
    let header = bearer.as_ref().map(|b| b.as_bytes()).or(header);
    auth.access(header, Some(query))
        .map_err(|r| warp::reject::custom(Denied(r)))
}

/// Why a body was not read.
pub(crate) enum BodyError {
    TooLarge,
    /// The connection failed midway: a cut line could read as another value.
    Broken(warp::Error),
}

/// The whole body, refused once it is over `max` bytes.
pub(crate) async fn read_body<S, B>(body: S, max: usize) -> Result<Vec<u8>, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(BodyError::Broken)?;
        if out.len() + chunk.remaining() > max {
            return Err(BodyError::TooLarge);
        }
        while chunk.has_remaining() {
            let part: Bytes = chunk.copy_to_bytes(chunk.chunk().len());
            out.extend_from_slice(&part);
        }
    }
    Ok(out)
}

/// A gzip body inflated, `Ok(None)` once it passes `max` bytes.
fn inflate(raw: &[u8], max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(max as u64 + 1)
        .read_to_end(&mut out)?;
    Ok((out.len() <= max).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bodies_inflate_within_the_bound() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'a'; 10_000]).expect("compress");
        let gz = enc.finish().expect("compress");
        assert_eq!(
            inflate(&gz, 10_000).expect("inflates").map(|v| v.len()),
            Some(10_000)
        );
        // A small body that inflates past the bound is refused, not inflated whole.
        assert_eq!(inflate(&gz, 9_999).expect("inflates"), None);
        assert!(inflate(b"not gzip", 100).is_err());
    }
}
