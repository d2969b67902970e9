//! Port Daddy's /webhooks routes: register (`POST /webhooks` with
//! `{url, events, secret}`, plus pb's `filter`), list, get, update, delete,
//! test, the delivery log and the list of event kinds. Each route is one
//! webhook `Op` through [`super::call`]: URL checks (the SSRF policy),
//! event names, secret sizes and the webhook limit are the core's
//! (broker/src/webhooks.rs), and its errors become statuses through the
//! one list of codes. Replies carry the Ops' replies field for field (the
//! types here mirror them so /openapi.json can describe them) and, for
//! Port Daddy's clients, the fields of its server's replies that pb can
//! fill truthfully: `success`, registration's `id`, `url`, `events` and
//! `message`, and the list's `count`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pb_proto::{
    AttemptInfo, DeliveriesReply, DeliveryInfo, Op, WebhookArgs, WebhookCreated, WebhookDeleted,
    WebhookEventsReply, WebhookInfo, WebhookTestReply, WebhookUpdateArgs, WebhooksReply,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{call, json_body, query, HttpState, IdPath};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/webhooks", post(add).get(list))
        // Before /webhooks/{id}, so that `events` is never read as an id.
        .route("/webhooks/events", get(events))
        .route(
            "/webhooks/{id}",
            get(get_one).put(update).delete(delete_one),
        )
        .route("/webhooks/{id}/test", post(test))
        .route("/webhooks/{id}/deliveries", get(deliveries))
}

/// Port Daddy's registration body, with pb's `filter`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// `http://` or `https://`; refused when it names a blocked address.
    url: String,
    /// Event kinds (GET /webhooks/events); empty or absent: every kind.
    #[serde(default)]
    events: Vec<String>,
    /// The HMAC key; generated and shown once when absent.
    secret: Option<String>,
    /// An id pattern (`myapp:*`) the event's target must match; Port
    /// Daddy's name for it, `filterPattern`, is accepted too.
    #[serde(alias = "filterPattern")]
    filter: Option<String>,
}

/// The changes of `PUT /webhooks/{id}`: only the fields given change.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    secret: Option<String>,
    /// A pattern, or `""` to remove the filter (also `filterPattern`).
    #[serde(alias = "filterPattern")]
    filter: Option<String>,
    /// Re-enables a webhook a 410 disabled (or disables one).
    active: Option<bool>,
}

/// A webhook, never with its secret.
#[derive(Serialize, ToSchema)]
pub struct Webhook {
    id: String,
    url: String,
    /// Empty: every kind.
    events: Vec<String>,
    filter: Option<String>,
    active: bool,
    /// Why it is inactive (e.g. the receiver answered 410).
    disabled_reason: Option<String>,
    /// Milliseconds since the epoch.
    created_ms: u64,
    /// Deliveries neither delivered nor given up yet.
    pending: u64,
}

impl From<WebhookInfo> for Webhook {
    fn from(w: WebhookInfo) -> Webhook {
        Webhook {
            id: w.id,
            url: w.url,
            events: w.events,
            filter: w.filter,
            active: w.active,
            disabled_reason: w.disabled_reason,
            created_ms: w.created_ms,
            pending: w.pending,
        }
    }
}

/// The reply to registration: the only place the secret is shown.
#[derive(Serialize, ToSchema)]
pub struct Created {
    /// Always true (errors are `{error, code}`).
    success: bool,
    /// The webhook's id, url and events, where Port Daddy puts them.
    id: String,
    url: String,
    events: Vec<String>,
    message: String,
    webhook: Webhook,
    secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    success: bool,
    webhooks: Vec<Webhook>,
    count: usize,
}

/// One webhook, as `GET` and `PUT /webhooks/{id}` answer.
#[derive(Serialize, ToSchema)]
pub struct WebhookReply {
    success: bool,
    webhook: Webhook,
}

#[derive(Serialize, ToSchema)]
pub struct Deleted {
    success: bool,
    id: String,
    deleted: bool,
}

/// The queued test delivery.
#[derive(Serialize, ToSchema)]
pub struct TestQueued {
    success: bool,
    /// Its id (X-PortDaddy-Delivery, webhook-id).
    delivery: String,
}

/// One attempt to deliver.
#[derive(Serialize, ToSchema)]
pub struct Attempt {
    attempt: u32,
    started_ms: u64,
    duration_ms: u64,
    /// The receiver's HTTP status, when it answered.
    status: Option<u16>,
    /// Why the attempt failed without a status.
    error: Option<String>,
}

/// One event to one webhook, with its attempts.
#[derive(Serialize, ToSchema)]
pub struct Delivery {
    id: String,
    event: String,
    created_ms: u64,
    /// `pending`, `delivered` or `failed`.
    state: String,
    attempts: Vec<Attempt>,
    /// When the next attempt is due, while pending.
    next_attempt_ms: Option<u64>,
}

impl From<DeliveryInfo> for Delivery {
    fn from(d: DeliveryInfo) -> Delivery {
        Delivery {
            id: d.id,
            event: d.event,
            created_ms: d.created_ms,
            state: d.state,
            attempts: d.attempts.into_iter().map(Attempt::from).collect(),
            next_attempt_ms: d.next_attempt_ms,
        }
    }
}

