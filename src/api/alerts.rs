//! The alerts endpoints: `GET /api/alerts` (pending and firing instances, by room and
//! state), `GET /api/alerts/rules` (the rules in force, with the threshold lines a
//! chart may draw), rule changes at run time (`POST /api/alerts/rules`,
//! `PUT`/`DELETE /api/alerts/rules/{id}`, admin only with auth on), acks, silences
//! (`GET`/`POST /api/alerts/silences`, `DELETE /api/alerts/silences/{id}`, changes admin
//! only with auth on) and the notification sinks' state (`GET /api/alerts/sinks`, admin).
//!
//! Readers at the end of the data flow, like the history endpoints: what a request may
//! see is limited to the rooms its token covers.

use std::convert::Infallible;

use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::auth::access;
use super::error::{respond, ApiError};
use super::params::Params;
use super::{query_pairs, with_hub};
use crate::alerts::eval::State;
use crate::alerts::{RuleChange, RuleConfig, RuleError};
use crate::auth::{Access, Authorizer, Refusal};
use crate::hub::Hub;
use telehub_protocol::ids::valid_id;

/// Every alerts route.
pub(crate) fn routes(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    instances(hub.clone(), auth.clone())
        .or(history(hub.clone(), auth.clone()))
        .or(sinks(hub.clone(), auth.clone()))
        .or(silences(hub.clone(), auth.clone()))
        .or(rules(hub.clone(), auth.clone()))
        .or(ack(hub.clone(), auth.clone()))
        .or(change(hub, auth))
}

/// Largest body of a rule.
const RULE_BODY_LIMIT: u64 = 16 * 1024;
/// Largest body of a silence.
const SILENCE_BODY_LIMIT: u64 = 8 * 1024;

/// The caller's access, refused unless it is admin (or auth is off).
fn admin_access(auth: Authorizer) -> impl Filter<Extract = (Access,), Error = Rejection> + Clone {
    access(auth.clone()).and_then(move |a: Access| {
        let auth = auth.clone();
        async move {
            if a.is_admin() {
                Ok(a)
            } else {
                Err(warp::reject::custom(super::auth::Denied(
                    auth.refuse(Refusal::NotAdmin),
                )))
            }
        }
    })
}

/// GET /api/alerts/sinks: each notification sink's counts, queue and last error (admin
/// with auth on; never its secret).
fn sinks(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "alerts" / "sinks")
        .and(warp::get())
        .and(admin_access(auth))
        .and(with_hub(hub))
        .map(|_: Access, hub: Hub| {
            let sinks = hub.alerts().map(|a| a.sinks()).unwrap_or_default();
            warp::reply::json(&serde_json::json!({ "sinks": sinks }))
        })
}

/// GET /api/alerts/silences, POST /api/alerts/silences, DELETE /api/alerts/silences/{id}
fn silences(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let list = warp::path!("api" / "alerts" / "silences")
        .and(warp::get())
        .and(access(auth.clone()))
        .and(with_hub(hub.clone()))
        .map(|_: Access, hub: Hub| {
            let silences = hub.alerts().map(|a| a.silences()).unwrap_or_default();
            warp::reply::json(&serde_json::json!({ "silences": silences })).into_response()
        });
    let create = warp::path!("api" / "alerts" / "silences")
        .and(warp::post())
        .and(admin_access(auth.clone()))
        .and(with_hub(hub.clone()))
        .and(warp::body::content_length_limit(SILENCE_BODY_LIMIT))
        .and(warp::body::bytes())
        .map(|access: Access, hub: Hub, body: bytes::Bytes| {
            respond_now(make_silence(&access, &hub, &body))
        });
    let delete = warp::path!("api" / "alerts" / "silences" / String)
        .and(warp::delete())
        .and(admin_access(auth))
        .and(with_hub(hub))
        .map(|id: String, _: Access, hub: Hub| {
            respond_now(
                hub.alerts()
                    .ok_or_else(|| ApiError::internal("alerts are not running".into()))
                    .and_then(|a| a.unsilence(&id).map_err(|e| ApiError::silence(&e)))
                    .map(|()| warp::http::StatusCode::NO_CONTENT.into_response()),
            )
        });
    list.or(create).unify().or(delete).unify()
}

