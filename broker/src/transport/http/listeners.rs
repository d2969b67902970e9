//! Every listening socket on the machine over HTTP (`pb ps --all`):
//! `GET /listeners`, and the same followed live as server-sent events
//! (`GET /listeners/stream`, or `?follow=1`), each event a whole reading
//! whose id is its generation. One `listeners` `Op` either way.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pb_proto::{ErrorCode, ListenersReply, Op};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::sse;
use super::{call, call_stream, flag, query, HttpState};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/listeners", get(list))
        .route("/listeners/stream", get(stream))
}

#[derive(Deserialize, utoipa::IntoParams, Default, Debug)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListenersQuery {
    /// `1`/`true`: follow as server-sent events.
    follow: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ListenersResponse {
    success: bool,
    /// Sorted by port: `{port, addr, uid, holders: [{pid, uid, command,
    /// since_ms}], service, brokered}`. `service` names the lease on the
    /// port, if any; `brokered` says the socket is the broker's own.
    #[schema(value_type = Vec<Object>)]
    listeners: Vec<Value>,
    count: usize,
}

/// Every listening TCP socket, brokered or foreign, with the processes
/// that hold it (`?follow=1`: as `/listeners/stream`).
#[utoipa::path(get, path = "/listeners", tag = "pb",
    params(ListenersQuery),
    responses((status = 200, body = ListenersResponse),
              (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: ListenersQuery = query(&uri)?;
    if flag("follow", q.follow.as_deref())? {
        return follow(&state, &caller).await;
    }
    let r: ListenersReply = call(&state, &caller, Op::Listeners { follow: false }).await?;
    let listeners: Vec<Value> = r
        .listeners
        .iter()
        .map(|l| serde_json::to_value(l).expect("listeners serialize"))
        .collect();
    Ok(Json(ListenersResponse {
        success: true,
        count: listeners.len(),
        listeners,
    })
    .into_response())
}

/// The listeners followed as server-sent events: the current reading at
/// once, then each reading that differs (the kernel's tables are read
/// every scan interval and after each service event), each event
/// `{listeners, generation}` with the generation as its id.
#[utoipa::path(get, path = "/listeners/stream", tag = "pb",
    responses((status = 200, description = "the event stream", content_type = "text/event-stream")))]
pub async fn stream(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    follow(&state, &caller).await
}

async fn follow(state: &HttpState, caller: &Caller) -> Result<Response, ApiError> {
    let (first, stream): (ListenersReply, _) =
        call_stream(state, caller, Op::Listeners { follow: true }).await?;
    let stream =
        stream.ok_or_else(|| ApiError::new(ErrorCode::Internal, "following opened no stream"))?;
    let generation = first.generation.unwrap_or(0);
    let first = sse::Event {
        id: generation,
        name: None,
        data: serde_json::to_string(&first).expect("listeners serialize"),
    };
    Ok(sse::from_stream(vec![first], stream, generation))
}