impl From<AttemptInfo> for Attempt {
    fn from(a: AttemptInfo) -> Attempt {
        Attempt {
            attempt: a.attempt,
            started_ms: a.started_ms,
            duration_ms: a.duration_ms,
            status: a.status,
            error: a.error,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Deliveries {
    success: bool,
    webhook: String,
    /// Newest first.
    deliveries: Vec<Delivery>,
}

#[derive(Serialize, ToSchema)]
pub struct EventKinds {
    success: bool,
    events: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Port Daddy's `?active=true`: only active webhooks.
    active: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    limit: Option<i64>,
}

/// Register a webhook (Port Daddy's body, plus `filter`).
#[utoipa::path(post, path = "/webhooks", tag = "webhooks",
    request_body(content = AddBody, content_type = "application/json"),
    responses((status = 200, body = Created),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn add(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Created>, ApiError> {
    let b: AddBody = json_body(&body)?;
    let c: WebhookCreated = call(
        &state,
        &caller,
        Op::WebhookAdd(WebhookArgs {
            url: b.url,
            events: b.events,
            secret: b.secret,
            filter: b.filter,
        }),
    )
    .await?;
    Ok(Json(Created {
        success: true,
        id: c.webhook.id.clone(),
        url: c.webhook.url.clone(),
        events: c.webhook.events.clone(),
        message: "webhook registered".to_string(),
        webhook: c.webhook.into(),
        secret: c.secret,
    }))
}

/// Every webhook, without secrets.
#[utoipa::path(get, path = "/webhooks", tag = "webhooks",
    params(("active" = Option<bool>, Query, description = "true: only active webhooks")),
    responses((status = 200, body = WebhookList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<WebhookList>, ApiError> {
    let q: ListQuery = query(&uri)?;
    let r: WebhooksReply = call(&state, &caller, Op::Webhooks).await?;
    // A view of the core's answer, as Port Daddy's `?active=true` asks.
    let webhooks: Vec<Webhook> = r
        .webhooks
        .into_iter()
        .filter(|w| q.active != Some(true) || w.active)
        .map(Webhook::from)
        .collect();
    Ok(Json(WebhookList {
        success: true,
        count: webhooks.len(),
        webhooks,
    }))
}

/// The event kinds a webhook can subscribe to.
#[utoipa::path(get, path = "/webhooks/events", tag = "webhooks",
    responses((status = 200, body = EventKinds)))]
pub async fn events(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<EventKinds>, ApiError> {
    let r: WebhookEventsReply = call(&state, &caller, Op::WebhookEvents).await?;
    Ok(Json(EventKinds {
        success: true,
        events: r.events,
    }))
}

/// One webhook, without its secret.
#[utoipa::path(get, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = WebhookReply), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<WebhookReply>, ApiError> {
    let w: WebhookInfo = call(&state, &caller, Op::WebhookGet { id }).await?;
    Ok(Json(WebhookReply {
        success: true,
        webhook: w.into(),
    }))
}

/// Change a webhook: only the fields given change.
#[utoipa::path(put, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id")),
    request_body(content = UpdateBody, content_type = "application/json"),
    responses((status = 200, body = WebhookReply),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    body: Bytes,
) -> Result<Json<WebhookReply>, ApiError> {
    let b: UpdateBody = json_body(&body)?;
    let w: WebhookInfo = call(
        &state,
        &caller,
        Op::WebhookUpdate(WebhookUpdateArgs {
            id,
            url: b.url,
            events: b.events,
            secret: b.secret,
            filter: b.filter,
            active: b.active,
        }),
    )
    .await?;
    Ok(Json(WebhookReply {
        success: true,
        webhook: w.into(),
    }))
}

/// Remove a webhook with its queued deliveries and log.
#[utoipa::path(delete, path = "/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = Deleted), (status = 404, body = ErrorBody)))]
pub async fn delete_one(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<Deleted>, ApiError> {
    let d: WebhookDeleted = call(&state, &caller, Op::WebhookDelete { id }).await?;
    Ok(Json(Deleted {
        success: true,
        id: d.id,
        deleted: d.deleted,
    }))
}

/// Queue a `webhook.test` delivery to this webhook alone.
#[utoipa::path(post, path = "/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id")),
    responses((status = 200, body = TestQueued), (status = 404, body = ErrorBody)))]
pub async fn test(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<TestQueued>, ApiError> {
    let t: WebhookTestReply = call(&state, &caller, Op::WebhookTest { id }).await?;
    Ok(Json(TestQueued {
        success: true,
        delivery: t.delivery,
    }))
}

/// The webhook's newest deliveries, with every attempt.
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "webhook id"),
           ("limit" = Option<i64>, Query, description = "at most this many, newest first")),
    responses((status = 200, body = Deliveries),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn deliveries(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    uri: Uri,
) -> Result<Json<Deliveries>, ApiError> {
    let q: DeliveriesQuery = query(&uri)?;
    let d: DeliveriesReply = call(
        &state,
        &caller,
        Op::WebhookDeliveries { id, limit: q.limit },
    )
    .await?;
    Ok(Json(Deliveries {
        success: true,
        webhook: d.webhook,
        deliveries: d.deliveries.into_iter().map(Delivery::from).collect(),
    }))
}
