//! `GET /metrics`: the broker's Prometheus metrics in the OpenMetrics text
//! format, the `metrics` op as `pb metrics` sends it, behind the same guard
//! as every route (another user needs the token). And the layer that tells
//! [`super::handle`], which counts every request, the route's template a
//! request matched: a label from the router's closed set, never the path a
//! client sent.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use pb_proto::{MetricsReply, Op};

use super::error::ApiError;
use super::{call, HttpState};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/metrics", get(metrics))
}

/// The broker's metrics, for Prometheus.
#[utoipa::path(get, path = "/metrics", tag = "pb",
    responses((status = 200, description = "the metrics, OpenMetrics text (docs/HTTP.md)",
        content_type = "application/openmetrics-text")))]
pub async fn metrics(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let r: MetricsReply = call(&state, &caller, Op::Metrics).await?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], r.text).into_response())
}

/// Carries the matched route's template out on the response.
pub async fn mark_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = next.run(req).await;
    if let Some(route) = route {
        resp.extensions_mut().insert(route);
    }
    resp
}
