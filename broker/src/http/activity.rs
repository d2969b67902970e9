//! `GET /activity`: the activity log (Port Daddy's route), with the filters
//! of `pb log`: `action` (pb's names such as `service.claim`, a prefix
//! ending in `*`, or Port Daddy's names such as `claim` and
//! `lock_acquire`), `target` (or Port Daddy's `targetId`), `agent`, `since`
//! (ms since the epoch) and `limit`. One `activity` operation; following
//! the log as it grows (SSE) comes with the streaming routes.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Extension, Json, Router};
use pb_proto::{ActivityArgs, ActivityReply, Op};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{call, query, HttpState};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/activity", get(activity))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActivityQuery {
    action: Option<String>,
    target: Option<String>,
    /// Port Daddy's name for `target`.
    target_id: Option<String>,
    agent: Option<String>,
    /// Entries at or after this time, ms since the epoch.
    since: Option<i64>,
    /// The newest this many (default 100).
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct ActivityResponse {
    success: bool,
    /// Oldest first: `{id, time_ms, action, target, actor, details}`.
    #[schema(value_type = Vec<Object>)]
    entries: Vec<Value>,
    count: usize,
}

/// Port Daddy's action names, as pb's event kinds.
fn action_name(a: &str) -> String {
    match a {
        "claim" => "service.claim",
        "release" => "service.release",
        "lock_acquire" => "lock.acquire",
        "lock_release" => "lock.release",
        "publish" => "message.publish",
        "agent_register" => "agent.register",
        "agent_heartbeat" => "agent.heartbeat",
        "agent_unregister" => "agent.unregister",
        other => other,
    }
    .to_string()
}

/// The activity log, filtered.
#[utoipa::path(get, path = "/activity", tag = "port-daddy",
    params(("action" = Option<String>, Query, description = "service.claim, lock.*, or Port Daddy's claim, lock_acquire, ..."),
           ("target" = Option<String>, Query, description = "service id, lock, channel or agent (also targetId)"),
           ("agent" = Option<String>, Query, description = "the agent that acted"),
           ("since" = Option<i64>, Query, description = "ms since the epoch"),
           ("limit" = Option<i64>, Query, description = "the newest this many (default 100)")),
    responses((status = 200, body = ActivityResponse), (status = 400, body = ErrorBody)))]
pub async fn activity(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<ActivityResponse>, ApiError> {
    let q: ActivityQuery = query(&uri)?;
    let reply: ActivityReply = call(
        &state,
        &caller,
        Op::Activity(ActivityArgs {
            action: q.action.as_deref().map(action_name),
            target: q.target.or(q.target_id),
            agent: q.agent,
            since_ms: q.since,
            limit: q.limit,
            follow: false,
        }),
    )
    .await?;
    let entries: Vec<Value> = reply
        .entries
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    Ok(Json(ActivityResponse {
        success: true,
        count: entries.len(),
        entries,
    }))
}
