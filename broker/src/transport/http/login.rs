//! The dashboard's login: `GET /login?code=...` exchanges a one-time code
//! from `pb dashboard` for a session cookie (HttpOnly, SameSite=Lax, named for
//! the broker's port, and valid only from the uid that redeemed it), with
//! which a browser the kernel cannot attribute to the broker's user is
//! admitted as that user. The codes and sessions are the core's
//! (crate::logins); this only translates.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use pb_proto::{LoginReply, Op};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::guard::{session_cookie_name, LOGIN_PATH};
use super::{call, query, Conn, HttpState};
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

/// Exchange a one-time login code for a session cookie. A browser
/// (`Accept: text/html`) is sent on to the dashboard at `/` instead, or to
/// `/?login=failed` when the code is wrong, used or expired, so the code
/// never stays in its address bar.
#[utoipa::path(get, path = "/login", tag = "pb",
    params(("code" = String, Query, description = "the one-time code `pb dashboard` printed")),
    responses((status = 200, body = LoggedIn, description = "sets the pb_session_PORT cookie"),
              (status = 303, description = "a browser: sets the cookie and goes to the dashboard"),
              (status = 401, body = ErrorBody)))]
pub async fn login(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Extension(conn): Extension<Arc<Conn>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let browser = wants_html(&headers);
    let reply = match exchange(&state, &caller, &uri).await {
        Ok(r) => r,
        Err(_) if browser => return Ok(see_other("/?login=failed")),
        Err(e) => return Err(e),
    };
    let max_age = reply.expires_ms.saturating_sub(crate::core::now_ms()) / 1000;
    // Lax, not Strict: a link opened from another site's page must still
    // arrive logged in after the redirect. Lax cookies go only with
    // top-level GETs, which change nothing here.
    let cookie = format!(
        "{}={}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}",
        session_cookie_name(conn.host_port().unwrap_or(0)),
        reply.session
    );
    let mut resp = if browser {
        see_other("/")
    } else {
        Json(LoggedIn {
            logged_in: true,
            expires_ms: reply.expires_ms,
        })
        .into_response()
    };
    let cookie = HeaderValue::from_str(&cookie)
        .map_err(|e| ApiError::new(pb_proto::ErrorCode::Internal, e.to_string()))?;
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn exchange(state: &HttpState, caller: &Caller, uri: &Uri) -> Result<LoginReply, ApiError> {
    let q: LoginQuery = query(uri)?;
    call(state, caller, Op::Login { code: q.code }).await
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn see_other(to: &'static str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    resp
}