fn make_silence(access: &Access, hub: &Hub, body: &[u8]) -> Result<Response, ApiError> {
    let req: crate::alerts::silence::SilenceRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::body(e.to_string()))?;
    let by = who(access, req.by.clone())?;
    let alerts = hub
        .alerts()
        .ok_or_else(|| ApiError::internal("alerts are not running".into()))?;
    let silence = alerts.silence(req, by).map_err(|e| ApiError::silence(&e))?;
    Ok(
        warp::reply::with_status(warp::reply::json(&silence), warp::http::StatusCode::CREATED)
            .into_response(),
    )
}

/// Who does it: a token's `sub`, else the body's `by` (an id), else `anonymous`.
fn who(access: &Access, by: Option<String>) -> Result<String, ApiError> {
    match (access, by) {
        (Access::Token(g), _) => Ok(g.sub.clone()),
        (Access::Open, Some(by)) if valid_id(&by) => Ok(by),
        (Access::Open, Some(_)) => Err(ApiError::body(
            "`by` must be 1 to 64 of A-Za-z0-9_.-".into(),
        )),
        (Access::Open, None) => Ok("anonymous".to_string()),
    }
}

/// POST /api/alerts/rules, PUT /api/alerts/rules/{id}, DELETE /api/alerts/rules/{id}
fn change(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let admin = admin_access(auth).map(|_: Access| ());
    let body = warp::body::content_length_limit(RULE_BODY_LIMIT).and(warp::body::bytes());
    let create = warp::path!("api" / "alerts" / "rules")
        .and(warp::post())
        .and(admin.clone())
        .and(with_hub(hub.clone()))
        .and(body)
        .map(|(), hub: Hub, body: bytes::Bytes| {
            respond_now(parse_rule(&body).and_then(|r| apply(&hub, RuleChange::Create(r), true)))
        });
    let replace = warp::path!("api" / "alerts" / "rules" / String)
        .and(warp::put())
        .and(admin.clone())
        .and(with_hub(hub.clone()))
        .and(body)
        .map(|id: String, (), hub: Hub, body: bytes::Bytes| {
            respond_now(
                parse_rule(&body).and_then(|r| apply(&hub, RuleChange::Replace(id, r), false)),
            )
        });
    let delete = warp::path!("api" / "alerts" / "rules" / String)
        .and(warp::delete())
        .and(admin)
        .and(with_hub(hub))
        .map(|id: String, (), hub: Hub| respond_now(apply(&hub, RuleChange::Delete(id), false)));
    create.or(replace).unify().or(delete).unify()
}

fn respond_now(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(ApiError::into_response)
}

/// A rule as JSON; a bad one is refused with a message naming it (its `id`, if any).
fn parse_rule(body: &[u8]) -> Result<RuleConfig, ApiError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::body(format!("not JSON: {e}")))?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .unwrap_or("(no id)")
        .to_string();
    serde_json::from_value(v)
        .map_err(|e| ApiError::rule(&RuleError::Invalid(format!("rule `{id}`: {e}"))))
}

fn apply(hub: &Hub, change: RuleChange, created: bool) -> Result<Response, ApiError> {
    let alerts = hub
        .alerts()
        .ok_or_else(|| ApiError::internal("alerts are not running".into()))?;
    match alerts.change_rules(change) {
        Ok(Some(rule)) => {
            let status = if created {
                warp::http::StatusCode::CREATED
            } else {
                warp::http::StatusCode::OK
            };
            Ok(warp::reply::with_status(warp::reply::json(&rule), status).into_response())
        }
        Ok(None) => Ok(warp::http::StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(ApiError::rule(&e)),
    }
}

/// Largest body of an ack.
const ACK_BODY_LIMIT: u64 = 4 * 1024;

/// An ack's body: who acknowledges (with a token, its `sub` is used instead).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    #[serde(default)]
    by: Option<String>,
}

/// POST /api/alerts/{instance}/ack  `{"by": NAME}`: records who acknowledged a live
/// instance and when, in its listing and store, and tells the room's dashboards.
fn ack(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "alerts" / String / "ack")
        .and(warp::post())
        .and(access(auth))
        .and(with_hub(hub))
        .and(warp::body::content_length_limit(ACK_BODY_LIMIT))
        .and(warp::body::bytes())
        .and_then(
            |instance: String, access: Access, hub: Hub, body: bytes::Bytes| async move {
                Ok::<_, Infallible>(respond(acknowledge(&instance, &access, &hub, &body)))
            },
        )
}

