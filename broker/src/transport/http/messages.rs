//! Port Daddy's message routes: `POST /msg/{channel}` publishes the body
//! (any JSON, as Port Daddy's CLI sends it), `GET /msg/{channel}` reads the
//! retained history (`since`/`after`, `limit`), `DELETE /msg/{channel}`
//! clears it, `GET /channels` lists channels, and `GET /subscribe/{pattern}`
//! (also Port Daddy's `GET /msg/{channel}/subscribe`) follows a channel or
//! a pattern (`build:*`) as server-sent events, with message ids as event
//! ids so that `Last-Event-ID` resumes without loss (sse.rs). Each is one
//! pub/sub `Op`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use pb_proto::{
    ChannelsReply, ClearReply, ErrorCode, HistoryReply, Op, PublishReply, SubscribeReply,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::sse::{self, Event};
use super::{agent_header, call, call_stream, query, HttpState, IdPath};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/msg", get(channels_msg))
        .route("/channels", get(channels))
        .route("/msg/{channel}", get(history).post(publish).delete(clear))
        .route("/msg/{channel}/subscribe", get(subscribe_msg))
        .route("/subscribe/{channel}", get(subscribe))
}

#[derive(Serialize, ToSchema)]
pub struct PublishResponse {
    success: bool,
    /// The message's id (increasing across channels and restarts).
    id: u64,
    channel: String,
    /// How many subscribers it was queued for.
    delivered: usize,
}

/// Publish the body (any JSON value) on a channel.
#[utoipa::path(post, path = "/msg/{channel}", tag = "messages",
    params(("channel" = String, Path, description = "channel name"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent publishing")),
    request_body(content = Object, content_type = "application/json",
        description = "the message: any JSON value, at most PB_MAX_MESSAGE bytes"),
    responses((status = 200, body = PublishResponse),
              (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn publish(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(channel): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PublishResponse>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the message is the body: send a JSON value",
        ));
    }
    let data: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("bad JSON body: {e}")))?;
    let agent = agent_header(&headers)?;
    let r: PublishReply = call(
        &state,
        &caller,
        Op::Publish {
            channel,
            data,
            agent,
        },
    )
    .await?;
    Ok(Json(PublishResponse {
        success: true,
        id: r.id,
        channel: r.channel,
        delivered: r.delivered,
    }))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Only messages after this id.
    since: Option<u64>,
    /// Port Daddy's name for `since`.
    after: Option<u64>,
    /// The newest this many.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryResponse {
    success: bool,
    /// The channel or pattern asked for.
    channel: String,
    /// Oldest first: `{id, channel, time_ms, data, from}`.
    #[schema(value_type = Vec<Object>)]
    messages: Vec<Value>,
    count: usize,
}

/// A channel's retained messages (the channel may be a pattern).
#[utoipa::path(get, path = "/msg/{channel}", tag = "messages",
    params(("channel" = String, Path, description = "channel name or pattern"),
           ("since" = Option<u64>, Query, description = "only messages after this id"),
           ("after" = Option<u64>, Query, description = "the same as since"),
           ("limit" = Option<i64>, Query, description = "the newest this many")),
    responses((status = 200, body = HistoryResponse), (status = 400, body = ErrorBody)))]
