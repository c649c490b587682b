//! `GET` and `PUT /api/rooms/{room}/layout`: a room's saved dashboard layouts
//! ([`crate::sinks::layouts`]). Reading needs what reading the room needs; saving needs
//! an admin or dashboard token for the room when auth is on (a device token gets 403
//! `forbidden`, "the token does not grant this role"). A `PUT` body is the whole set
//! (`{"default","layouts":[…]}`), checked field by field; `{"layouts":[]}` resets the
//! room to the automatic layout.

use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::{error_response, respond, ApiError};
use super::{auth, blocking};
use crate::auth::{Access, Authorizer, Refusal};
use crate::clock::now_ms;
use crate::sinks::layouts::{LayoutError, LayoutSet, Layouts, Refused, MAX_BODY_BYTES};
use telehub_protocol::ids::valid_id;

impl From<LayoutError> for ApiError {
    fn from(e: LayoutError) -> ApiError {
        match e {
            LayoutError::RoomsLimit => {
                ApiError::new(StatusCode::CONFLICT, "layout_rooms_limit", e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

/// GET and PUT /api/rooms/{room}/layout
pub(crate) fn route(
    layouts: Layouts,
    authz: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let with = {
        let layouts = layouts.clone();
        warp::any().map(move || layouts.clone())
    };
    let path = warp::path!("api" / "rooms" / String / "layout");
    let get = path
        .and(warp::get())
        .and(auth::access(authz.clone()))
        .and_then(super::room_allowed(authz.clone()))
        .and(with.clone())
        .and_then(|room: String, layouts: Layouts| async move {
            respond(get_layout(room, layouts).await)
        });
    let put = path
        .and(warp::put())
        .and(auth::access(authz.clone()))
        .and_then(may_edit(authz))
        .and(with)
        .and(warp::body::content_length_limit(MAX_BODY_BYTES).or_else({
            let layouts = layouts.clone();
            move |_| {
                layouts.refused(Refused::TooLarge);
                std::future::ready(Err(warp::reject::custom(TooLarge)))
            }
        }))
        .and(warp::body::bytes())
        .and_then(
            |room: String, layouts: Layouts, body: warp::hyper::body::Bytes| async move {
                respond(put_layout(room, layouts, body).await)
            },
        );
    get.or(put).recover(too_large)
}

/// A body over [`MAX_BODY_BYTES`] (or of no declared length).
#[derive(Debug)]
struct TooLarge;
impl warp::reject::Reject for TooLarge {}

async fn too_large(err: Rejection) -> Result<Response, Rejection> {
    if err.find::<TooLarge>().is_some() {
        return Ok(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "layout_too_large",
            &format!("a layout document is at most {MAX_BODY_BYTES} bytes, with a Content-Length"),
        ));
    }
    Err(err)
}

/// The room, once the request may save its layouts: it may read the room and is not a
/// device.
fn may_edit(
    authz: Authorizer,
) -> impl Fn(String, Access) -> std::future::Ready<Result<String, Rejection>> + Clone {
    move |room, access| {
        let checked = auth::room_access(&access, &authz, &room).and_then(|()| {
            if access.is_device() {
                Err(warp::reject::custom(auth::Denied(
                    authz.refuse(Refusal::ForbiddenRole),
                )))
            } else {
                Ok(room)
            }
        });
        std::future::ready(checked)
    }
}

fn check_room(room: &str) -> Result<(), ApiError> {
    if valid_id(room) {
        Ok(())
    } else {
        Err(ApiError::param("room", "1 to 64 of A-Za-z0-9_.-"))
    }
}

async fn get_layout(room: String, layouts: Layouts) -> Result<Response, ApiError> {
    check_room(&room)?;
    let (set, updated) = {
        let room = room.clone();
        blocking(move || layouts.get(&room).map_err(ApiError::from)).await?
    };
    Ok(warp::reply::json(&serde_json::json!({
        "room": room,
        "default": set.default,
        "layouts": set.layouts,
        "updated_ms": updated,
    }))
    .into_response())
}

async fn put_layout(
    room: String,
    layouts: Layouts,
    body: warp::hyper::body::Bytes,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let set: LayoutSet = serde_json::from_slice(&body)
        .map_err(|e| e.to_string())
        .and_then(|s: LayoutSet| s.validate().map(|()| s))
        .map_err(|why| {
            layouts.refused(Refused::Invalid);
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_layout", why)
        })?;
    {
        let set = set.clone();
        blocking(move || {
            layouts.put(&room, &set, now_ms()).map_err(|e| {
                if matches!(e, LayoutError::RoomsLimit) {
                    layouts.refused(Refused::RoomsLimit);
                }
                ApiError::from(e)
            })
        })
        .await?;
    }
    Ok(warp::reply::with_status(
        warp::reply::json(&serde_json::json!({ "saved": set.layouts.len() })),
        StatusCode::OK,
    )
    .into_response())
}
