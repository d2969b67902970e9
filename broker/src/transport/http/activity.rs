//! The activity log over HTTP: `GET /activity` with `pb log`'s filters,
//! under Port Daddy's query names (`limit`, `action`, `targetId`; also
//! `type`, `target`, `agent`, `since`), and the same query followed live as
//! server-sent events (`GET /activity/stream`, or `?follow=1`), each entry
//! an event whose id is the entry's. One `activity` `Op` either way.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pb_proto::{ActivityArgs, ActivityReply, ErrorCode, FollowReply, Op};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::sse;
use super::{call, call_stream, flag, query, HttpState, Millis};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/activity", get(activity))
        .route("/activity/stream", get(stream))
}

#[derive(Deserialize, utoipa::IntoParams, Default, Debug)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActivityQuery {
    /// The newest this many (default 100, at most 10 000).
    limit: Option<i64>,
    /// An action (`service.claim`, or Port Daddy's `claim`,
    /// `lock_acquire`, ...) or a prefix ending in `*` (`lock.*`).
    action: Option<String>,
    /// Port Daddy's other name for `action`.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// The service id, lock, channel or agent acted on.
    target: Option<String>,
    /// Port Daddy's name for `target`.
    target_id: Option<String>,
    /// Only what this agent did.
    agent: Option<String>,
    /// Entries at or after this time: ms since the epoch, or a duration
    /// back from now (`10m`).
    #[param(value_type = Option<String>)]
    since: Option<Millis>,
    /// `1`/`true`: follow as server-sent events.
    follow: Option<String>,
}

/// Port Daddy's action names (`claim`, `lock_acquire`, ...) as pb's
/// (`service.claim`, `lock.acquire`); pb's own pass unchanged.
pub fn action_name(a: &str) -> String {
    match a {
        "claim" | "release" | "expire" | "renew" | "reclaim" => format!("service.{a}"),
        "publish" => "message.publish".into(),
        _ if a.contains('.') || a.ends_with('*') => a.into(),
        _ => match a.split_once('_') {
            Some((area, what)) => format!("{area}.{what}"),
            None => a.into(),
        },
    }
}

fn args(q: ActivityQuery, follow: bool) -> Result<ActivityArgs, ApiError> {
    let one = |a: Option<String>, b: Option<String>, names: &str| match (a, b) {
        (Some(_), Some(_)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("give one of {names}"),
        )),
        (a, b) => Ok(a.or(b)),
    };
    let since_ms = match q.since {
        None => None,
        // A bare number is a time; a duration counts back from now.
        Some(Millis::Ms(ms)) => Some(ms),
        Some(Millis::Text(t)) if t.trim().parse::<i64>().is_ok() => {
            Some(t.trim().parse::<i64>().expect("checked"))
        }
        Some(d) => Some((crate::core::now_ms() as i64).saturating_sub(d.ms()?)),
    };
    let follow = follow || flag("follow", q.follow.as_deref())?;
    Ok(ActivityArgs {
        action: one(q.action, q.kind, "action or type")?.map(|a| action_name(&a)),
        target: one(q.target, q.target_id, "target or targetId")?,
        agent: q.agent,
        since_ms,
        limit: q.limit,
        follow,
    })
}

#[derive(Serialize, ToSchema)]
pub struct ActivityResponse {
    success: bool,
    /// Oldest first: `{id, time_ms, action, target, actor, details}`.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
    count: usize,
}

/// The activity log, filtered (`?follow=1`: as `/activity/stream`).
#[utoipa::path(get, path = "/activity", tag = "activity",
    params(ActivityQuery),
    responses((status = 200, body = ActivityResponse),
              (status = 400, body = ErrorBody)))]
pub async fn activity(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let a = args(query(&uri)?, false)?;
    if a.follow {
        return follow(&state, &caller, &headers, a).await;
    }
    let r: ActivityReply = call(&state, &caller, Op::Activity(a)).await?;
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| serde_json::to_value(e).expect("entries serialize"))
        .collect();
    Ok(Json(ActivityResponse {
        success: true,
        count: entries.len(),
        entries,
    })
    .into_response())
}

/// The activity log followed as server-sent events: the matching entries
/// (the newest `limit`), then each new one, each an event whose id is the
/// entry's id. Reconnecting with `Last-Event-ID` leaves out the entries up
/// to it.
#[utoipa::path(get, path = "/activity/stream", tag = "activity",
    params(ActivityQuery,
           ("Last-Event-ID" = Option<u64>, Header, description = "leave out entries up to this id")),
    responses((status = 200, description = "the event stream", content_type = "text/event-stream"),
              (status = 400, body = ErrorBody)))]
pub async fn stream(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let a = args(query(&uri)?, true)?;
    follow(&state, &caller, &headers, a).await
}

async fn follow(
    state: &HttpState,
    caller: &Caller,
    headers: &HeaderMap,
    a: ActivityArgs,
) -> Result<Response, ApiError> {
    let last = sse::last_event_id(headers)?.unwrap_or(0);
    let (_first, stream): (FollowReply, _) = call_stream(state, caller, Op::Activity(a)).await?;
    let stream =
        stream.ok_or_else(|| ApiError::new(ErrorCode::Internal, "following opened no stream"))?;
    Ok(sse::from_stream(Vec::new(), stream, last))
}