pub async fn history(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(channel): IdPath,
    uri: Uri,
) -> Result<Json<HistoryResponse>, ApiError> {
    let q: HistoryQuery = query(&uri)?;
    if q.since.is_some() && q.after.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "give since or after, not both",
        ));
    }
    let r: HistoryReply = call(
        &state,
        &caller,
        Op::History {
            pattern: channel.clone(),
            since_id: q.since.or(q.after),
            limit: q.limit,
        },
    )
    .await?;
    let messages: Vec<Value> = r
        .messages
        .iter()
        .map(|m| serde_json::to_value(m).expect("messages serialize"))
        .collect();
    Ok(Json(HistoryResponse {
        success: true,
        channel,
        count: messages.len(),
        messages,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ClearResponse {
    success: bool,
    channel: String,
    /// How many retained messages were forgotten.
    removed: u64,
}

/// Forget a channel's retained messages.
#[utoipa::path(delete, path = "/msg/{channel}", tag = "messages",
    params(("channel" = String, Path, description = "channel name")),
    responses((status = 200, body = ClearResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn clear(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(channel): IdPath,
) -> Result<Json<ClearResponse>, ApiError> {
    let r: ClearReply = call(&state, &caller, Op::ClearChannel { channel }).await?;
    Ok(Json(ClearResponse {
        success: true,
        channel: r.channel,
        removed: r.removed,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ChannelsResponse {
    success: bool,
    /// `{channel, messages, last_id, last_ms, subscribers}` each.
    #[schema(value_type = Vec<Object>)]
    channels: Vec<Value>,
    count: usize,
}

/// Channels with retained messages or subscribers.
#[utoipa::path(get, path = "/channels", tag = "messages",
    responses((status = 200, body = ChannelsResponse)))]
pub async fn channels(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ChannelsResponse>, ApiError> {
    let r: ChannelsReply = call(&state, &caller, Op::Channels).await?;
    let channels: Vec<Value> = r
        .channels
        .iter()
        .map(|c| serde_json::to_value(c).expect("channels serialize"))
        .collect();
    Ok(Json(ChannelsResponse {
        success: true,
        count: channels.len(),
        channels,
    }))
}

/// The same list as `GET /channels`, at Port Daddy's other address.
#[utoipa::path(get, path = "/msg", tag = "messages",
    responses((status = 200, body = ChannelsResponse)))]
pub async fn channels_msg(
    state: State<Arc<HttpState>>,
    caller: Extension<Caller>,
) -> Result<Json<ChannelsResponse>, ApiError> {
    channels(state, caller).await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SubscribeQuery {
    /// Start after this message id (as `Last-Event-ID` does; the header wins).
    since: Option<u64>,
}

/// Follow a channel or pattern as server-sent events: first a `connected`
/// event (`{patterns, last_id, backlog}`), then each message as an event
/// whose id is the message id and whose data is `{id, channel, time_ms,
/// data, from}`. Reconnecting with `Last-Event-ID` (or `?since=`) first
/// replays the retained messages after it. A subscriber too slow to keep
/// up gets a last `end` event (`{error, code: "lagged", details}`).
#[utoipa::path(get, path = "/subscribe/{channel}", tag = "messages",
    params(("channel" = String, Path, description = "channel name or pattern (build:*)"),
           ("since" = Option<u64>, Query, description = "replay retained messages after this id"),
           ("Last-Event-ID" = Option<u64>, Header, description = "resume after this message id")),
    responses((status = 200, description = "the event stream", content_type = "text/event-stream"),
              (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn subscribe(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(channel): IdPath,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: SubscribeQuery = query(&uri)?;
    let since = sse::last_event_id(&headers)?.or(q.since);
    let (first, stream): (SubscribeReply, _) = call_stream(
        &state,
        &caller,
        Op::Subscribe {
            patterns: vec![channel],
            since_id: since,
        },
    )
    .await?;
    let stream = stream
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "the subscription opened no stream"))?;
    // The connected event carries the position the client is at, so a
    // client that drops right after it resumes from there.
    let connected = Event {
        id: since.unwrap_or(first.last_id),
        name: Some("connected".into()),
        data: serde_json::to_string(&first).expect("replies serialize"),
    };
    Ok(sse::from_stream(vec![connected], stream, 0))
}

/// The same stream as `GET /subscribe/{channel}`, at Port Daddy's other
/// address.
#[utoipa::path(get, path = "/msg/{channel}/subscribe", tag = "messages",
    params(("channel" = String, Path, description = "channel name or pattern (build:*)"),
           ("since" = Option<u64>, Query, description = "replay retained messages after this id"),
           ("Last-Event-ID" = Option<u64>, Header, description = "resume after this message id")),
    responses((status = 200, description = "the event stream", content_type = "text/event-stream"),
              (status = 400, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn subscribe_msg(
    state: State<Arc<HttpState>>,
    caller: Extension<Caller>,
    channel: IdPath,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    subscribe(state, caller, channel, headers, uri).await
}
