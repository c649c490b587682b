//! The API's one error type, [`ApiError`]: a status, a stable code and a message, always
//! answered as `{"error": CODE, "message": TEXT}`. Rejections warp raises itself (unknown
//! path, wrong method, bad query) are turned into the same shape by [`recover`].

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Rejection;

use crate::render::plot::PlotError;
use crate::sinks::history::HistoryError;

/// A JSON error response: `{"error": CODE, "message": TEXT}`.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = warp::reply::json(&serde_json::json!({ "error": code, "message": message }));
    warp::reply::with_status(body, status).into_response()
}

/// An error answer: status, stable code and message.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any status, code and message.
    pub(crate) fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError {
            status,
            code,
            message,
        }
    }

    pub(crate) fn param(name: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            message: format!("parameter `{name}`: {why}"),
        }
    }

    pub(crate) fn unknown_room(room: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "unknown_room",
            message: format!("the hub has no room `{room}`"),
        }
    }

    /// A request body that is not what the endpoint takes.
    pub(crate) fn body(why: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_body",
            message: why,
        }
    }

    /// A refused rule change, with the status its reason calls for.
    pub(crate) fn rule(e: &crate::alerts::RuleError) -> ApiError {
        use crate::alerts::RuleError;
        let (status, code) = match e {
            RuleError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_rule"),
            RuleError::Exists(_) => (StatusCode::CONFLICT, "rule_exists"),
            RuleError::FromConfig(_) => (StatusCode::CONFLICT, "rule_in_config"),
            RuleError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_rule"),
            RuleError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }

    /// A refused silence change, with the status its reason calls for.
    pub(crate) fn silence(e: &crate::alerts::silence::SilenceError) -> ApiError {
        use crate::alerts::silence::SilenceError;
        let (status, code) = match e {
            SilenceError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_silence"),
            SilenceError::Limit => (StatusCode::CONFLICT, "silence_limit"),
            SilenceError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_silence"),
            SilenceError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
        }
    }

    pub(crate) fn not_found(message: String) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message,
        }
    }

    pub(crate) fn internal(message: String) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        }
    }

    pub(crate) fn into_response(self) -> Response {
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

/// A handler's result as the response warp sends: the answer, or the error's JSON.
pub(crate) fn respond(result: Result<Response, ApiError>) -> Result<Response, Infallible> {
    Ok(result.unwrap_or_else(ApiError::into_response))
}

/// Turns warp's rejections into JSON errors with the right status.
pub(crate) async fn recover(err: Rejection) -> Result<Response, Infallible> {
    let resp = if let Some(super::auth::Denied(r)) = err.find() {
        let answer = r.answer();
        let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::FORBIDDEN);
        let mut resp = error_response(status, answer.code(), &r.to_string());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                warp::http::header::WWW_AUTHENTICATE,
                warp::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    } else if err.is_not_found() {
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
