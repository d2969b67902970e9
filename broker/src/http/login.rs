//! The dashboard's login: `GET /login?code=...` exchanges a one-time code
//! from `pb dashboard` for a session cookie (HttpOnly, SameSite=Strict), with
//! which a browser the kernel cannot attribute to the broker's user is
//! admitted as that user. The codes and sessions are the core's
//! (crate::logins); this only translates.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pb_proto::{LoginReply, Op};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::guard::{LOGIN_PATH, SESSION_COOKIE};
use super::{call, query, HttpState};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route(LOGIN_PATH, get(login))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    code: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoggedIn {
    logged_in: bool,
    /// When the session ends (ms since the epoch).
    expires_ms: u64,
}

/// Exchange a one-time login code for a session cookie.
#[utoipa::path(get, path = "/login", tag = "pb",
    params(("code" = String, Query, description = "the one-time code `pb dashboard` printed")),
    responses((status = 200, body = LoggedIn, description = "sets the pb_session cookie"),
              (status = 401, body = ErrorBody)))]
pub async fn login(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: LoginQuery = query(&uri)?;
    let reply: LoginReply = call(&state, &caller, Op::Login { code: q.code }).await?;
    let max_age = reply.expires_ms.saturating_sub(crate::core::now_ms()) / 1000;
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}",
        reply.session
    );
    let mut resp = Json(LoggedIn {
        logged_in: true,
        expires_ms: reply.expires_ms,
    })
    .into_response();
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|e| ApiError::new(pb_proto::ErrorCode::Internal, e.to_string()))?;
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
