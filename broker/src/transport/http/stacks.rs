//! Stacks (`pb up`) over HTTP: `GET /stacks` lists the caller's user's
//! running stacks with their services' states, and `POST
//! /stacks/{stack}/services/{service}/restart` asks a stack's supervisor to
//! restart one service (its socket kept). Both are one `Op` each.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pb_proto::{ErrorCode, Op, StackInfo, StackRestartReply, StacksReply};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{call, HttpState};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/stacks", get(list))
        .route("/stacks/{stack}/services/{service}/restart", post(restart))
}

#[derive(Serialize, ToSchema)]
pub struct StacksResponse {
    success: bool,
    /// `{id, file, supervisor, status, services: [{name, id, state, pid,
    /// port, url, restarts, ready}]}`, sorted by id.
    #[schema(value_type = Vec<Object>)]
    stacks: Vec<StackInfo>,
    count: usize,
}

/// Running stacks (`pb up`), as their supervisors last reported them.
#[utoipa::path(get, path = "/stacks", tag = "stacks",
    responses((status = 200, body = StacksResponse)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<StacksResponse>, ApiError> {
    let r: StacksReply = call(&state, &caller, Op::Stacks).await?;
    Ok(Json(StacksResponse {
        success: true,
        count: r.stacks.len(),
        stacks: r.stacks,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct RestartResponse {
    success: bool,
    stack: String,
    service: String,
    /// The request is with the supervisor; the stack's state (and a
    /// `stack.restart` event) says when the service is back.
    requested: bool,
}

/// Restart one service of a running stack; its socket is kept.
#[utoipa::path(post, path = "/stacks/{stack}/services/{service}/restart", tag = "stacks",
    params(("stack" = String, Path, description = "stack id, project[:context]"),
           ("service" = String, Path, description = "service name")),
    responses((status = 200, body = RestartResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn restart(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Json<RestartResponse>, ApiError> {
    let Path((stack, service)) =
        path.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    let r: StackRestartReply = call(&state, &caller, Op::StackRestart { stack, service }).await?;
    Ok(Json(RestartResponse {
        success: true,
        stack: r.stack,
        service: r.service,
        requested: r.requested,
    }))
}
