//! Access to the REST API: a warp filter that reads `Authorization: Bearer` and the
//! query, asks the [`Authorizer`], and either extracts what the request may see
//! ([`Access`]) or rejects with [`Denied`], which [`super::error::recover`] answers as
//! `401 {"error":"unauthorized"}`, `403 {"error":"forbidden"}` or
//! `400 {"error":"token_in_query"}`.
//!
//! Applied after each route's path matched, so an unknown path stays a 404.

use warp::http::header::AUTHORIZATION;
use warp::http::HeaderMap;
use warp::{Filter, Rejection};

use crate::auth::{Access, Authorizer, Refusal};

/// A request the authorizer refused.
#[derive(Debug)]
pub(crate) struct Denied(pub(crate) Refusal);

impl warp::reject::Reject for Denied {}

/// The `Authorization` header and the raw query of a request.
fn credentials(
) -> impl Filter<Extract = (HeaderMap, Option<String>), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().and(
        warp::query::raw()
            .map(Some)
            .or(warp::any().map(|| None))
            .unify(),
    )
}

/// What the request may see (`/api/...`): everything with `mode = "none"`, else what its
/// token grants; no or a bad token is rejected.
pub(crate) fn access(
    auth: Authorizer,
) -> impl Filter<Extract = (Access,), Error = Rejection> + Clone {
    credentials().and_then(move |headers: HeaderMap, query: Option<String>| {
        let auth = auth.clone();
        async move {
            let header = headers.get(AUTHORIZATION).map(|v| v.as_bytes());
            auth.access(header, query.as_deref())
                .map_err(|r| warp::reject::custom(Denied(r)))
        }
    })
}

/// `/api/rooms/{room}/...`: the request's access must cover `room` (else 403).
pub(crate) fn room_access(access: &Access, auth: &Authorizer, room: &str) -> Result<(), Rejection> {
    if access.may_read(room) {
        Ok(())
    } else {
        Err(warp::reject::custom(Denied(
            auth.refuse(Refusal::ForbiddenRoom),
        )))
    }
}

/// `/metrics`: open with `public_metrics` (or `mode = "none"`), else an admin token.
pub(crate) fn metrics_access(
    auth: Authorizer,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    credentials()
        .and_then(move |headers: HeaderMap, query: Option<String>| {
            let auth = auth.clone();
            async move {
                let header = headers.get(AUTHORIZATION).map(|v| v.as_bytes());
                auth.metrics_access(header, query.as_deref())
                    .map_err(|r| warp::reject::custom(Denied(r)))
            }
        })
        .untuple_one()
}
