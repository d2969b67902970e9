//! The wire types of webhooks: registering, listing, updating, deleting
//! and testing them, and their delivery log. The `Op` variants that carry
//! them are in `message.rs`; docs/PROTOCOL.md describes each. The shapes
//! follow Port Daddy's `POST /webhooks` body (`{url, events, secret}`).

use serde::{Deserialize, Serialize};

/// `webhook_add`: a new webhook.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookArgs {
    /// `http://` or `https://`.
    pub url: String,
    /// Event kinds delivered (`GET /webhooks/events`); empty or absent
    /// means every kind.
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC key; generated (and shown once, in the reply) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// An id pattern (`myapp:*`) the event's target must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// `webhook_update`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdateArgs {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A pattern, or `""` to remove the filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Re-enables a webhook a 410 disabled (or disables one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

/// A webhook as listed: never with its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookInfo {
    pub id: String,
    pub url: String,
    /// Empty: every kind.
    pub events: Vec<String>,
    pub filter: Option<String>,
    pub active: bool,
    /// Why it is inactive (e.g. the receiver answered 410).
    pub disabled_reason: Option<String>,
    pub created_ms: u64,
    /// Deliveries not yet delivered nor given up.
    pub pending: u64,
}

/// The reply to `webhook_add`: the only place the secret is shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookCreated {
    pub webhook: WebhookInfo,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhooksReply {
    pub webhooks: Vec<WebhookInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDeleted {
    pub id: String,
    pub deleted: bool,
}

/// The reply to `webhook_test`: the queued delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTestReply {
    pub delivery: String,
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptInfo {
    pub attempt: u32,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// The HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// Why the attempt failed without a status (refused address, timeout,
    /// connection error).
    pub error: Option<String>,
}

/// One delivery (one event to one webhook) and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    /// The `X-PortDaddy-Delivery` / `webhook-id` value.
    pub id: String,
    pub event: String,
    pub created_ms: u64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: Vec<AttemptInfo>,
    /// When the next attempt is due, while pending.
    pub next_attempt_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveriesReply {
    pub webhook: String,
    /// Newest first.
    pub deliveries: Vec<DeliveryInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEventsReply {
    pub events: Vec<String>,
}
