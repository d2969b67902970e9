//! Port Daddy's agent registry routes: `POST /agents/{id}` (or `POST
//! /agents` with `{"id"}`) registers or updates an agent, `PUT` (or `POST`)
//! `/agents/{id}/heartbeat` keeps it alive, `DELETE /agents/{id}` removes
//! it (releasing its services and locks), `GET /agents` and
//! `GET /agents/{id}` show them. Each is one agent `Op`.
//!
//! An agent registered over HTTP lives by its heartbeats, unless `pid` or
//! X-PID names another process of the caller's for it to live and die
//! with (the requesting process naming itself is the default: curl and
//! Port Daddy's CLI exit with their request).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pb_proto::{
    AgentArgs, AgentInfo, AgentReply, AgentsReply, ErrorCode, Op, Owner, UnregisterReply,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::portdaddy::owner_hint;
use super::{call, json_body, HttpState, IdPath};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/agents", get(list).post(register))
        .route(
            "/agents/{id}",
            get(show).post(register_id).delete(unregister),
        )
        .route("/agents/{id}/heartbeat", post(heartbeat).put(heartbeat))
}

/// The body of a registration; every field is optional (`id` comes from
/// the path in `POST /agents/{id}`).
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterBody {
    id: Option<String>,
    /// For people.
    name: Option<String>,
    /// What kind of agent (`claude`, `cli`, ...).
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Most leases it may hold at once.
    max_services: Option<i64>,
    /// Most locks it may hold at once.
    max_locks: Option<i64>,
    /// A process of the caller's that the agent lives and dies with;
    /// X-PID wins.
    pid: Option<i64>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Port Daddy's SDK: who the agent is (`claude-code@host`). The agent's
    /// name when `name` is absent.
    identity: Option<String>,
    /// Port Daddy's SDK: what the agent is doing. Kept in its metadata as
    /// `purpose`.
    purpose: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentResponse {
    success: bool,
    /// The id was registered already (by this user); it was updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    existing: Option<bool>,
    /// `{id, name, kind, uid, pid, command, registered_ms, last_seen_ms,
    /// stale_at_ms, max_services, max_locks, services, locks, metadata}`.
    #[schema(value_type = Object)]
    agent: Value,
}

fn agent_json(a: &AgentInfo) -> Value {
    serde_json::to_value(a).expect("agents serialize")
}

/// Register (or update) the agent in the path.
#[utoipa::path(post, path = "/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id"),
           ("X-PID" = Option<u32>, Header, description = "the process it lives and dies with")),
    request_body(content = Option<RegisterBody>, content_type = "application/json"),
    responses((status = 200, body = AgentResponse),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn register_id(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AgentResponse>, ApiError> {
    let body: RegisterBody = json_body(&body)?;
    if body.id.as_ref().is_some_and(|b| *b != id) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body's id differs from the path's",
        ));
    }
    do_register(&state, &caller, id, body, &headers).await
}

/// Register (or update) the agent named in the body (Port Daddy's SDK).
#[utoipa::path(post, path = "/agents", tag = "agents",
    params(("X-PID" = Option<u32>, Header, description = "the process it lives and dies with")),
    request_body(content = RegisterBody, content_type = "application/json"),
    responses((status = 200, body = AgentResponse),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn register(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AgentResponse>, ApiError> {
    let mut body: RegisterBody = json_body(&body)?;
    let id = body
        .id
        .take()
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "missing \"id\""))?;
    do_register(&state, &caller, id, body, &headers).await
}

/// The metadata with Port Daddy's `purpose` in it (the core checks the
/// result like any metadata).
fn with_purpose(
    metadata: Option<Value>,
    purpose: Option<String>,
) -> Result<Option<Value>, ApiError> {
    let Some(purpose) = purpose else {
        return Ok(metadata);
    };
    match metadata {
        None => Ok(Some(serde_json::json!({ "purpose": purpose }))),
        Some(Value::Object(mut m)) => {
            m.insert("purpose".into(), Value::String(purpose));
            Ok(Some(Value::Object(m)))
        }
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidMetadata,
            "metadata must be a JSON object",
        )),
    }
}

async fn do_register(
    state: &HttpState,
    caller: &Caller,
    id: String,
    body: RegisterBody,
    headers: &HeaderMap,
) -> Result<Json<AgentResponse>, ApiError> {
    let owner = owner_hint(headers)?
        .or(body.pid)
        .map_or(Owner::None, Owner::Hint);
    let r: AgentReply = call(
        state,
        caller,
        Op::AgentRegister(AgentArgs {
            id,
            name: body.name.or(body.identity),
            kind: body.kind,
            max_services: body.max_services,
            max_locks: body.max_locks,
            owner,
            metadata: with_purpose(body.metadata, body.purpose)?,
        }),
    )
    .await?;
    Ok(Json(AgentResponse {
        success: true,
        existing: Some(r.existing),
        agent: agent_json(&r.agent),
    }))
}

/// Keep an agent alive (yours only).
#[utoipa::path(method(put, post), path = "/agents/{id}/heartbeat", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = AgentResponse),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<AgentResponse>, ApiError> {
    let a: AgentInfo = call(&state, &caller, Op::AgentHeartbeat { id }).await?;
    Ok(Json(AgentResponse {
        success: true,
        existing: None,
        agent: agent_json(&a),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct UnregisterResponse {
    success: bool,
    unregistered: bool,
    /// The agent as it was.
    #[schema(value_type = Object)]
    agent: Value,
}

/// Remove an agent (yours only), releasing its services and locks.
#[utoipa::path(delete, path = "/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = UnregisterResponse),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn unregister(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<UnregisterResponse>, ApiError> {
    let r: UnregisterReply = call(&state, &caller, Op::AgentUnregister { id }).await?;
    Ok(Json(UnregisterResponse {
        success: true,
        unregistered: true,
        agent: agent_json(&r.unregistered),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ListResponse {
    success: bool,
    #[schema(value_type = Vec<Object>)]
    agents: Vec<Value>,
    count: usize,
}

/// Registered agents (stale ones are removed by the broker).
#[utoipa::path(get, path = "/agents", tag = "agents",
    responses((status = 200, body = ListResponse)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ListResponse>, ApiError> {
    let r: AgentsReply = call(&state, &caller, Op::Agents).await?;
    let agents: Vec<Value> = r.agents.iter().map(agent_json).collect();
    Ok(Json(ListResponse {
        success: true,
        count: agents.len(),
        agents,
    }))
}

/// One agent.
#[utoipa::path(get, path = "/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "agent id")),
    responses((status = 200, body = AgentResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<AgentResponse>, ApiError> {
    let a: AgentInfo = call(&state, &caller, Op::AgentInfo { id }).await?;
    Ok(Json(AgentResponse {
        success: true,
        existing: None,
        agent: agent_json(&a),
    }))
}