fn acknowledge(
    instance: &str,
    access: &Access,
    hub: &Hub,
    body: &[u8],
) -> Result<Response, ApiError> {
    let body: AckBody = if body.is_empty() {
        AckBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::body(e.to_string()))?
    };
    let room = instance.split(':').nth(1).unwrap_or_default();
    if !access.may_read(room) {
        return Err(ApiError::not_found(format!("no live alert `{instance}`")));
    }
    let by = who(access, body.by)?;
    let listed = hub
        .alerts()
        .and_then(|a| a.ack(instance, &by, crate::clock::now_ms()))
        .ok_or_else(|| ApiError::not_found(format!("no live alert `{instance}`")))?;
    hub.broadcast(&listed.room, crate::alerts::listed_frame(&listed));
    Ok(warp::reply::json(&listed).into_response())
}

/// GET /api/alerts?room=&state=
fn instances(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "alerts")
        .and(warp::get())
        .and(access(auth))
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|access: Access, hub: Hub, raw| async move {
            Ok::<_, Infallible>(respond(list(&access, &hub, raw)))
        })
}

fn list(access: &Access, hub: &Hub, raw: Vec<(String, String)>) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["room", "state"])?;
    let room = p
        .get("room")
        .map(|r| {
            if valid_id(r) {
                Ok(r)
            } else {
                Err(ApiError::param("room", "must be 1 to 64 of A-Za-z0-9_.-"))
            }
        })
        .transpose()?;
    let state = p
        .get("state")
        .map(|s| match State::parse(s) {
            Some(st @ (State::Pending | State::Firing)) => Ok(st),
            _ => Err(ApiError::param("state", "must be `pending` or `firing`")),
        })
        .transpose()?;
    let mut alerts = hub
        .alerts()
        .map(|a| a.list(room, state))
        .unwrap_or_default();
    alerts.retain(|a| access.may_read(&a.room));
    Ok(warp::reply::json(&serde_json::json!({ "alerts": alerts })).into_response())
}

/// Transitions one history request answers at most.
const HISTORY_LIMIT: u64 = 10_000;

/// GET /api/alerts/history?from=&to=&room=&limit=
fn history(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "alerts" / "history")
        .and(warp::get())
        .and(access(auth))
        .and(with_hub(hub))
        .and(query_pairs())
        .and_then(|access: Access, hub: Hub, raw| async move {
            Ok::<_, Infallible>(respond(transitions(access, hub, raw).await))
        })
}

async fn transitions(
    access: Access,
    hub: Hub,
    raw: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let p = Params::new(raw, &["from", "to", "room", "limit"])?;
    let now = crate::clock::now_ms();
    let from = p.time("from", now)?.unwrap_or(now - 86_400_000);
    let to = p.time("to", now)?.unwrap_or(now);
    let limit = p.number("limit", 1..=HISTORY_LIMIT)?.unwrap_or(1_000) as usize;
    let room = p.get("room").map(str::to_string);
    if let Some(r) = &room {
        if !valid_id(r) {
            return Err(ApiError::param("room", "must be 1 to 64 of A-Za-z0-9_.-"));
        }
    }
    let Some(alerts) = hub.alerts().cloned() else {
        return Ok(warp::reply::json(&serde_json::json!({ "transitions": [] })).into_response());
    };
    let found =
        super::blocking(move || Ok(alerts.history((from, to), room.as_deref(), limit))).await?;
    let mut rows = match found {
        None => Vec::new(),
        Some(Ok(rows)) => rows,
        Some(Err(e)) => return Err(ApiError::internal(e)),
    };
    rows.retain(|r| access.may_read(&r.room));
    Ok(warp::reply::json(&serde_json::json!({ "transitions": rows })).into_response())
}

/// GET /api/alerts/rules
fn rules(
    hub: Hub,
    auth: Authorizer,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("api" / "alerts" / "rules")
        .and(warp::get())
        .and(access(auth))
        .and(with_hub(hub))
        .map(|_: Access, hub: Hub| {
            let rules: Vec<serde_json::Value> = hub
                .alerts()
                .map(|a| {
                    a.rules()
                        .rules
                        .iter()
                        .map(|r| {
                            let mut v = serde_json::to_value(&r.config).unwrap_or_default();
                            v["thresholds"] = serde_json::json!(r.condition.thresholds());
                            let source = if a.is_runtime(&r.id) { "api" } else { "config" };
                            v["source"] = serde_json::json!(source);
                            v
                        })
                        .collect()
                })
                .unwrap_or_default();
            warp::reply::json(&serde_json::json!({ "rules": rules }))
        })
}
