//! Serves the dashboard (the pb-dashboard crate's embedded files): `GET /`
//! is the app for a browser with a live session cookie (from `pb
//! dashboard`'s one-time URL, see [`super::login`]) and the login page for
//! anyone else, even the broker's own user, so that nothing is shown
//! without logging in. `GET /dashboard/{file}` serves the scripts and
//! styles, which hold no data. What the app shows it reads from the public
//! API, like any client.
//!
//! Every page goes out with a strict Content-Security-Policy (only this
//! origin's scripts, styles and connections; no framing), so a message or
//! a command line that contains markup can never run as script.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use pb_proto::ErrorCode;

use super::error::ApiError;
use super::guard::has_session;
use super::{Conn, HttpState, IdPath};

/// Where the dashboard's files are served.
pub const FILES_PREFIX: &str = "/dashboard/";

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/{file}", get(file))
}

/// The app for a logged-in browser, else the login page.
async fn page(
    State(state): State<Arc<HttpState>>,
    Extension(conn): Extension<Arc<Conn>>,
    headers: HeaderMap,
) -> Response {
    let name = if has_session(&state, &conn, &headers) {
        pb_dashboard::INDEX
    } else {
        pb_dashboard::LOGIN
    };
    serve(pb_dashboard::asset(name).expect("the pages are embedded"))
}

async fn file(IdPath(name): IdPath) -> Result<Response, ApiError> {
    pb_dashboard::asset(&name)
        .map(serve)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no dashboard file {name:?}")))
}

fn serve(asset: &'static pb_dashboard::Asset) -> Response {
    let mut resp = asset.body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The pages differ by session: never reuse one from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
